// kvmem's compute load: an SM-saturating FMA loop that stands in for an engine's matmuls while
// `kvmem bench --with-compute` measures copies beside it. Compiled to PTX by
// scripts/build-ptx.sh (clang, no CUDA toolkit needed) and shipped as compute.ptx.
//
// Every thread runs CHAINS independent chains of `iterations` fused multiply-adds
// (x = fma(x, A, B)) from seeds derived from its global index, and writes their sum to
// out[index]: the result is exact (IEEE fma, no reassociation), so a test can recompute it on
// the CPU. The chains keep each SM's FMA pipes busy; the store keeps the loop from being
// optimised away.

typedef unsigned int u32;

#define GLOBAL __attribute__((address_space(1)))
#define CHAINS 8
#define A 0.999999f
#define B 0.000001f

static __attribute__((device)) inline u32 tid() { return __nvvm_read_ptx_sreg_tid_x(); }
static __attribute__((device)) inline u32 ntid() { return __nvvm_read_ptx_sreg_ntid_x(); }
static __attribute__((device)) inline u32 ctaid() { return __nvvm_read_ptx_sreg_ctaid_x(); }

extern "C" __attribute__((global)) void kvmem_fma_load(float *out, u32 iterations) {
    const u32 index = ctaid() * ntid() + tid();
    float x[CHAINS];
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) x[k] = (float)(index % 1024u) * 0.0009765625f + (float)k;
    for (u32 i = 0; i < iterations; ++i) {
#pragma unroll
        for (int k = 0; k < CHAINS; ++k) x[k] = __builtin_fmaf(x[k], A, B);
    }
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < CHAINS; ++k) sum += x[k];
    ((GLOBAL float *)out)[index] = sum;
}
