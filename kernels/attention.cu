// Attention of new tokens over a sequence's cached and new keys (GQA, causal or chunked mask, NoPE
// temperature tuning fused into the query load), and the KV-cache write.
//
// Key position j of a sequence lives in the cache when j < pos0, else in the new rows (row q_start + j - pos0):
// in cache slot pages[page_base + r / page_size] * page_size + r % page_size, r = j % slot_cap, where the page
// table follows the row or tile entries in the same metadata and page_base counts from its start. Query at absolute position p sees lo(p) <= j <= p, where
// lo(p) = floor(p / chunk) * chunk on chunked layers and 0 otherwise.
//
// * attn_decode + attn_combine (flash-decoding; attention_decode.cu, compiled after this file as one source):
//   a block per (kv head, query row, split) serves every query head of that kv head over one slice of the
//   keys, four warps taking tiles of 32 keys in turn (a lane per key for the scores, lanes across the head
//   dimension for the values) with an online softmax; the combine pass merges the splits. The grid is fixed
//   by the host from the region sizes, so decode steps replay as the same CUDA graph as the context grows.
// * attn_prefill: a block per (query head, tile of 32 query rows of one sequence); four threads per query
//   split the head dimension, keys and values are staged through shared memory BK at a time.
//
// Row entries (decode), 8 u32 each: row, p, pos0, q_start, page_base, slot_cap.
// Tile entries (prefill), 8 u32 each: row0, nq, p0, pos0, q_start, page_base, slot_cap, end (0 causal; else
// bidirectional, every query sees keys < end).

__device__ __forceinline__ float query_scale(float scale, u32 temp_on, float floor_scale, float attn_scale, u32 p) {
    if (!temp_on) return scale;
    float f = floorf(((float)p + 1.0f) / floor_scale);
    return scale * (log1pf(f) * attn_scale + 1.0f);
}

// KV-cache formats (herd_core::kv_format; KvDtype): 0 f32 (a word a value), 1 bf16 and 2 f16 (two values a
// word, the even one low), 3 q8 and 4 fp8 E4M3 (a byte a value, then an f32 scale per kv head), 5 q4
// (herd_core::kv_q4: 4-bit codes, 8 a word, the first lowest; a value slot's codes, then a word (f16 step | f16
// minimum << 16) per group of min(32, head_dim) channels; a key page of key_words words holds its codes slot after
// slot, then such a word per channel, and each sequence's stage, the f32 keys of the page it is filling, is at
// slot pages[page_base + slot_cap / page_size] (in kv_dim words) of the key cache).
__device__ __forceinline__ float e4m3_value(u32 b) {
    const u32 e = (b >> 3) & 15u;
    const float m = (float)(b & 7u);
    const float v = e == 0 ? ldexpf(m, -9) : ldexpf(8.0f + m, (int)e - 10);
    return (b & 0x80u) ? -v : v;
}
// Round to nearest even, saturating at +-448 (as herd_core::kv_format::e4m3_from_f32).
__device__ __forceinline__ u32 e4m3_byte(float x) {
    const u32 sign = x < 0.0f ? 0x80u : 0u;
    const float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7eu;
    int e = (int)((__float_as_uint(a) >> 23) & 0xffu) - 127;
    if (e < -6) return sign | (u32)rintf(ldexpf(a, 9));
    u32 m = (u32)rintf(ldexpf(a, 3 - e));
    if (m == 16u) {
        e += 1;
        m = 8u;
    }
    return sign | ((u32)(e + 7) << 3) | (m - 8u);
}

// Element e (of kv heads * head_dim) of a cache slot `w` of format `dt`.
__device__ __forceinline__ float kv_decode(const u32* w, u32 e, u32 dt, u32 kv_row, u32 hd) {
    switch (dt) {
    case 0: return __uint_as_float(w[e]);
    case 1: return bf2f((w[e >> 1] >> (16 * (e & 1))) & 0xffffu);
    case 2: return h2f((u16)((w[e >> 1] >> (16 * (e & 1))) & 0xffffu));
    case 3: return (float)(int)(signed char)((w[e >> 2] >> (8 * (e & 3))) & 0xffu) * __uint_as_float(w[kv_row / 4 + e / hd]);
    case 5: {
        const u32 prm = w[kv_row / 8 + e / (hd < 32 ? hd : 32)];
        return h2f((u16)(prm >> 16)) + (float)((w[e >> 3] >> (4 * (e & 7))) & 15u) * h2f((u16)(prm & 0xffffu));
    }
    default: return e4m3_value((w[e >> 2] >> (8 * (e & 3))) & 0xffu) * __uint_as_float(w[kv_row / 4 + e / hd]);
    }
}

