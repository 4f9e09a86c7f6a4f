// kvmem's batched copy kernel. Compiled to PTX by scripts/build-ptx.sh (clang, no CUDA toolkit
// needed) and shipped as copy.ptx; kvmem loads the PTX through the driver at run time.
//
// One descriptor is one copy of `len` bytes from `src` to `dst` (device pointers, or host pointers
// mapped into the device's address space: pinned memory). Each thread block takes descriptors in a
// grid-stride loop. Where src, dst and len are all 16-byte aligned, threads move 16-byte vectors,
// UNROLL of them in flight per thread, so reads across PCIe overlap; the rest falls back to bytes.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef u32 v4u32 __attribute__((ext_vector_type(4)));

#define GLOBAL __attribute__((address_space(1)))
#define UNROLL 4

struct CopyDesc {
    u64 src;
    u64 dst;
    u64 len;
};

static __attribute__((device)) inline u32 tid() { return __nvvm_read_ptx_sreg_tid_x(); }
static __attribute__((device)) inline u32 ntid() { return __nvvm_read_ptx_sreg_ntid_x(); }
static __attribute__((device)) inline u32 ctaid() { return __nvvm_read_ptx_sreg_ctaid_x(); }
static __attribute__((device)) inline u32 nctaid() { return __nvvm_read_ptx_sreg_nctaid_x(); }

static __attribute__((device)) void copy_vec16(u64 src, u64 dst, u64 n_vec) {
    const GLOBAL v4u32 *s = (const GLOBAL v4u32 *)src;
    GLOBAL v4u32 *d = (GLOBAL v4u32 *)dst;
    const u64 step = (u64)ntid();
    u64 i = tid();
    // Main loop: UNROLL independent 16-byte loads in flight before the stores.
    for (; i + (UNROLL - 1) * step < n_vec; i += UNROLL * step) {
        v4u32 r[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) r[k] = s[i + k * step];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) d[i + k * step] = r[k];
    }
    for (; i < n_vec; i += step) d[i] = s[i];
}

static __attribute__((device)) void copy_bytes(u64 src, u64 dst, u64 len) {
    const GLOBAL unsigned char *s = (const GLOBAL unsigned char *)src;
    GLOBAL unsigned char *d = (GLOBAL unsigned char *)dst;
    for (u64 i = tid(); i < len; i += ntid()) d[i] = s[i];
}

extern "C" __attribute__((global)) void kvmem_copy_chunks(const CopyDesc *descs, u32 count) {
    for (u32 c = ctaid(); c < count; c += nctaid()) {
        const u64 src = descs[c].src, dst = descs[c].dst, len = descs[c].len;
        if (((src | dst | len) & 15) == 0) {
            copy_vec16(src, dst, len >> 4);
        } else {
            copy_bytes(src, dst, len);
        }
    }
}
