#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ from the repository's fixtures (tests/fixtures,
native/demo) and a few small hand-made inputs. Standard library only; run from anywhere:
`python3 fuzz/make_corpus.py`. The seeds are committed; rerun this after a fixture's format changes.

Seeds are kept small (afl-fuzz runs fastest on inputs of a few KB): safetensors seeds are re-serialised
subsets of the fixtures' tensors, or header slices; the tokenizer and chat-template seeds are the small
fixture tokenizer and its template, plus minimal hand-made ones."""

import base64
import json
import os
import shutil
import struct
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*p):
    with open(os.path.join(ROOT, *p), "rb") as f:
        return f.read()


def st_read(path):
    b = read(path)
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8 : 8 + n])
    meta = h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0] : 8 + n + v["data_offsets"][1]]) for k, v in h.items()}, meta


def st_write(tensors, meta=None):
    """tensors: [(name, dtype, shape, bytes)] -> safetensors bytes (header padded to 8 as safetensors does)."""
    h, off, data = {}, 0, b""
    if meta:
        h["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    j = json.dumps(h, separators=(",", ":")).encode()
    j += b" " * (-len(j) % 8)
    return struct.pack("<Q", len(j)) + j + data


def png(w, h, color_type, rows):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)

    # config: every fixture config.json (text-only, multimodal, vision, compressed-tensors, the demo).
    seen = set()
    for d in sorted(os.listdir(FIX)):
        for f in ("config.json", "config.published.json"):
            p = os.path.join(FIX, d, f)
            if os.path.exists(p):
                b = read(p)
                if b not in seen:
                    seen.add(b)
                    put("config", f"{d}-{f}", b)
    put("config", "demo-config.json", read("native", "demo", "config.json"))

    # safetensors: small re-serialised subsets (F32, BF16, F16, an I64 raw tensor, multimodal names), header
    # slices of real files, and a herd-quantized (q4) tensor with its metadata.
    t, _ = st_read("tests/fixtures/scout/model.safetensors")
    small = [(k, *t[k]) for k in sorted(t) if len(t[k][2]) <= 256][:6]
    put("safetensors", "scout-small.safetensors", st_write(small, {"format": "pt"}))
    t, _ = st_read("tests/fixtures/scout_bf16/model.safetensors")
    small = [(k, *t[k]) for k in sorted(t) if len(t[k][2]) <= 128][:6]
    put("safetensors", "bf16-small.safetensors", st_write(small))
    f16 = struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)
    put(
        "safetensors",
        "f16-i64.safetensors",
        st_write([("lm_head.weight", "F16", [2, 2], f16), ("ids", "I64", [2], struct.pack("<2q", 7, -1))]),
    )
    for f in ("maverick/model-00001-of-00005.safetensors", "scout_vision/model.safetensors"):
        b = read("tests", "fixtures", f)
        n = struct.unpack("<Q", b[:8])[0]
        put("safetensors", os.path.basename(os.path.dirname(f)) + "-header", b[: 8 + n])
    # q4, group 32, bf16 scales, [2, 64]: 64 bytes of values, then 2*2 scales of 2 bytes.
    q4 = bytes(range(64)) + struct.pack("<4H", 0x3F80, 0x4000, 0x3F00, 0xBF80)
    put(
        "safetensors",
        "q4.safetensors",
        st_write(
            [("model.layers.0.self_attn.q_proj.weight", "U8", [len(q4)], q4)],
            {"herd.quant.model.layers.0.self_attn.q_proj.weight": "q4;group=32;scale=bf16;axis=last;shape=2,64"},
        ),
    )

    # index: the sharded fixture's index, and a minimal one.
    put("index", "maverick.index.json", read("tests", "fixtures", "maverick", "model.safetensors.index.json"))
    put(
        "index",
        "small.index.json",
        json.dumps(
            {
                "metadata": {"total_size": 16},
                "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
            }
        ),
    )

    # compressed: the compressed-tensors config, and a pack-quantized safetensors file with one Linear and
    # the per-expert Linears of two experts (cut from the fixture).
    put("compressed", "scout_ct-config.json", read("tests", "fixtures", "scout_ct", "config.json"))
    t, meta = st_read("tests/fixtures/scout_ct/model.safetensors")
    keep = []
    for k in sorted(t):
        if k.startswith("model.layers.0.self_attn.q_proj.") or any(
            k.startswith(f"model.layers.0.feed_forward.experts.{e}.") for e in (0, 1)
        ):
            keep.append((k, *t[k]))
    put("compressed", "scout_ct-layer0.safetensors", st_write(keep, meta))

    # tokenizer: the fixture tokenizer (61 KB) and minimal hand-made ones of each model kind.
    put("tokenizer", "fixture-tokenizer.json", read("tests", "fixtures", "tokenizer", "tokenizer.json"))
    added = [
        {"id": 5, "content": "<|begin_of_text|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
        {"id": 6, "content": "<|eot|>", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True},
    ]
    bpe = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [5], "tokens": ["<|begin_of_text|>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4},
            "merges": ["a b", "Ġ ab"],
        },
    }
    put("tokenizer", "bpe-tiny.json", json.dumps(bpe))
    wl = dict(bpe)
    wl["pre_tokenizer"] = {"type": "Whitespace"}
    wl["decoder"] = None
    wl["post_processor"] = None
    wl["model"] = {"type": "WordLevel", "vocab": {"[UNK]": 0, "And": 1, "God": 2, "said": 3, ",": 4}, "unk_token": "[UNK]"}
    put("tokenizer", "wordlevel-tiny.json", json.dumps(wl))
    ug = dict(bpe)
    ug["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    ug["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    ug["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    ug["post_processor"] = None
    ug["model"] = {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
                   "vocab": [["<unk>", 0.0], ["\u2581And", -1.0], ["\u2581God", -2.0], ["a", -3.0], ["<0x41>", -4.0]]}
    put("tokenizer", "unigram-tiny.json", json.dumps(ug))

    # chat_template: the fixture's tokenizer_config.json cut to what the template needs, its template as a
    # bare file, a list of named templates, and small templates using the features templates use.
    cfg = json.loads(read("tests", "fixtures", "tokenizer", "tokenizer_config.json"))
    tpl = cfg["chat_template"]
    put("chat_template", "llama4-config.json",
        json.dumps({"bos_token": cfg["bos_token"], "eos_token": cfg["eos_token"], "chat_template": tpl}))
    put("chat_template", "llama4.jinja", tpl)
    put("chat_template", "named-config.json", json.dumps({
        "bos_token": {"content": "<s>"}, "eos_token": "</s>",
        "chat_template": [{"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"},
                          {"name": "tool_use", "template": "{{ tools | tojson }}{{ messages | length }}"}]}))
    put("chat_template", "features.jinja",
        "{%- set ns = namespace(n=0) -%}{%- for m in messages -%}{%- if m.content is string -%}{{ m.content | trim }}"
        "{%- else -%}{%- for c in m.content -%}{{ c.type }}{%- endfor -%}{%- endif -%}{%- set ns.n = ns.n + 1 -%}"
        "{%- if loop.last and add_generation_prompt %}<|header_start|>assistant{% endif -%}{%- endfor -%}"
        "{{ ns.n }}{{ strftime_now('%d %b %Y') }}{% if not tools %}{{ raise_exception('no tools') if false }}{% endif %}"
        "{{ messages[0]['content'].split(' ')[0].upper() }}{{ range(3) | list | tojson }}{{ 'x' * 3 }}")
    put("chat_template", "loop.jinja", "{% for i in range(10) %}{% for j in range(10) %}{{ i * j }}{% endfor %}{% endfor %}")

    # image: the small vision fixtures (PNG gray and RGB, JPEG, WebP, animated GIF) and tiny hand-made PNGs.
    for f in ("gray_90x130.png", "photo_200x300.png", "photo_300x200.jpg", "down_480x640.webp", "frames_120x160.gif"):
        put("image", f, read("tests", "fixtures", "vision", f))
    put("image", "rgb-2x2.png", png(2, 2, 2, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"]))
    put("image", "rgba-2x1.png", png(2, 1, 6, [b"\xff\x00\x00\x80\x00\xff\x00\x00"]))
    put("image", "gray-3x1.png", png(3, 1, 0, [b"\x00\x80\xff"]))
    # A 1x1 GIF89a.
    put("image", "tiny.gif", b"GIF89a" + bytes.fromhex(
        "0100010080" "0000" "000000ffffff" "21f9040100000000" "2c00000000010001000002024401003b"))

    # ids: input_ids files, int64 and int32.
    put("ids", "i64-1x5.safetensors", st_write([("input_ids", "I64", [1, 5], struct.pack("<5q", 200000, 1, 2, 3, 4))]))
    put("ids", "i32-2x3.safetensors", st_write([("input_ids", "I32", [2, 3], struct.pack("<6i", 1, 2, 3, 4, 5, 6))]))
    put("ids", "with-pixels.safetensors", st_write([
        ("input_ids", "I64", [1, 2], struct.pack("<2q", 7, 8)),
        ("pixel_values", "F32", [1, 2], struct.pack("<2f", 0.5, -0.5)),
    ], {"format": "pt"}))

    # request: bodies of herd serve's chat and completion endpoints, with the fields they take.
    tiny_png = base64.b64encode(png(2, 2, 2, [b"\xff\x00\x00\x00\xff\x00", b"\x00\x00\xff\xff\xff\xff"])).decode()
    put("request", "chat-minimal.json", json.dumps({"messages": [{"role": "user", "content": "Hello"}]}))
    put("request", "chat-full.json", json.dumps({
        "model": "fixture", "messages": [{"role": "developer", "content": "Be brief."},
                                         {"role": "user", "content": "Count to three"},
                                         {"role": "assistant", "content": "1 2"},
                                         {"role": "user", "content": [{"type": "text", "text": "go on"}]}],
        "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7,
        "repetition_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5, "stop": ["\n", "3"],
        "logprobs": True, "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True}, "n": 1}))
    put("request", "chat-image.json", json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + tiny_png, "detail": "auto"}},
        {"type": "text", "text": "What is this?"}]}], "max_completion_tokens": 4}))
    put("request", "completion-text.json", json.dumps({"prompt": "Once upon", "max_tokens": 5, "stop": "\n", "logprobs": 3, "echo": False}))
    put("request", "completion-ids.json", json.dumps({"prompt": [[1, 2, 3, 4]], "max_tokens": 2, "stream": False}))

    total = 0
    for d, _, fs in os.walk(OUT):
        for f in fs:
            total += os.path.getsize(os.path.join(d, f))
    print(f"fuzz/corpus: {total} bytes")


if __name__ == "__main__":
    main()
