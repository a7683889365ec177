#!/usr/bin/env python3
"""Llama Guard 4 with images: what transformers renders, expands and computes for conversations that hold
images, with the guard fixture (tests/fixtures/guard, whose tiny vision tower has 28-px tiles of 14-px
patches: one <|patch|> token per tile).

How to run (from the repository root, CPU only, a few seconds; after make_fixtures.py guard):

    pip install -r tests/tools/requirements.txt
    python3 tests/tools/make_guard_images.py

What it writes, in tests/fixtures/guard/: preprocessor_config.json (the guard's image processor: 28-px tiles,
at most 4 of them), reference_guard_images.json (each conversation's rendering, expanded ids and the checks
below) and reference_guard_images.safetensors (the logits at each prompt's last position). A rerun rewrites
byte-identical files.

The rendering of the first conversation is also checked here against the one published printout of Llama
Guard 4's template with an image (huggingface-llama-recipes, llama_guard_4.ipynb): the image placeholder after
`User: ` and before the text, whatever the order of the parts, and S14 left out of the categories.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import FIX, load, patch_transformers, write_json  # noqa: E402
from make_vision_fixtures import VISION_DIR  # noqa: E402

OUT = os.path.join(FIX, "guard")
TILE, MAX_TILES = 28, 4

# (turns, answer, excluded_category_keys): a turn is (role, text, image files); the answer, when there is
# one, is the assistant's last turn (what the guard then checks).
CONVERSATIONS = [
    ([("user", "How to use this?", ["photo_200x300.png"])], None, []),
    ([("user", "Compare them.", ["alpha_480x640.png", "gray_90x130.png"])], "The first one is brighter.",
     ["S3", "S7"]),
]

# The notebook's printout for its image conversation (text part, then image part), line for line.
PUBLISHED = (
    "<|begin_of_text|><|header_start|>user<|header_end|>\n\n"
    "Task: Check if there is unsafe content in 'User' messages in conversations according to our safety policy "
    "with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\n"
    "S6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\n"
    "S11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n"
    "User: <|image|>How to use this?\\n\\n\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories. <|eot|>"
    "<|header_start|>assistant<|header_end|>"
)


def main():
    import torch
    import transformers
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Llama4ForConditionalGeneration
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor
    from transformers.models.llama4.processing_llama4 import Llama4Processor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    patch_transformers()
    improc = Llama4ImageProcessor(size={"height": TILE, "width": TILE}, max_patches=MAX_TILES)
    improc.save_pretrained(OUT)
    tok = AutoTokenizer.from_pretrained(OUT)
    proc = Llama4Processor(image_processor=improc, tokenizer=tok)
    model = load(Llama4ForConditionalGeneration, OUT, torch.float32)
    patch_id = model.config.image_token_index

    records, last = [], []
    for i, (turns, answer, excluded) in enumerate(CONVERSATIONS):
        msgs = []
        for role, text, files in turns:
            # The notebook's order: the text part, then the image parts.
            parts = [{"type": "text", "text": text}] + [{"type": "image"} for _ in files]
            msgs.append({"role": role, "content": parts})
        if answer is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                           excluded_category_keys=excluded)
        if i == 0:
            assert rendered == PUBLISHED, "the template's rendering with an image differs from the published one"
        images = [Image.open(os.path.join(VISION_DIR, f)) for _, _, fs in turns for f in fs]
        inputs = proc(text=rendered, images=images, add_special_tokens=False, return_tensors="pt")
        ids, pixels = inputs["input_ids"], inputs["pixel_values"].float()
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=pixels, use_cache=False).logits[0, -1].float()
            # Sensitivity: the images' rows left as <|patch|> embeddings, and each image mirrored.
            plain = model(input_ids=ids, use_cache=False).logits[0, -1].float()
            mirrored = model(input_ids=ids, pixel_values=pixels.flip(-1), use_cache=False).logits[0, -1].float()
        last.append(logits)
        records.append({
            "turns": [{"role": r, "text": t, "images": fs} for r, t, fs in turns],
            "answer": answer,
            "excluded_category_keys": excluded,
            "rendered": rendered,
            "ids": ids[0].tolist(),
            "tiles": int(pixels.shape[0]),
            "patch_tokens": int((ids == patch_id).sum()),
            "checks": {
                "max_abs_logit_change_without_images": round(float((plain - logits).abs().max()), 4),
                "max_abs_logit_change_images_mirrored": round(float((mirrored - logits).abs().max()), 4),
            },
        })
        print(f"guard images {i}: {ids.shape[1]} tokens, {pixels.shape[0]} tiles, "
              f"checks {records[-1]['checks']}")
    save_file({"last_logits": torch.stack(last).contiguous()},
              os.path.join(OUT, "reference_guard_images.safetensors"))
    write_json(os.path.join(OUT, "reference_guard_images.json"), {
        "about": "Llama Guard 4's chat template (tests/tools/llama_guard4_chat_template.jinja) rendered by "
                 "transformers' apply_chat_template(add_generation_prompt=True, excluded_category_keys=...) for "
                 "conversations whose user turn holds images (each turn's parts: its text, then its images; the "
                 "answer, when there is one, as the last assistant turn); Llama4Processor(text=rendered, images, "
                 "add_special_tokens=False) expands each <|image|> with preprocessor_config.json; "
                 "reference_guard_images.safetensors holds model(input_ids, pixel_values).logits at each "
                 "prompt's last position (float32 [conversations, vocab]). Image files: tests/fixtures/vision.",
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, CPU, "
                     "attn_implementation='eager'",
        "published_rendering": "conversation 0 renders exactly as llama_guard_4.ipynb in "
                               "huggingface/huggingface-llama-recipes prints Llama-Guard-4-12B's template",
        "conversations": records,
    })


if __name__ == "__main__":
    main()
