"""A compressed-tensors `pack-quantized` checkpoint made by the compressed-tensors library itself, for
herd's reader (tests/tests/compressed.rs), from the scout_bf16 fixture.

Layout as in the public w4a16 Llama 4 conversions: every Linear quantized (symmetric int, groups of 16
along the input), the fused expert tensors split into per-expert Linears (`experts.{e}.gate_proj`,
`up_proj`, `down_proj`), the router, norms, embeddings and lm_head left in bf16. Attention and the shared
expert take int8, the routed experts int4, so both widths are covered. The scales come from the library's
`calculate_qparams` on each group's min/max, the integers and their int32 packing from its
`PackedQuantizationCompressor.compress`; config.json gets the library's own `QuantizationConfig`.

Next to it, `scout_ct_dequant` holds the same weights dequantized, in f32 (the library's
`unpack_from_int32` integers times its scales, exact in f32; its own `decompress` rounds the products to
the scales' bf16), with the fused expert tensors rebuilt: the reference herd's int4/int8 reading must
reproduce.

    python -m venv /tmp/ctenv && /tmp/ctenv/bin/pip install torch==2.15.0 compressed-tensors==0.20.1
    /tmp/ctenv/bin/python tests/tools/make_ct_fixture.py
"""

import json
import pathlib
import shutil

import torch
from compressed_tensors import __version__ as ct_version
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    QuantizationStatus,
)
from compressed_tensors.quantization.utils.helpers import calculate_qparams
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
SRC = ROOT / "scout_bf16"
OUT = ROOT / "scout_ct"
DEQ = ROOT / "scout_ct_dequant"
GROUP = 16


def args(bits):
    return QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=GROUP)


def scheme(bits, targets):
    return QuantizationScheme(targets=targets, weights=args(bits), format="pack-quantized")


def compress(w, bits):
    """A Linear weight [out, in] (bf16): the library's packed tensors and its dequantized f32 weight."""
    a = args(bits)
    out, inp = w.shape
    g = w.float().reshape(out, inp // GROUP, GROUP)
    scale, zp = calculate_qparams(g.amin(dim=-1), g.amax(dim=-1), a)
    scale = scale.to(w.dtype)
    s = scheme(bits, ["Linear"])
    packed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, s)
    q = unpack_from_int32(packed["weight_packed"], bits, torch.Size([out, inp])).float()
    deq = (q.reshape(out, inp // GROUP, GROUP) * packed["weight_scale"].float().unsqueeze(-1)).reshape(out, inp)
    # The library's own dequantization agrees up to its bf16 rounding.
    lib = PackedQuantizationCompressor.decompress(dict(packed), s)["weight"].float()
    assert torch.allclose(lib, deq, rtol=1e-2, atol=0), "unpacked integers x scales differ from decompress"
    return packed, deq


def main():
    src = load_file(SRC / "model.safetensors")
    packed_out, deq_out = {}, {}
    for name, t in sorted(src.items()):
        stem = name[: -len(".weight")] if name.endswith(".weight") else None
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            prefix = name.rsplit(".", 1)[0]  # ...feed_forward.experts
            e, k, n = t.shape
            mats = [("gate_proj", 0, n // 2), ("up_proj", n // 2, n // 2)] if "gate_up" in name else [("down_proj", 0, n)]
            fused = torch.zeros(e, k, n)
            for ex in range(e):
                for m, c0, rows in mats:
                    lin = t[ex, :, c0 : c0 + rows].t().contiguous()  # Linear [rows, k]
                    packed, deq = compress(lin, 4)
                    for key, v in packed.items():
                        packed_out[f"{prefix}.{ex}.{m}.{key}"] = v
                    fused[ex, :, c0 : c0 + rows] = deq.t()
            deq_out[name] = fused
        elif stem and t.ndim == 2 and (".self_attn." in name or ".shared_expert." in name):
            packed, deq = compress(t, 8)
            for key, v in packed.items():
                packed_out[f"{stem}.{key}"] = v
            deq_out[name] = deq
        else:
            packed_out[name] = t
            deq_out[name] = t.float()
    for d in (OUT, DEQ):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    save_file({k: v.contiguous() for k, v in packed_out.items()}, OUT / "model.safetensors", metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in deq_out.items()}, DEQ / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((SRC / "config.json").read_text())
    qc = QuantizationConfig(
        config_groups={
            "group_0": scheme(8, ["re:.*self_attn.*", "re:.*shared_expert.*"]),
            "group_1": scheme(4, ["re:.*experts\\.\\d+\\..*"]),
        },
        format="pack-quantized",
        quantization_status=QuantizationStatus.COMPRESSED,
        ignore=["lm_head", "re:.*router"],
    )
    cfg_q = dict(cfg)
    cfg_q["quantization_config"] = qc.model_dump(mode="json")
    (OUT / "config.json").write_text(json.dumps(cfg_q, indent=2) + "\n")
    (DEQ / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (OUT / "MADE_BY").write_text(f"compressed-tensors {ct_version}, torch {torch.__version__}, tests/tools/make_ct_fixture.py\n")
    print(f"wrote {OUT} and {DEQ} with compressed-tensors {ct_version}")


if __name__ == "__main__":
    main()
