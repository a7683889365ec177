#!/usr/bin/env python3
"""A tiny random Llama 4 with a real large vocabulary, to measure what depends on the vocabulary's size
(constrained decoding's token mask) where no Llama 4 tokenizer can be fetched.

Usage: python3 tests/tools/vocab_model.py VOCAB OUT_DIR
VOCAB is one of:
- a vocabulary-only GGUF of llama.cpp's source (models/ggml-vocab-*.gguf in the llama-cpp-python sdist that
  tests/tools/bench_llamacpp.py unpacks under target/llamacpp/); the byte-level BPE ones work (llama-bpe: Llama
  3's 128,256 ids). Needs the sdist's gguf-py (found next to the GGUF).
- o200k_base.cjs, the 199,998-token byte-level BPE of the js-tiktoken npm package (`npm pack js-tiktoken`;
  dist/ranks/o200k_base.cjs): a tiktoken BPE of Llama 4's size. Its merges are recovered from the ranks, and
  Llama 4's special tokens are added after it up to Scout's 202,048 ids.
Needs torch + transformers (tests/tools/requirements.txt).

Writes OUT_DIR/tokenizer.json (the BPE, its merges, its pre-tokenizer split, the control tokens as specials),
tokenizer_config.json, and a 2-layer Llama 4 with that many embedding rows (seeded random weights).
Then, e.g.: herd bench --model OUT_DIR --json-schema tests/fixtures/schemas/nested_objects.json --gen-tokens 64
"""

import json
import os
import sys


def from_gguf(gguf):
    """The GGUF's tokens (BPE and control, by id), merges, normal-token mask and pre-tokenizer split."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(gguf)), "..", "gguf-py"))
    from gguf.gguf_reader import GGUFReader

    f = GGUFReader(gguf).fields
    strs = lambda name: [bytes(f[name].parts[i]).decode("utf-8") for i in f[name].data]
    toks, merges = strs("tokenizer.ggml.tokens"), strs("tokenizer.ggml.merges")
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
    return toks, [tuple(m.split(" ", 1)) for m in merges], [t == 1 for t in types], split


def byte_chars():
    """GPT-2's byte-level alphabet: the character that stands for each byte in a byte-level BPE's tokens."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


# Llama 4's special tokens, in its order after the BPE (the rest of its 2,048 are reserved).
LLAMA4_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                   "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>"]
SCOUT_VOCAB = 202048


def from_tiktoken(path):
    """js-tiktoken's ranks file: its tokens (by rank, as byte-level strings), the merges that rebuild each
    token from the two lower-ranked tokens it splits into (ordered by the rank they make), and Llama 4's
    specials after them up to Scout's 202,048 ids."""
    import base64
    text = open(path, encoding="utf-8").read()
    data = json.loads(text[text.index("{"):text.rindex("}") + 1])
    ranks = {}
    for line in filter(None, data["bpe_ranks"].split("\n")):
        _, offset, *toks = line.split(" ")
        for i, t in enumerate(toks):
            ranks[base64.b64decode(t)] = int(offset) + i
    assert sorted(ranks.values()) == list(range(len(ranks))), "ranks are not one run of ids"
    chars = byte_chars()
    as_str = lambda b: "".join(chars[x] for x in b)
    by_rank = sorted(ranks, key=ranks.get)
    merges = []
    for tok in by_rank:
        if len(tok) < 2:
            continue
        r = ranks[tok]
        splits = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        for a, b in sorted(splits, key=lambda ab: (ranks[ab[0]], ranks[ab[1]])):
            if ranks[a] < r and ranks[b] < r:
                merges.append((r, ranks[a], ranks[b], as_str(a), as_str(b)))
    merges.sort()
    toks = [as_str(b) for b in by_rank]
    n = SCOUT_VOCAB - len(toks)
    specials = LLAMA4_SPECIALS + [f"<|reserved_special_token_{i}|>" for i in range(n - len(LLAMA4_SPECIALS))]
    return (toks + specials, [(m[3], m[4]) for m in merges], [True] * len(by_rank) + [False] * n,
            data["pat_str"])


def main(source, out):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    toks, merges, normal, split = from_gguf(source) if source.endswith(".gguf") else from_tiktoken(source)
    types = [1 if n else 3 for n in normal]
    vocab = {t: i for i, t in enumerate(toks) if types[i] == 1}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for i, t in enumerate(toks) if types[i] != 1])
    specials = [t for i, t in enumerate(toks) if types[i] != 1]
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    bos = next((t for t in specials if "begin_of_text" in t), specials[0])
    eos = next((t for t in specials if t in ("<|eot_id|>", "<|eot|>", "<|end_of_text|>")), specials[-1])
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
