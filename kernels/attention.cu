// Attention of new tokens over a sequence's cached and new keys (GQA, causal or chunked mask, NoPE
// temperature tuning fused into the query load), and the KV-cache write.
//
// Key position j of a sequence lives in the cache when j < pos0, else in the new rows (row q_start + j - pos0):
// in cache slot pages[page_base + r / page_size] * page_size + r % page_size, r = j % slot_cap, where the page
// table follows the row or tile entries in the same metadata and page_base counts from its start. Query at absolute position p sees lo(p) <= j <= p, where
// lo(p) = floor(p / chunk) * chunk on chunked layers and 0 otherwise.
//
// * attn_decode + attn_combine (flash-decoding): a block per (kv head, query row, split) serves every
//   query head of that kv head over one slice of the keys, four warps taking tiles of 32 keys in turn (a lane
//   per key for the scores, lanes across the head dimension for the values) with an online softmax; the
//   combine pass merges the splits. The grid is fixed by the
//   host from the region sizes, so decode steps replay as the same CUDA graph as the context grows.
// * attn_prefill: a block per (query head, tile of 32 query rows of one sequence); four threads per query
//   split the head dimension, keys and values are staged through shared memory BK at a time.
//
// Row entries (decode), 8 u32 each: row, p, pos0, q_start, page_base, slot_cap.
// Tile entries (prefill), 8 u32 each: row0, nq, p0, pos0, q_start, page_base, slot_cap, end (0 causal; else
// bidirectional, every query sees keys < end).

#define MAXG 16

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

struct AttnDecodeParams {
    const float* q;
    const float* kn;
    const float* vn;
    const u32* kc;
    const u32* vc;
    const u32* rows;
    float* part;
    u32 n_heads;
    u32 n_kv;
    u32 hd;
    float scale;
    u32 chunk;
    u32 temp_on;
    float floor_scale;
    float attn_scale;
    u32 nsplit;
    u32 page_size;
    u32 kv_dtype;
    u32 slot_words;
    u32 key_words;
    u32 pad;
};

