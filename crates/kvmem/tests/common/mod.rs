//! Helpers shared by the transfer tests: regions filled with random bytes, and reading any
//! region back, both independent of the code under test (plain slices and `pread`).
#![allow(dead_code)]

pub mod cases;

use kvmem::cuda::{self, CudaDevice};
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine};
use kvmem::{
    Buffer, DeviceStorage, DiskStorage, HostMemory, MemoryDescriptor, OffsetBuffer, PinnedStorage,
    SystemStorage,
};
use rand::Rng;
use rand::rngs::StdRng;
use std::path::Path;

/// Where a test region lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Host,
    Disk,
    /// Pinned host memory (needs a GPU).
    Pinned,
    /// Device memory of GPU 0 (needs a GPU).
    Device,
}

/// GPU 0; only the GPU tests ask for it.
pub fn gpu() -> CudaDevice {
    CudaDevice::new(0).expect("CUDA device 0 must be usable on the GPU machine")
}

/// A region of `len` bytes filled with random bytes, returned with a copy of its contents.
/// With `offset > 0` the region is a view `offset` bytes into a larger storage (also random).
pub fn random_region(
    tier: Tier,
    len: usize,
    offset: usize,
    dir: &Path,
    rng: &mut StdRng,
) -> (Buffer, Vec<u8>) {
    let total = offset + len;
    let mut image = random_bytes(total, rng.random());
    let base = match tier {
        Tier::Host => {
            let mut s = SystemStorage::new(total).unwrap();
            s.as_mut_slice().copy_from_slice(&image);
            Buffer::new(s)
        }
        Tier::Disk => {
            let d = DiskStorage::new_in(dir, total).unwrap();
            let mut staging = SystemStorage::new(total.next_multiple_of(4096)).unwrap();
            staging.as_mut_slice()[..total].copy_from_slice(&image);
            d.write_at(0, &staging.as_slice()[..total]).unwrap();
            Buffer::new(d)
        }
        Tier::Pinned => {
            let mut s = PinnedStorage::new(&gpu(), total).unwrap();
            s.as_mut_slice().copy_from_slice(&image);
            Buffer::new(s)
        }
        Tier::Device => {
            // cuMemAlloc aligns small allocations to 512 bytes only: pad to a 4 KiB boundary,
            // which O_DIRECT paths (disk <-> device) need.
            let d = DeviceStorage::new(&gpu(), total + 4096).unwrap();
            let pad = d.addr().next_multiple_of(4096) - d.addr();
            let mut staging = SystemStorage::new(total + 4096).unwrap();
            staging.as_mut_slice()[pad..pad + total].copy_from_slice(&image);
            cuda::copy_host_to_device(&staging, &d).unwrap();
            Buffer::new(OffsetBuffer::new(Buffer::new(d), pad, total).unwrap())
        }
    };
    let region = if offset == 0 {
        base
    } else {
        Buffer::new(OffsetBuffer::new(base, offset, len).unwrap())
    };
    (region, image.split_off(offset))
}

/// `len` random bytes from `seed` (SplitMix64: fast even in unoptimized test builds).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v = vec![0u8; len];
    let mut words = v.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&next().to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = next().to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
    v
}

/// The current bytes of a region made by [`random_region`], read without kvmem's transfer code.
pub fn read_region(region: &Buffer) -> Vec<u8> {
    // Unwrap (possibly nested) views down to the storage.
    let (mut base, mut offset) = (region.clone(), 0);
    while let Some(view) = base.downcast_ref::<OffsetBuffer>() {
        offset += view.offset();
        let next = view.base().clone();
        base = next;
    }
    let len = region.size();
    if let Some(s) = base.downcast_ref::<SystemStorage>() {
        return s.as_slice()[offset..offset + len].to_vec();
    }
    if let Some(s) = base.downcast_ref::<PinnedStorage>() {
        return s.as_slice()[offset..offset + len].to_vec();
    }
    if let Some(s) = base.downcast_ref::<kvmem::storage::MappedPinnedStorage>() {
        return s.as_slice()[offset..offset + len].to_vec();
    }
    if let Some(s) = base.downcast_ref::<kvmem::storage::ExternalHostMemory>() {
        return s.as_slice()[offset..offset + len].to_vec();
    }
    if let Some(d) = base.downcast_ref::<DeviceStorage>() {
        let mut staging = SystemStorage::new(base.size()).unwrap();
        cuda::copy_device_to_host(d, &mut staging).unwrap();
        return staging.as_slice()[offset..offset + len].to_vec();
    }
    let d = base
        .downcast_ref::<DiskStorage>()
        .expect("test regions are system, pinned, external host, device or disk storage");
    let total = base.size();
    let mut staging = SystemStorage::new(total.next_multiple_of(4096)).unwrap();
    d.read_at(0, &mut staging.as_mut_slice()[..total]).unwrap();
    staging.as_slice()[offset..offset + len].to_vec()
}

/// Two tests, `$io_uring` and `$nixl_posix`, that run `$run` (a `fn(DiskBackend)`) with each
/// disk backend.
#[macro_export]
macro_rules! each_disk_backend {
    ($run:ident: $io_uring:ident, $nixl_posix:ident) => {
        #[test]
        fn $io_uring() {
            $run(kvmem::transfer::DiskBackend::IoUring);
        }

        #[test]
        fn $nixl_posix() {
            $run(kvmem::transfer::DiskBackend::NixlPosix);
        }
    };
}

/// An engine with the default settings but the given disk backend.
pub fn engine_with(disk_backend: DiskBackend) -> TransferEngine {
    TransferEngine::new(EngineConfig {
        disk_backend,
        ..EngineConfig::default()
    })
    .unwrap()
}
