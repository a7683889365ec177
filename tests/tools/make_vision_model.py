#!/usr/bin/env python3
"""The multimodal model fixture: a tiny Llama4ForConditionalGeneration with a vision tower of the real
geometry (336-px tiles of 14-px patches, 577 tokens per tile, pixel shuffle 0.5 -> 144 <|patch|> tokens),
and transformers' logits and greedy ids for a prompt holding two images.

How to run (from the repository root, CPU only, under a minute; the image files come from
make_vision_fixtures.py):

    pip install -r tests/tools/requirements.txt
    python3 tests/tools/make_vision_model.py

What it writes, in tests/fixtures/scout_vision/: config.json, model.safetensors (f32), the tokenizer files,
reference.safetensors and reference.json (what each tensor is, and the checks that make it a fair test).
A rerun rewrites byte-identical files.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import (FIX, PAD_ID, BOS_ID, TOK_DIR, clean_dir, load, patch_transformers,  # noqa: E402
                           save_checkpoint, scout_text_config, special_id, write_json)
from make_vision_fixtures import VISION_DIR  # noqa: E402

OUT = os.path.join(FIX, "scout_vision")
# Real geometry, tiny widths: hidden 64 = 4 heads x 16 (the 2-D RoPE splits each head into two halves of
# 4 rotated pairs), MLP 256 = 4 x 64 (the pixel shuffle's width, as in Scout: 5632 = 4 x 1408).
VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
              image_size=336, patch_size=14, num_channels=3, norm_eps=1e-5, hidden_act="gelu",
              pixel_shuffle_ratio=0.5, projector_input_dim=64, projector_output_dim=64, vision_output_dim=64,
              initializer_range=0.1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
# The images (make_vision_fixtures.py's files): 2x2 tiles + the global tile, then one tile.
IMAGES = ["alpha_480x640.png", "photo_200x300.png"]
TEXT = "<|image|>What is in this picture?<|image|>And in this one?"
TAIL, N = 24, 8  # logits kept for the prompt's last TAIL positions; greedy tokens


def perturb(model, seed):
    """Non-trivial layer norms and biases (a runtime that drops one fails), and the text weights as the
    other fixtures have them."""
    import torch
    from make_fixtures import perturb_weights
    perturb_weights(model, seed)
    g = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():
        for name, p in sorted(model.vision_model.named_parameters()):
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def main():
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, GenerationConfig, Llama4Config, Llama4ForConditionalGeneration
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor
    from transformers.models.llama4.processing_llama4 import Llama4Processor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    patch_transformers()
    cfg = Llama4Config(text_config=scout_text_config(), vision_config=dict(VISION),
                       boi_token_index=special_id("<|image_start|>"), eoi_token_index=special_id("<|image_end|>"),
                       image_token_index=special_id("<|patch|>"), tie_word_embeddings=False)
    proc = Llama4Processor(image_processor=Llama4ImageProcessor(), tokenizer=AutoTokenizer.from_pretrained(TOK_DIR))
    images = [Image.open(os.path.join(VISION_DIR, f)) for f in IMAGES]
    inputs = proc(text=TEXT, images=images, return_tensors="pt")
    input_ids, pixel_values = inputs["input_ids"], inputs["pixel_values"].float()
    # The pixels are those of tests/fixtures/vision/pixels.safetensors (which herd's preprocessing matches).
    stored = load_file(os.path.join(VISION_DIR, "pixels.safetensors"))
    want = torch.cat([stored["table"][stored[f].long()] for f in IMAGES])
    assert torch.equal(want, pixel_values), "pixel_values differ from pixels.safetensors"

    # The first seed whose greedy decisions all have a clear top-1/top-2 margin, so that a runtime with
    # different rounding still reproduces greedy_ids exactly.
    for seed in range(5, 60):
        torch.manual_seed(seed)
        model = Llama4ForConditionalGeneration(cfg).eval()
        perturb(model, seed)
        # Scale the projector so that image rows are as large as token embeddings (std 1): the image then
        # moves the logits clearly.
        with torch.no_grad():
            feats = model.multi_modal_projector(model.get_image_features(pixel_values=pixel_values).last_hidden_state)
            model.multi_modal_projector.linear_1.weight.mul_(1.0 / float(feats.std()))
            gen = model.generate(input_ids, pixel_values=pixel_values, attention_mask=torch.ones_like(input_ids),
                                 generation_config=GenerationConfig(do_sample=False, max_new_tokens=N,
                                                                    min_new_tokens=N, eos_token_id=None,
                                                                    pad_token_id=PAD_ID, bos_token_id=BOS_ID),
                                 output_logits=True, return_dict_in_generate=True)
        top2 = torch.stack(gen.logits, dim=1)[0].float().topk(2, dim=-1).values
        if float((top2[:, 0] - top2[:, 1]).min()) >= 0.05:
            break

    clean_dir(OUT)
    save_checkpoint(model, OUT, "float32")
    ref = load(Llama4ForConditionalGeneration, OUT, torch.float32)
    gc = GenerationConfig(do_sample=False, max_new_tokens=N, min_new_tokens=N, eos_token_id=None,
                          pad_token_id=PAD_ID, bos_token_id=BOS_ID, use_cache=True)
    ref.generation_config = gc
    with torch.no_grad():
        vis = ref.get_image_features(pixel_values=pixel_values).last_hidden_state
        features = ref.multi_modal_projector(vis.reshape(-1, vis.shape[-1]))
        logits = ref(input_ids=input_ids, pixel_values=pixel_values, use_cache=False).logits[0].float()
        out = ref.generate(input_ids, pixel_values=pixel_values, attention_mask=torch.ones_like(input_ids),
                           generation_config=gc, output_logits=True, return_dict_in_generate=True)
        greedy = out.sequences[0, input_ids.shape[1]:]
        step = torch.stack(out.logits, dim=1)[0].float()
        assert torch.equal(step.argmax(-1), greedy)
        top2 = step.topk(2, dim=-1).values
        margin = float((top2[:, 0] - top2[:, 1]).min())
        # Sensitivity: the same prompt with the images' rows left as <|patch|> embeddings, and with the
        # first image mirrored.
        plain = ref(input_ids=input_ids, use_cache=False).logits[0].float()
        mirrored = ref(input_ids=input_ids, pixel_values=pixel_values.flip(-1), use_cache=False).logits[0].float()
    t = input_ids.shape[1]
    n_patch = int((input_ids == cfg.image_token_index).sum())
    assert n_patch == features.shape[0] == 6 * 144
    save_file({"input_ids": input_ids.contiguous(), "logits_tail": logits[t - TAIL:].contiguous(),
               "greedy_ids": greedy.contiguous(), "image_features": features.contiguous()},
              os.path.join(OUT, "reference.safetensors"))
    write_json(os.path.join(OUT, "reference.json"), {
        "fixture": "scout_vision",
        "architecture": "Llama4ForConditionalGeneration",
        "dtype": "float32",
        "seed": seed,
        "seed_choice": "the first seed from 5 whose greedy top-1/top-2 margins are all at least 0.05",
        "prompt": {"text": TEXT, "images": IMAGES, "tokens": t, "patch_tokens": n_patch,
                   "tiles": int(pixel_values.shape[0]),
                   "pixel_values": "tests/fixtures/vision/pixels.safetensors: table[codes] of each image, "
                                   "concatenated (checked equal to the processor's)"},
        "covers": [
            "vision tower of the real geometry (336-px tiles, 14-px patches, 577 tokens with the class token "
            "last, 2-D RoPE, bidirectional attention, pre-LN layers with biases, exact GELU), tiny widths",
            "pixel shuffle 0.5, the adapter MLP (GELU after both layers), multi_modal_projector",
            "early fusion: the 864 <|patch|> embeddings of two images (2x2 + global, then 1 tile) replaced in order",
            "the text model of the scout fixture (chunked attention C=8 across the image, NoPE layers, MoE)",
        ],
        "vision_config": VISION,
        "tensors": {
            "input_ids": f"int64 [1,{t}], Llama4Processor(text=TEXT, images=IMAGES) with tests/fixtures/tokenizer",
            "logits_tail": f"float32 [{TAIL},2048], model(input_ids, pixel_values, use_cache=False).logits of "
                           f"the last {TAIL} positions",
            "greedy_ids": f"int64 [{N}], generate(do_sample=False, max_new_tokens={N}) with pixel_values",
            "image_features": f"float32 [{n_patch},{cfg.text_config.hidden_size}], multi_modal_projector("
                              "get_image_features(pixel_values)): the rows that replace the <|patch|> embeddings",
        },
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, "
                     "attn_implementation='eager', loaded with from_pretrained from this directory",
        "checks": {
            "image_features_std": round(float(features.std()), 4),
            "greedy_min_top1_top2_margin": round(margin, 4),
            "max_abs_logit_change_without_images": round(float((plain[t - TAIL:] - logits[t - TAIL:]).abs().max()), 4),
            "max_abs_logit_change_first_image_mirrored":
                round(float((mirrored[t - TAIL:] - logits[t - TAIL:]).abs().max()), 4),
        },
    })
    size = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"scout_vision: {t} tokens ({n_patch} patches), greedy {greedy.tolist()} margin {margin:.3f}, "
          f"{size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
