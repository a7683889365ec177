#!/usr/bin/env python3
"""Speed of herd's CPU backend next to Hugging Face transformers, on one synthetic Llama 4 checkpoint.

Usage (from the repository root; torch + transformers as in tests/tools/requirements.txt):

    cargo build --release -p herd
    python3 tests/tools/bench_transformers.py                          # mid model, N=128, M=32, R=3
    python3 tests/tools/bench_transformers.py --prompt-tokens 128 512  # several prompt lengths, one model
    python3 tests/tools/bench_transformers.py --sizes small            # a quick run (seconds)
    python3 tests/tools/bench_transformers.py --model-dir /tmp/mid    # checkpoint kept there, reused next time
    options: --gen-tokens M, --repeat R, --threads T, --attn sdpa|eager, --herd PATH, --no-check,
             --wait-idle FRAC, --max-foreign FRAC, --retries K (interference control, see 2. below),
             --markdown FILE (also write the table there), --json FILE (raw numbers)

What it does
------------
1. Builds a seeded random Llama 4 text model (f32) and saves it with transformers' save_pretrained in the
   checkpoint layout the runtimes read: Llama4ForCausalLM, flat `llama4_text` config.json, sharded
   model-0000i-of-0000n.safetensors + index, generation_config.json.  Structure follows Llama-4-Scout:
   every layer MoE (16 routed experts, top-1 sigmoid router, plus a shared expert), QK L2 norm on the RoPE
   layers, chunked attention with chunk size 8192 on RoPE layers, NoPE (global attention, no RoPE) every
   4th layer, attention temperature tuning (floor_scale 8192, attn_scale 0.1), llama3 RoPE scaling
   (theta 500000, factor 16, low/high freq factor 1, original_max_position_embeddings 8192).
   The checkpoint is written once and reused for every prompt length (a temp dir unless --model-dir).
2. For each prompt length N, sequentially (never two measurements at once):
   a. transformers, in a fresh subprocess (so that its peak RSS is load + inference, not the model
      building): from_pretrained(dtype=float32), eval, torch.inference_mode(), torch threads = all cores.
      prefill = one forward of the N prompt ids with use_cache=True and logits_to_keep=1 (herd also
      computes logits only for the last row); decode = M greedy steps, each one forward of the last
      token through the KV cache (past_key_values), argmax on the host side of the loop, exactly as
      `herd bench` does.  One warm-up, then R timed repetitions, best of each reported.  Peak RSS =
      VmHWM of that process.
   b. `herd bench --model DIR --prompt-tokens N --gen-tokens M --repeat R --json` (same warm-up/best-of-R
      protocol, CPU backend with rayon on all cores; see native/src/bench.rs).
   The prompt is the same for both: herd bench draws it with rand 0.9's StdRng (ChaCha12) seeded with 0,
   `random_range(0..vocab)`; `herd_prompt` below reproduces that stream bit for bit (checked against
   the Rust crate), and the transformers side uses those ids.
   Before each measurement the script waits until the machine is idle (--wait-idle) and it reports the
   CPU share other processes took while each one ran, redoing a measurement (--retries, --max-foreign)
   when that share was too high: on a small box anything else running (a cargo
   build) distorts both runtimes, torch's OpenMP threads most of all.
   c. (unless --no-check) a correctness cross-check on the same ids: `herd greedy` for M tokens against
      the greedy ids transformers produced in its timed decode.  Random weights give small top-1/top-2
      margins, so a late divergence can be f32 rounding; the table reports how many of the M ids agree.
3. Prints a markdown table (N, M, prefill tok/s and decode tok/s for both, herd/transformers ratios, peak
   RSS of each process) with the torch/transformers versions, the CPU model (/proc/cpuinfo) and the
   core count.

Sizes (--sizes)
---------------
mid (default): hidden 1024, 8 layers, 8 query heads / 2 KV heads x head_dim 128, 16 experts x width 1024
    (+ a shared expert of width 1024), vocab 32000, every layer MoE.  515M parameters = 2.06 GB in f32;
    about 71M parameters active per token (attention 2.6M + one routed expert 3.1M + shared 3.1M per layer,
    plus the 32.8M lm_head).  Why this size: it keeps Scout's shape ratios (GQA 4:1, head_dim 128, 16
    experts top-1 with a shared expert, MoE in every layer) and its per-token work is dominated by the same
    ops as the real model (projections, expert FFNs, lm_head), while the whole checkpoint is big enough to
    defeat the caches (2 GB of weights, so decode is bound by memory bandwidth as with real models) yet
    small enough that both runtimes hold it at once in memory twice over on a small machine (two
    processes never overlap here anyway) and that one run (build + both runtimes, N=128 and 512,
    M=32, R=3) takes a few minutes on 2 cores.
small: hidden 256, 4 layers, 4/2 heads x 64, 16 experts x 256, vocab 8192 (about 24M parameters; a smoke
    test of the script in seconds, not a meaningful speed comparison).

Note on what transformers computes: its Llama4TextExperts runs every routed expert on every token (a
dense bmm over all 16 experts, the unselected ones with zero-scaled input), so its MoE costs 16x the
routed-expert FLOPs and weight traffic of a sparse implementation.  That is the reference implementation
as shipped; this script measures it as a user would run it.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_HERD = os.path.join(ROOT, "target", "release", "herd")

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEED = 1234
BOS, EOS, PAD = 1, 2, 0

SIZES = {
    "mid": dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, head_dim=128, intermediate_size=1024, intermediate_size_mlp=2048),
    "cpu": dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, head_dim=64, intermediate_size=1024, intermediate_size_mlp=2048),
    "small": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, intermediate_size=256, intermediate_size_mlp=512),
}


def text_config(size):
    """Scout's llama4_text settings with the dimensions of `size`."""
    d = dict(SIZES[size])
    d.update(hidden_act="silu", max_position_embeddings=262144, initializer_range=0.02, rms_norm_eps=1e-5,
             num_local_experts=16, num_experts_per_tok=1, interleave_moe_layer_step=1, use_qk_norm=True,
             attention_chunk_size=8192, no_rope_layer_interval=4, attn_temperature_tuning=True,
             floor_scale=8192, attn_scale=0.1,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192},
             bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    return d


