//! The op table's bad-call rows: calls every backend must refuse, each with the one-line message of the
//! op's check in `herd_core::backend::check` (the backends run those checks, so the messages are the same
//! everywhere). A backend that runs such a call, or refuses it for another reason, fails the row.

use herd_core::backend::{AttnParams, AttnSeq, Backend, KvPages};
use herd_core::checkpoint::TensorRef;
use herd_core::kv_format::KvDtype;
use herd_core::quant::{DType, GroupAxis, Grouping, ScaleType};
use herd_core::sampling::SamplingParams;
use herd_core::Result;

/// An f32 weight of `shape` (values 0.5).
fn weight<B: Backend>(be: &B, shape: &[usize]) -> Result<B::Weight> {
    let n: usize = shape.iter().product();
    let bytes = (0..n).flat_map(|_| 0.5f32.to_le_bytes()).collect();
    be.load_weight(&TensorRef::owned("w", DType::F32, shape.to_vec(), bytes))
}

/// A bf16 weight of `shape` (values 0.5).
fn weight_bf16<B: Backend>(be: &B, shape: &[usize]) -> Result<B::Weight> {
    let n: usize = shape.iter().product();
    let bytes = (0..n).flat_map(|_| 0x3f00u16.to_le_bytes()).collect();
    be.load_weight(&TensorRef::owned("w", DType::BF16, shape.to_vec(), bytes))
}

/// Attention of 2 new rows of one sequence with 2 cached positions in 4 slots: pages 1 and 0 of 2 slots.
fn attn(n_heads: usize, n_kv_heads: usize) -> (Vec<AttnSeq>, AttnParams) {
    let seqs = vec![AttnSeq { q_start: 0, q_len: 2, pos0: 2, page_base: 0, slot_cap: 4 }];
    let p = AttnParams {
        n_heads,
        n_kv_heads,
        head_dim: 4,
        scale: 0.5,
        chunk: None,
        bidirectional: false,
        temperature: None,
    };
    (seqs, p)
}

/// The pages of [`attn`]'s sequence: 1, then 0.
const PAGES: KvPages<'static> = KvPages { table: &[1, 0], size: 2, dtype: KvDtype::F32 };

/// The messages that name `usize::MAX` (wasm32's is 32 bits: the op table runs there too).
#[cfg(target_pointer_width = "64")]
const COPY_WRAPS: &str = "copy: offset 18446744073709551615 + 2 overflows";
#[cfg(target_pointer_width = "64")]
const MATMUL_WRAPS: &str = "matmul: the size of x ([18446744073709551615, 4]) overflows";
#[cfg(target_pointer_width = "32")]
const COPY_WRAPS: &str = "copy: offset 4294967295 + 2 overflows";
#[cfg(target_pointer_width = "32")]
const MATMUL_WRAPS: &str = "matmul: the size of x ([4294967295, 4]) overflows";

/// One bad call: what it is, the message the refusal must contain, and the call.
type Case<B> = (&'static str, &'static str, Box<dyn Fn(&B) -> Result<()>>);

