// Interleaved-pair RoPE in place, one warp per (row, head) vector; with `norm` the rotated vector is then
// RMS-normalised without a weight (Llama 4's QK norm) in the same pass.

struct RopeParams {
    float* x;
    const u32* pos;
    const float* inv_freq;
    u32 rows;
    u32 heads;
    u32 hd;
    u32 norm;
    float eps;
    u32 pad;
};

extern "C" __global__ void rope(const RopeParams prm) {
    const u32 gw = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (gw >= prm.rows * prm.heads) return; // whole warps leave together
    float* v = prm.x + (u64)gw * prm.hd;
    const float p = (float)prm.pos[gw / prm.heads];
    float ss = 0.0f;
    for (u32 j = lane; j < prm.hd / 2; j += 32) {
        float a = v[2 * j], b = v[2 * j + 1];
        float s, c;
        sincosf(p * prm.inv_freq[j], &s, &c);
        float na = a * c - b * s, nb = a * s + b * c;
        v[2 * j] = na;
        v[2 * j + 1] = nb;
        ss += na * na + nb * nb;
    }
    if (prm.norm) {
        // Each lane scales the pairs it wrote itself: a shuffle orders no memory, so another lane's stores
        // need not be visible here.
        ss = warp_sum(ss);
        float r = 1.0f / sqrtf(ss / (float)prm.hd + prm.eps);
        for (u32 j = lane; j < prm.hd / 2; j += 32) {
            v[2 * j] *= r;
            v[2 * j + 1] *= r;
        }
    }
}
