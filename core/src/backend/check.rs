//! The checks every backend makes before an op runs, written once: buffer kinds (f32 or u32), lengths
//! against the op's shape arguments, weight shapes and formats, and which buffers must be distinct. Each op's
//! method in [`Backend`] runs its check on the op's descriptor ([`super::ops`]) before the backend's `run_`
//! method sees it; a backend adds only its own limits (a kernel's largest head size, say) in `run_`. The
//! op table's bad-call rows (`tests/src/bad_calls.rs`)
//! prove that every backend refuses the same calls with the same message. Sizes are multiplied with
//! overflow checks, so a call whose sizes wrap is refused, never run.

use super::{ops, Backend};
use crate::quant::GroupAxis;

/// A check's verdict: the reason a call is refused, one line, naming the op and the argument.
pub type Verdict = std::result::Result<(), String>;

/// What the checks see of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufDesc {
    /// Elements (f32 or u32).
    pub len: usize,
    pub is_u32: bool,
}

/// A buffer argument: its name in the op's signature, and the buffer.
struct Arg<'a, B: Backend + ?Sized> {
    name: &'static str,
    buf: &'a B::Buffer,
    desc: BufDesc,
}

fn arg<'a, B: Backend + ?Sized>(be: &B, name: &'static str, buf: &'a B::Buffer) -> Arg<'a, B> {
    Arg { name, buf, desc: be.buffer_desc(buf) }
}

/// `a · b · ...`, or a refusal when it overflows.
fn product(op: &str, what: &str, dims: &[usize]) -> std::result::Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("{op}: the size of {what} ({dims:?}) overflows"))
}

/// An f32 buffer of at least `need` elements.
fn f32s<B: Backend + ?Sized>(op: &str, a: &Arg<B>, need: usize) -> Verdict {
    if a.desc.is_u32 {
        return Err(format!("{op}: {} must be an f32 buffer, got u32", a.name));
    }
    enough(op, a, need)
}

/// A u32 buffer of at least `need` elements.
fn u32s<B: Backend + ?Sized>(op: &str, a: &Arg<B>, need: usize) -> Verdict {
    if !a.desc.is_u32 {
        return Err(format!("{op}: {} must be a u32 buffer, got f32", a.name));
    }
    enough(op, a, need)
}

fn enough<B: Backend + ?Sized>(op: &str, a: &Arg<B>, need: usize) -> Verdict {
    if a.desc.len < need {
        return Err(format!("{op}: {} has {} elements, the op needs {need}", a.name, a.desc.len));
    }
    Ok(())
}

/// No two of `args` are the same buffer.
fn distinct<B: Backend + ?Sized>(op: &str, args: &[&Arg<B>]) -> Verdict {
    for (i, a) in args.iter().enumerate() {
        if let Some(b) = args[i + 1..].iter().find(|b| std::ptr::eq(a.buf, b.buf)) {
            return Err(format!("{op}: {} and {} must be distinct buffers", a.name, b.name));
        }
    }
    Ok(())
}

/// A float weight (f32, bf16, f16) of `numel` elements.
fn float_vector<B: Backend + ?Sized>(be: &B, op: &str, name: &str, w: &B::Weight, numel: usize) -> Verdict {
    let (dtype, shape) = be.weight_desc(w);
    if dtype.is_quantized() {
        return Err(format!("{op}: {name} must be a float weight, got {}", dtype.name()));
    }
    if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(numel) {
        return Err(format!("{op}: {name} has shape {shape:?}, the op needs {numel} elements"));
    }
    Ok(())
}

/// A 2-D weight's shape.
fn matrix<B: Backend + ?Sized>(
    be: &B,
    op: &str,
    name: &str,
    w: &B::Weight,
) -> std::result::Result<(usize, usize), String> {
    match be.weight_desc(w).1 {
        &[r, c] => Ok((r, c)),
        s => Err(format!("{op}: {name} has shape {s:?}, expected 2 dimensions")),
    }
}

