#!/usr/bin/env python3
"""herd's built-in demo model (native/demo) as a GGUF file for llama.cpp, f32, text weights only.

Usage: python3 tests/tools/demo_to_gguf.py MODEL_DIR OUT.gguf   (numpy and llama.cpp's gguf-py installed)

llama.cpp's own converter (convert_hf_to_gguf.py) imports torch and transformers and refuses a vocabulary
it does not know by hash; this writes what that converter's Llama 4 path writes for this checkpoint, with
numpy and llama.cpp's gguf-py only (tests/tools/bench_serve_llamacpp.sh installs both):

  * hparams = {**config, **config["text_config"]}; intermediate_size and intermediate_size_mlp swapped
  * tensors: "language_model." stripped, experts.gate_up_proj split into gate and up (last two axes
    swapped, gate first), experts.down_proj's last two axes swapped, names mapped with gguf's LLAMA4
    tensor map, everything stored as F32
  * rope_freqs.weight from the llama3 rope parameters
  * vocabulary: tokenizer model "gpt2", pre-tokenizer "llama4" (the demo's regex is Llama 4's), added
    special tokens as CONTROL, merges, special ids and chat template through gguf.SpecialVocab

llama.cpp (0c1e570) fixes Llama 4's attention chunk and attention-temperature floor at 8192 whatever the
file says; the demo uses 32 for both, so llama.cpp's text follows herd's (and transformers') for the first
32 positions and then drifts. The work per token is the same, which is what the serving benchmark needs.
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

model_dir = Path(sys.argv[1])
out_path = Path(sys.argv[2])

config = json.loads((model_dir / "config.json").read_text())
hp = {**config, **config.get("text_config", {})}
hp["intermediate_size_moe"] = hp["intermediate_size"]
hp["intermediate_size"] = hp["intermediate_size_mlp"]
rope = hp.get("rope_parameters", hp.get("rope_scaling")) or {}
n_layer = hp["num_hidden_layers"]
head_dim = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            s, e = info["data_offsets"]
            f.seek(base + s)
            raw = f.read(e - s)
            dt = info["dtype"]
            if dt == "BF16":
                a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dt == "F16":
                a = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
            elif dt == "F32":
                a = np.frombuffer(raw, dtype=np.float32).copy()
            else:
                raise ValueError(f"unsupported dtype {dt} for {name}")
            out[name] = a.reshape(info["shape"])
        return out


w = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA4])

# ---- metadata (TextModel/LlamaModel/Llama4Model.set_gguf_parameters) ----
w.add_type(gguf.GGUFType.MODEL)
w.add_name(model_dir.name)
w.add_block_count(n_layer)
w.add_context_length(hp["max_position_embeddings"])
w.add_embedding_length(hp["hidden_size"])
w.add_feed_forward_length(hp["intermediate_size"])
w.add_head_count(hp["num_attention_heads"])
w.add_head_count_kv(hp["num_key_value_heads"])
w.add_rope_freq_base(rope["rope_theta"])
w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
w.add_expert_count(hp["num_local_experts"])
w.add_expert_used_count(hp["num_experts_per_tok"])
w.add_key_length(head_dim)
w.add_value_length(head_dim)
w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_vocab_size(hp["vocab_size"])
w.add_rope_dimension_count(head_dim)
w.add_interleave_moe_layer_step(hp["interleave_moe_layer_step"])
w.add_expert_feed_forward_length(hp["intermediate_size_moe"])
if "layer_types" in hp and all(t == "full_attention" for t in hp["layer_types"]):
    w.add_sliding_window(0)
w.add_quantization_version(gguf.GGML_QUANT_VERSION)

# ---- vocab (TextModel._set_vocab_gpt2 / get_vocab_base) ----
tok = json.loads((model_dir / "tokenizer.json").read_text())
vocab = dict(tok["model"]["vocab"])
added = {t["id"]: t for t in tok.get("added_tokens", [])}
for i, t in added.items():
    vocab[t["content"]] = i
rev = {i: s for s, i in vocab.items()}
tokens, toktypes = [], []
for i in range(hp["vocab_size"]):
    if i not in rev:
        tokens.append(f"[PAD{i}]"); toktypes.append(gguf.TokenType.UNUSED)
        continue
    s = rev[i]
    if i in added:
        looks_special = s.startswith("<|") and s.endswith("|>")
        toktypes.append(gguf.TokenType.CONTROL if (added[i]["special"] or looks_special)
                        else gguf.TokenType.USER_DEFINED)
    else:
        toktypes.append(gguf.TokenType.NORMAL)
    tokens.append(s)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("llama4")
w.add_token_list(tokens)
w.add_token_types(toktypes)
gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(w)

# ---- tensors (filter_tensors + Llama4Model.modify_tensors + map_tensor_name) ----
tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA4, n_layer)
tensors = {}
for f in sorted(model_dir.glob("*.safetensors")):
    tensors.update(load_safetensors(f))


def emit(name, data):
    new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise ValueError(f"cannot map tensor {name!r}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    print(f"{new:<32} {str(tuple(data.shape)):<18} <- {name}")
    w.add_tensor(new, data)


for name, data in tensors.items():
    if "vision" in name or "projector" in name:
        continue
    name = name.replace("language_model.", "")
    if "gate_up_proj" in name:
        half = data.shape[-1] // 2
        t = np.swapaxes(data, -1, -2)
        emit(name.replace("gate_up_proj", "gate_proj.weight"), t[..., :half, :])
        emit(name.replace("gate_up_proj", "up_proj.weight"), t[..., half:, :])
        continue
    if name.endswith("down_proj"):
        name += ".weight"
        data = np.swapaxes(data, -1, -2)
    emit(name, data)

# llama3 rope factors (LlamaModel.generate_extra_tensors)
if str(rope.get("rope_type", "")).lower() == "llama3":
    base = np.float32(rope.get("rope_theta", 10000.0))
    freqs = (np.float32(1.0) / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))).astype(np.float32)
    factor = rope.get("factor", 8.0)
    lo = rope.get("low_freq_factor", 1.0)
    hi = rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    lo_wl, hi_wl = old / lo, old / hi
    facs = []
    for fr in freqs:
        wl = np.float32(2 * math.pi) / fr
        if wl < hi_wl:
            facs.append(1.0)
        elif wl > lo_wl:
            facs.append(factor)
        else:
            sm = (old / wl - lo) / (hi - lo)
            facs.append(1 / ((1 - sm) / factor + sm))
    rf = np.array(facs, dtype=np.float32)
    print(f"{'rope_freqs.weight':<32} {str(rf.shape):<18} <- llama3 rope_parameters {rf.tolist()}")
    w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rf)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", out_path)
