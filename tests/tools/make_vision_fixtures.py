#!/usr/bin/env python3
"""Image fixtures for herd's vision path, produced with transformers' Llama4ImageProcessor and Llama4Processor.

How to run (from the repository root, CPU only, about a minute):

    pip install -r tests/tools/requirements.txt     # torchvision 0.29.2 and pillow 13.0.0 among them
    python3 tests/tools/make_vision_fixtures.py     # both parts; or name them: layout pixels

A rerun rewrites byte-identical files (checked). What it writes, in tests/fixtures/vision/:

layout.json         Llama4ImageProcessor's canvas, resized size, grid and tile count for 234 image sizes x 6
                    settings (its resize recorded, not run), and Llama4Processor's <|image|> expansion for 6
                    images with the tokenizer fixture.
*.png *.webp *.jpg *.gif
                    seeded pictures: PNG RGB / RGBA / grayscale, lossless WebP, JPEG, a 3-frame GIF.
pixels.safetensors  their pixel_values, one byte per value indexing `table` (the processor's own output for
pixels.json         each 8-bit level); pixels.json says which file, frame and setting each entry is.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ROOT, TOK_DIR, special_id, write_json  # noqa: E402

VISION_DIR = os.path.join(ROOT, "tests", "fixtures", "vision")


def layout_sizes():
    """Image sizes (height, width) for the layout sweep: the spec's examples, tile edges, extreme aspect
    ratios, and seeded random sizes."""
    import random
    sizes = [(1000, 700), (480, 640), (200, 300), (768, 1024), (2000, 3000), (1, 1), (336, 336), (335, 336),
             (337, 336), (336, 337), (672, 672), (673, 672), (1, 5000), (5000, 1), (10, 4000), (4000, 10),
             (336, 5376), (5376, 336), (1344, 1344), (1345, 1344), (100, 3000), (3000, 100), (504, 1512),
             (1512, 504), (999, 1001), (4032, 3024), (3024, 4032), (1080, 1920), (1920, 1080), (64, 64)]
    # sides in simple ratios, where the reference's f32/f64 mix decides a floor
    sizes += [(3 * k, 4 * k) for k in (40, 100, 120, 150, 160, 200, 250, 256, 320, 400)]
    sizes += [(4 * k, 3 * k) for k in (40, 100, 120, 150, 160, 200, 250, 256, 320, 400)]
    sizes += [(9 * k, 16 * k) for k in (20, 40, 45, 60, 80, 120)] + [(16 * k, 9 * k) for k in (20, 40, 45, 60, 80, 120)]
    sizes += [(2 * k, 3 * k) for k in (50, 100, 112, 150, 168, 300)] + [(3 * k, 2 * k) for k in (50, 100, 112, 150, 168, 300)]
    rng = random.Random(12)
    sizes += [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(120)]
    sizes += [(rng.randint(1, 400), rng.randint(1, 400)) for _ in range(40)]
    return sizes


def make_vision_layout():
    """tests/fixtures/vision/layout.json: for each size and processor setting, what Llama4ImageProcessor
    does (its own _preprocess, with resize recorded instead of run), and for a few real images the ids
    Llama4Processor expands `<|image|>` into."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoTokenizer
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor
    from transformers.models.llama4.processing_llama4 import Llama4Processor

    settings = [{"max_patches": 16, "resize_to_max_canvas": False}, {"max_patches": 16, "resize_to_max_canvas": True},
                {"max_patches": 4, "resize_to_max_canvas": False}, {"max_patches": 9, "resize_to_max_canvas": False},
                {"max_patches": 1, "resize_to_max_canvas": False}, {"max_patches": 2, "resize_to_max_canvas": True}]
    cases = []
    for st in settings:
        proc = Llama4ImageProcessor(max_patches=st["max_patches"], resize_to_max_canvas=st["resize_to_max_canvas"])
        calls = []

        def fake_resize(images, size, resample=None, _calls=calls, **kw):
            _calls.append((int(size.height), int(size.width)))
            return torch.zeros(images.shape[:-2] + (size.height, size.width), dtype=images.dtype)

        proc.resize = fake_resize
        for h, w in layout_sizes():
            calls.clear()
            out = proc(torch.zeros((3, h, w), dtype=torch.uint8), return_tensors="pt")
            ratio = out["aspect_ratios"][0].tolist()
            tiles = out["pixel_values"].shape[0]
            cases.append({"height": h, "width": w, **st, "resized": list(calls[0]),
                          "canvas": [ratio[0] * 336, ratio[1] * 336], "grid": ratio, "tiles": tiles})
    hf = AutoTokenizer.from_pretrained(TOK_DIR)
    full = Llama4Processor(image_processor=Llama4ImageProcessor(), tokenizer=hf)
    prompts = []
    g = np.random.RandomState(3)
    for h, w in [(200, 300), (336, 700), (480, 640), (700, 336), (1000, 700), (500, 1200)]:
        img = Image.fromarray((g.rand(h, w, 3) * 255).astype("uint8"))
        out = full(text="<|image|>", images=[img], return_tensors="pt")
        grid = full.image_processor(img, return_tensors="pt")["aspect_ratios"][0].tolist()
        prompts.append({"height": h, "width": w, "grid": grid,
                        "tiles": int(out["pixel_values"].shape[0]), "ids": out["input_ids"][0].tolist()})
    os.makedirs(VISION_DIR, exist_ok=True)
    write_json(os.path.join(VISION_DIR, "layout.json"), {
        "about": "Llama4ImageProcessor (transformers %s, torchvision %s) on images of each size: resized = the "
                 "size its resize was asked for first (the image inside the canvas), canvas = grid x 336, "
                 "tiles = pixel_values rows (global tile included). prompts: Llama4Processor(text='<|image|>', "
                 "images=[a random RGB image]) input_ids with tests/fixtures/tokenizer (BOS first, then the image)."
                 % (__import__("transformers").__version__, __import__("torchvision").__version__),
        "special_tokens": {t: special_id(t) for t in ("<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>",
                                                      "<|tile_x_separator|>", "<|tile_y_separator|>")},
        "cases": cases,
        "prompts": prompts,
    }, indent=None)
    print(f"vision layout: {len(cases)} cases, {len(prompts)} prompts")


