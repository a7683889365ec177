#!/usr/bin/env python3
"""Trains herd's built-in demo model: a small Llama 4 that writes English in the style of the King James Bible.

How to run (from the repository root, CPU only, about 27 minutes on 2 cores):

    apt-get install bible-kjv bible-kjv-text      # the corpus (Debian), see below
    pip install -r tests/tools/requirements.txt
    python3 tests/tools/train_demo.py             # trains, writes native/demo + tests/fixtures/demo
    python3 tests/tools/train_demo.py --steps 20  # a quick run of the whole pipeline (not a usable model)

Corpus: the King James Version of the Bible (1611; public domain), from Debian's `bible-kjv-text` package
(version 4.38, "provided for unrestricted use"; the KJV's copyright has expired), read out with the `bible`
program of the `bible-kjv` package (`bible -l10000 Gen1:1-Rev22:21`: 31,102 verses, 4.3 MB). Each chapter
becomes a heading line ("Genesis 1"), a blank line and one verse per line, without verse numbers. Every
40th chapter is held out as the validation set.

Tokenizer: a byte-level BPE trained with the tokenizers library on the training chapters, in the exact
Llama 4 tokenizer.json layout (make_fixtures.train_bpe: the o200k pre-tokenizer regex, ignore_merges,
ByteLevel decoder, BOS prepended), VOCAB - 93 BPE tokens followed by Llama 4's 93 special tokens in Meta's
order, and tokenizer_config.json with Llama 4's chat template.

Model: Llama4ForCausalLM from transformers (the reference implementation) trained from scratch in f32,
then stored as a bf16 Llama4ForConditionalGeneration text checkpoint (the published Scout/Maverick layout,
`language_model.*` keys). It has every architectural feature herd implements: MoE layers (8 routed experts,
top-1 sigmoid routing, a shared expert) alternating with dense layers (interleave step 2, like Maverick),
chunked attention with chunk 32 on the RoPE layers and global NoPE layers every 4th layer, QK norm, llama3
RoPE scaling with a non-empty smooth band, attention temperature tuning that acts from position 31.

Training data: windows of SEQ tokens, each starting at a verse with <|begin_of_text|>; one in CHAT_EVERY is
instead a chat in the Llama 4 format (a user turn with a verse, an assistant turn with the verses that follow,
each closed by <|eot|>, repeated until the window is full), so that `herd chat` answers and stops. The loss is
the language-model loss plus a Switch-style load-balancing term on the routers (transformers' Llama 4
computes none), so that all experts are used.

Everything is seeded (--seed); torch on another CPU or thread count may round differently, so a rerun on
another machine gives a model of the same quality, not the same bytes. The script prints the validation
loss (f32 and after rounding to bf16) and writes tests/fixtures/demo/reference.{safetensors,json}: logits
(full forward, f32 from the bf16 weights) and the greedy continuation computed by transformers on the
stored model, for herd's golden test (tests/tests/golden*.rs).
"""

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (the tokenizer layout, chat template and checkpoint helpers)

ROOT = mf.ROOT
DEMO_DIR = mf.DEMO_DIR
REF_DIR = os.path.join(ROOT, "tests", "fixtures", "demo")

VOCAB = 4096          # 4003 BPE tokens + 93 specials: <|begin_of_text|> 4003, <|eot|> 4011, <|patch|> 4095
BASE = VOCAB - len(mf.SPECIALS)
SEQ = 256
BATCH = 16
CHAT_EVERY = 8
HELD_OUT_EVERY = 40   # every 40th chapter is validation
BALANCE_COEF = 0.01

TEXT_CONFIG = dict(
    vocab_size=VOCAB, hidden_size=256, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
    head_dim=32, hidden_act="silu", intermediate_size=128, intermediate_size_mlp=512, num_local_experts=8,
    num_experts_per_tok=1, interleave_moe_layer_step=2, use_qk_norm=True, attention_chunk_size=32,
    attn_temperature_tuning=True, floor_scale=32, attn_scale=0.1, max_position_embeddings=4096,
    initializer_range=0.02, rms_norm_eps=1e-5, tie_word_embeddings=False,
    # Scout's llama3 scaling rule with an original context of 256 (the training length) and factor 16: with
    # head_dim 32 and theta 500000 the pairs of wavelength 64..256 (2 of 16) are smoothed and the longer ones
    # divided by 16.
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    bos_token_id=mf.special_id("<|begin_of_text|>", BASE),
    eos_token_id=[mf.special_id(t, BASE) for t in ("<|end_of_text|>", "<|eom|>", "<|eot|>")],
    pad_token_id=mf.special_id("<|finetune_right_pad|>", BASE),
)
BOS = mf.special_id("<|begin_of_text|>", BASE)
EOT = mf.special_id("<|eot|>", BASE)
HEADER_START = mf.special_id("<|header_start|>", BASE)
HEADER_END = mf.special_id("<|header_end|>", BASE)

