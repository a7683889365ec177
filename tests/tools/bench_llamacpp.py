#!/usr/bin/env python3
"""herd's CPU backend and llama.cpp side by side: the same Scout-shaped model, prompt lengths and thread
count, the two runtimes alternated in each round, one table for BENCHMARKS.md.

Usage (from the repository root; needs a Python with torch and transformers, as tests/tools/requirements.txt
pins them, for building the model and for llama.cpp's converter):

    python3 tests/tools/bench_llamacpp.py [--rounds 3] [--repeat 5] [--threads 2]

What it does, each step skipped when its result is already there (under target/llamacpp/):
1. Builds llama.cpp's `llama-bench` and `llama-quantize` from the source the llama-cpp-python sdist vendors
   (pinned: LLAMACPP_VERSION, default 0.3.36; pip downloads it), with cmake (Release, native CPU). About 20
   minutes on 2 cores.
2. Builds the model: Scout's structure at 252M parameters (bench_transformers.py's "cpu" size: hidden 512,
   8 layers, each MoE with 16 experts of width 1024, top-1, plus a shared expert; 8 query / 2 KV heads of 64;
   vocab 32000), seeded random weights, saved by transformers; a byte-level BPE tokenizer trained on
   tests/tools/tokenizer_corpus.txt goes with it (llama.cpp's converter wants one; neither runtime's timing
   reads it).
3. herd's formats: `herd quantize` to q8g32 and q4g32. llama.cpp's: its converter (convert_hf_to_gguf.py) to
   F32 and Q8_0, and `llama-quantize` from F32 to Q4_0. The converter recognizes a tokenizer by hashing how it
   splits a test text; this model's tokenizer is new to it, so it is told to treat it as Llama 3's
   ("llama-bpe"), which only names the pre-tokenizer in the GGUF.
4. Each round, for each precision (f32/F32, q8g32/Q8_0, q4g32/Q4_0): `herd bench` then `llama-bench`, each
   in its own process, the best of --repeat runs (llama-bench: its fastest sample): pp128 (prefill of 128 tokens), tg64 (64 decode steps from
   an empty context), tg64 after a 128-token context (herd: its decode after the 128-token prompt;
   llama-bench: -d 128), tokens/s, and each process's peak resident memory (herd reports its own; llama-bench's
   from wait4). Prints one JSON line per run and a markdown table of the best of each.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.path.join(ROOT, "target", "llamacpp")
VERSION = os.environ.get("LLAMACPP_VERSION", "0.3.36")
SRC = os.path.join(WORK, f"llama_cpp_python-{VERSION}", "vendor", "llama.cpp")
BUILD = os.path.join(WORK, "build")
MODEL = os.path.join(WORK, "cpu-model")
HERD = os.path.join(ROOT, "target", "release", "herd")
FORMATS = [("f32", "F32"), ("q8g32", "Q8_0"), ("q4g32", "Q4_0")]


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, **kw)


def build_llamacpp():
    bins = [os.path.join(BUILD, "bin", b) for b in ("llama-bench", "llama-quantize")]
    if all(os.access(b, os.X_OK) for b in bins):
        return bins
    if not (shutil.which("cmake") and shutil.which("g++")):
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "cmake", "g++"], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if not os.path.isdir(SRC):
        os.makedirs(WORK, exist_ok=True)
        run([sys.executable, "-m", "pip", "download", "--no-binary", "llama-cpp-python", "--no-deps",
             f"llama-cpp-python=={VERSION}", "-d", WORK])
        run(["tar", "xzf", os.path.join(WORK, f"llama_cpp_python-{VERSION}.tar.gz"), "-C", WORK])
    # Without AMX, on x86-64: herd has no AMX kernels, so both runtimes use the vector units; and virtual
    # machines that list AMX among the processor's flags without enabling it kill llama.cpp's AMX kernels
    # (-march=native compiles them in) with SIGILL, as on the dev machine of 2026-12-05.
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" if platform.machine() in ("x86_64", "AMD64") else ""
    run(["cmake", "-S", SRC, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_OPENSSL=OFF",
         "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", f"-DCMAKE_C_FLAGS={no_amx}",
         f"-DCMAKE_CXX_FLAGS={no_amx}"], stdout=subprocess.DEVNULL)
    run(["cmake", "--build", BUILD, "--target", "llama-bench", "llama-quantize", f"-j{os.cpu_count()}"])
    return bins


def build_model():
    f32 = os.path.join(MODEL, "f32")
    sys.path.insert(0, os.path.dirname(__file__))
    import bench_transformers as bt
    if not bt.model_is_current(f32, "cpu"):
        bt.build_model("cpu", f32)
    if not os.path.isfile(os.path.join(f32, "tokenizer.json")):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=32000, special_tokens=["<pad>", "<s>", "</s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train([os.path.join(ROOT, "tests", "tools", "tokenizer_corpus.txt")], trainer)
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>") \
            .save_pretrained(f32)
    for fmt, _ in FORMATS[1:]:
        out = os.path.join(MODEL, fmt)
        if not os.path.isdir(out):
            run([HERD, "quantize", "--model", f32, "--out", out, "--format", fmt])
    return f32


CONVERT = """
import sys
sys.argv = sys.argv[1:]
sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0])
import runpy
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def build_ggufs(f32, quantize):
    ggufs = {}
    for ours, theirs in FORMATS:
        out = os.path.join(WORK, f"cpu-model-{theirs}.gguf")
        ggufs[ours] = out
        if os.path.isfile(out):
            continue
        if theirs == "Q4_0":
            run([quantize, ggufs["f32"], out, "Q4_0"], stdout=subprocess.DEVNULL)
        else:
            run([sys.executable, "-c", CONVERT, os.path.join(SRC, "convert_hf_to_gguf.py"), f32, "--outtype",
                 theirs.lower(), "--outfile", out], env=dict(os.environ, PYTHONPATH=os.path.join(SRC, "gguf-py")))
    return ggufs