// One key of a decode tile, read by one lane across the head dimension: its score against each of the G
// query heads (q_s, scaled, in shared memory), summed over the head dimension in the format's units (8 q4
// codes, 4 bytes, 2 halves or 1 word at a time) with the key's address worked out once. Returns through s[].
template <int GM>
__device__ __forceinline__ void key_scores(const AttnDecodeParams& prm, const float* q_s, u32 G, u32 j, u32 pos0,
                                           u32 qs, u32 sb, u32 sc, u32 kvh, float* s) {
    const u32 hd = prm.hd, kv_row = prm.n_kv * hd, e0 = kvh * hd, ps = prm.page_size;
#pragma unroll
    for (u32 g = 0; g < GM; g++) s[g] = 0.0f;
#define HERD_DOT(N, ...)                                                                                          \
    for (u32 d = 0; d < hd; d += N) {                                                                             \
        float kv[N];                                                                                              \
        __VA_ARGS__;                                                                                              \
        _Pragma("unroll") for (u32 g = 0; g < GM; g++) {                                                          \
            if (g < G) {                                                                                          \
                float t = 0.0f;                                                                                   \
                _Pragma("unroll") for (u32 i = 0; i < N; i++) t += q_s[g * hd + d + i] * kv[i];                   \
                s[g] += t;                                                                                        \
            }                                                                                                     \
        }                                                                                                         \
    }
    if (j >= pos0) {
        const float* f = prm.kn + ((u64)(qs + (j - pos0)) * prm.n_kv + kvh) * hd;
        if ((hd & 3) == 0) {
            HERD_DOT(4, {
                const float4 c = *(const float4*)(f + d);
                kv[0] = c.x;
                kv[1] = c.y;
                kv[2] = c.z;
                kv[3] = c.w;
            })
        } else {
            HERD_DOT(1, kv[0] = f[d])
        }
        return;
    }
    if (prm.key_words) {
        if (j >= (pos0 / ps) * ps) {
            // The stage: the f32 keys of the page being filled.
            const u32* w = prm.kc + ((u64)prm.rows[sb + sc / ps] + j % ps) * kv_row + e0;
            HERD_DOT(1, kv[0] = __uint_as_float(w[d]))
            return;
        }
        const u64 base = (u64)prm.rows[sb + (j % sc) / ps] * prm.key_words;
        const u32* codes = prm.kc + base + ((j % ps) * kv_row + e0) / 8;
        const u32* chan = prm.kc + base + ps * kv_row / 8 + e0;
        HERD_DOT(8, {
            const u32 c = codes[d / 8];
            _Pragma("unroll") for (u32 i = 0; i < 8; i++) {
                const u32 m = chan[d + i];
                kv[i] = h2f((u16)(m >> 16)) + (float)((c >> (4 * i)) & 15u) * h2f((u16)(m & 0xffffu));
            }
        })
        return;
    }
    const u32 r = j % sc;
    const u32* w = prm.kc + (u64)(prm.rows[sb + r / ps] * ps + r % ps) * prm.slot_words;
    // 16 bytes at a time where slots and heads are whole multiples of 16 bytes (Llama 4's shapes in every
    // format): a lane's loads walk its own key, one cache line apart from its neighbours', so each load
    // instruction should bring as many of the key's bytes as it can.
    const u32 vpw = prm.kv_dtype == 0 ? 1 : prm.kv_dtype <= 2 ? 2 : 4; // values per word
    if ((prm.slot_words & 3) == 0 && ((hd / vpw) & 3) == 0) {
        const u32* wk = w + e0 / vpw;
        switch (prm.kv_dtype) {
        case 0:
            HERD_DOT(4, {
                const uint4 c = *(const uint4*)(wk + d);
                kv[0] = __uint_as_float(c.x);
                kv[1] = __uint_as_float(c.y);
                kv[2] = __uint_as_float(c.z);
                kv[3] = __uint_as_float(c.w);
            })
            break;
        case 1:
        case 2:
            HERD_DOT(8, {
                const uint4 c = *(const uint4*)(wk + d / 2);
                const u32 cw[4] = {c.x, c.y, c.z, c.w};
                _Pragma("unroll") for (u32 t = 0; t < 4; t++) {
                    if (prm.kv_dtype == 1) {
                        kv[2 * t] = bf2f(cw[t] & 0xffffu);
                        kv[2 * t + 1] = bf2f(cw[t] >> 16);
                    } else {
                        kv[2 * t] = h2f((u16)(cw[t] & 0xffffu));
                        kv[2 * t + 1] = h2f((u16)(cw[t] >> 16));
                    }
                }
            })
            break;
        default: {
            const float k = __uint_as_float(w[kv_row / 4 + kvh]);
            const bool fp8 = prm.kv_dtype == 4;
            HERD_DOT(16, {
                const uint4 c = *(const uint4*)(wk + d / 4);
                const u32 cw[4] = {c.x, c.y, c.z, c.w};
                _Pragma("unroll") for (u32 t = 0; t < 4; t++) {
                    _Pragma("unroll") for (u32 i = 0; i < 4; i++) {
                        const u32 b = (cw[t] >> (8 * i)) & 0xffu;
                        kv[4 * t + i] = (fp8 ? e4m3_value(b) : (float)(int)(signed char)b) * k;
                    }
                }
            })
            break;
        }
        }
        return;
    }
    switch (prm.kv_dtype) {
    case 0: HERD_DOT(1, kv[0] = __uint_as_float(w[e0 + d])) break;
    case 1: HERD_DOT(2, { const u32 c = w[(e0 + d) >> 1]; kv[0] = bf2f(c & 0xffffu); kv[1] = bf2f(c >> 16); }) break;
    case 2: HERD_DOT(2, { const u32 c = w[(e0 + d) >> 1]; kv[0] = h2f((u16)(c & 0xffffu)); kv[1] = h2f((u16)(c >> 16)); }) break;
    case 3: {
        const float k = __uint_as_float(w[kv_row / 4 + kvh]);
        HERD_DOT(4, {
            const u32 c = w[(e0 + d) >> 2];
            _Pragma("unroll") for (u32 i = 0; i < 4; i++) kv[i] = (float)(int)(signed char)((c >> (8 * i)) & 0xffu) * k;
        })
        break;
    }
    default: {
        const float k = __uint_as_float(w[kv_row / 4 + kvh]);
        HERD_DOT(4, {
            const u32 c = w[(e0 + d) >> 2];
            _Pragma("unroll") for (u32 i = 0; i < 4; i++) kv[i] = e4m3_value((c >> (8 * i)) & 0xffu) * k;
        })
        break;
    }
    }
#undef HERD_DOT
}

