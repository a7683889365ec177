// Token sampling on the device, one block of 1024 threads per row, exactly as herd_core::sampling::pick
// defines it (the same stages as shaders/sample.wgsl): sanitise (NaN and -inf become NEG_BIG, +inf the
// largest f32) and the repetition penalty; argmax (the answer when greedy); l' = (l - max) / T; top-k as a
// radix select of the k-th largest order key; top-p as a bisection on the order key over the candidates
// that can be in the nucleus, ties at the cut taken in id order; min-p as a key threshold; the draw, the
// first survivor in id order whose cumulative weight exceeds u · total.
//
// hist: rows + 1 offsets, then each row's distinct history ids. flags: 1 greedy, 2 min-p, 4 penalty.

#define WG 1024u
#define KEY_ZERO 0x80000000u

__device__ __forceinline__ u32 okey(float x) {
    u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float unkey(u32 k) {
    return (k & 0x80000000u) ? __uint_as_float(k & 0x7fffffffu) : __uint_as_float(~k);
}

struct Cut {
    u32 k_lo, p_key, p_tie;
};
__device__ __forceinline__ bool kept(const Cut& c, u32 k, u32 i) {
    return k >= c.k_lo && (k > c.p_key || (k == c.p_key && i <= c.p_tie));
}

__device__ __forceinline__ u32 slice_lo(u32 li, u32 vocab) { return min(vocab, li * ((vocab + WG - 1) / WG)); }
__device__ __forceinline__ u32 slice_hi(u32 li, u32 vocab) { return min(vocab, (li + 1) * ((vocab + WG - 1) / WG)); }

// Σ exp(l) over the first n values of `v` whose key is >= lo; every thread gets it.
__device__ float mass_ge(const float* v, u32 n, u32 lo, float* sh) {
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < n; i += WG) {
        float l = v[i];
        if (okey(l) >= lo) s += expf(l);
    }
    return block_sum(s, sh);
}

// Exclusive prefix sum of red[0..WG) by one thread; returns the total (all threads).
__device__ u32 prefix_u(u32* red, u32* total) {
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 c = 0;
        for (u32 t = 0; t < WG; t++) {
            u32 n = red[t];
            red[t] = c;
            c += n;
        }
        *total = c;
    }
    __syncthreads();
    return *total;
}

struct SampleParams {
    float* logits;
    const u32* hist;
    const float* draws;
    u32* out;
    float* cand;
    u32 rows;
    u32 vocab;
    float temp;
    u32 topk;
    float topp;
    float ln_minp;
    float pen;
    u32 flags;
};

