#!/usr/bin/env python3
"""Golden test fixtures for herd (Llama 4 runtime), produced with Hugging Face transformers.

How to run (from the repository root, CPU only, about 30-60 s on 2 cores):

    pip install -r tests/tools/requirements.txt
    python3 tests/tools/make_fixtures.py            # everything
    python3 tests/tools/make_fixtures.py tokenizer  # only some parts: tokenizer scout maverick scout_bf16 guard

Everything is seeded and deterministic: with the pinned versions a rerun rewrites byte-identical
files (checked).  Reference numbers come from transformers==5.24.0 (tests/tools/requirements.txt),
eager attention, models loaded back with from_pretrained from the written directory; the spec the
fixtures follow is docs/llama4.md.  Vocabulary: 1955 base BPE tokens + 93 specials = 2048
(bos <|begin_of_text|> 1955, <|end_of_text|> 1956, <|eom|> 1962, <|eot|> 1963, pad
<|finetune_right_pad|> 1973, <|patch|> 2047).  For each model the script prints the logits std,
the number of distinct greedy ids, the smallest top-1/top-2 margin on the greedy path (the prompt
is the first of a fixed seed sequence whose margin is >= 0.02 in f32 / 0.15 in bf16), whether the
greedy ids (KV-cache path) equal the argmax of a full forward over prompt+greedy, and how much the
logits move when a feature (RoPE scaling, temperature tuning, chunking, QK norm, top-2) is switched off.

What it writes
--------------
tests/fixtures/tokenizer/
    tokenizer.json          small byte-level BPE in the exact Llama 4 tokenizer.json layout
                            (BPE ignore_merges, Split(o200k regex, isolated) + ByteLevel(no prefix,
                            no regex), ByteLevel decoder, TemplateProcessing that prepends
                            <|begin_of_text|>).  Trained on tests/tools/tokenizer_corpus.txt
                            (English text from the Python stdlib docstrings + a few multilingual
                            lines; the file is generated once if missing and then reused, so that
                            the tokenizer does not depend on the Python version).
                            The 93 Llama 4 special tokens (<|begin_of_text|> ... <|patch|>) follow
                            the base vocab in Meta's order: id = BASE_VOCAB + offset, where Meta
                            has 200000 + offset.
    tokenizer_config.json   real Llama-4-Scout-17B-16E-Instruct chat_template, bos/eos/pad etc.
    generation_config.json  bos / eos list / do_sample / temperature 0.6 / top_p 0.9
    cases.json              reference encodings (transformers AutoTokenizer) of 17 strings and 6
                            rendered + tokenized chat conversations (system, multi-turn, list content
                            with an image item, tools in the user message, tool call + tool result,
                            tools in the system message + ipython role).
tests/fixtures/<name>/      tiny random Llama 4 checkpoints, exactly as transformers saves them
                            (config.json, model*.safetensors, generation_config.json with the real-style
                            bos/eos list), plus tokenizer.json + tokenizer_config.json and
    reference.safetensors   input_ids i64 [B,T]; logits f32 [B,T,V] (full forward, no cache);
                            greedy_ids i64 [B,N] (generate(do_sample=False), N new tokens, no eos)
    reference.json          what the fixture covers, B, T, N, checks that were run
  scout       Llama4ForCausalLM, flat llama4_text config, f32, hidden 32, 4 heads x 16 (q/o not square),
              2 kv heads, 8 layers: all-MoE (4 experts, top-1), QK norm,
              NoPE layers 3,7 (default interval), chunked attention C=8 with T=20 and N=12,
              attention temperature tuning active (floor_scale 4), llama3 RoPE scaling with a
              non-empty smooth band, non-unit RMSNorm weights.  Also config.published.json (the
              same config in the dialect of Meta's published config.json files; transformers 5.24
              refuses its `attn_temperature_tuning: 4`, so it is verified with that read as true).
  maverick    Llama4ForConditionalGeneration (tiny vision tower included), f32, sharded into
              several model-0000i-of-0000n.safetensors + index; dense even layers with
              intermediate_size_mlp != intermediate_size, MoE odd layers with 8 experts and
              top-2 routing, no QK norm, plain RoPE, C=8.
  scout_bf16  the scout config stored in bfloat16; reference computed by transformers in bf16.
  guard       dense Llama-Guard-4-like model (moe_layers [], num_local_experts 0,
              attention_chunk_size null -> every layer global, QK norm on), hidden 64 = 4 x 16,
              Llama4ForConditionalGeneration with a tiny vision tower.
The image fixtures (tests/fixtures/vision) are made by tests/tools/make_vision_fixtures.py.
The built-in demo model (native/demo) is trained, not random: tests/tools/train_demo.py makes it and
its reference (tests/fixtures/demo), with the tokenizer and checkpoint helpers of this file.
"""