/// [`Backend::copy`].
pub fn copy<B: Backend + ?Sized>(
    be: &B,
    src: &B::Buffer,
    src_off: usize,
    dst: &B::Buffer,
    dst_off: usize,
    len: usize,
) -> Verdict {
    let (s, d) = (arg(be, "src", src), arg(be, "dst", dst));
    let end = |off: usize| off.checked_add(len).ok_or_else(|| format!("copy: offset {off} + {len} overflows"));
    // f32 to f32, or u32 to u32 (a KV cache in another format than f32).
    if s.desc.is_u32 {
        u32s("copy", &s, end(src_off)?)?;
        u32s("copy", &d, end(dst_off)?)?;
    } else {
        f32s("copy", &s, end(src_off)?)?;
        f32s("copy", &d, end(dst_off)?)?;
    }
    distinct("copy", &[&s, &d])
}

/// [`Backend::write_u32`].
pub fn write_u32<B: Backend + ?Sized>(be: &B, buf: &B::Buffer, data: &[u32]) -> Verdict {
    u32s("write_u32", &arg(be, "buf", buf), data.len())
}

/// [`Backend::embed`].
pub fn embed<B: Backend + ?Sized>(be: &B, call: &ops::Embed<'_, B>) -> Verdict {
    let &ops::Embed { table, ids, n, dim, out } = call;
    let (_, cols) = matrix(be, "embed", "table", table)?;
    if cols != dim {
        return Err(format!("embed: table has rows of {cols}, the op needs {dim}"));
    }
    u32s("embed", &arg(be, "ids", ids), n)?;
    f32s("embed", &arg(be, "out", out), product("embed", "out", &[n, dim])?)
}

/// [`Backend::add`].
pub fn add<B: Backend + ?Sized>(be: &B, call: &ops::Add<'_, B>) -> Verdict {
    two_vectors("add", arg(be, "acc", call.acc), arg(be, "x", call.x), call.n)
}

/// [`Backend::silu_mul`].
pub fn silu_mul<B: Backend + ?Sized>(be: &B, call: &ops::SiluMul<'_, B>) -> Verdict {
    two_vectors("silu_mul", arg(be, "gate", call.gate), arg(be, "up", call.up), call.n)
}

/// An elementwise op in place on `a` with `b`: two distinct f32 buffers of at least `n` elements.
fn two_vectors<B: Backend + ?Sized>(op: &str, a: Arg<B>, b: Arg<B>, n: usize) -> Verdict {
    f32s(op, &a, n)?;
    f32s(op, &b, n)?;
    distinct(op, &[&a, &b])
}

/// [`Backend::gather_rows`].
pub fn gather_rows<B: Backend + ?Sized>(be: &B, call: &ops::GatherRows<'_, B>) -> Verdict {
    let &ops::GatherRows { x, rows, n, dim, out } = call;
    let (xa, oa) = (arg(be, "x", x), arg(be, "out", out));
    f32s("gather_rows", &xa, 0)?;
    u32s("gather_rows", &arg(be, "rows", rows), n)?;
    f32s("gather_rows", &oa, product("gather_rows", "out", &[n, dim])?)?;
    distinct("gather_rows", &[&xa, &oa])
}

/// [`Backend::rms_norm`] (`out` may be `x`).
pub fn rms_norm<B: Backend + ?Sized>(be: &B, call: &ops::RmsNorm<'_, B>) -> Verdict {
    let &ops::RmsNorm { x, weight, rows, dim, out, .. } = call;
    let n = product("rms_norm", "x", &[rows, dim])?;
    f32s("rms_norm", &arg(be, "x", x), n)?;
    f32s("rms_norm", &arg(be, "out", out), n)?;
    weight.map_or(Ok(()), |w| float_vector(be, "rms_norm", "weight", w, dim))
}

/// [`Backend::add_rms_norm`].
pub fn add_rms_norm<B: Backend + ?Sized>(be: &B, call: &ops::AddRmsNorm<'_, B>) -> Verdict {
    let &ops::AddRmsNorm { acc, x, weight, rows, dim, out, .. } = call;
    let n = product("add_rms_norm", "x", &[rows, dim])?;
    let (a, b, o) = (arg(be, "acc", acc), arg(be, "x", x), arg(be, "out", out));
    for v in [&a, &b, &o] {
        f32s("add_rms_norm", v, n)?;
    }
    distinct("add_rms_norm", &[&a, &b, &o])?;
    float_vector(be, "add_rms_norm", "weight", weight, dim)
}