extern "C" __global__ void __launch_bounds__(1024)
    sample(const SampleParams prm) {
    __shared__ float sh[33];
    __shared__ float red_f[WG];
    __shared__ u32 red_u[WG];
    __shared__ u32 bins[256];
    __shared__ u32 s_u, s_u2;
    __shared__ float s_f;
    const u32 row = blockIdx.x, li = threadIdx.x;
    if (row >= prm.rows) return;
    float* lg = prm.logits + (u64)row * prm.vocab;
    float* cd = prm.cand + (u64)row * prm.vocab;

    // 1. Sanitise, then the penalty over the row's distinct history ids.
    for (u32 i = li; i < prm.vocab; i += WG) {
        u32 b = __float_as_uint(lg[i]);
        if ((b & 0x7fffffffu) >= 0x7f800000u) lg[i] = (b == 0x7f800000u) ? F32_MAX : NEG_BIG;
    }
    __syncthreads();
    if (prm.flags & 4u) {
        for (u32 j = prm.hist[row] + li; j < prm.hist[row + 1]; j += WG) {
            u32 id = prm.hist[prm.rows + 1 + j];
            if (id < prm.vocab) {
                float x = lg[id];
                float y = x < 0.0f ? x * prm.pen : x / prm.pen;
                lg[id] = fmaxf(y, NEG_BIG);
            }
        }
    }
    __syncthreads();

    // 2. Argmax, lowest index on ties.
    float bv = -F32_MAX;
    u32 bi = 0xffffffffu;
    for (u32 i = li; i < prm.vocab; i += WG) {
        float x = lg[i];
        if (x > bv) {
            bv = x;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if ((li & 31) == 0) {
        red_f[li >> 5] = bv;
        red_u[li >> 5] = bi;
    }
    __syncthreads();
    if (li == 0) {
        float v = red_f[0];
        u32 ix = red_u[0];
        for (u32 w = 1; w < WG / 32; w++) {
            if (red_f[w] > v || (red_f[w] == v && red_u[w] < ix)) {
                v = red_f[w];
                ix = red_u[w];
            }
        }
        s_f = v;
        s_u = ix == 0xffffffffu ? 0 : ix;
    }
    __syncthreads();
    const float mx = s_f;
    const u32 best = s_u;
    if ((prm.flags & 1u) || mx <= NEG_BIG) {
        if (li == 0) prm.out[row] = best;
        return;
    }
    __syncthreads();

    // 3. Temperature on prm.logits shifted so the largest is 0.
    for (u32 i = li; i < prm.vocab; i += WG) lg[i] = fmaxf((lg[i] - mx) / prm.temp, NEG_BIG);
    __syncthreads();

    // 4. top-k: the k-th largest key, 8 bits at a time from the top.
    Cut cut = {0u, 0u, 0xffffffffu};
    if (prm.topk > 0 && prm.topk < prm.vocab) {
        u32 prefix = 0, mask = 0, remaining = prm.topk;
        for (u32 rnd = 0; rnd < 4; rnd++) {
            const u32 shift = 24 - 8 * rnd;
            if (li < 256) bins[li] = 0;
            __syncthreads();
            for (u32 i = li; i < prm.vocab; i += WG) {
                u32 k = okey(lg[i]);
                if ((k & mask) == prefix) atomicAdd(&bins[(k >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (li == 0) {
                u32 cum = 0, d = 255;
                while (true) {
                    u32 c = bins[d];
                    if (cum + c >= remaining || d == 0) break;
                    cum += c;
                    d -= 1;
                }
                s_u = prefix | (d << shift);
                s_u2 = remaining - cum;
            }
            __syncthreads();
            prefix = s_u;
            remaining = s_u2;
            mask |= 255u << shift;
            __syncthreads();
        }
        cut.k_lo = prefix;
    }

    // 5. top-p over the top-k survivors.
    if (prm.topp < 1.0f) {
        const float total = mass_ge(lg, prm.vocab, cut.k_lo, sh);
        const float goal_p = prm.topp * total;
        // Candidates, in id order: survivors of weight at least (1 - top_p) · total / prm.vocab (with a margin).
        const float bound = logf((1.0f - prm.topp) * total / (float)prm.vocab) - 1e-3f;
        u32 mine = 0;
        for (u32 i = slice_lo(li, prm.vocab); i < slice_hi(li, prm.vocab); i++) {
            float l = lg[i];
            if (okey(l) >= cut.k_lo && l >= bound) mine++;
        }
        red_u[li] = mine;
        const u32 ncand = prefix_u(red_u, &s_u);
        u32 o = red_u[li];
        for (u32 i = slice_lo(li, prm.vocab); i < slice_hi(li, prm.vocab); i++) {
            float l = lg[i];
            if (okey(l) >= cut.k_lo && l >= bound) cd[o++] = l;
        }
        __syncthreads();
        u32 lo = cut.k_lo, hi = KEY_ZERO;
        for (u32 it = 0; it < 32; it++) {
            u32 mid = lo + (hi - lo + 1) / 2;
            float m = mass_ge(cd, ncand, mid, sh);
            if (lo < hi) {
                if (m >= goal_p) lo = mid;
                else hi = mid - 1;
            }
        }
        cut.p_key = lo;
        // Elements at the cut all weigh exp(l'): the lowest ids among them fill what the mass above lacks.
        const float above = mass_ge(cd, ncand, lo + 1, sh);
        const float w = expf(unkey(lo));
        const float need = fmaxf(1.0f, ceilf((goal_p - above) / w));
        u32 cnt = 0;
        for (u32 i = slice_lo(li, prm.vocab); i < slice_hi(li, prm.vocab); i++)
            if (okey(lg[i]) == lo) cnt++;
        red_u[li] = cnt;
        __syncthreads();
        if (li == 0) {
            u32 c = 0, owner = WG, before = 0;
            for (u32 t = 0; t < WG; t++) {
                if (owner == WG && (float)(c + red_u[t]) >= need) {
                    owner = t;
                    before = c;
                }
                c += red_u[t];
            }
            s_u = owner;
            s_u2 = before;
        }
        __syncthreads();
        const u32 owner = s_u, before = s_u2;
        __syncthreads();
        if (li == 0) s_u = prm.vocab;
        __syncthreads();
        if (li == owner) {
            u32 c = before;
            for (u32 i = slice_lo(li, prm.vocab); i < slice_hi(li, prm.vocab); i++) {
                if (okey(lg[i]) == lo) {
                    c++;
                    if ((float)c >= need) {
                        s_u = i;
                        break;
                    }
                }
            }
        }
        __syncthreads();
        cut.p_tie = s_u;
    }

    // 6. min-p: a key threshold (the largest l', 0, is above any ln(min_p)).
    if (prm.flags & 2u) cut.k_lo = max(cut.k_lo, okey(prm.ln_minp));

    // 7. The draw, in id order.
    float part = 0.0f;
    for (u32 i = slice_lo(li, prm.vocab); i < slice_hi(li, prm.vocab); i++) {
        float l = lg[i];
        if (kept(cut, okey(l), i)) part += expf(l);
    }
    red_f[li] = part;
    __syncthreads();
    if (li == 0) {
        float total = 0.0f;
        for (u32 t = 0; t < WG; t++) total += red_f[t];
        const float goal = prm.draws[row] * total;
        float c = 0.0f, rest = 0.0f;
        u32 owner = WG;
        for (u32 t = 0; t < WG; t++) {
            if (owner == WG && c + red_f[t] > goal) {
                owner = t;
                rest = goal - c;
            }
            c += red_f[t];
        }
        s_u = owner;
        s_f = rest;
    }
    __syncthreads();
    const u32 owner = s_u;
    const float rest = s_f;
    if (owner == WG) {
        // Rounding left a sliver of mass: the most likely survivor.
        if (li == 0) prm.out[row] = best;
        return;
    }
    if (li == owner) {
        float c = 0.0f;
        u32 last = best;
        for (u32 i = slice_lo(li, prm.vocab); i < slice_hi(li, prm.vocab); i++) {
            float l = lg[i];
            if (kept(cut, okey(l), i)) {
                c += expf(l);
                last = i;
                if (c > rest) break;
            }
        }
        prm.out[row] = last;
    }
}

// mask_logits: constrained decoding. Token t of row r keeps its logit when bit t % 32 of mask word
// r * words + t / 32 is set, and gets -inf otherwise (weight 0 in sample). One thread per logit.
struct MaskLogitsParams {
    float* logits;
    const u32* mask;
    u32 n;
    u32 vocab;
    u32 words;
    u32 pad;
};

extern "C" __global__ void mask_logits(const MaskLogitsParams prm) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= prm.n) return;
    const u32 r = (u32)(i / prm.vocab), t = (u32)(i % prm.vocab);
    if (((prm.mask[(u64)r * prm.words + t / 32] >> (t % 32)) & 1u) == 0u) prm.logits[i] = __uint_as_float(0xff800000u);
}