import contextlib
import copy
import importlib
import inspect
import io
import json
import math
import os
import shutil
import sys
import tempfile

# The tokenizer, the shared paths (ROOT, FIX, TOK_DIR, ...) and helpers (write_json, special_id): other scripts
# import them from here.
from fixture_tokenizer import *  # noqa: F401,F403,E402
from fixture_tokenizer import make_tokenizer  # noqa: E402


# --------------------------------------------------------------------------------------------
# Tiny random models
# --------------------------------------------------------------------------------------------

def text_config_dict(**over):
    """Common tiny llama4_text settings (vocab = tokenizer fixture; ids like the real checkpoints)."""
    d = dict(vocab_size=TOTAL_VOCAB, hidden_size=32, intermediate_size=16, intermediate_size_mlp=48,
             num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             hidden_act="silu", max_position_embeddings=4096, initializer_range=0.1, rms_norm_eps=1e-5,
             num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1, use_qk_norm=True,
             attention_chunk_size=8, attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
             bos_token_id=BOS_ID, eos_token_id=list(EOS_IDS), pad_token_id=PAD_ID, tie_word_embeddings=False)
    d.update(over)
    return d


TINY_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                   image_size=28, patch_size=14, num_channels=3, norm_eps=1e-5, hidden_act="gelu",
                   pixel_shuffle_ratio=0.5, projector_input_dim=32, projector_output_dim=32, vision_output_dim=32,
                   initializer_range=0.1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})

# Scout-like llama3 RoPE scaling whose smooth band is non-empty for head_dim 16.  A small theta (500) keeps
# the scaled pairs rotating noticeably within 32 positions: base wavelengths 2*pi*500^(2j/16) =
# 6.3, 13.3, 28.1, 59.4, 125.7, 265.8, 562.0, 1188.5; band [O/high_freq_factor, O/low_freq_factor] = [96, 384]
# holds j=4 (s = 0.685) and j=5 (s = 0.148) -> smooth; j<=3 unchanged; j=6,7 divided by factor 8.
SCOUT_ROPE = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 384}


def scout_text_config():
    return text_config_dict(num_hidden_layers=8, num_local_experts=4, num_experts_per_tok=1,
                            interleave_moe_layer_step=1, use_qk_norm=True, attention_chunk_size=8,
                            attn_temperature_tuning=True, floor_scale=4, attn_scale=0.1,
                            rope_parameters=dict(SCOUT_ROPE))


EMBED_STD = 1.0   # token embeddings ~ N(0, 1): the current token matters, greedy output is not constant
LM_HEAD_STD = 0.3  # logits std ~ 0.3 * sqrt(hidden) * norm weights: clearly non-flat


def perturb_weights(model, seed):
    """Everything else keeps transformers' init (normal, std = initializer_range).  RMSNorm weights are 1 at
    init: make them non-trivial so that a runtime ignoring them fails; rescale embeddings and lm_head."""
    import torch
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "vision" in name:
                continue
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(EMBED_STD * torch.randn(p.shape, generator=g))
            elif name.endswith("lm_head.weight"):
                p.copy_(LM_HEAD_STD * torch.randn(p.shape, generator=g))