def draw_image(h, w, seed, mode="RGB"):
    """A seeded picture with smooth gradients, hard edges and fine detail (not noise: JPEG keeps it small)."""
    import numpy as np
    from PIL import Image, ImageDraw
    g = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([127 + 120 * np.sin(x / (7 + 5 * g.rand()) + g.rand() * 6),
                    127 + 120 * np.cos(y / (9 + 7 * g.rand()) + g.rand() * 6),
                    255 * (x + y) / (w + h)], axis=-1)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(g.randint(0, w)), int(g.randint(0, h))
        x1, y1 = x0 + int(g.randint(1, max(2, w // 2))), y0 + int(g.randint(1, max(2, h // 2)))
        d.ellipse([x0, y0, x1, y1], fill=tuple(int(c) for c in g.randint(0, 256, 3)))
    for i in range(0, w, 9):
        d.line([(i, 0), (i, h // 8)], fill=(255, 255, 255) if (i // 9) % 2 else (0, 0, 0))
    if mode == "RGBA":
        a = np.clip(255 * (0.15 + x / w) * (0.5 + 0.5 * np.cos(y / 13)), 0, 255).astype(np.uint8)
        img = Image.fromarray(np.dstack([np.array(img), a]), "RGBA")
    elif mode == "L":
        img = img.convert("L")
    return img


# (file name, height, width, mode, max_patches, exact): exact = lossless, decoded the same by any decoder
VISION_IMAGES = [
    ("photo_200x300.png", 200, 300, "RGB", 16, True),       # 1 tile, upscaled to 224x336
    ("alpha_480x640.png", 480, 640, "RGBA", 16, True),      # alpha over white, 2x2 + global (downscaled)
    ("gray_90x130.png", 90, 130, "L", 16, True),            # grayscale to RGB, 1 tile, upscaled
    ("down_480x640.webp", 480, 640, "RGB", 1, True),        # lossless WebP; one tile at most: downscaled
    ("photo_300x200.jpg", 300, 200, "RGB", 16, False),      # JPEG: decoders differ by a level or two
    ("frames_120x160.gif", 120, 160, "P", 16, True),        # an animated GIF of 3 frames, each an image
]


def make_vision_pixels():
    """tests/fixtures/vision/*: real image files and what Llama4ImageProcessor makes of each, stored as
    one byte per value: `codes` [tiles, 3, 336, 336] u8 index into `table` [256] f32, the processor's own
    output for the 256 possible levels (so every stored value is one the reference produced)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers.models.llama4.image_processing_llama4 import Llama4ImageProcessor

    os.makedirs(VISION_DIR, exist_ok=True)
    g = 0
    for name, h, w, mode, _, _ in VISION_IMAGES:
        path = os.path.join(VISION_DIR, name)
        if name.endswith(".gif"):
            frames = [draw_image(h, w, 40 + i).convert("P", palette=Image.ADAPTIVE, colors=64) for i in range(3)]
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
        else:
            img = draw_image(h, w, 30 + g, mode)
            kw = {"lossless": True} if name.endswith(".webp") else {"quality": 90} if name.endswith(".jpg") else {}
            img.save(path, **kw)
        g += 1
    # the reference's normalisation of each level: one 336x336 image of a single value, 1 tile, no resize
    table = torch.zeros(256)
    proc1 = Llama4ImageProcessor()
    for v in range(256):
        img = Image.fromarray(np.full((336, 336, 3), v, dtype=np.uint8), "RGB")
        table[v] = proc1(img, return_tensors="pt")["pixel_values"][0, 0, 0, 0].float()
    assert float(table[0]) == -1.0 and float(table[255]) == 1.0
    tensors, about = {"table": table}, []
    for name, h, w, mode, max_patches, exact in VISION_IMAGES:
        proc = Llama4ImageProcessor(max_patches=max_patches)
        with Image.open(os.path.join(VISION_DIR, name)) as im:
            frames = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                frames.append(im.copy())
        for i, fr in enumerate(frames):
            out = proc(fr, return_tensors="pt")
            pv = out["pixel_values"].float()
            # each value's level: the first level whose normalised value equals it
            codes = torch.searchsorted(table.contiguous(), pv.reshape(-1).contiguous()).clamp(max=255)
            assert torch.equal(table[codes], pv.reshape(-1)), name
            key = name if len(frames) == 1 else f"{name}#{i}"
            tensors[key] = codes.to(torch.uint8).reshape(pv.shape).contiguous()
            about.append({"file": name, "frame": i, "height": h, "width": w, "mode": mode, "max_patches": max_patches,
                          "exact": exact, "tiles": int(pv.shape[0]), "grid": out["aspect_ratios"][0].tolist()})
    save_file(tensors, os.path.join(VISION_DIR, "pixels.safetensors"))
    write_json(os.path.join(VISION_DIR, "pixels.json"), {
        "about": "Llama4ImageProcessor(max_patches=...) on each file (each frame of the GIF as its own image; PIL "
                 "decodes). pixels.safetensors: table f32 [256] = the processor's output for a uniform image of "
                 "each level; for each file (GIF frames as FILE#i) u8 codes [tiles, 3, 336, 336]: "
                 "pixel_values = table[codes] exactly. exact = lossless file (any decoder gives the same pixels).",
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__, "torchvision_version": __import__("torchvision").__version__,
        "pillow_version": Image.__version__,
        "images": about,
    })
    size = os.path.getsize(os.path.join(VISION_DIR, "pixels.safetensors"))
    print(f"vision pixels: {len(about)} images, {sum(a['tiles'] for a in about)} tiles, {size / 1e6:.1f} MB")


def main(argv):
    import warnings
    warnings.filterwarnings("ignore")
    makers = {"layout": make_vision_layout, "pixels": make_vision_pixels}
    for p in argv or list(makers):
        if p not in makers:
            raise SystemExit(f"unknown part {p!r}; choose from {' '.join(makers)}")
        makers[p]()


if __name__ == "__main__":
    main(sys.argv[1:])