// Flash-decoding over tiles of 32 keys per warp: each lane scores one key (key_scores), the tile's maximum
// and sum take one warp reduction per query head (not one per key), and the values are summed with the lanes
// across the head dimension into registers (GM query heads × TM dimensions per lane), the probabilities and
// value slots passed through shared memory. At the end each warp's sums go to shared memory and merge.
template <int GM, int TM>
__device__ void attn_decode_impl(const AttnDecodeParams& prm) {
    DYN_SHARED(float, sm);
    const u32 kvh = blockIdx.x, ri = blockIdx.y, sp = blockIdx.z;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32* e = prm.rows + ri * 8;
    const u32 row = e[0], p = e[1], pos0 = e[2], qs = e[3], sb = e[4], sc = e[5];
    const u32 G = prm.n_heads / prm.n_kv, hd = prm.hd;
    float* q_s = sm;                                            // [G][hd]
    float* acc_s = sm + G * hd;                                 // [4][G][hd]
    float* m_s = acc_s + 4 * G * hd;                            // [4][G]
    float* l_s = m_s + 4 * G;                                   // [4][G]
    float* p_s = l_s + 4 * G + warp * (G * 32);                 // this warp's [G][32] probabilities
    u32* slot_s = (u32*)(l_s + 4 * G + 4 * G * 32) + warp * 32; // this warp's value slots (~0: a new row)
    const float qsc = query_scale(prm.scale, prm.temp_on, prm.floor_scale, prm.attn_scale, p);
    for (u32 i = threadIdx.x; i < G * hd; i += blockDim.x)
        q_s[i] = prm.q[((u64)row * prm.n_heads + kvh * G + i / hd) * hd + i % hd] * qsc;
    const u32 lo = prm.chunk ? (p / prm.chunk) * prm.chunk : 0;
    const u32 nkeys = p - lo + 1;
    const u32 per = (nkeys + prm.nsplit - 1) / prm.nsplit;
    const u32 j0 = lo + min(nkeys, sp * per), j1 = lo + min(nkeys, (sp + 1) * per);
    __syncthreads();

    float mr[GM], lr[GM], acc[GM][TM];
#pragma unroll
    for (u32 g = 0; g < GM; g++) {
        mr[g] = NEG_BIG;
        lr[g] = 0.0f;
#pragma unroll
        for (u32 t = 0; t < TM; t++) acc[g][t] = 0.0f;
    }
    for (u32 tb = j0 + warp * 32; tb < j1; tb += 128) {
        const u32 j = tb + lane, n = min(32u, j1 - tb);
        float s[GM];
        if (j < j1) {
            key_scores<GM>(prm, q_s, G, j, pos0, qs, sb, sc, kvh, s);
            const u32 r = j % sc;
            slot_s[lane] = j < pos0 ? prm.rows[sb + r / prm.page_size] * prm.page_size + r % prm.page_size : ~0u;
        }
        float corr[GM];
#pragma unroll
        for (u32 g = 0; g < GM; g++) {
            corr[g] = 1.0f;
            if (g < G) {
                const float sg = j < j1 ? s[g] : NEG_BIG;
                const float mn = fmaxf(mr[g], warp_max(sg));
                const float pe = j < j1 ? expf(sg - mn) : 0.0f;
                corr[g] = expf(mr[g] - mn);
                lr[g] = lr[g] * corr[g] + warp_sum(pe);
                mr[g] = mn;
                p_s[g * 32 + lane] = pe;
            }
        }
        __syncwarp();
#pragma unroll
        for (u32 g = 0; g < GM; g++)
#pragma unroll
            for (u32 t = 0; t < TM; t++) acc[g][t] *= corr[g];
        for (u32 jj = 0; jj < n; jj++) {
            const u32 slot = slot_s[jj];
            float v[TM];
            if (slot == ~0u) {
                const float* f = prm.vn + ((u64)(qs + (tb + jj - pos0)) * prm.n_kv + kvh) * hd;
#pragma unroll
                for (u32 t = 0; t < TM; t++) v[t] = lane + 32 * t < hd ? f[lane + 32 * t] : 0.0f;
            } else {
                const u32* w = prm.vc + (u64)slot * prm.slot_words;
#pragma unroll
                for (u32 t = 0; t < TM; t++) {
                    const u32 d = lane + 32 * t;
                    v[t] = d < hd ? kv_decode(w, kvh * hd + d, prm.kv_dtype, prm.n_kv * hd, hd) : 0.0f;
                }
            }
#pragma unroll
            for (u32 g = 0; g < GM; g++) {
                if (g < G) {
                    const float pe = p_s[g * 32 + jj];
#pragma unroll
                    for (u32 t = 0; t < TM; t++) acc[g][t] += pe * v[t];
                }
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (u32 g = 0; g < GM; g++) {
        if (g < G) {
#pragma unroll
            for (u32 t = 0; t < TM; t++)
                if (lane + 32 * t < hd) acc_s[(warp * G + g) * hd + lane + 32 * t] = acc[g][t];
            if (lane == 0) {
                m_s[warp * G + g] = mr[g];
                l_s[warp * G + g] = lr[g];
            }
        }
    }
    __syncthreads();
    for (u32 i = threadIdx.x; i < G * hd; i += blockDim.x) {
        const u32 g = i / hd, d = i % hd;
        float M = NEG_BIG;
        for (u32 w = 0; w < 4; w++)
            if (l_s[w * G + g] > 0.0f) M = fmaxf(M, m_s[w * G + g]);
        float A = 0.0f, L = 0.0f;
        for (u32 w = 0; w < 4; w++) {
            float lw = l_s[w * G + g];
            if (lw > 0.0f) {
                float f = expf(m_s[w * G + g] - M);
                A += acc_s[(w * G + g) * hd + d] * f;
                L += lw * f;
            }
        }
        float* o = prm.part + ((((u64)ri * prm.n_kv + kvh) * prm.nsplit + sp) * G + g) * (hd + 2);
        o[d] = A;
        if (d == 0) {
            o[hd] = M;
            o[hd + 1] = L;
        }
    }
}

// Llama 4's shapes (5 query heads per kv head, head_dim 128) take the small register tile; others the large.
extern "C" __global__ void __launch_bounds__(128) attn_decode(const AttnDecodeParams prm) {
    if (prm.n_heads / prm.n_kv <= 8 && prm.hd <= 128) attn_decode_impl<8, 4>(prm);
    else attn_decode_impl<MAXG, 8>(prm);
}

struct AttnCombineParams {
    const float* part;
    const u32* rows;
    float* out;
    u32 n_heads;
    u32 n_kv;
    u32 hd;
    u32 nsplit;
};

extern "C" __global__ void __launch_bounds__(128)
    attn_combine(const AttnCombineParams prm) {
    const u32 ri = blockIdx.x, h = blockIdx.y;
    const u32 G = prm.n_heads / prm.n_kv, kvh = h / G, g = h % G;
    const u32 row = prm.rows[ri * 8];
    const float* base = prm.part + (((u64)ri * prm.n_kv + kvh) * prm.nsplit * G + g) * (prm.hd + 2);
    const u64 stride = (u64)G * (prm.hd + 2);
    float M = NEG_BIG;
    for (u32 s = 0; s < prm.nsplit; s++)
        if (base[s * stride + prm.hd + 1] > 0.0f) M = fmaxf(M, base[s * stride + prm.hd]);
    for (u32 d = threadIdx.x; d < prm.hd; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (u32 s = 0; s < prm.nsplit; s++) {
            const float* b = base + s * stride;
            float L = b[prm.hd + 1];
            if (L > 0.0f) {
                float f = expf(b[prm.hd] - M);
                num += b[d] * f;
                den += L * f;
            }
        }
        prm.out[((u64)row * prm.n_heads + h) * prm.hd + d] = num / den;
    }
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