def new_model(cls, config, seed):
    import torch
    torch.manual_seed(seed)
    model = cls(config)
    perturb_weights(model, seed)
    return model.eval()


def patch_transformers():
    # transformers 5.24.0: Llama4ForConditionalGeneration.forward reads `image_outputs` from the inner
    # MoeCausalLMOutputWithPast, which has no such field (AttributeError). A class default of None fixes it
    # without changing any computation (shared/RECIPES.md).
    from transformers.modeling_outputs import MoeCausalLMOutputWithPast
    if not hasattr(MoeCausalLMOutputWithPast, "image_outputs"):
        MoeCausalLMOutputWithPast.image_outputs = None


def load(cls, path, dtype):
    model = cls.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return model.eval()


MIN_GREEDY_GAP = {"float32": 0.02, "bfloat16": 0.15}


def run_reference(model, input_ids, n_new):
    """Full-forward logits (no cache) + greedy continuation through the KV cache + consistency checks."""
    import torch
    from transformers import GenerationConfig
    # eos_token_id None everywhere (a None in a passed GenerationConfig would be filled in from the
    # model's generation_config, whose eos list min_new_tokens would then mask): nothing can stop
    # generation early and no logits processor touches the scores.
    gc = GenerationConfig(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, eos_token_id=None,
                          pad_token_id=PAD_ID, bos_token_id=BOS_ID, use_cache=True)
    saved_gc, model.generation_config = model.generation_config, gc
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids, use_cache=False).logits
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gc,
                                 output_logits=True, return_dict_in_generate=True)
            seq = out.sequences
            t = input_ids.shape[1]
            greedy = seq[:, t:]
            assert greedy.shape[1] == n_new
            step_logits = torch.stack(out.logits, dim=1)  # logits the cached decode produced
            assert torch.equal(step_logits.argmax(-1), greedy), "generate did not pick the argmax"
            full = model(input_ids=seq, use_cache=False).logits[:, t - 1:t - 1 + n_new]
            agree = int((full.argmax(-1) == greedy).sum())
            cache_vs_full = float((step_logits.float() - full.float()).abs().max())
    finally:
        model.generation_config = saved_gc
    return logits.float(), greedy, agree, full.float(), cache_vs_full


def copy_tokenizer_files(dst):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOK_DIR, f), os.path.join(dst, f))


def clean_dir(d):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)


def save_checkpoint(model, out, dtype_name, max_shard_size=None, text_only=False):
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(**generation_config_dict())
    kw = {}
    if max_shard_size:
        kw["max_shard_size"] = max_shard_size
    if text_only:
        kw["state_dict"] = {k: v for k, v in model.state_dict().items() if k.startswith("language_model.")}
    with contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(out, **kw)
    copy_tokenizer_files(out)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg.get("dtype", dtype_name) == dtype_name, cfg.get("dtype")


def random_prompt(b, t, seed):
    import torch
    g = torch.Generator().manual_seed(seed + 7)
    return torch.randint(0, BASE_VOCAB, (b, t), generator=g, dtype=torch.int64)


def text_config_of(model):
    c = model.config
    return getattr(c, "text_config", None) or c


def describe_layers(tc):
    return {"moe_layers": list(tc.moe_layers), "layer_types": list(tc.layer_types),
            "no_rope_layers (1 = RoPE)": list(tc.no_rope_layers)}