def herd_bench(model, threads, repeat, prompt):
    cmd = [HERD, "bench", "--model", model, "--threads", str(threads), "--prompt-tokens", str(prompt),
           "--gen-tokens", "64", "--repeat", str(repeat), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_bench(binary, gguf, threads, repeat):
    """pp128, tg64 and tg64 at depth 128, and the process's peak RSS."""
    cmd = [binary, "-m", gguf, "-t", str(threads), "-p", "128", "-n", "64", "-d", "0,128", "-r", str(repeat),
           "-o", "json"]
    print("+", " ".join(cmd), file=sys.stderr)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"llama-bench failed (status {status})")
    got = {}
    for t in json.loads(out):
        depth = t.get("n_depth", 0)
        if t["n_prompt"] == 128 and t["n_gen"] == 0 and depth == 0:
            got["pp128"] = max(t["samples_ts"])
        elif t["n_gen"] == 64 and t["n_prompt"] == 0:
            got["tg64" if depth == 0 else "tg64_d128"] = max(t["samples_ts"])
    got["peak_rss"] = usage.ru_maxrss * 1024
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best is kept (default 5)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    bench, quantize = build_llamacpp()
    run(["cargo", "build", "--release", "--locked", "-p", "herd"], cwd=ROOT)
    f32 = build_model()
    ggufs = build_ggufs(f32, quantize)
    best = {}
    for rnd in range(1, a.rounds + 1):
        for ours, theirs in FORMATS:
            model = f32 if ours == "f32" else os.path.join(MODEL, ours)
            empty = herd_bench(model, a.threads, a.repeat, 1)
            ctx = herd_bench(model, a.threads, a.repeat, 128)
            h = {"pp128": ctx["prefill_tok_s"], "tg64": empty["decode_tok_s"], "tg64_d128": ctx["decode_tok_s"],
                 "peak_rss": max(empty["peak_rss_bytes"], ctx["peak_rss_bytes"])}
            l = llama_bench(bench, ggufs[ours], a.threads, a.repeat)
            for who, r in (("herd", h), ("llama.cpp", l)):
                print(json.dumps({"round": rnd, "runtime": who, "format": ours if who == "herd" else theirs, **r}))
                b = best.setdefault((ours, who), {})
                for key, v in r.items():
                    b[key] = min(b.get(key, v), v) if key == "peak_rss" else max(b.get(key, 0), v)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    print(f"\n{cpu}, {os.cpu_count()} CPUs, {a.threads} threads, best of {a.repeat} runs x {a.rounds} rounds, "
          f"llama.cpp from llama-cpp-python {VERSION}")
    print("\n| format (herd / llama.cpp) | runtime | pp128 tok/s | tg64 tok/s | tg64 after 128 tok/s | peak RSS MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for ours, theirs in FORMATS:
        for who in ("herd", "llama.cpp"):
            b = best[(ours, who)]
            print(f"| {ours} / {theirs} | {who} | {b['pp128']:.0f} | {b['tg64']:.1f} | {b['tg64_d128']:.1f} | "
                  f"{b['peak_rss'] / 1e6:.0f} |")
        h, l = best[(ours, "herd")], best[(ours, "llama.cpp")]
        print(f"| {ours} / {theirs} | herd / llama.cpp | {h['pp128'] / l['pp128']:.2f}x | {h['tg64'] / l['tg64']:.2f}x | "
              f"{h['tg64_d128'] / l['tg64_d128']:.2f}x | {h['peak_rss'] / l['peak_rss']:.2f}x |")


if __name__ == "__main__":
    main()