// Dimension d of kv head kvh at key position j: from the cache (through the page table, in its format) or the
// step's new rows. key_words: nonzero for q4 keys (the words of a key page), which a cached position reads from
// its sequence's stage while its page is incomplete (j >= floor(pos0 / page_size) * page_size), else its page.
__device__ __forceinline__ float kv_val(const u32* cache, const float* fresh, u32 j, u32 pos0, u32 q_start,
                                        const u32* pages, u32 page_size, u32 page_base, u32 slot_cap, u32 n_kv,
                                        u32 kvh, u32 hd, u32 d, u32 dt, u32 slot_words, u32 key_words) {
    if (j < pos0 && key_words) {
        const u32 kv_row = n_kv * hd, e = kvh * hd + d;
        if (j >= (pos0 / page_size) * page_size) {
            const u32 st = pages[page_base + slot_cap / page_size];
            return __uint_as_float(cache[((u64)st + j % page_size) * kv_row + e]);
        }
        const u64 base = (u64)pages[page_base + (j % slot_cap) / page_size] * key_words;
        const u32 prm = cache[base + page_size * kv_row / 8 + e];
        const u32 x = (j % page_size) * kv_row + e;
        return h2f((u16)(prm >> 16)) + (float)((cache[base + x / 8] >> (4 * (x & 7))) & 15u) * h2f((u16)(prm & 0xffffu));
    }
    if (j < pos0) {
        const u32 r = j % slot_cap;
        const u32 slot = pages[page_base + r / page_size] * page_size + r % page_size;
        return kv_decode(cache + (u64)slot * slot_words, kvh * hd + d, dt, n_kv * hd, hd);
    }
    return fresh[((u64)(q_start + (j - pos0)) * n_kv + kvh) * hd + d];
}

template <int DPT, int BK>
__device__ void attn_prefill_impl(const float* q, const float* kn, const float* vn, const u32* kc, const u32* vc,
                                  const u32* tiles, u32 n_heads, u32 n_kv, u32 hd, float scale, u32 chunk,
                                  u32 temp_on, float floor_scale, float attn_scale, float* out, u32 page_size,
                                  u32 kv_dtype, u32 slot_words, u32 key_words) {
    DYN_SHARED(float, smp);
    float* ks = smp;           // [BK][hd]
    float* vs = smp + BK * hd; // [BK][hd]
    const u32 h = blockIdx.x, kvh = h / (n_heads / n_kv);
    const u32* e = tiles + blockIdx.y * 8;
    const u32 row0 = e[0], nq = e[1], p0 = e[2], pos0 = e[3], qs = e[4], sb = e[5], sc = e[6], end = e[7];
    const u32 qi = threadIdx.x >> 2, sub = threadIdx.x & 3;
    const bool active = qi < nq;
    const u32 p = p0 + (active ? qi : 0);
    // The last key this query sees: itself (causal) or, bidirectional (end > 0), the sequence's last one.
    const u32 p_see = end ? end - 1 : p;
    const float qsc = query_scale(scale, temp_on, floor_scale, attn_scale, p);
    float qv[DPT], acc[DPT];
#pragma unroll
    for (int i = 0; i < DPT; i++) {
        u32 d = sub + 4 * i;
        qv[i] = (active && d < hd) ? q[((u64)(row0 + qi) * n_heads + h) * hd + d] * qsc : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_BIG, l = 0.0f;
    const u32 lo_q = chunk ? (p / chunk) * chunk : 0;
    const u32 p_last = end ? end - 1 : p0 + nq - 1;
    const u32 j_first = chunk ? (p0 / chunk) * chunk : 0;
    for (u32 jt = j_first; jt <= p_last; jt += BK) {
        __syncthreads();
        for (u32 idx = threadIdx.x; idx < BK * hd; idx += blockDim.x) {
            u32 jj = idx / hd, d = idx % hd, j = jt + jj;
            float a = 0.0f, b = 0.0f;
            if (j <= p_last) {
                a = kv_val(kc, kn, j, pos0, qs, tiles, page_size, sb, sc, n_kv, kvh, hd, d, kv_dtype, slot_words,
                           key_words);
                b = kv_val(vc, vn, j, pos0, qs, tiles, page_size, sb, sc, n_kv, kvh, hd, d, kv_dtype, slot_words, 0);
            }
            ks[idx] = a;
            vs[idx] = b;
        }
        __syncthreads();
        for (u32 jj = 0; jj < BK; jj++) {
            const u32 j = jt + jj;
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < DPT; i++) {
                u32 d = sub + 4 * i;
                if (d < hd) s += qv[i] * ks[jj * hd + d];
            }
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            if (active && j <= p_see && j >= lo_q) {
                float mn = fmaxf(m, s);
                float corr = expf(m - mn), pe = expf(s - mn);
                l = l * corr + pe;
                m = mn;
#pragma unroll
                for (int i = 0; i < DPT; i++) {
                    u32 d = sub + 4 * i;
                    if (d < hd) acc[i] = acc[i] * corr + pe * vs[jj * hd + d];
                }
            }
        }
    }
    if (active) {
#pragma unroll
        for (int i = 0; i < DPT; i++) {
            u32 d = sub + 4 * i;
            if (d < hd) out[((u64)(row0 + qi) * n_heads + h) * hd + d] = acc[i] / l;
        }
    }
}