fn cases<B: Backend>() -> Vec<Case<B>> {
    let f = |be: &B, n: usize| be.upload(&vec![1.0; n]);
    let u = |be: &B, n: usize| be.upload_u32(&vec![0; n]);
    vec![
        (
            "add in place on itself",
            "add: acc and x must be distinct buffers",
            Box::new(move |be: &B| {
                let a = f(be, 4)?;
                be.add(&a, &a, 4)
            }),
        ),
        (
            "add of a short x",
            "add: x has 3 elements, the op needs 4",
            Box::new(move |be: &B| be.add(&f(be, 4)?, &f(be, 3)?, 4)),
        ),
        (
            "add into a u32 buffer",
            "add: acc must be an f32 buffer, got u32",
            Box::new(move |be: &B| be.add(&u(be, 4)?, &f(be, 4)?, 4)),
        ),
        (
            "silu_mul on itself",
            "silu_mul: gate and up must be distinct buffers",
            Box::new(move |be: &B| {
                let a = f(be, 4)?;
                be.silu_mul(&a, &a, 4)
            }),
        ),
        (
            "copy onto itself",
            "copy: src and dst must be distinct buffers",
            Box::new(move |be: &B| {
                let a = f(be, 8)?;
                be.copy(&a, 0, &a, 4, 4)
            }),
        ),
        (
            "copy past the end",
            "copy: dst has 4 elements, the op needs 6",
            Box::new(move |be: &B| be.copy(&f(be, 8)?, 0, &f(be, 4)?, 2, 4)),
        ),
        (
            "copy at an offset that wraps",
            COPY_WRAPS,
            Box::new(move |be: &B| be.copy(&f(be, 8)?, usize::MAX, &f(be, 4)?, 0, 2)),
        ),
        (
            "write_u32 into f32",
            "write_u32: buf must be a u32 buffer, got f32",
            Box::new(move |be: &B| be.write_u32(&f(be, 4)?, &[1, 2])),
        ),
        (
            "write_u32 past the end",
            "write_u32: buf has 2 elements, the op needs 3",
            Box::new(move |be: &B| be.write_u32(&u(be, 2)?, &[1, 2, 3])),
        ),
        (
            "embed with f32 ids",
            "embed: ids must be a u32 buffer, got f32",
            Box::new(move |be: &B| be.embed(&weight(be, &[8, 4])?, &f(be, 2)?, 2, 4, &f(be, 8)?)),
        ),
        (
            "embed with another row size",
            "embed: table has rows of 4, the op needs 5",
            Box::new(move |be: &B| be.embed(&weight(be, &[8, 4])?, &u(be, 2)?, 2, 5, &f(be, 10)?)),
        ),
        (
            "rms_norm with a short weight",
            "rms_norm: weight has shape [3], the op needs 4 elements",
            Box::new(move |be: &B| {
                let x = f(be, 8)?;
                be.rms_norm(&x, Some(&weight(be, &[3])?), 2, 4, 1e-5, &x)
            }),
        ),
        (
            "add_rms_norm into acc",
            "add_rms_norm: acc and out must be distinct buffers",
            Box::new(move |be: &B| {
                let acc = f(be, 8)?;
                be.add_rms_norm(&acc, &f(be, 8)?, &weight(be, &[4])?, 2, 4, 1e-5, &acc)
            }),
        ),
        (
            "matmul by a 3-D weight",
            "matmul: w has shape [2, 2, 2], expected 2 dimensions",
            Box::new(move |be: &B| be.matmul(&f(be, 8)?, 2, &weight(be, &[2, 2, 2])?, &f(be, 8)?)),
        ),
        (
            "matmul of a short x",
            "matmul: x has 7 elements, the op needs 8",
            Box::new(move |be: &B| be.matmul(&f(be, 7)?, 2, &weight(be, &[3, 4])?, &f(be, 6)?)),
        ),
        (
            "matmul in place",
            "matmul: x and out must be distinct buffers",
            Box::new(move |be: &B| {
                let x = f(be, 16)?;
                be.matmul(&x, 2, &weight(be, &[4, 4])?, &x)
            }),
        ),
        (
            "matmul of rows that wrap",
            MATMUL_WRAPS,
            Box::new(move |be: &B| be.matmul(&f(be, 8)?, usize::MAX, &weight(be, &[4, 4])?, &f(be, 8)?)),
        ),
        (
            "rope of an odd head",
            "rope: head_dim 3 must be even (the rotation works on pairs)",
            Box::new(move |be: &B| be.rope(&f(be, 6)?, 2, 1, 3, &u(be, 2)?, &f(be, 1)?, None)),
        ),
        (
            "rope with f32 positions",
            "rope: positions must be a u32 buffer, got f32",
            Box::new(move |be: &B| be.rope(&f(be, 8)?, 2, 1, 4, &f(be, 2)?, &f(be, 2)?, None)),
        ),
        (
            "router top-5 of 4",
            "router_topk: top-5 of 4 experts",
            Box::new(move |be: &B| be.router_topk(&f(be, 8)?, 2, 4, 5, &u(be, 10)?, &f(be, 10)?)),
        ),
        (
            "router with f32 idx",
            "router_topk: idx must be a u32 buffer, got f32",
            Box::new(move |be: &B| be.router_topk(&f(be, 8)?, 2, 4, 1, &f(be, 2)?, &f(be, 2)?)),
        ),
        (
            "gather_rows in place",
            "gather_rows: x and out must be distinct buffers",
            Box::new(move |be: &B| {
                let x = f(be, 8)?;
                be.gather_rows(&x, &u(be, 2)?, 2, 4, &x)
            }),
        ),
        (
            "gather_rows of short rows",
            "gather_rows: rows has 1 elements, the op needs 2",
            Box::new(move |be: &B| be.gather_rows(&f(be, 8)?, &u(be, 1)?, 2, 4, &f(be, 8)?)),
        ),
        (
            "layer_norm of mixed formats",
            "layer_norm: weight (f32) and bias (bf16) must be one format",
            Box::new(move |be: &B| {
                let x = f(be, 8)?;
                be.layer_norm(&x, &weight(be, &[4])?, &weight_bf16(be, &[4])?, 2, 4, 1e-5, &x)
            }),
        ),
        (
            "bias_act with a short bias",
            "bias_act: bias has shape [3], the op needs 4 elements",
            Box::new(move |be: &B| {
                be.bias_act(&f(be, 8)?, Some(&weight(be, &[3])?), 2, 4, herd_core::backend::Act::Gelu)
            }),
        ),
        (
            "matmuls of unlike inputs",
            "matmuls: the weights take inputs of 8 and 6: they must share x",
            Box::new(move |be: &B| {
                let (a, b) = (weight(be, &[4, 8])?, weight(be, &[4, 6])?);
                be.matmuls(&f(be, 16)?, 2, &[&a, &b], &[&f(be, 8)?, &f(be, 8)?])
            }),
        ),
        (
            "matmuls into one output twice",
            "matmuls: outputs 0 and 1 must be distinct buffers",
            Box::new(move |be: &B| {
                let (a, b) = (weight(be, &[4, 8])?, weight(be, &[4, 8])?);
                let o = f(be, 8)?;
                be.matmuls(&f(be, 16)?, 2, &[&a, &b], &[&o, &o])
            }),
        ),
        (
            "swiglu of unlike weights",
            "swiglu: gate_w [4, 8] and up_w [4, 6] must both be [width = 4, k]",
            Box::new(move |be: &B| {
                let (g, up) = (weight(be, &[4, 8])?, weight(be, &[4, 6])?);
                be.swiglu(&f(be, 16)?, 2, &g, &up, 4, &f(be, 8)?, &f(be, 8)?)
            }),
        ),
        (
            "swiglu into its scratch",
            "swiglu: out and scratch must be distinct buffers",
            Box::new(move |be: &B| {
                let (g, up) = (weight(be, &[4, 8])?, weight(be, &[4, 8])?);
                let o = f(be, 8)?;
                be.swiglu(&f(be, 16)?, 2, &g, &up, 4, &o, &o)
            }),
        ),
        (
            "moe of unlike expert tensors",
            "moe: gate_up [2, 4, 6] and down [2, 3, 5] do not match",
            Box::new(move |be: &B| {
                let (gu, dn) = (weight(be, &[2, 4, 6])?, weight(be, &[2, 3, 5])?);
                be.moe(&f(be, 8)?, 2, &u(be, 2)?, &f(be, 2)?, 1, &gu, &dn, &f(be, 8)?)
            }),
        ),
        (
            "moe of expert tensors grouped along their output axis",
            "moe: quantized expert tensors must be grouped along their input axis",
            Box::new(move |be: &B| {
                let g = Grouping { group: 32, scale: ScaleType::F16, axis: GroupAxis::Last };
                let q = |shape: &[usize]| {
                    let n = shape.iter().product();
                    crate::weights::weight(be, DType::Q8(g), shape, &vec![0.5; n]).map(|w| w.0)
                };
                let (gu, dn) = (q(&[2, 32, 64])?, q(&[2, 32, 32])?);
                be.moe(&f(be, 64)?, 2, &u(be, 2)?, &f(be, 2)?, 1, &gu, &dn, &f(be, 64)?)
            }),
        ),
        (
            "moe with f32 idx",
            "moe: idx must be a u32 buffer, got f32",
            Box::new(move |be: &B| {
                let (gu, dn) = (weight(be, &[2, 4, 6])?, weight(be, &[2, 3, 4])?);
                be.moe(&f(be, 8)?, 2, &f(be, 2)?, &f(be, 2)?, 1, &gu, &dn, &f(be, 8)?)
            }),
        ),
        (
            "sample of an empty vocabulary",
            "sample: the vocabulary is empty",
            Box::new(move |be: &B| {
                be.sample(&f(be, 4)?, 2, 0, &SamplingParams::default(), &[0.5, 0.5], &[&[], &[]], &u(be, 2)?)
            }),
        ),
        (
            "sample into f32",
            "sample: out must be a u32 buffer, got f32",
            Box::new(move |be: &B| {
                be.sample(&f(be, 8)?, 2, 4, &SamplingParams::default(), &[0.5, 0.5], &[&[], &[]], &f(be, 2)?)
            }),
        ),
        (
            "attention of 3 heads over 2",
            "attention: 3 heads over 2 kv heads of dim 4",
            Box::new(move |be: &B| {
                let (seqs, p) = attn(3, 2);
                be.attention(
                    &f(be, 24)?,
                    &f(be, 16)?,
                    &f(be, 16)?,
                    &f(be, 32)?,
                    &f(be, 32)?,
                    PAGES,
                    &seqs,
                    &p,
                    &f(be, 24)?,
                )
            }),
        ),
        (
            "attention in place",
            "attention: out and q must be distinct buffers",
            Box::new(move |be: &B| {
                let (seqs, p) = attn(2, 1);
                let q = f(be, 16)?;
                be.attention(&q, &f(be, 8)?, &f(be, 8)?, &f(be, 16)?, &f(be, 16)?, PAGES, &seqs, &p, &q)
            }),
        ),
        (
            "attention over a short cache",
            "attention: page 1 lies outside the cache of 1 pages of 2 slots",
            Box::new(move |be: &B| {
                let (seqs, p) = attn(2, 1);
                be.attention(
                    &f(be, 16)?,
                    &f(be, 8)?,
                    &f(be, 8)?,
                    &f(be, 8)?,
                    &f(be, 16)?,
                    PAGES,
                    &seqs,
                    &p,
                    &f(be, 16)?,
                )
            }),
        ),
        (
            "attention past the page table",
            "attention: page table entries 0..2 lie outside the table of 1",
            Box::new(move |be: &B| {
                let (seqs, p) = attn(2, 1);
                let pages = KvPages { table: &[0], size: 2, dtype: KvDtype::F32 };
                be.attention(
                    &f(be, 16)?,
                    &f(be, 8)?,
                    &f(be, 8)?,
                    &f(be, 16)?,
                    &f(be, 16)?,
                    pages,
                    &seqs,
                    &p,
                    &f(be, 16)?,
                )
            }),
        ),
        (
            "attention over part of a page",
            "attention: a sequence's 3 cache slots are not a whole number of 2-slot pages",
            Box::new(move |be: &B| {
                let (mut seqs, p) = attn(2, 1);
                seqs[0].slot_cap = 3;
                be.attention(
                    &f(be, 16)?,
                    &f(be, 8)?,
                    &f(be, 8)?,
                    &f(be, 16)?,
                    &f(be, 16)?,
                    PAGES,
                    &seqs,
                    &p,
                    &f(be, 16)?,
                )
            }),
        ),
        (
            "kv_store into a short cache",
            "kv_store: page 1 lies outside the cache of 1 pages of 2 slots",
            Box::new(move |be: &B| {
                let (seqs, _) = attn(2, 1);
                be.kv_store(&f(be, 8)?, &f(be, 8)?, &f(be, 8)?, &f(be, 16)?, PAGES, &seqs, 1, 4)
            }),
        ),
        (
            "kv_store with pages of no slots",
            "kv_store: pages of 0 slots of 4 elements",
            Box::new(move |be: &B| {
                let (seqs, _) = attn(2, 1);
                let pages = KvPages { table: &[1, 0], size: 0, dtype: KvDtype::F32 };
                be.kv_store(&f(be, 8)?, &f(be, 8)?, &f(be, 16)?, &f(be, 16)?, pages, &seqs, 1, 4)
            }),
        ),
        (
            "kv_store with one cache for both",
            "kv_store: k_cache and v_cache must be distinct buffers",
            Box::new(move |be: &B| {
                let (seqs, _) = attn(2, 1);
                let c = f(be, 16)?;
                be.kv_store(&f(be, 8)?, &f(be, 8)?, &c, &c, PAGES, &seqs, 1, 4)
            }),
        ),
        (
            "sample with a draw of 1.5",
            "sample: draw 1.5 is outside [0, 1)",
            Box::new(move |be: &B| {
                be.sample(&f(be, 8)?, 2, 4, &SamplingParams::default(), &[0.5, 1.5], &[&[], &[]], &u(be, 2)?)
            }),
        ),
        (
            "mask_logits with a mask one word short",
            "mask_logits: mask has 3 elements, the op needs 4",
            // Two rows of 33 tokens: two words each.
            Box::new(move |be: &B| be.mask_logits(&f(be, 66)?, 2, 33, &u(be, 3)?)),
        ),
        (
            "mask_logits with an f32 mask",
            "mask_logits: mask must be a u32 buffer, got f32",
            Box::new(move |be: &B| be.mask_logits(&f(be, 64)?, 2, 32, &f(be, 2)?)),
        ),
    ]
}

/// Runs every bad call on `be`; returns the rows it got wrong (empty: every call refused as it must be).
pub fn bad_calls<B: Backend>(be: &B) -> Vec<String> {
    let mut wrong = Vec::new();
    for (what, want, call) in cases::<B>() {
        match call(be) {
            Ok(()) => wrong.push(format!("{what}: ran; it must be refused with `{want}`")),
            Err(e) if !e.to_string().contains(want) => wrong.push(format!("{what}: refused with `{e}`, not `{want}`")),
            Err(_) => {}
        }
    }
    // The step the refused calls did not record still runs: the backend is usable afterwards.
    let check = (|| {
        let (a, b) = (be.upload(&[1.0, 2.0])?, be.upload(&[3.0, 4.0])?);
        be.add(&a, &b, 2)?;
        be.read(&a)
    })();
    match check {
        Ok(v) if v == [4.0, 6.0] => {}
        other => wrong.push(format!("after the refusals, an add gave {other:?}, not [4.0, 6.0]")),
    }
    wrong
}
