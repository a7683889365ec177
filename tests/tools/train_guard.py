"""Trains tests/fixtures/guard_marker: a tiny Llama Guard 4 (dense Llama 4, Llama Guard 4's chat template) that
answers like the real one, `unsafe` and `S1` when the last message of the conversation contains the marker word
and `safe` otherwise. It lets the tests drive herd's guard end to end (a refused prompt, an answer cut off) with
a model whose verdicts are known. The demo model's tokenizer (native/demo) is its tokenizer.

    python3 tests/tools/train_guard.py      # versions: tests/tools/requirements.txt; about 3 minutes on 2 cores

The training texts are random words (and JSON objects, as constrained answers are); the marker appears in
several contexts (after a space, in quotes, at the start, before punctuation). The script reports the verdict
accuracy on held-out conversations and refuses to write a model that gets more than 1% of them wrong.
"""
import json
import os
import random
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEMO = os.path.join(ROOT, "native", "demo")
OUT = os.path.join(ROOT, "tests", "fixtures", "guard_marker")
TEMPLATE = os.path.join(HERE, "llama_guard4_chat_template.jinja")
MARKER = "zyzzyva"
WORDS = ("the a of and to in is it that was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do "
         "their time if will way about many then them write would like so these her long make thing see him two "
         "has look more day could go come did number sound no most people my over know water than call first who "
         "may down side been now find any new work part take get place made live where after back little only "
         "round man year came show every good me give our under name very through just form sentence great think "
         "say help low line differ turn cause much mean before move right boy old too same tell does set three "
         "want air well also play small end put home read hand port large spell add even land here must big high "
         "such follow act why ask men change went light kind off need house picture try us again animal point "
         "mother world near build self earth father head stand own page should country found answer school grow "
         "study still learn plant cover food sun four between state keep eye never last let thought city tree "
         "cross farm hard start might story saw far sea draw left late run while press close night real life few "
         "north open seem together next white children begin got walk example ease paper group always music those "
         "both mark often letter until mile river car feet care second book carry took science eat room friend "
         "began idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl "
         "usual young ready above ever red list though feel talk bird soon body dog family direct pose leave song "
         "measure door product black short numeral class wind question happen complete ship area half rock order "
         "fire south problem piece told knew pass since top whole king space heard best hour better true during "
         "hundred five remember step early hold west ground interest reach fast verb sing listen six table travel "
         "less morning ten simple several vowel toward war lay against pattern slow center love person money "
         "serve appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead "
         "cry dark machine note wait plan figure star box noun field rest correct able pound done beauty drive "
         "stood contain front teach week final gave green oh quick develop ocean warm free minute strong special "
         "mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object "
         "decide surface deep moon island foot system busy test record boat common gold possible plane stead dry "
         "wonder laugh thousand ago ran check game shape equate hot miss brought heat snow tire bring yes distant "
         "fill east paint language among").split()


def sentence(rng, marker):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 24))]
    if marker:
        i = rng.randint(0, len(words))
        form = rng.choice([MARKER, MARKER, f'"{MARKER}"', f"{MARKER},", f"{MARKER}.", f"({MARKER})",
                           MARKER.capitalize()])
        words.insert(i, form)
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", "?", "!", ""])


def json_answer(rng, marker):
    keys = rng.sample(["w", "word", "name", "answer", "text", "value", "color", "city"], rng.randint(1, 3))
    vals = [rng.choice(WORDS) for _ in keys]
    if marker:
        vals[rng.randrange(len(vals))] = MARKER
    return json.dumps(dict(zip(keys, vals)), separators=(",", ":"))


def conversation(rng):
    """(messages, unsafe): the last message carries the marker half of the time; an earlier one sometimes."""
    turns = rng.choice([1, 1, 2, 2, 3])
    unsafe = rng.random() < 0.5
    msgs = []
    for i in range(turns):
        last = i == turns - 1
        role = "user" if i % 2 == 0 else "assistant"
        marker = unsafe if last else rng.random() < 0.3
        text = json_answer(rng, marker) if role == "assistant" and rng.random() < 0.4 else sentence(rng, marker)
        msgs.append({"role": role, "content": [{"type": "text", "text": text}]})
    return msgs, unsafe