def make_model_fixture(name, cls_name, config, seed, B, T, N, dtype_name, covers, max_shard_size=None,
                       extra=None, post_save=None, variants=None):
    import torch
    import transformers
    from safetensors.torch import save_file
    patch_transformers()
    cls = getattr(transformers, cls_name)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    out = os.path.join(FIX, name)
    clean_dir(out)
    model = new_model(cls, config, seed)
    if dtype != torch.float32:
        model = model.to(dtype)
    save_checkpoint(model, out, dtype_name, max_shard_size=max_shard_size)
    # reference numbers come from the checkpoint as transformers loads it from disk
    ref_model = load(cls, out, dtype)
    # Pick the first prompt (deterministic sequence of seeds) whose greedy decisions all have a clear
    # top-1/top-2 margin, so that a runtime with different rounding still reproduces greedy_ids exactly.
    min_gap = MIN_GREEDY_GAP[dtype_name]
    best = None
    for k in range(40):
        input_ids = random_prompt(B, T, seed * 1000 + k)
        logits, greedy, agree, full, cache_vs_full = run_reference(ref_model, input_ids, N)
        top2 = full.topk(2, dim=-1).values
        gap = float((top2[..., 0] - top2[..., 1]).min())
        if best is None or gap > best[0]:
            best = (gap, k, input_ids, logits, greedy, agree, cache_vs_full)
        if gap >= min_gap and agree == B * N:
            break
    gap, k, input_ids, logits, greedy, agree, cache_vs_full = best
    if dtype == torch.float32:  # the in-memory model agrees with the reloaded one
        with torch.no_grad():
            model.set_attn_implementation("eager")
            l2 = model(input_ids=input_ids, use_cache=False).logits
        assert torch.equal(l2, ref_model(input_ids=input_ids, use_cache=False).logits)
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous(), "greedy_ids": greedy.contiguous()},
              os.path.join(out, "reference.safetensors"))
    tc = text_config_of(ref_model)
    std = float(logits.std())
    distinct = len(set(greedy.flatten().tolist()))
    checks = {"logits_std": round(std, 4), "distinct_greedy_ids": distinct,
              "greedy_min_top1_top2_margin": round(gap, 4), "prompt_seed_index": k,
              "greedy_matches_argmax_of_full_forward": f"{agree}/{B * N}",
              "max_abs_diff_cached_decode_logits_vs_full_forward": cache_vs_full}
    rot = ref_model.language_model.model.rotary_emb if hasattr(ref_model, "language_model") else ref_model.model.rotary_emb
    info = {
        "fixture": name,
        "architecture": cls_name,
        "dtype": dtype_name,
        "B": B, "T": T, "N": N,
        "vocab_size": TOTAL_VOCAB,
        "seed": seed,
        "covers": covers,
        "layers": describe_layers(tc),
        "rope_parameters": dict(tc.rope_parameters),
        "rope_inv_freq_hf": [float(x) for x in rot.inv_freq.float()],
        "tensors": {
            "input_ids": f"int64 [{B},{T}], random ids from the base vocab (< {BASE_VOCAB}), equal-length rows",
            "logits": f"float32 [{B},{T},{TOTAL_VOCAB}], model(input_ids, use_cache=False).logits"
                      + (" computed in bf16 then upcast" if dtype_name == "bfloat16" else ""),
            "greedy_ids": f"int64 [{B},{N}], the N new tokens of generate(do_sample=False, max_new_tokens={N}, "
                          "eos_token_id=None) (KV cache path)",
        },
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, "
                     "attn_implementation='eager', loaded with from_pretrained from this directory",
        "checks": checks,
    }
    usage = expert_usage(ref_model, input_ids)
    if usage:
        info["expert_usage_prompt_tokens_per_moe_layer"] = usage
    if variants:
        sens = sensitivity(out, cls, dtype, input_ids, logits, variants)
        info["checks"]["max_abs_logit_change_when_switched_off"] = sens
        print(f"  {name}: max |logit change| when switching off: "
              + ", ".join(f"{k} {v:.3g}" for k, v in sens.items()))
    if extra:
        info.update(extra(ref_model) if callable(extra) else extra)
    if post_save:
        info.update(post_save(out, cls, dtype, input_ids, logits))
    write_json(os.path.join(out, "reference.json"), info)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{name}: logits std {std:.3f}, distinct greedy ids {distinct}/{B * N}, greedy margin {gap:.3f}, "
          f"greedy == argmax(full forward) {agree}/{B * N} (max |cached - full| {cache_vs_full:.1e}), dir {size / 1e6:.2f} MB")
    if agree != B * N:
        print(f"  WARNING {name}: cached greedy path disagrees with the full forward at {B * N - agree} positions")
    return info