/// [`Backend::matmul`]: returns the weight's (n, k).
pub fn matmul<B: Backend + ?Sized>(be: &B, call: &ops::Matmul<'_, B>) -> std::result::Result<(usize, usize), String> {
    let &ops::Matmul { x, m, w, out } = call;
    let (n, k) = matrix(be, "matmul", "w", w)?;
    let (xa, oa) = (arg(be, "x", x), arg(be, "out", out));
    f32s("matmul", &xa, product("matmul", "x", &[m, k])?)?;
    f32s("matmul", &oa, product("matmul", "out", &[m, n])?)?;
    distinct("matmul", &[&xa, &oa])?;
    Ok((n, k))
}

/// [`Backend::matmuls`]: returns the common k.
pub fn matmuls<B: Backend + ?Sized>(be: &B, call: &ops::Matmuls<'_, B>) -> std::result::Result<usize, String> {
    let &ops::Matmuls { x, m, ws, outs } = call;
    if ws.is_empty() || ws.len() != outs.len() {
        return Err(format!("matmuls: {} weights for {} outputs (one each, at least one)", ws.len(), outs.len()));
    }
    let mut k = None;
    for (w, out) in ws.iter().zip(outs) {
        let (_, kw) = matmul(be, &ops::Matmul { x, m, w, out }).map_err(|e| format!("matmuls: {e}"))?;
        if *k.get_or_insert(kw) != kw {
            return Err(format!("matmuls: the weights take inputs of {} and {kw}: they must share x", k.unwrap_or(0)));
        }
    }
    for (i, a) in outs.iter().enumerate() {
        if let Some(j) = outs[i + 1..].iter().position(|b| std::ptr::eq(*a, *b)) {
            return Err(format!("matmuls: outputs {i} and {} must be distinct buffers", i + 1 + j));
        }
    }
    Ok(k.unwrap_or(0))
}

/// [`Backend::rope`].
pub fn rope<B: Backend + ?Sized>(be: &B, call: &ops::Rope<'_, B>) -> Verdict {
    let &ops::Rope { x, rows, heads, head_dim, positions, inv_freq, .. } = call;
    if !head_dim.is_multiple_of(2) {
        return Err(format!("rope: head_dim {head_dim} must be even (the rotation works on pairs)"));
    }
    f32s("rope", &arg(be, "x", x), product("rope", "x", &[rows, heads, head_dim])?)?;
    u32s("rope", &arg(be, "positions", positions), rows)?;
    f32s("rope", &arg(be, "inv_freq", inv_freq), head_dim / 2)
}

/// [`Backend::router_topk`].
pub fn router_topk<B: Backend + ?Sized>(be: &B, call: &ops::RouterTopk<'_, B>) -> Verdict {
    let &ops::RouterTopk { logits, rows, n_experts, k, idx, score } = call;
    if k == 0 || k > n_experts {
        return Err(format!("router_topk: top-{k} of {n_experts} experts"));
    }
    f32s("router_topk", &arg(be, "logits", logits), product("router_topk", "logits", &[rows, n_experts])?)?;
    let kn = product("router_topk", "idx", &[rows, k])?;
    u32s("router_topk", &arg(be, "idx", idx), kn)?;
    f32s("router_topk", &arg(be, "score", score), kn)
}

/// [`Backend::layer_norm`] (`out` may be `x`).
pub fn layer_norm<B: Backend + ?Sized>(be: &B, call: &ops::LayerNorm<'_, B>) -> Verdict {
    let &ops::LayerNorm { x, weight, bias, rows, dim, out, .. } = call;
    let n = product("layer_norm", "x", &[rows, dim])?;
    f32s("layer_norm", &arg(be, "x", x), n)?;
    f32s("layer_norm", &arg(be, "out", out), n)?;
    float_vector(be, "layer_norm", "weight", weight, dim)?;
    float_vector(be, "layer_norm", "bias", bias, dim)?;
    let (wd, bd) = (be.weight_desc(weight).0, be.weight_desc(bias).0);
    if wd != bd {
        return Err(format!("layer_norm: weight ({}) and bias ({}) must be one format", wd.name(), bd.name()));
    }
    Ok(())
}