struct AttnPrefillParams {
    const float* q;
    const float* kn;
    const float* vn;
    const u32* kc;
    const u32* vc;
    const u32* tiles;
    float* out;
    u32 n_heads;
    u32 n_kv;
    u32 hd;
    float scale;
    u32 chunk;
    u32 temp_on;
    float floor_scale;
    float attn_scale;
    u32 page_size;
    u32 kv_dtype;
    u32 slot_words;
    u32 key_words;
};

#define PREFILL(DPT, BK)                                                                                            \
    extern "C" __global__ void __launch_bounds__(128) attn_prefill_##DPT(const AttnPrefillParams prm) {             \
        attn_prefill_impl<DPT, BK>(prm.q, prm.kn, prm.vn, prm.kc, prm.vc, prm.tiles, prm.n_heads, prm.n_kv, prm.hd, prm.scale, prm.chunk, prm.temp_on, prm.floor_scale, \
                                   prm.attn_scale, prm.out, prm.page_size, prm.kv_dtype, prm.slot_words, prm.key_words);                                                    \
    }
PREFILL(4, 32)
PREFILL(8, 32)
PREFILL(16, 32)
PREFILL(32, 32)
PREFILL(64, 16)

struct KvStoreParams {
    const float* kn;
    const float* vn;
    u32* kc;
    u32* vc;
    const u32* pairs;
    u32 npairs;
    u32 kv_dim;
    u32 kv_dtype;
    u32 slot_words;
    u32 head_dim;
    u32 units;
    u32 keys; // whether to store the keys (q4 keys have kernels of their own)
    u32 pad;
};

// q4 (herd_core::kv_q4): a group's minimum, the largest f16 at or below lo, and step, the smallest f16 at or
// above (hi - min) / 15, whatever way the conversion rounds; its parameter word; a value's code.
__device__ __forceinline__ u32 f16_down(float x) {
    u32 b = f2h(x);
    if (h2f((u16)b) <= x) return b;
    if (!(b & 0x8000u)) return b == 0 ? 0x8001u : b - 1;
    return b + 1;
}
__device__ __forceinline__ u32 f16_up(float x) {
    u32 b = f2h(x);
    return h2f((u16)b) >= x ? b : b + 1;
}
__device__ __forceinline__ u32 q4_param(float lo, float hi, float* step, float* mn) {
    const u32 m = f16_down(lo);
    *mn = h2f((u16)m);
    const u32 s = f16_up((hi - *mn) / 15.0f);
    *step = h2f((u16)s);
    return s | (m << 16);
}
__device__ __forceinline__ u32 q4_code(float x, float step, float mn) {
    return step > 0.0f ? (u32)fminf(fmaxf(rintf((x - mn) / step), 0.0f), 15.0f) : 0u;
}

__device__ __forceinline__ u32 quant_byte(float x, float s, u32 dt) {
    const float q = s > 0.0f ? x / s : 0.0f;
    if (dt == 3) return (u32)(int)fminf(fmaxf(rintf(q), -127.0f), 127.0f) & 0xffu;
    return e4m3_byte(q);
}