def temperature_scales(tc, n):
    return [1.0 + tc.attn_scale * math.log1p(math.floor((p + 1) / tc.floor_scale)) for p in range(n)]


def rope_bands(tc):
    rp = tc.rope_parameters
    if rp.get("rope_type") != "llama3":
        return {}
    d = tc.head_dim
    O, lf, hf = rp["original_max_position_embeddings"], rp["low_freq_factor"], rp["high_freq_factor"]
    bands = []
    for j in range(d // 2):
        wl = 2 * math.pi * rp["rope_theta"] ** (2 * j / d)
        bands.append("unchanged" if wl < O / hf else ("divided by factor" if wl > O / lf else "smooth"))
    return {"llama3_bands_per_pair": bands}


def published_config(cfg):
    """The same config in the dialect of Meta's published config.json files."""
    pub = {}
    for k, v in cfg.items():
        if k in ("dtype", "rope_parameters", "moe_layers", "layer_types", "no_rope_layer_interval"):
            continue
        pub[k] = v
    rp = cfg["rope_parameters"]
    pub["rope_theta"] = rp["rope_theta"]
    pub["rope_scaling"] = {k: rp[k] for k in ("factor", "high_freq_factor", "low_freq_factor",
                                              "original_max_position_embeddings")}
    pub["rope_scaling"]["rope_type"] = rp["rope_type"]
    pub["no_rope_layers"] = []
    pub["attn_temperature_tuning"] = 4
    pub["torch_dtype"] = cfg["dtype"]
    pub["for_llm_compressor"] = False
    pub["transformers_version"] = "4.51.0.dev0"
    return dict(sorted(pub.items()))


def scout_post_save(out, cls, dtype, input_ids, logits):
    import torch
    cfg = json.load(open(os.path.join(out, "config.json")))
    pub = published_config(cfg)
    write_json(os.path.join(out, "config.published.json"), pub)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(os.path.join(out, "model.safetensors"), os.path.join(tmp, "model.safetensors"))
        write_json(os.path.join(tmp, "config.json"), pub)
        try:
            m = load(cls, tmp, dtype)
            int_flag_note = "transformers accepted attn_temperature_tuning: 4 as is"
        except Exception as e:  # transformers 5.24's strict config dataclass wants a bool here
            int_flag_note = (f"transformers {__import__('transformers').__version__} refuses attn_temperature_tuning: 4 "
                             f"({type(e).__name__}: {str(e).splitlines()[-1].strip()}); verified with it read as "
                             "bool(4) = true, every other field as written")
            write_json(os.path.join(tmp, "config.json"), dict(pub, attn_temperature_tuning=bool(pub["attn_temperature_tuning"])))
            m = load(cls, tmp, dtype)
        print(f"  scout: {int_flag_note}")
        with torch.no_grad():
            l2 = m(input_ids=input_ids, use_cache=False).logits.float()
        same = bool(torch.equal(l2, logits))
        tc = m.config
        derived = {"moe_layers": list(tc.moe_layers), "layer_types": list(tc.layer_types),
                   "no_rope_layers": list(tc.no_rope_layers), "rope_parameters": dict(tc.rope_parameters),
                   "attn_temperature_tuning": tc.attn_temperature_tuning}
    assert same, "published-dialect config gives different logits"
    print(f"  scout: config.published.json loads to identical logits: {same}")
    return {"config_published": {"file": "config.published.json",
                                 "what": "same model config in Meta's published dialect (rope_theta + rope_scaling, "
                                         "torch_dtype, no_rope_layers [], no moe_layers/layer_types, "
                                         "attn_temperature_tuning 4, extra field for_llm_compressor)",
                                 "identical_logits_when_loaded_by_transformers": same,
                                 "note": int_flag_note,
                                 "transformers_derives": derived}}


def expert_usage(model, input_ids):
    """Tokens routed to each expert, per MoE layer, in the prompt forward (shows routing is not degenerate)."""
    import torch
    from transformers.models.llama4.modeling_llama4 import Llama4Router
    usage, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, Llama4Router):
            layer = int(name.split("layers.")[1].split(".")[0])

            def hook(m, inp, out, layer=layer):
                idx = out[1].topk(m.top_k, dim=-1).indices.flatten()
                usage[layer] = torch.bincount(idx, minlength=m.num_experts).tolist()
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    for h in hooks:
        h.remove()
    return {str(k): usage[k] for k in sorted(usage)}