# --------------------------------------------------------------------------------------------------
# herd bench's prompt: rand 0.9 StdRng (ChaCha12, seed_from_u64 via PCG32) + random_range(0..vocab)
# (UniformInt<u32>::sample_single_inclusive, the default "biased" Canon variant).
# --------------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


def _pcg32_seed(state):
    words = []
    for _ in range(8):  # 32-byte ChaCha key, one little-endian u32 per PCG32 step
        state = (state * 6364136223846793005 + 11634580027462260723) & _M64
        xs = (((state >> 18) ^ state) >> 27) & _M32
        rot = state >> 59
        words.append(((xs >> rot) | (xs << (32 - rot))) & _M32 if rot else xs)
    return words


def _chacha_block(key, counter, rounds=12):
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574] + key + [counter & _M32, counter >> 32, 0, 0]
    x = list(s)

    def qr(a, b, c, d):
        x[a] = (x[a] + x[b]) & _M32; x[d] ^= x[a]; x[d] = ((x[d] << 16) | (x[d] >> 16)) & _M32
        x[c] = (x[c] + x[d]) & _M32; x[b] ^= x[c]; x[b] = ((x[b] << 12) | (x[b] >> 20)) & _M32
        x[a] = (x[a] + x[b]) & _M32; x[d] ^= x[a]; x[d] = ((x[d] << 8) | (x[d] >> 24)) & _M32
        x[c] = (x[c] + x[d]) & _M32; x[b] ^= x[c]; x[b] = ((x[b] << 7) | (x[b] >> 25)) & _M32

    for _ in range(rounds // 2):
        qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)
        qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)
    return [(x[i] + s[i]) & _M32 for i in range(16)]


def herd_prompt(n, vocab, seed=0):
    """The `n` prompt ids `herd bench` uses for a model with `vocab` tokens."""
    key = _pcg32_seed(seed)
    state = {"counter": 0, "buf": []}

    def next_u32():
        if not state["buf"]:
            state["buf"] = _chacha_block(key, state["counter"])[::-1]
            state["counter"] += 1
        return state["buf"].pop()

    out = []
    for _ in range(max(n, 1)):
        p = next_u32() * vocab
        result, lo = p >> 32, p & _M32
        if lo > ((-vocab) & _M32):
            hi2 = (next_u32() * vocab) >> 32
            result += 1 if lo + hi2 > _M32 else 0
        out.append(result)
    return out