/// [`Backend::bias_act`].
pub fn bias_act<B: Backend + ?Sized>(be: &B, call: &ops::BiasAct<'_, B>) -> Verdict {
    let &ops::BiasAct { x, bias, rows, dim, .. } = call;
    f32s("bias_act", &arg(be, "x", x), product("bias_act", "x", &[rows, dim])?)?;
    bias.map_or(Ok(()), |b| float_vector(be, "bias_act", "bias", b, dim))
}

/// [`Backend::swiglu`]: returns the weights' input width k.
pub fn swiglu<B: Backend + ?Sized>(be: &B, call: &ops::Swiglu<'_, B>) -> std::result::Result<usize, String> {
    let &ops::Swiglu { x, m, gate_w, up_w, width, out, scratch } = call;
    let (f, k) = matrix(be, "swiglu", "gate_w", gate_w)?;
    let up = be.weight_desc(up_w).1;
    if up != [f, k] || f != width {
        return Err(format!("swiglu: gate_w [{f}, {k}] and up_w {up:?} must both be [width = {width}, k]"));
    }
    let (xa, oa, sa) = (arg(be, "x", x), arg(be, "out", out), arg(be, "scratch", scratch));
    f32s("swiglu", &xa, product("swiglu", "x", &[m, k])?)?;
    let mf = product("swiglu", "out", &[m, f])?;
    f32s("swiglu", &oa, mf)?;
    f32s("swiglu", &sa, mf)?;
    distinct("swiglu", &[&xa, &oa, &sa])?;
    Ok(k)
}

/// [`Backend::moe`]: returns (experts, model width, expert width).
pub fn moe<B: Backend + ?Sized>(be: &B, call: &ops::Moe<'_, B>) -> std::result::Result<(usize, usize, usize), String> {
    let &ops::Moe { x, rows, idx, score, k, gate_up, down, out } = call;
    let (gu, dn) = (be.weight_desc(gate_up).1, be.weight_desc(down).1);
    let &[e, d, f2] = gu else {
        return Err(format!("moe: gate_up has shape {gu:?}, expected [experts, d, 2·f]"));
    };
    if f2 % 2 != 0 || dn != [e, f2 / 2, d] {
        return Err(format!("moe: gate_up {gu:?} and down {dn:?} do not match ([e, d, 2f] and [e, f, d])"));
    }
    // Quantized expert tensors are grouped along their input axis (d for gate_up, f for down), as
    // QuantPlan writes them: the kernels dequantize one group of a column at a time.
    for w in [gate_up, down] {
        if be.weight_desc(w).0.grouping().is_some_and(|g| g.axis != GroupAxis::SecondLast) {
            return Err("moe: quantized expert tensors must be grouped along their input axis".into());
        }
    }
    let (xa, oa) = (arg(be, "x", x), arg(be, "out", out));
    let rd = product("moe", "x", &[rows, d])?;
    f32s("moe", &xa, rd)?;
    f32s("moe", &oa, rd)?;
    let rk = product("moe", "idx", &[rows, k])?;
    u32s("moe", &arg(be, "idx", idx), rk)?;
    f32s("moe", &arg(be, "score", score), rk)?;
    distinct("moe", &[&xa, &oa])?;
    Ok((e, d, f2 / 2))
}

/// [`Backend::sample`]: with one draw in [0, 1) and one history per row (`sampling::check_sample_args`).
pub fn sample<B: Backend + ?Sized>(be: &B, call: &ops::Sample<'_, B>) -> Verdict {
    let &ops::Sample { logits, rows, vocab, draws, history, out, .. } = call;
    if vocab == 0 {
        return Err("sample: the vocabulary is empty".into());
    }
    crate::sampling::check_sample_args(rows, draws, history).map_err(|e| match e {
        crate::HerdError::Input(m) => m,
        e => e.to_string(),
    })?;
    f32s("sample", &arg(be, "logits", logits), product("sample", "logits", &[rows, vocab])?)?;
    u32s("sample", &arg(be, "out", out), rows)
}

