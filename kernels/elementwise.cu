// Element-wise and row ops: embedding lookup, residual add, SwiGLU's silu·up, row gather, and the
// synthetic weights of herd_core::synthetic made in place (the same values as the host generator).

template <int DT> __device__ void embed_impl(const void* table, const u32* ids, float* out, u32 n, u32 dim) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)n * dim) return;
    u32 r = (u32)(i / dim), c = (u32)(i % dim);
    out[i] = ldw<DT>(table, (u64)ids[r] * dim + c);
}
struct EmbedParams {
    const void* t;
    const u32* ids;
    float* out;
    u32 n;
    u32 dim;
};

extern "C" __global__ void embed_f32(const EmbedParams prm) { embed_impl<0>(prm.t, prm.ids, prm.out, prm.n, prm.dim); }
extern "C" __global__ void embed_bf16(const EmbedParams prm) { embed_impl<1>(prm.t, prm.ids, prm.out, prm.n, prm.dim); }
extern "C" __global__ void embed_f16(const EmbedParams prm) { embed_impl<2>(prm.t, prm.ids, prm.out, prm.n, prm.dim); }

template <int BITS>
__device__ void embed_q_impl(const unsigned char* t, const unsigned short* sc, u32 st, u32 group, const u32* ids,
                             float* out, u32 n, u32 dim) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)n * dim) return;
    u64 e = (u64)ids[i / dim] * dim + i % dim;
    out[i] = (float)ld_q<BITS>(t, e) * ld_scale(sc, e / group, st);
}
struct EmbedQParams {
    const unsigned char* t;
    const unsigned short* sc;
    const u32* ids;
    float* out;
    u32 st;
    u32 group;
    u32 n;
    u32 dim;
};

extern "C" __global__ void embed_q4(const EmbedQParams prm) { embed_q_impl<4>(prm.t, prm.sc, prm.st, prm.group, prm.ids, prm.out, prm.n, prm.dim); }
extern "C" __global__ void embed_q8(const EmbedQParams prm) { embed_q_impl<8>(prm.t, prm.sc, prm.st, prm.group, prm.ids, prm.out, prm.n, prm.dim); }

struct AddParams {
    float* acc;
    const float* x;
    u32 n;
    u32 pad;
};

extern "C" __global__ void add(const AddParams prm) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < prm.n) prm.acc[i] += prm.x[i];
}

struct SiluMulParams {
    float* gate;
    const float* up;
    u32 n;
    u32 pad;
};

extern "C" __global__ void silu_mul(const SiluMulParams prm) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < prm.n) {
        float g = prm.gate[i];
        prm.gate[i] = g / (1.0f + expf(-g)) * prm.up[i];
    }
}

struct GatherRowsParams {
    const float* x;
    const u32* rows;
    float* out;
    u32 n;
    u32 dim;
};

extern "C" __global__ void gather_rows(const GatherRowsParams prm) {
    u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < prm.n * prm.dim) prm.out[i] = prm.x[(u64)prm.rows[i / prm.dim] * prm.dim + i % prm.dim];
}

// herd_core::synthetic::splitmix64 and uniform_at.
__device__ __forceinline__ u64 splitmix64(u64 seed, u64 i) {
    u64 z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ float synth_value(u64 seed, float scale, u32 ones, u64 i) {
    if (ones) return 1.0f;
    u32 r = (u32)((splitmix64(seed, i / 4) >> (16 * (i % 4))) & 0xffffu);
    return (__fmul_rn((float)r, 1.0f / 32768.0f) - 1.0f) * scale;
}
struct SynthParams {
    void* out;
    u64 n;
    u64 seed;
    float scale;
    u32 ones;
};

extern "C" __global__ void synth_f32(const SynthParams prm) {
    float* out = static_cast<float*>(prm.out);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < prm.n; i += (u64)gridDim.x * blockDim.x)
        out[i] = synth_value(prm.seed, prm.scale, prm.ones, i);
}
extern "C" __global__ void synth_bf16(const SynthParams prm) {
    u16* out = static_cast<u16*>(prm.out);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < prm.n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2bf(synth_value(prm.seed, prm.scale, prm.ones, i));
}
extern "C" __global__ void synth_f16(const SynthParams prm) {
    u16* out = static_cast<u16*>(prm.out);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < prm.n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2h(synth_value(prm.seed, prm.scale, prm.ones, i));
}