# --------------------------------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return sum(v[:3]) + sum(v[5:8]), sum(v[:8])


def _children_cpu_s():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


class ForeignLoad:
    """CPU time used by *other* processes while a measurement runs (machine busy minus this script and
    its children), as a fraction of all cores' time: other work on a 2-core box ruins the numbers."""

    def __enter__(self):
        self.b0, self.t0, self.c0 = _busy_jiffies()[0], time.time(), _children_cpu_s()
        return self

    def __exit__(self, *exc):
        hz = os.sysconf("SC_CLK_TCK")
        busy = (_busy_jiffies()[0] - self.b0) / hz
        mine = _children_cpu_s() - self.c0
        wall = time.time() - self.t0
        self.frac = max(0.0, busy - mine) / max(wall * os.cpu_count(), 1e-9)
        return False


def wait_idle(max_busy, timeout_s):
    """Waits until the whole machine is below `max_busy` CPU use over 3 s (up to `timeout_s`)."""
    t_end = time.time() + timeout_s
    while True:
        b0, a0 = _busy_jiffies()
        time.sleep(3)
        b1, a1 = _busy_jiffies()
        frac = (b1 - b0) / max(a1 - a0, 1)
        if frac <= max_busy:
            return frac
        if time.time() > t_end:
            print(f"warning: machine still {frac:.0%} busy after waiting {timeout_s} s; measuring anyway",
                  file=sys.stderr)
            return frac
        print(f"  machine {frac:.0%} busy (other processes); waiting ...", file=sys.stderr)


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------------------------------
# Model building
# --------------------------------------------------------------------------------------------------

def build_model(size, out):
    import torch
    from transformers import GenerationConfig, Llama4ForCausalLM, Llama4TextConfig

    cfg = Llama4TextConfig(**text_config(size))
    torch.manual_seed(SEED)
    t0 = time.time()
    model = Llama4ForCausalLM(cfg).eval()
    # Token embeddings ~ N(0, 1) (transformers' 0.02 would make the first layers' inputs tiny); the
    # routed-expert tensors are created with torch.zeros / torch.empty: give them the init std explicitly.
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                p.copy_(cfg.initializer_range * torch.randn(p.shape, generator=g))
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    n_params = sum(p.numel() for p in model.parameters())
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                                               do_sample=False)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model.save_pretrained(out, max_shard_size="1GB")
    with open(os.path.join(out, "bench_model.json"), "w") as f:
        json.dump({"size": size, "seed": SEED, "params": n_params, "config": text_config(size)}, f, indent=1)
    del model
    gc.collect()
    size_b = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"built {size} model: {n_params / 1e6:.1f}M params, {size_b / 1e9:.2f} GB on disk, "
          f"{time.time() - t0:.1f} s -> {out}", file=sys.stderr)
    return n_params


def model_is_current(out, size):
    try:
        with open(os.path.join(out, "bench_model.json")) as f:
            m = json.load(f)
        return m["size"] == size and m["seed"] == SEED and m["config"] == json.loads(json.dumps(text_config(size)))
    except (OSError, ValueError, KeyError):
        return False


# --------------------------------------------------------------------------------------------------
# transformers measurement (runs in a child process: `--_worker`)
# --------------------------------------------------------------------------------------------------

def worker(args):
    import torch
    import transformers
    from transformers import Llama4ForCausalLM

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = Llama4ForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32,
                                              attn_implementation=args.attn).eval()
    load_s = time.time() - t0
    vocab = model.config.vocab_size
    ids = torch.tensor([herd_prompt(args.prompt_tokens[0], vocab)], dtype=torch.long)
    n, m = ids.shape[1], args.gen_tokens

    best_prefill = best_decode = float("inf")
    greedy = []
    with torch.inference_mode():
        for rep in range(args.repeat + 1):  # rep 0 = warm-up
            t = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            prefill = time.perf_counter() - t
            cache = out.past_key_values
            toks = [int(nxt)]
            t = time.perf_counter()
            for _ in range(m):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                toks.append(int(nxt))
            decode = time.perf_counter() - t
            del cache, out
            if rep > 0:
                best_prefill, best_decode = min(best_prefill, prefill), min(best_decode, decode)
            greedy = toks[:m]
    res = {
        "prompt_tokens": n, "gen_tokens": m, "load_s": load_s,
        "prefill_tok_s": n / best_prefill, "decode_tok_s": m / best_decode if m else float("nan"),
        "prefill_s": best_prefill, "decode_s": best_decode, "peak_rss_bytes": peak_rss_bytes(),
        "threads": torch.get_num_threads(), "attn": model.config._attn_implementation,
        "torch": torch.__version__, "transformers": transformers.__version__, "greedy": greedy,
    }
    print("RESULT " + json.dumps(res))