# The golden reference: two prompts (plain text, and a chat) of REF_T tokens, crossing a chunk boundary.
REF_PROMPTS = ["And it came to pass, when the king had heard the words of the book of the law, that he rent his "
               "clothes.\nAnd the king commanded Hilkiah the priest, and Ahikam the son of Shaphan, and Achbor the son "
               "of Michaiah, and Shaphan the scribe, and Asahiah a servant of the king's, saying,",
               None]  # None: a chat, rendered below
REF_T = 40
REF_N = 24
# What `herd run --prompt RUN_PROMPT --temperature 0 --max-tokens RUN_N` (no --model) must print.
RUN_PROMPT = "And God said"
RUN_N = 40


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------

def read_kjv():
    """[(heading, [verse, ...])] for the 1,189 chapters, in order."""
    if not shutil.which("bible"):
        raise SystemExit("error: the corpus needs Debian's bible-kjv and bible-kjv-text packages "
                         "(apt-get install bible-kjv bible-kjv-text)")
    out = subprocess.run(["bible", "-l10000", "Gen1:1-Rev22:21"], check=True, capture_output=True).stdout
    md5 = hashlib.md5(out).hexdigest()
    chapters, verses, heading = [], None, None
    for line in out.decode("utf-8").split("\n"):
        if not line.strip():
            continue
        if line.startswith("  "):
            num, text = line.strip().split(" ", 1)
            assert num.isdigit() and verses is not None, line
            verses.append(" ".join(text.split()))
        else:
            if heading is not None:
                chapters.append((heading, verses))
            heading, verses = line.strip(), []
    chapters.append((heading, verses))
    assert len(chapters) == 1189 and sum(len(v) for _, v in chapters) == 31102, (len(chapters),)
    return chapters, md5


def chapter_pieces(heading, verses):
    """A chapter's text as pieces that tokenize independently: the heading with its blank line, then each
    verse with its newline (the pre-tokenizer always splits before and after a run of newlines)."""
    return [heading + "\n\n"] + [v + "\n" for v in verses]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

class Stream:
    """The chapters' tokens end to end, and where each verse starts."""

    def __init__(self, tok, chapters):
        self.tok = tok
        self.ids, self.verse_starts, self.verses = [], [], []
        for heading, verses in chapters:
            pieces = chapter_pieces(heading, verses)
            enc = tok.encode_batch(pieces, add_special_tokens=False)
            whole = tok.encode("".join(pieces), add_special_tokens=False).ids
            flat = [i for e in enc for i in e.ids]
            assert flat == whole, f"{heading}: pieces do not tokenize like the whole chapter"
            self.ids += enc[0].ids
            for e in enc[1:]:
                self.verse_starts.append(len(self.ids))
                self.ids += e.ids
            self.verses += verses

    def window(self, rng):
        s = self.verse_starts[rng.randrange(len(self.verse_starts))]
        w = [BOS] + self.ids[s:s + SEQ - 1]
        while len(w) < SEQ:  # near the end of the stream: wrap around to Genesis
            w += self.ids[:SEQ - len(w)]
        return w

    def chat(self, rng, user_ids, assistant_ids):
        """User: a verse; assistant: the one to three verses after it; again, until SEQ tokens."""
        v = rng.randrange(len(self.verses))
        w = [BOS]
        while len(w) < SEQ:
            n = rng.randint(1, 3)
            answer = "\n".join(self.verses[(v + k) % len(self.verses)] for k in range(1, n + 1))
            q, a = self.tok.encode_batch([self.verses[v], answer], add_special_tokens=False)
            w += user_ids + q.ids + [EOT] + assistant_ids + a.ids + [EOT]
            v = (v + n + 1) % len(self.verses)
        return w[:SEQ]