/// [`Backend::mask_logits`].
pub fn mask_logits<B: Backend + ?Sized>(be: &B, call: &ops::MaskLogits<'_, B>) -> Verdict {
    let &ops::MaskLogits { logits, rows, vocab, mask } = call;
    f32s("mask_logits", &arg(be, "logits", logits), product("mask_logits", "logits", &[rows, vocab])?)?;
    u32s("mask_logits", &arg(be, "mask", mask), product("mask_logits", "mask", &[rows, vocab.div_ceil(32)])?)
}

/// The rows a step's sequences cover: one past the last new row.
fn seq_rows(op: &str, seqs: &[super::AttnSeq]) -> std::result::Result<usize, String> {
    seqs.iter().try_fold(0usize, |m, s| {
        s.q_start.checked_add(s.q_len).map(|e| m.max(e as usize)).ok_or_else(|| format!("{op}: rows overflow"))
    })
}

/// A sequence's pages: its slots are a whole number of pages, its table lies inside the table, every page it
/// lists lies inside the cache, and (q4) its stage inside the key buffer. Returns nothing; the message names the
/// problem.
fn seq_pages(op: &str, pages: &super::KvPages<'_>, s: &super::AttnSeq, cache: &CacheSize) -> Verdict {
    let size = pages.size;
    let cap = s.slot_cap as usize;
    if cap == 0 || !cap.is_multiple_of(size) {
        return Err(format!("{op}: a sequence's {cap} cache slots are not a whole number of {size}-slot pages"));
    }
    let (base, n) = (s.page_base as usize, pages.entries(s));
    let entries = pages.table.get(base..base + n).ok_or_else(|| {
        format!("{op}: page table entries {base}..{} lie outside the table of {}", base + n, pages.table.len())
    })?;
    let have = cache.pages;
    if let Some(e) = entries[..cap / size].iter().find(|&&e| e as usize >= have) {
        return Err(format!("{op}: page {e} lies outside the cache of {have} pages of {size} slots"));
    }
    if pages.dtype == crate::kv_format::KvDtype::Q4 {
        let stage = pages.stage(s);
        let fits =
            stage.checked_add(size).and_then(|e| e.checked_mul(cache.kv_dim)).is_some_and(|e| e <= cache.key_words);
        if !fits || stage * cache.kv_dim < have * cache.key_page_words {
            return Err(format!("{op}: a stage at slot {stage} lies outside the key buffer's stages"));
        }
    }
    Ok(())
}

/// What the cache buffers of a call hold: whole pages (of keys and of values), and the key buffer's words.
struct CacheSize {
    pages: usize,
    key_words: usize,
    key_page_words: usize,
    kv_dim: usize,
}

/// The cache buffers' size in the pages' format: f32 buffers for f32, else u32 buffers of the format's words
/// per page (q4 keys: the pages, then the stages).
fn cache_slots<B: Backend + ?Sized>(
    op: &str,
    pages: &super::KvPages<'_>,
    kc: &Arg<B>,
    vc: &Arg<B>,
    kv_heads: usize,
    head_dim: usize,
) -> std::result::Result<CacheSize, String> {
    let d = pages.dtype;
    let kpw = d.key_page_words(kv_heads, head_dim, pages.size).map_err(|m| format!("{op}: {m}"))?.max(1);
    let vpw = d.value_page_words(kv_heads, head_dim, pages.size).map_err(|m| format!("{op}: {m}"))?.max(1);
    for c in [kc, vc] {
        if d == crate::kv_format::KvDtype::F32 {
            f32s(op, c, 0)?;
        } else {
            u32s(op, c, 0)?;
        }
    }
    Ok(CacheSize {
        pages: (kc.desc.len / kpw).min(vc.desc.len / vpw),
        key_words: kc.desc.len,
        key_page_words: kpw,
        kv_dim: kv_heads * head_dim,
    })
}