// A synthetic quantized tensor (herd_core::synthetic::tensor of a quantized format): one thread per pair of
// adjacent scales along the contiguous axis (so that q4 bytes are never shared), each generating its groups'
// f32 values, their max |x|, the rounded scale and the integers, exactly as herd_core::quant::quantize does.
// Shape: outer × second × last; axis 0: groups along `last` (runs of `group`), 1: along `second`.
template <int BITS>
__device__ void synth_q_impl(unsigned char* v, unsigned short* sc, u32 st, u32 group, u32 axis, u64 outer, u32 second,
                             u32 last, u64 seed, float scale, u64 nscales) {
    u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const float qmax = BITS == 8 ? 127.0f : 7.0f;
    const int qlo = BITS == 8 ? -128 : -8, qhi = BITS == 8 ? 127 : 7;
    for (u64 pair = t; 2 * pair < nscales; pair += (u64)gridDim.x * blockDim.x) {
        for (u32 h = 0; h < 2; h++) {
            const u64 s = 2 * pair + h;
            if (s >= nscales) break;
            // The flat index of the j-th element of scale s.
            u64 first, stride;
            if (axis == 0) {
                first = s * group;
                stride = 1;
            } else {
                const u64 per_outer = (u64)(second / group) * last;
                const u64 o = s / per_outer, rem = s % per_outer, rg = rem / last, l = rem % last;
                first = (o * second + rg * group) * last + l;
                stride = last;
            }
            float m = 0.0f;
            for (u32 j = 0; j < group; j++) m = fmaxf(m, fabsf(synth_value(seed, scale, 0, first + j * stride)));
            const float raw = m / qmax;
            const unsigned short bits = st ? f2bf(raw) : f2h(raw);
            const float sv = st ? bf2f(bits) : h2f(bits);
            sc[s] = bits;
            for (u32 j = 0; j < group; j++) {
                const u64 i = first + j * stride;
                const float x = synth_value(seed, scale, 0, i);
                int q = (sv > 0.0f && sv <= F32_MAX) ? (int)roundf(x / sv) : 0;
                q = q < qlo ? qlo : (q > qhi ? qhi : q);
                if (BITS == 8) {
                    v[i] = (unsigned char)(signed char)q;
                } else {
                    // The two nibbles of a byte belong to scales 2·pair and 2·pair + 1 (axis 1), or to this
                    // thread's own run (axis 0): either way only this thread writes the byte.
                    unsigned char* b = v + (i >> 1);
                    const unsigned char nib = (unsigned char)(q + 8);
                    *b = (i & 1) ? (unsigned char)((*b & 0x0f) | (nib << 4)) : (unsigned char)((*b & 0xf0) | nib);
                }
            }
        }
    }
}
struct SynthQParams {
    unsigned char* v;
    unsigned short* sc;
    u64 outer;
    u64 seed;
    u64 nscales;
    u32 st;
    u32 group;
    u32 axis;
    u32 second;
    u32 last;
    float scale;
};

extern "C" __global__ void synth_q4(const SynthQParams prm) { synth_q_impl<4>(prm.v, prm.sc, prm.st, prm.group, prm.axis, prm.outer, prm.second, prm.last, prm.seed, prm.scale, prm.nscales); }
extern "C" __global__ void synth_q8(const SynthQParams prm) { synth_q_impl<8>(prm.v, prm.sc, prm.st, prm.group, prm.axis, prm.outer, prm.second, prm.last, prm.seed, prm.scale, prm.nscales); }