def sensitivity(out, cls, dtype, input_ids, logits, variants):
    """max |logits - logits with one feature switched off|: proves the fixture exercises that feature."""
    import torch
    res = {}
    for label, mutate in variants.items():
        cfg = cls.config_class.from_pretrained(out)
        mutate(getattr(cfg, "text_config", None) or cfg)
        m = cls.from_pretrained(out, config=cfg, dtype=dtype, attn_implementation="eager").eval()
        with torch.no_grad():
            l2 = m(input_ids=input_ids, use_cache=False).logits.float()
        res[label] = float((l2 - logits).abs().max())
    return res


def no_chunking(tc):
    tc.attention_chunk_size = None
    tc.layer_types = ["full_attention"] * tc.num_hidden_layers


def plain_rope(tc):
    tc.rope_parameters = {"rope_type": "default", "rope_theta": tc.rope_parameters["rope_theta"]}


def no_temperature(tc):
    tc.attn_temperature_tuning = False


def no_qk_norm(tc):
    tc.use_qk_norm = False


def top1(tc):
    tc.num_experts_per_tok = 1


def make_scout():
    from transformers import Llama4TextConfig
    cfg = Llama4TextConfig(**scout_text_config())
    base = {}
    # how much the llama3 scaling matters at these lengths (vs plain RoPE with the same theta)
    return make_model_fixture(
        "scout", "Llama4ForCausalLM", cfg, seed=1, B=2, T=20, N=12, dtype_name="float32",
        covers=[
            "Llama4ForCausalLM, flat llama4_text config, single model.safetensors, names model.* / lm_head.weight",
            "all layers MoE (interleave_moe_layer_step 1), 4 experts, top-1 sigmoid routing on the expert input, shared expert",
            "expert width intermediate_size 16 (intermediate_size_mlp 48 present but unused)",
            "hidden 32 with 4 heads x head_dim 16 = 64 (q/o projections are not square), GQA 4 q heads / 2 kv heads",
            "use_qk_norm on RoPE layers; NoPE layers 3 and 7 from the default interval (no_rope_layers derived)",
            "chunked attention C=8 on RoPE layers: prompt T=20 spans 3 chunks, decode positions 20..31 cross into chunk 3",
            "attention temperature tuning on NoPE layers with floor_scale 4 (scale > 1 from position 3 on), attn_scale 0.1",
            "llama3 RoPE scaling, theta 500, factor 8, low 1, high 4, original_max_position_embeddings 384: "
            "pairs 0-3 unchanged, 4-5 in the smooth band, 6-7 divided by 8",
            "interleaved (complex) RoPE pairs, RMSNorm weights randomised (not 1), untied lm_head, batch B=2",
            "config.published.json: the same config in the published-checkpoint dialect",
        ],
        extra=lambda m: {"nope_query_temperature_per_position": temperature_scales(m.config, 32), **rope_bands(m.config)},
        post_save=scout_post_save,
        variants={"llama3_rope_scaling": plain_rope, "attn_temperature_tuning": no_temperature,
                  "chunked_attention": no_chunking, "qk_norm": no_qk_norm})