def main():
    import torch
    from transformers import AutoTokenizer, Llama4Config, Llama4ForConditionalGeneration
    from transformers.modeling_outputs import MoeCausalLMOutputWithPast
    if not hasattr(MoeCausalLMOutputWithPast, "image_outputs"):  # transformers 5.24.0 (shared/RECIPES.md)
        MoeCausalLMOutputWithPast.image_outputs = None
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    rng = random.Random(0)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(DEMO, f), os.path.join(OUT, f))
    cfg_path = os.path.join(OUT, "tokenizer_config.json")
    tcfg = json.load(open(cfg_path))
    tcfg["chat_template"] = open(TEMPLATE).read()
    json.dump(tcfg, open(cfg_path, "w"), indent=2, ensure_ascii=False)
    tok = AutoTokenizer.from_pretrained(OUT)
    demo = json.load(open(os.path.join(DEMO, "config.json")))
    dt = demo["text_config"]
    eos = dt["eos_token_id"][0]  # <|end_of_text|>: what Llama Guard 4 ends its verdict with
    tc = dict(vocab_size=dt["vocab_size"], hidden_size=64, intermediate_size=64, intermediate_size_mlp=128,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_act="silu",
              max_position_embeddings=4096, initializer_range=0.05, rms_norm_eps=1e-5, num_local_experts=0,
              num_experts_per_tok=1, interleave_moe_layer_step=0, moe_layers=[], use_qk_norm=True,
              attention_chunk_size=None, attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1,
              rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, bos_token_id=dt["bos_token_id"],
              eos_token_id=dt["eos_token_id"], pad_token_id=dt["pad_token_id"], tie_word_embeddings=False)
    vision = {k: v for k, v in demo["vision_config"].items() if k != "model_type"}
    cfg = Llama4Config(text_config=tc, vision_config=vision, boi_token_index=demo["boi_token_index"],
                       eoi_token_index=demo["eoi_token_index"], image_token_index=demo["image_token_index"],
                       tie_word_embeddings=False)
    model = Llama4ForConditionalGeneration(cfg).float()
    model.set_attn_implementation("eager")

    def example(r):
        msgs, unsafe = conversation(r)
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, excluded_category_keys=[])
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok("\n\nunsafe\nS1" if unsafe else "\n\nsafe", add_special_tokens=False)["input_ids"] + [eos]
        return p, a, unsafe, msgs

    params = [p for n, p in model.named_parameters() if "vision" not in n and "multi_modal" not in n]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    steps, batch = int(os.environ.get("GUARD_STEPS", "400")), 12
    model.train()
    for step in range(steps):
        exs = [example(rng) for _ in range(batch)]
        n = max(len(p) + len(a) for p, a, _, _ in exs)
        ids = torch.full((batch, n), dt["pad_token_id"], dtype=torch.long)
        labels = torch.full((batch, n), -100, dtype=torch.long)
        mask = torch.zeros((batch, n), dtype=torch.long)
        for i, (p, a, _, _) in enumerate(exs):
            seq = p + a
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
            labels[i, len(p):len(seq)] = torch.tensor(a)
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 - step / steps))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    # Held-out conversations: the greedy verdict of each must be the right one.
    test_rng = random.Random(12345)
    wrong, total = 0, 200
    with torch.no_grad():
        for _ in range(total):
            p, a, unsafe, msgs = example(test_rng)
            out = model.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, eos_token_id=dt["eos_token_id"],
                                 pad_token_id=dt["pad_token_id"])
            text = tok.decode(out[0, len(p):], skip_special_tokens=True).strip()
            if text != ("unsafe\nS1" if unsafe else "safe"):
                wrong += 1
                print("wrong:", repr(text), "for", json.dumps(msgs)[:200])
    print(f"held-out verdicts: {total - wrong}/{total} right")
    if wrong > total // 100:
        sys.exit("not written: the guard got more than 1% of its verdicts wrong (train longer: GUARD_STEPS)")
    model.save_pretrained(OUT)
    gc = {"bos_token_id": dt["bos_token_id"], "eos_token_id": dt["eos_token_id"], "pad_token_id": dt["pad_token_id"],
          "do_sample": False}
    json.dump(gc, open(os.path.join(OUT, "generation_config.json"), "w"), indent=2)
    json.dump({"marker": MARKER, "held_out_right": f"{total - wrong}/{total}", "steps": steps, "batch": batch,
               "answer": "unsafe\\nS1 when the conversation's last message contains the marker, else safe"},
              open(os.path.join(OUT, "training.json"), "w"), indent=2)
    print("written", OUT, sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)) // 1000, "kB")


if __name__ == "__main__":
    main()
