#line 2 "attention_decode.cu"
// The attention family's decode kernels (attention.cu has the KV formats, kv_val, prefill and the KV store;
// this file is compiled after it as one source): flash-decoding over tiles of 32 keys per warp
// (attn_decode), and the merge of its splits (attn_combine).

// The most query heads per kv head the decode kernel takes (the host sends more to the prefill kernel).
#define MAXG 16

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