def header(tok, role):
    """<|header_start|>role<|header_end|>\n\n as the chat template renders it."""
    ids = tok.encode(f"<|header_start|>{role}<|header_end|>\n\n", add_special_tokens=False).ids
    assert ids[0] == HEADER_START and HEADER_END in ids
    return ids


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def balance_loss(router_logits, n_experts):
    """Switch Transformer load balancing on each MoE layer: n_experts * sum_e f_e * p_e, with f_e the share
    of tokens whose top-1 pick is e and p_e the mean softmax probability of e."""
    import torch
    total = 0.0
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)
        picks = logits.argmax(-1)
        f = torch.bincount(picks, minlength=n_experts).float() / picks.numel()
        total = total + n_experts * (f * probs.mean(0)).sum()
    return total / max(1, len(router_logits))


def evaluate(model, val_windows):
    import torch
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val_windows), BATCH):
            x = torch.tensor(val_windows[i:i + BATCH])
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += x[:, 1:].numel()
    model.train()
    return total / count


def train(tok, train_stream, val_windows, steps, seed, log_every):
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    torch.manual_seed(seed)
    rng = random.Random(seed)
    cfg = Llama4TextConfig(**TEXT_CONFIG)
    model = Llama4ForCausalLM._from_config(cfg, attn_implementation="sdpa")
    routers = []
    for layer in model.model.layers:
        if hasattr(layer.feed_forward, "router"):
            layer.feed_forward.router.register_forward_hook(lambda m, i, o: routers.append(o[1]))
    n_params = sum(p.numel() for p in model.parameters())
    n_moe = sum(hasattr(layer.feed_forward, "router") for layer in model.model.layers)
    print(f"model: {n_params / 1e6:.2f} M parameters, {n_moe} MoE layers; "
          f"{steps} steps of {BATCH} x {SEQ} tokens", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=2e-3, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, min(60, steps // 10))

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    user, assistant = header(tok, "user"), header(tok, "assistant")
    n_experts = TEXT_CONFIG["num_local_experts"]
    model.train()
    t0 = time.time()
    for step in range(steps):
        batch = [train_stream.chat(rng, user, assistant) if rng.randrange(CHAT_EVERY) == 0
                 else train_stream.window(rng) for _ in range(BATCH)]
        x = torch.tensor(batch)
        routers.clear()
        out = model(input_ids=x, labels=x)
        bal = balance_loss(routers, n_experts)
        loss = out.loss + BALANCE_COEF * bal
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            dt = time.time() - t0
            print(f"step {step:5d}  loss {float(out.loss):.3f}  balance {float(bal):.3f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {dt:6.0f} s  {(step + 1) * BATCH * SEQ / max(dt, 1e-9):.0f} tok/s",
                  flush=True)
    elapsed = time.time() - t0
    val = evaluate(model, val_windows)
    print(f"validation loss (f32 weights): {val:.4f} nats/token after {elapsed:.0f} s", flush=True)
    stats = {"steps": steps, "batch": BATCH, "seq": SEQ, "tokens_seen": steps * BATCH * SEQ, "seed": seed,
             "seconds": round(elapsed), "threads": torch.get_num_threads(), "parameters": n_params,
             "final_train_loss": round(float(out.loss), 4), "validation_loss_f32": round(val, 4),
             "optimizer": "AdamW lr 2e-3 (60-step warmup, cosine to 10%), betas 0.9/0.95, weight decay 0.1 on "
                          "matrices, gradient clip 1.0",
             "chat_share": f"1 in {CHAT_EVERY} windows", "balance_coef": BALANCE_COEF}
    return model.eval(), stats


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

def export(model, tok):
    """Stores the trained weights as a bf16 Llama4ForConditionalGeneration text checkpoint in native/demo."""
    import torch
    from transformers import Llama4Config, Llama4ForConditionalGeneration
    mf.patch_transformers()
    cfg = Llama4Config(text_config=dict(TEXT_CONFIG), vision_config=dict(mf.TINY_VISION),
                       boi_token_index=mf.special_id("<|image_start|>", BASE),
                       eoi_token_index=mf.special_id("<|image_end|>", BASE),
                       image_token_index=mf.special_id("<|patch|>", BASE), tie_word_embeddings=False)
    with contextlib.redirect_stderr(io.StringIO()):
        full = Llama4ForConditionalGeneration(cfg)
    missing, unexpected = full.language_model.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    full = full.to(torch.bfloat16).eval()
    mf.clean_dir(DEMO_DIR)
    tok.save(os.path.join(DEMO_DIR, "tokenizer.json"), pretty=False)
    mf.write_json(os.path.join(DEMO_DIR, "tokenizer_config.json"), mf.tokenizer_config(BASE))
    gen = mf.generation_config_dict(BASE)
    from transformers import GenerationConfig
    full.generation_config = GenerationConfig(**gen)
    state = {k: v for k, v in full.state_dict().items() if k.startswith("language_model.")}
    with contextlib.redirect_stderr(io.StringIO()):
        full.save_pretrained(DEMO_DIR, state_dict=state)
    mf.write_json(os.path.join(DEMO_DIR, "generation_config.json"), gen)
    for f in os.listdir(DEMO_DIR):
        assert f in ("README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"), f
    size = os.path.getsize(os.path.join(DEMO_DIR, "model.safetensors"))
    print(f"wrote {DEMO_DIR}: model.safetensors {size / 1e6:.1f} MB", flush=True)


def reference(val_windows):
    """transformers on the stored model (bf16 weights, computed in f32): logits and greedy ids, plus the
    validation loss of the bf16 weights."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Llama4ForConditionalGeneration
    mf.patch_transformers()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        m = mf.load(Llama4ForConditionalGeneration, DEMO_DIR, torch.float32)
    hf = AutoTokenizer.from_pretrained(DEMO_DIR)
    assert len(hf) == VOCAB and hf.bos_token_id == BOS and hf.eos_token_id == EOT
    chat = hf.apply_chat_template([{"role": "user", "content": "In the beginning God created the heaven and the "
                                                               "earth.\nAnd the earth was without form, and void; and "
                                                               "darkness was upon the face of the deep."}],
                                  tokenize=False, add_generation_prompt=True)
    rows = []
    for p in REF_PROMPTS:
        ids = hf.encode(p, add_special_tokens=True) if p else hf.encode(chat, add_special_tokens=False)
        assert ids[0] == BOS and len(ids) >= REF_T, (p, len(ids))
        rows.append(ids[:REF_T] if p else ids[-REF_T:])
    # the chat row keeps its last REF_T tokens so that it ends with the assistant header; it then starts
    # mid-sentence without BOS, which is still a valid input
    input_ids = torch.tensor(rows, dtype=torch.int64)
    logits, greedy, agree, full, cache_vs_full = mf.run_reference(m, input_ids, REF_N)
    top2 = torch.topk(full, 2, dim=-1).values
    margin = float((top2[..., 0] - top2[..., 1]).min())
    os.makedirs(REF_DIR, exist_ok=True)
    save_file({"input_ids": input_ids, "logits": logits.contiguous(), "greedy_ids": greedy.contiguous()},
              os.path.join(REF_DIR, "reference.safetensors"))
    run_ids = torch.tensor([hf.encode(RUN_PROMPT, add_special_tokens=True)], dtype=torch.int64)
    _, run_greedy, _, run_full, _ = mf.run_reference(m, run_ids, RUN_N)
    run_greedy = run_greedy[0].tolist()
    eos = TEXT_CONFIG["eos_token_id"]
    stop = next((i for i, t in enumerate(run_greedy) if t in eos), len(run_greedy))
    run_top2 = torch.topk(run_full[0, :stop], 2, dim=-1).values
    run_margin = float((run_top2[:, 0] - run_top2[:, 1]).min())
    run_text = hf.decode(run_greedy[:stop], skip_special_tokens=True)
    val16 = evaluate(m, val_windows)
    texts = [hf.decode(r, skip_special_tokens=False) for r in greedy.tolist()]
    mf.write_json(os.path.join(REF_DIR, "reference.json"), {
        "fixture": "demo",
        "model": "native/demo (made with the reference by tests/tools/train_demo.py)",
        "architecture": "Llama4ForConditionalGeneration (text weights only)",
        "dtype": "bfloat16 weights; the reference is computed in float32 (from_pretrained(dtype=float32))",
        "B": len(rows), "T": REF_T, "N": REF_N, "vocab_size": VOCAB,
        "covers": ["row 0: plain text with <|begin_of_text|>; row 1: the last 40 tokens of a rendered chat "
                   "ending in the assistant header", "T=40 crosses the 32-token attention chunk",
                   "attention temperature tuning acts from position 31 (floor_scale 32)"],
        "greedy_text": texts,
        "checks": {"greedy_equals_full_forward_argmax": f"{agree}/{greedy.numel()}",
                   "cache_vs_full_max_abs": cache_vs_full, "min_top1_top2_margin": margin},
        "run": {"about": "herd run --prompt PROMPT --temperature 0 --max-tokens MAX_TOKENS on the built-in model "
                         "prints TEXT: transformers' greedy continuation of BOS + PROMPT, cut at the first stop id",
                "prompt": RUN_PROMPT, "max_tokens": RUN_N, "prompt_ids": run_ids[0].tolist(),
                "greedy_ids": run_greedy, "text": run_text, "min_top1_top2_margin": run_margin},
        "validation_loss_bf16": val16,
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
    })
    print(f"reference: greedy {agree}/{greedy.numel()} agree with the full forward, min margin {margin:.3f}, "
          f"cache vs full {cache_vs_full:.2e}", flush=True)
    for t in texts:
        print(f"  greedy: {t!r}")
    print(f"run: {RUN_PROMPT!r} -> {run_text!r} (margin {run_margin:.3f})")
    print(f"validation loss (bf16 weights, as stored): {val16:.4f} nats/token", flush=True)
    return val16, run_text


def write_model_card(stats, val16, sample):
    c = TEXT_CONFIG
    card = f"""# herd's built-in demo model

A small Llama 4 trained from scratch on the King James Bible, so that `herd run`, `herd chat` and the
browser page say something readable on a machine that has no real Llama 4 weights. It is made, from
nothing but Debian packages and PyPI, by `python3 tests/tools/train_demo.py` (see its docstring).

## Corpus

- **Text:** the King James Version of the Bible (1611), public domain (its copyright has long expired).
- **Package:** Debian's `bible-kjv-text` 4.38 (the text), read out with the `bible` program of `bible-kjv`
  4.38: `bible -l10000 Gen1:1-Rev22:21`. The package's data file is "provided for unrestricted use"
  (its copyright file); the `bible` program is GPL-2+ and only reads the text out.
- **Form:** each chapter is a heading line (`Genesis 1`), a blank line and one verse per line. Every
  {HELD_OUT_EVERY}th chapter ({stats["corpus"]["validation_chapters"]} chapters, {stats["corpus"]["validation_tokens"]} tokens) is held out
  for validation; training has {stats["corpus"]["training_chapters"]} chapters, {stats["corpus"]["training_chars"] / 1e6:.2f} M characters,
  {stats["corpus"]["training_tokens"] / 1e6:.2f} M tokens. md5 of the dump: `{stats["corpus"]["md5_of_dump"]}`.

## Model (`config.json`)

| | |
|---|---|
| layout | `Llama4ForConditionalGeneration`, text weights only (`language_model.*`), bf16 |
| parameters | {stats["parameters"] / 1e6:.2f} M (`model.safetensors`, {os.path.getsize(os.path.join(DEMO_DIR, "model.safetensors")) / 1e6:.1f} MB) |
| layers | {c["num_hidden_layers"]}: dense (MLP {c["intermediate_size_mlp"]}) and MoE alternating, MoE on the odd layers |
| MoE | {c["num_local_experts"]} routed experts of {c["intermediate_size"]} + a shared expert, top-{c["num_experts_per_tok"]} sigmoid routing |
| attention | hidden {c["hidden_size"]}, {c["num_attention_heads"]} heads x {c["head_dim"]}, {c["num_key_value_heads"]} KV heads, QK norm on the RoPE layers |
| iRoPE | chunked attention (chunk {c["attention_chunk_size"]}) with RoPE on layers 0-2 and 4-6; global NoPE attention on layers 3 and 7 |
| RoPE | theta {c["rope_parameters"]["rope_theta"]:.0f}, llama3 scaling: factor {c["rope_parameters"]["factor"]:.0f}, low/high freq factor {c["rope_parameters"]["low_freq_factor"]:.0f}/{c["rope_parameters"]["high_freq_factor"]:.0f}, original context {c["rope_parameters"]["original_max_position_embeddings"]} |
| temperature tuning | on the NoPE layers, floor_scale {c["floor_scale"]}, attn_scale {c["attn_scale"]} |
| context | trained on {SEQ}-token windows; max_position_embeddings {c["max_position_embeddings"]} |
| vocabulary | {VOCAB}: {BASE} byte-level BPE tokens, then Llama 4's 93 special tokens (`<|begin_of_text|>` = {BOS}, `<|eot|>` = {EOT}) |

The tokenizer (`tokenizer.json`) was trained with the tokenizers library on the training chapters, in
Llama 4's exact layout (o200k pre-tokenizer regex, `ignore_merges`, byte-level decoder, BOS prepended).
`tokenizer_config.json` carries Llama 4's chat template.

## Training

{stats["steps"]} steps of {stats["batch"]} x {stats["seq"]} tokens ({stats["tokens_seen"] / 1e6:.1f} M tokens seen, about
{stats["tokens_seen"] / stats["corpus"]["training_tokens"]:.1f} passes) with transformers' `Llama4ForCausalLM` in f32 on the CPU, {stats["threads"]} threads,
{stats["seconds"] / 60:.0f} minutes; seed {stats["seed"]}. {stats["optimizer"]}. {stats["chat_share"]} is a chat in the Llama 4 format
(user: a verse; assistant: the verses after it) so that `herd chat` answers and ends its turn. A
Switch-style load-balancing term (coefficient {stats["balance_coef"]}) keeps every expert in use.

**Validation loss:** {stats["validation_loss_f32"]:.3f} nats/token with the f32 weights, {val16:.3f} with the bf16 weights as stored
(perplexity {math.exp(val16):.1f}).

## Sample

transformers' greedy continuation of `{RUN_PROMPT}` (the golden test checks that herd prints the same):

> {RUN_PROMPT}{sample.replace(chr(10), chr(10) + "> ")}
"""
    with open(os.path.join(DEMO_DIR, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write(card)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--reference-only", action="store_true",
                    help="keep native/demo's weights; recompute the reference and the model card")
    args = ap.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    chapters, corpus_md5 = read_kjv()
    train_ch = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    val_ch = [c for i, c in enumerate(chapters) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    lines = [p for h, v in train_ch for p in chapter_pieces(h, v)]
    tok = mf.train_bpe([l for p in lines for l in p.split("\n")], VOCAB)
    train_stream, val_stream = Stream(tok, train_ch), Stream(tok, val_ch)
    chars = sum(len(p) for p in lines)
    print(f"corpus: {len(train_ch)} training chapters ({chars / 1e6:.2f} M chars, {len(train_stream.ids) / 1e6:.2f} M "
          f"tokens, {chars / len(train_stream.ids):.2f} chars/token), {len(val_ch)} validation chapters "
          f"({len(val_stream.ids)} tokens)", flush=True)
    corpus_stats = {"source": "bible -l10000 Gen1:1-Rev22:21 (Debian bible-kjv 4.38 + bible-kjv-text 4.38)",
                    "md5_of_dump": corpus_md5, "training_chapters": len(train_ch),
                    "validation_chapters": len(val_ch), "training_chars": chars,
                    "training_tokens": len(train_stream.ids), "validation_tokens": len(val_stream.ids)}
    # validation: the held-out chapters cut into BOS + SEQ - 1 token windows
    val_windows = [[BOS] + val_stream.ids[i:i + SEQ - 1] for i in range(0, len(val_stream.ids) - SEQ, SEQ - 1)]

    if args.reference_only:
        from tokenizers import Tokenizer
        saved = Tokenizer.from_file(os.path.join(DEMO_DIR, "tokenizer.json"))
        assert saved.to_str() == tok.to_str(), "native/demo/tokenizer.json is not the tokenizer this corpus gives"
        stats = json.load(open(os.path.join(REF_DIR, "training.json")))
    else:
        model, stats = train(tok, train_stream, val_windows, args.steps, args.seed, args.log_every)
        stats["corpus"] = corpus_stats
        export(model, tok)
        mf.write_json(os.path.join(REF_DIR, "training.json"), stats)
    val16, sample = reference(val_windows)
    write_model_card(stats, val16, sample)
    print(f"done: validation loss {stats['validation_loss_f32']:.4f} (f32) / {val16:.4f} (bf16) nats/token over "
          f"{len(val_windows)} windows")


if __name__ == "__main__":
    main(sys.argv[1:])
