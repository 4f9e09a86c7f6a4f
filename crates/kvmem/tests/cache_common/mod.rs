//! Helpers shared by the cache tests: a small block geometry, "GPU" layouts in host memory
//! filled with each key's own bytes, and reading blocks back without the cache's code.
#![allow(dead_code)]

use kvmem::cache::{BlockCache, BlockKey, CacheConfig, Capacity, HostMemoryKind};
use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
use kvmem::{Buffer, HostMemory, SystemStorage};

/// Blocks of 2 layers x 2 parts x 1 KiB = 4 KiB (one O_DIRECT page).
pub fn block() -> LayoutConfig {
    LayoutConfig {
        num_blocks: 1,
        num_layers: 2,
        outer_dim: 2,
        page_size: 4,
        inner_dim: 128,
        dtype_bytes: 2,
    }
}

pub const BLOCK_BYTES: usize = 4096;

/// The bytes block `key` must always have.
pub fn pattern(key: BlockKey) -> Vec<u8> {
    let mut state = (key.0 as u64) ^ ((key.0 >> 64) as u64).rotate_left(17);
    let mut v = Vec::with_capacity(BLOCK_BYTES);
    while v.len() < BLOCK_BYTES {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v
}

/// A layer-separate (vLLM-like) layout of `n` blocks in host memory standing in for the GPU,
/// block `i` holding `pattern(keys[i])` (zeros past `keys`).
pub fn gpu_with(keys: &[BlockKey], n: usize) -> BlockLayout {
    let config = LayoutConfig {
        num_blocks: n,
        ..block()
    };
    let kind = LayoutKind::LayerSeparate(kvmem::layout::BlockDim::Second);
    let (regions, bytes) = config.regions(kind).unwrap();
    let chunk = config.chunk_bytes().unwrap();
    let mut stores: Vec<SystemStorage> = (0..regions)
        .map(|_| SystemStorage::new(bytes).unwrap())
        .collect();
    for (b, key) in keys.iter().enumerate() {
        let p = pattern(*key);
        // The cache's block is [layer, outer, chunk]; vLLM's region per layer is [outer, block].
        for (layer, store) in stores.iter_mut().enumerate() {
            for outer in 0..config.outer_dim {
                let src = (layer * config.outer_dim + outer) * chunk;
                let dst = (outer * n + b) * chunk;
                store.as_mut_slice()[dst..dst + chunk].copy_from_slice(&p[src..src + chunk]);
            }
        }
    }
    let regions = stores.drain(..).map(Buffer::new).collect();
    BlockLayout::new(config, kind, regions, 1024).unwrap()
}

/// Block `b` of a layout made by [`gpu_with`], in the cache's byte order.
pub fn read_block(layout: &BlockLayout, b: usize) -> Vec<u8> {
    let config = layout.config();
    let n = config.num_blocks;
    let chunk = layout.chunk_bytes();
    let mut out = vec![0u8; BLOCK_BYTES];
    for layer in 0..config.num_layers {
        let s = layout.regions()[layer]
            .downcast_ref::<SystemStorage>()
            .unwrap()
            .as_slice();
        for outer in 0..config.outer_dim {
            let dst = (layer * config.outer_dim + outer) * chunk;
            let src = (outer * n + b) * chunk;
            out[dst..dst + chunk].copy_from_slice(&s[src..src + chunk]);
        }
    }
    out
}

/// Blocks of 64 bytes (one layer, one part, one token of 64 one-byte elements): copies that cost
/// next to nothing, so that what a test or bench measures is the cache's own bookkeeping.
pub fn tiny_block() -> LayoutConfig {
    LayoutConfig {
        num_blocks: 1,
        num_layers: 1,
        outer_dim: 1,
        page_size: 1,
        inner_dim: 64,
        dtype_bytes: 1,
    }
}

/// A fully contiguous layout of `blocks` [`tiny_block`]s in host memory.
pub fn tiny_layout(blocks: usize) -> BlockLayout {
    let config = LayoutConfig {
        num_blocks: blocks,
        ..tiny_block()
    };
    BlockLayout::allocate(config, LayoutKind::FullyContiguous, 64, |n| {
        Ok(Buffer::new(SystemStorage::new(n)?))
    })
    .unwrap()
}

/// A cache of [`tiny_block`]s with `blocks` host slots in plain (pageable) memory, no disk.
pub fn tiny_cache(blocks: usize) -> BlockCache {
    let mut config = CacheConfig::new(tiny_block(), Capacity::Blocks(blocks));
    config.host_memory = HostMemoryKind::System;
    BlockCache::open(config).unwrap()
}

pub fn key(i: u64) -> BlockKey {
    BlockKey::from_u64(i)
}

/// Caps the size of every file this process writes at `bytes` (`RLIMIT_FSIZE`), with `SIGXFSZ`
/// ignored, so that a write past the cap fails with `EFBIG` instead of killing the process: a
/// full disk, for a test's child process.
pub fn limit_file_size(bytes: u64) {
    // SAFETY: plain libc calls on this process: ignore SIGXFSZ (so a write past the limit
    // fails with EFBIG instead of killing the process) and set RLIMIT_FSIZE.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let r = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &r), 0);
    }
}