def make_scout_bf16():
    from transformers import Llama4TextConfig
    cfg = Llama4TextConfig(**scout_text_config())
    return make_model_fixture(
        "scout_bf16", "Llama4ForCausalLM", cfg, seed=1, B=1, T=16, N=8, dtype_name="bfloat16",
        covers=[
            "the scout config and the scout weights (same seed) rounded to bfloat16, stored as bf16 (dtype bfloat16)",
            "reference logits computed by transformers in bf16 (eager attention, no f32 softmax), upcast to f32: "
            "expect ~1e-2 relative noise against an f32-accumulating runtime",
            "B=1, T=16 (2 chunks of 8), N=8",
        ],
        variants={"llama3_rope_scaling": plain_rope, "attn_temperature_tuning": no_temperature,
                  "chunked_attention": no_chunking},
        extra=lambda m: {"nope_query_temperature_per_position": temperature_scales(m.config, 24), **rope_bands(m.config)})


def make_maverick():
    from transformers import Llama4Config
    tc = text_config_dict(num_hidden_layers=8, num_local_experts=8, num_experts_per_tok=2,
                          interleave_moe_layer_step=2, intermediate_size=16, intermediate_size_mlp=48,
                          use_qk_norm=False, attention_chunk_size=8,
                          rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    cfg = Llama4Config(text_config=tc, vision_config=dict(TINY_VISION), boi_token_index=special_id("<|image_start|>"),
                       eoi_token_index=special_id("<|image_end|>"), image_token_index=special_id("<|patch|>"),
                       tie_word_embeddings=False)
    return make_model_fixture(
        "maverick", "Llama4ForConditionalGeneration", cfg, seed=2, B=2, T=20, N=12, dtype_name="float32",
        max_shard_size="300KB",
        covers=[
            "Llama4ForConditionalGeneration: nested config (text_config + tiny vision_config), tensors "
            "language_model.model.* / language_model.lm_head.weight plus vision_model.* / multi_modal_projector.* "
            "(the runtime ignores the vision tensors)",
            "sharded checkpoint: several model-0000i-of-0000n.safetensors + model.safetensors.index.json",
            "interleave_moe_layer_step 2: dense MLP on even layers (intermediate_size_mlp 48), MoE on odd layers "
            "(8 experts of width intermediate_size 16 + shared expert)",
            "num_experts_per_tok 2: top-2 routing, each selected expert gets its own sigmoid score on its input",
            "use_qk_norm false, plain RoPE (rope_type default, theta 500000), NoPE layers 3 and 7",
            "chunked attention C=8, T=20, N=12; temperature tuning on but inactive (floor_scale 8192)",
            "boi/eoi/image token indices point at this tokenizer's <|image_start|>/<|image_end|>/<|patch|>",
        ],
        extra=lambda m: {"shards": sorted(f for f in os.listdir(os.path.join(FIX, "maverick"))
                                          if f.startswith("model-"))},
        variants={"top2_routing (top-1 instead)": top1, "chunked_attention": no_chunking})


# Llama Guard 4's chat template. No model hub is reachable where the fixtures are made, so this is written to
# reproduce, byte for byte, transformers' apply_chat_template output for Llama-Guard-4-12B as published in a
# printout of one (a user turn, and a user and assistant turn: the categories with Llama Guard 3's short names,
# "according to our", one newline after <BEGIN CONVERSATION>, a literal backslash-n pair after each turn,
# nothing after the last header). With an image (a printout of one in huggingface-llama-recipes'
# llama_guard_4.ipynb): `<|image|>` after the role and before the text, and S14 left out of the categories;
# make_guard_images.py checks that rendering and records the guard's prompts with images.
GUARD_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_guard4_chat_template.jinja")

# The conversations whose guard prompts are recorded: the user's turn, the answer, and a subset of categories.
GUARD_PROMPTS = [
    ([("user", "How do I pick a lock?")], []),
    ([("user", "How do I pick a lock?"), ("assistant", "  Ask a locksmith.  ")], []),
    ([("user", "one"), ("assistant", "two"), ("user", "three")],
     ["S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S11", "S12", "S13", "S14"]),
]


def guard_post_save(out, cls, dtype, input_ids, logits):
    """Gives the guard Llama Guard 4's chat template and records, for each of GUARD_PROMPTS, the prompt
    transformers renders and tokenizes and the guard's logits at its last position."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer
    cfg_path = os.path.join(out, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg["chat_template"] = open(GUARD_TEMPLATE).read()
    write_json(cfg_path, cfg)
    tok = AutoTokenizer.from_pretrained(out)
    model = load(cls, out, dtype)
    prompts, last = [], []
    for turns, excluded in GUARD_PROMPTS:
        msgs = [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in turns]
        rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                           excluded_category_keys=excluded)
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lg = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        last.append(lg)
        prompts.append({"turns": turns, "excluded_category_keys": excluded, "rendered": rendered, "ids": ids})
    save_file({"last_logits": torch.stack(last).contiguous()}, os.path.join(out, "reference_guard_prompts.safetensors"))
    return {"guard_prompts": prompts,
            "guard_prompts_note": "Llama Guard 4's chat template (tests/tools/llama_guard4_chat_template.jinja) "
                                  "rendered by transformers' apply_chat_template(add_generation_prompt=True, "
                                  "excluded_category_keys=...), tokenized without added special tokens; "
                                  "reference_guard_prompts.safetensors holds the logits at each prompt's last "
                                  "position (float32 [3, vocab])"}


def make_guard():
    from transformers import Llama4Config
    tc = text_config_dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, moe_layers=[], num_local_experts=0, interleave_moe_layer_step=0,
                          intermediate_size=32, intermediate_size_mlp=32, use_qk_norm=True,
                          attention_chunk_size=None,
                          rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    cfg = Llama4Config(text_config=tc, vision_config=dict(TINY_VISION), boi_token_index=special_id("<|image_start|>"),
                       eoi_token_index=special_id("<|image_end|>"), image_token_index=special_id("<|patch|>"),
                       tie_word_embeddings=False)
    return make_model_fixture(
        "guard", "Llama4ForConditionalGeneration", cfg, seed=3, B=1, T=16, N=8, dtype_name="float32",
        covers=[
            "Llama-Guard-4-like dense model: moe_layers [] (num_local_experts 0, interleave_moe_layer_step 0), "
            "every layer a dense MLP of width intermediate_size_mlp 32",
            "attention_chunk_size null: every layer full (global) causal attention; NoPE at layer 3 still",
            "use_qk_norm true on RoPE layers, plain RoPE theta 500000",
            "hidden 64 = 4 heads x 16 (square q/o), Llama4ForConditionalGeneration layout with a tiny vision tower, "
            "single model.safetensors",
            "B=1, T=16, N=8",
            "Llama Guard 4's chat template, and the prompts it renders for three conversations (guard_prompts)",
        ],
        variants={"qk_norm": no_qk_norm}, post_save=guard_post_save)


# --------------------------------------------------------------------------------------------

def main(argv):
    parts = argv or ["tokenizer", "scout", "maverick", "scout_bf16", "guard"]
    if "tokenizer" in parts or not os.path.exists(os.path.join(TOK_DIR, "tokenizer.json")):
        make_tokenizer()
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    makers = {"scout": make_scout, "maverick": make_maverick, "scout_bf16": make_scout_bf16, "guard": make_guard}
    for p in parts:
        if p in makers:
            makers[p]()
        elif p != "tokenizer":
            raise SystemExit(f"unknown part {p!r}; choose from tokenizer {' '.join(makers)}")


if __name__ == "__main__":
    main(sys.argv[1:])