def run_transformers(args, n):
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "--model-dir", args.model_dir,
           "--prompt-tokens", str(n), "--gen-tokens", str(args.gen_tokens), "--repeat", str(args.repeat),
           "--threads", str(args.threads), "--attn", args.attn]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.exit(f"transformers run failed (rc {p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------------------------------
# herd
# --------------------------------------------------------------------------------------------------

def measure(args, what, fn):
    """Runs one measurement on an idle machine; repeats it (up to --retries times) when other processes took
    more than --max-foreign of the CPU meanwhile, and keeps the run with the least interference."""
    best = None
    for attempt in range(args.retries + 1):
        if args.wait_idle:
            wait_idle(args.wait_idle, args.wait_timeout)
        with ForeignLoad() as fl:
            r = fn()
        r["foreign_load"] = fl.frac
        print(f"  {what}: prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.2f} tok/s, "
              f"other processes {fl.frac:.0%} of the CPU", file=sys.stderr)
        if best is None or r["foreign_load"] < best["foreign_load"]:
            best = r
        if fl.frac <= args.max_foreign:
            break
    return best


def run_herd(args, n):
    cmd = [args.herd, "bench", "--model", args.model_dir, "--prompt-tokens", str(n), "--gen-tokens",
           str(args.gen_tokens), "--repeat", str(args.repeat), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"herd bench failed (rc {p.returncode}): {' '.join(cmd)}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def herd_greedy(args, n):
    """Greedy ids from `herd greedy` on the bench prompt (the cross-check)."""
    import torch
    from safetensors.torch import load_file, save_file

    with open(os.path.join(args.model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    with tempfile.TemporaryDirectory() as td:
        inp, outp = os.path.join(td, "ids.safetensors"), os.path.join(td, "greedy.safetensors")
        save_file({"input_ids": torch.tensor([herd_prompt(n, vocab)], dtype=torch.long)}, inp)
        cmd = [args.herd, "greedy", "--model", args.model_dir, "--input", inp, "--max-tokens",
               str(args.gen_tokens), "--output", outp]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"warning: herd greedy failed: {p.stderr.strip()[-500:]}", file=sys.stderr)
            return None
        return [int(x) for x in load_file(outp)["greedy_ids"][0]]


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def mib(b):
    return f"{b / 2**20:,.0f} MiB"


def table(rows):
    head = ("| prompt tokens | gen tokens | herd prefill tok/s | transformers prefill tok/s | prefill herd/tf "
            "| herd decode tok/s | transformers decode tok/s | decode herd/tf | herd peak RSS "
            "| transformers peak RSS | greedy ids equal | other load herd / tf |")
    sep = "|" + "---:|" * 12
    lines = [head, sep]
    for r in rows:
        h, t = r["herd"], r["transformers"]
        lines.append(
            f"| {h['prompt_tokens']} | {h['gen_tokens']} | {h['prefill_tok_s']:.1f} | {t['prefill_tok_s']:.1f} "
            f"| {h['prefill_tok_s'] / t['prefill_tok_s']:.2f}x | {h['decode_tok_s']:.2f} | {t['decode_tok_s']:.2f} "
            f"| {h['decode_tok_s'] / t['decode_tok_s']:.2f}x | {mib(h['peak_rss_bytes'])} "
            f"| {mib(t['peak_rss_bytes'])} | {r.get('check', 'not run')} "
            f"| {h.get('foreign_load', 0):.0%} / {t.get('foreign_load', 0):.0%} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", choices=sorted(SIZES), default="mid", help="model size (default mid)")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[128], help="N, one or more (default 128)")
    ap.add_argument("--gen-tokens", type=int, default=32, help="M decode steps (default 32)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions after one warm-up (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention (default sdpa)")
    ap.add_argument("--herd", default=DEFAULT_HERD, help="herd binary (default target/release/herd)")
    ap.add_argument("--model-dir", help="where the checkpoint goes (reused if it matches); default a temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the temp checkpoint")
    ap.add_argument("--no-check", action="store_true", help="skip the herd greedy vs transformers cross-check")
    ap.add_argument("--wait-idle", type=float, default=0.15, metavar="FRAC",
                    help="before each measurement wait until the machine is at most FRAC busy (default 0.15; 0 = off)")
    ap.add_argument("--wait-timeout", type=float, default=900, help="seconds to wait for idle (default 900)")
    ap.add_argument("--max-foreign", type=float, default=0.05, metavar="FRAC",
                    help="redo a measurement when other processes took more than FRAC of the CPU (default 0.05)")
    ap.add_argument("--retries", type=int, default=4, help="at most this many redos per measurement (default 4)")
    ap.add_argument("--markdown", help="also write the markdown report to this file")
    ap.add_argument("--json", help="also write the raw numbers to this JSON file")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        worker(args)
        return
    if not os.access(args.herd, os.X_OK):
        sys.exit(f"{args.herd} not found: run `cargo build --release -p herd` first (or pass --herd)")
    tmp = None
    if not args.model_dir:
        tmp = tempfile.mkdtemp(prefix=f"herd-bench-{args.sizes}-")
        args.model_dir = tmp
    try:
        if model_is_current(args.model_dir, args.sizes):
            print(f"reusing {args.model_dir}", file=sys.stderr)
            with open(os.path.join(args.model_dir, "bench_model.json")) as f:
                n_params = json.load(f)["params"]
        else:
            n_params = build_model(args.sizes, args.model_dir)
        rows = []
        for n in args.prompt_tokens:
            print(f"N={n}: transformers ...", file=sys.stderr)
            t = measure(args, "transformers", lambda: run_transformers(args, n))
            print(f"N={n}: herd ...", file=sys.stderr)
            h = measure(args, "herd", lambda: run_herd(args, n))
            row = {"herd": h, "transformers": t}
            if not args.no_check:
                g = herd_greedy(args, n)
                if g is not None:
                    same = 0
                    while same < len(g) and same < len(t["greedy"]) and g[same] == t["greedy"][same]:
                        same += 1
                    row["check"] = f"{same}/{args.gen_tokens}"
                    row["herd_greedy"] = g
            rows.append(row)
        t0 = rows[0]["transformers"]
        cfg = text_config(args.sizes)
        info = [
            f"- model: synthetic Llama 4 (`{args.sizes}`), Llama4ForCausalLM, f32, {n_params / 1e6:.0f}M parameters: "
            f"hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers (all MoE: 16 experts top-1 + shared "
            f"expert, width {cfg['intermediate_size']}), {cfg['num_attention_heads']}/{cfg['num_key_value_heads']} "
            f"heads x {cfg['head_dim']}, vocab {cfg['vocab_size']}, QK norm, chunked attention C=8192, NoPE every "
            f"4th layer, llama3 RoPE scaling",
            f"- CPU: {cpu_model()}, {os.cpu_count()} cores; torch threads {t0['threads']}, herd: rayon on all cores",
            f"- torch {t0['torch']}, transformers {t0['transformers']} (attn_implementation={t0['attn']}, "
            f"torch.inference_mode, logits_to_keep=1), python {platform.python_version()}",
            f"- protocol: one warm-up + best of {args.repeat}; prefill = one forward of N prompt ids, decode = M "
            f"greedy single-token steps through the KV cache; peak RSS = VmHWM of each process "
            f"(separate processes, run one after the other); `other load` = CPU share used by other processes "
            f"during each measurement (should be ~0%)",
            f"- date: {datetime.date.today().isoformat()}",
        ]
        report = "\n".join(info) + "\n\n" + table(rows) + "\n"
        print(report)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(report)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"size": args.sizes, "params": n_params, "cpu": cpu_model(), "cores": os.cpu_count(),
                           "rows": rows}, f, indent=1)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            print(f"kept {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
