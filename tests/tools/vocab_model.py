#!/usr/bin/env python3
"""A tiny random Llama 4 with a real large vocabulary, to measure what depends on the vocabulary's size
(constrained decoding's token mask) where no Llama 4 tokenizer can be fetched.

Usage: python3 tests/tools/vocab_model.py VOCAB.gguf OUT_DIR
VOCAB.gguf: one of the vocabulary-only GGUFs llama.cpp's source ships (models/ggml-vocab-*.gguf in the
llama-cpp-python sdist that tests/tools/bench_llamacpp.py unpacks under target/llamacpp/); the byte-level
BPE ones work (llama-bpe: Llama 3's 128,256 ids). Needs torch + transformers (tests/tools/requirements.txt) and
the sdist's gguf-py (found next to the GGUF).

Writes OUT_DIR/tokenizer.json (the BPE, its merges, Llama 3's pre-tokenizer split, the control tokens as
specials), tokenizer_config.json, and a 2-layer Llama 4 with that many embedding rows (seeded random weights).
Then, e.g.: herd bench --model OUT_DIR --json-schema tests/fixtures/schemas/nested_objects.json --gen-tokens 64
"""

import json
import os
import sys


def main(gguf, out):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(gguf)), "..", "gguf-py"))
    from gguf.gguf_reader import GGUFReader
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    f = GGUFReader(gguf).fields
    strs = lambda name: [bytes(f[name].parts[i]).decode("utf-8") for i in f[name].data]
    toks, merges = strs("tokenizer.ggml.tokens"), strs("tokenizer.ggml.merges")
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    vocab = {t: i for i, t in enumerate(toks) if types[i] == 1}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], ignore_merges=True))
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for i, t in enumerate(toks) if types[i] != 1])
    specials = [t for i, t in enumerate(toks) if types[i] != 1]
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    bos = next((t for t in specials if "begin_of_text" in t), specials[0])
    eos = next((t for t in specials if t in ("<|eot_id|>", "<|end_of_text|>")), specials[-1])
    with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
        json.dump({"bos_token": bos, "eos_token": eos, "tokenizer_class": "PreTrainedTokenizerFast"}, fh)

    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_transformers as bt
    cfg = bt.text_config("small")
    cfg.update(vocab_size=len(toks), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, intermediate_size=64, intermediate_size_mlp=128, bos_token_id=toks.index(bos),
               eos_token_id=toks.index(eos), pad_token_id=toks.index(eos))
    torch.manual_seed(0)
    Llama4ForCausalLM(Llama4TextConfig(**cfg)).eval().save_pretrained(out)
    print(f"{out}: {len(toks)} ids ({len(vocab)} BPE tokens, {len(specials)} specials)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