/// [`Backend::attention`].
pub fn attention<B: Backend + ?Sized>(be: &B, call: &ops::Attention<'_, B>) -> Verdict {
    let &ops::Attention { q, k_new, v_new, k_cache, v_cache, pages, seqs, p, out } = call;
    let (h, kvh, hd) = (p.n_heads, p.n_kv_heads, p.head_dim);
    if kvh == 0 || hd == 0 || h % kvh != 0 {
        return Err(format!("attention: {h} heads over {kvh} kv heads of dim {hd}"));
    }
    let rows = seq_rows("attention", seqs)?;
    let (qa, oa) = (arg(be, "q", q), arg(be, "out", out));
    let (kn, vn) = (arg(be, "k_new", k_new), arg(be, "v_new", v_new));
    let (kc, vc) = (arg(be, "k_cache", k_cache), arg(be, "v_cache", v_cache));
    let qn = product("attention", "q", &[rows, h, hd])?;
    f32s("attention", &qa, qn)?;
    f32s("attention", &oa, qn)?;
    let kvn = product("attention", "k_new", &[rows, kvh, hd])?;
    f32s("attention", &kn, kvn)?;
    f32s("attention", &vn, kvn)?;
    if pages.size == 0 {
        return Err("attention: pages of 0 slots".into());
    }
    let cache = cache_slots("attention", &pages, &kc, &vc, kvh, hd)?;
    for s in seqs.iter().filter(|s| s.pos0 > 0) {
        seq_pages("attention", &pages, s, &cache)?;
    }
    distinct("attention", &[&oa, &qa, &kn, &vn, &kc])?;
    distinct("attention", &[&oa, &vc])
}

/// [`Backend::kv_store`].
pub fn kv_store<B: Backend + ?Sized>(be: &B, call: &ops::KvStore<'_, B>) -> Verdict {
    let &ops::KvStore { k_new, v_new, k_cache, v_cache, pages, seqs, kv_heads, head_dim } = call;
    let kv_dim = product("kv_store", "k_new", &[kv_heads, head_dim])?;
    let rows = seq_rows("kv_store", seqs)?;
    let (kn, vn) = (arg(be, "k_new", k_new), arg(be, "v_new", v_new));
    let (kc, vc) = (arg(be, "k_cache", k_cache), arg(be, "v_cache", v_cache));
    let n = product("kv_store", "k_new", &[rows, kv_dim])?;
    f32s("kv_store", &kn, n)?;
    f32s("kv_store", &vn, n)?;
    if pages.size == 0 || kv_dim == 0 {
        return Err(format!("kv_store: pages of {} slots of {kv_dim} elements", pages.size));
    }
    let cache = cache_slots("kv_store", &pages, &kc, &vc, kv_heads, head_dim)?;
    for s in seqs {
        seq_pages("kv_store", &pages, s, &cache)?;
    }
    distinct("kv_store", &[&kc, &vc, &kn])?;
    distinct("kv_store", &[&kc, &vc, &vn])
}

/// The byte ranges [`Backend::write_weight_row`] copies: (ranges in `w`, ranges in `t`), values then
/// scales, after checking that `t` is one row of a weight of `dtype` and `shape`.
#[allow(clippy::type_complexity)]
pub fn row_copy(
    dtype: crate::quant::DType,
    shape: &[usize],
    row: usize,
    t: &crate::checkpoint::TensorRef,
) -> crate::error::Result<(Vec<std::ops::Range<usize>>, Vec<std::ops::Range<usize>>)> {
    let mut one = shape.to_vec();
    if let Some(first) = one.first_mut() {
        *first = 1;
    }
    if t.dtype != dtype || t.shape != one {
        return Err(crate::error::HerdError::tensor(
            &t.name,
            format!("{} {:?} cannot fill a row of a {} weight {shape:?}", t.dtype.name(), t.shape, dtype.name()),
        ));
    }
    let dst = crate::quant::row_ranges(dtype, shape, row).map_err(|e| crate::error::HerdError::tensor(&t.name, e))?;
    let src = crate::quant::row_ranges(dtype, &one, 0).map_err(|e| crate::error::HerdError::tensor(&t.name, e))?;
    if t.bytes().len() < src.values.end.max(src.scales.end) {
        return Err(crate::error::HerdError::tensor(
            &t.name,
            format!("{} bytes, too few for its shape", t.bytes().len()),
        ));
    }
    Ok((vec![dst.values, dst.scales], vec![src.values, src.scales]))
}