// One unit of a row into its slot in the cache's format: a value (f32), a word of two values (16-bit), or a kv
// head (byte formats: scale = the head's max |x| / 127 or 448).
__device__ __forceinline__ void store_unit(const float* x, u32* c, u32 u, const KvStoreParams& prm) {
    switch (prm.kv_dtype) {
    case 0: c[u] = __float_as_uint(x[u]); break;
    case 1: c[u] = (u32)f2bf(x[2 * u]) | ((u32)f2bf(x[2 * u + 1]) << 16); break;
    case 2: c[u] = (u32)f2h(x[2 * u]) | ((u32)f2h(x[2 * u + 1]) << 16); break;
    case 5: {
        const u32 g = prm.head_dim < 32 ? prm.head_dim : 32;
        const float* h = x + u * g;
        float lo = h[0], hi = h[0];
        for (u32 i = 1; i < g; i++) {
            lo = fminf(lo, h[i]);
            hi = fmaxf(hi, h[i]);
        }
        float step, mn;
        c[prm.kv_dim / 8 + u] = q4_param(lo, hi, &step, &mn);
        for (u32 w = 0; w < g / 8; w++) {
            u32 word = 0;
            for (u32 t = 0; t < 8; t++) word |= q4_code(h[8 * w + t], step, mn) << (4 * t);
            c[(u * g) / 8 + w] = word;
        }
        break;
    }
    default: {
        const u32 hd = prm.head_dim;
        const float* h = x + u * hd;
        float amax = 0.0f;
        for (u32 i = 0; i < hd; i++) amax = fmaxf(amax, fabsf(h[i]));
        const float s = amax / (prm.kv_dtype == 3 ? 127.0f : 448.0f);
        c[prm.kv_dim / 4 + u] = __float_as_uint(s);
        for (u32 w = 0; w < hd / 4; w++) {
            u32 word = 0;
            for (u32 t = 0; t < 4; t++) word |= quant_byte(h[4 * w + t], s, prm.kv_dtype) << (8 * t);
            c[(u * hd) / 4 + w] = word;
        }
    }
    }
}

// pairs: (source row, destination slot) per stored token.
extern "C" __global__ void kv_store(const KvStoreParams prm) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)prm.npairs * prm.units) return;
    u32 pr = (u32)(i / prm.units), u = (u32)(i % prm.units);
    const u64 src = (u64)prm.pairs[2 * pr] * prm.kv_dim, dst = (u64)prm.pairs[2 * pr + 1] * prm.slot_words;
    if (prm.keys) store_unit(prm.kn + src, prm.kc + dst, u, prm);
    store_unit(prm.vn + src, prm.vc + dst, u, prm);
}

struct KvQ4Params {
    const float* kn;
    u32* kc;
    const u32* jobs;
    u32 njobs;
    u32 kv_dim;
    u32 page_size;
    u32 key_words;
};

// q4 keys a step completes, before kv_q4_stage overwrites the stages they read. jobs: 5 u32 per page (page, its
// first position b, pos0, q_start, stage slot; page u32::MAX: unused); a thread per (page, 8 channels): position x of the page comes from
// the stage when x < pos0, else from row q_start + x - pos0 of the new keys.
extern "C" __global__ void kv_q4_pages(const KvQ4Params prm) {
    const u32 units = prm.kv_dim / 8;
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)prm.njobs * units) return;
    const u32* jb = prm.jobs + 5 * (i / units);
    if (jb[0] == 0xffffffffu) return; // an unused entry
    const u32 w = (u32)(i % units), page = jb[0], b = jb[1], pos0 = jb[2], qs = jb[3], st = jb[4];
    const u32 ps = prm.page_size, n = prm.kv_dim;
    u32* out = prm.kc + (u64)page * prm.key_words;
    float lo[8], hi[8], step[8], mn[8];
    for (u32 x = 0; x < ps; x++) {
        for (u32 t = 0; t < 8; t++) {
            const u32 c = 8 * w + t, p = b + x;
            const float v = p < pos0 ? __uint_as_float(prm.kc[((u64)st + p % ps) * n + c]) : prm.kn[((u64)qs + p - pos0) * n + c];
            lo[t] = x ? fminf(lo[t], v) : v;
            hi[t] = x ? fmaxf(hi[t], v) : v;
        }
    }
    for (u32 t = 0; t < 8; t++) out[ps * n / 8 + 8 * w + t] = q4_param(lo[t], hi[t], &step[t], &mn[t]);
    for (u32 x = 0; x < ps; x++) {
        u32 word = 0;
        for (u32 t = 0; t < 8; t++) {
            const u32 c = 8 * w + t, p = b + x;
            const float v = p < pos0 ? __uint_as_float(prm.kc[((u64)st + p % ps) * n + c]) : prm.kn[((u64)qs + p - pos0) * n + c];
            word |= q4_code(v, step[t], mn[t]) << (4 * t);
        }
        out[x * n / 8 + w] = word;
    }
}

// q4 keys of the pages a step leaves incomplete into their stages. jobs: 2 u32 per key (its row, its stage slot;
// row u32::MAX: unused);
// a thread per value.
extern "C" __global__ void kv_q4_stage(const KvQ4Params prm) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)prm.njobs * prm.kv_dim) return;
    const u32* jb = prm.jobs + 2 * (i / prm.kv_dim);
    const u32 c = (u32)(i % prm.kv_dim);
    if (jb[0] == 0xffffffffu) return; // an unused entry
    prm.kc[(u64)jb[1] * prm.kv_dim + c] = __float_as_uint(prm.kn[(u64)jb[0] * prm.kv_dim + c]);
}
