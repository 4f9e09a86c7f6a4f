//! The block cache's data path on a GPU (run on the GPU machine): 512-token Llama-3-8B blocks
//! (32 layers, 8 KV heads, head size 128, bf16: 64 MiB per block) between vLLM's
//! layer-separate layout in device memory and the pinned host tier and the disk tier, checked
//! byte for byte, with the cache's bandwidth printed next to the transfer engine's for the same
//! bytes in the same run (the goal is ≥ 0.95×; measured, not asserted).

mod common;

use kvmem::Completion;
use kvmem::cache::{BlockCache, CacheConfig, Capacity, HostPoolKind, chain_keys};
use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
use kvmem::transfer::TransferEngine;
use kvmem::{Buffer, DeviceStorage, MappedPinnedStorage};
use std::path::Path;
use std::time::{Duration, Instant};

const BLOCKS: usize = 8;

fn llama3_8b(blocks: usize) -> LayoutConfig {
    LayoutConfig {
        num_blocks: blocks,
        num_layers: 32,
        outer_dim: 2,
        page_size: 512,
        inner_dim: 8 * 128,
        dtype_bytes: 2,
    }
}

fn gib_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / (1u64 << 30) as f64
}

/// `f`'s result and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// A cache of Llama-3-8B blocks with `BLOCKS` host slots and a disk tier under `dir`.
fn config_on_disk(dir: &Path) -> CacheConfig {
    let mut config = CacheConfig::new(llama3_8b(1), Capacity::Blocks(BLOCKS))
        .with_disk(dir.join("cache"), Capacity::Blocks(2 * BLOCKS));
    config.fingerprint = "llama3-8b".into();
    config
}

/// Asserts that the regions of `layout` hold the bytes of `regions` (`what` names the check).
fn assert_holds(layout: &BlockLayout, regions: &[(Buffer, Vec<u8>)], what: &str) {
    for (region, image) in layout.regions().iter().zip(regions) {
        assert!(common::read_region(region) == image.1, "{what}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn llama3_8b_blocks_through_host_and_disk_at_engine_speed() {
    let gpu = common::gpu();
    let kind = LayoutKind::LayerSeparate(BlockDim::Second);
    let device = |n: usize| Ok(Buffer::new(DeviceStorage::new(&gpu, n)?));
    let src = BlockLayout::allocate(llama3_8b(BLOCKS), kind, 4096, device).unwrap();
    let dst = BlockLayout::allocate(llama3_8b(BLOCKS), kind, 4096, device).unwrap();
    // Random bytes into the source blocks, through a host layout of the same shape.
    let dir = tempfile::tempdir_in(
        std::env::var_os("KVMEM_DISK_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .unwrap();
    let mut rng = rand::SeedableRng::seed_from_u64(7);
    let regions: Vec<(Buffer, Vec<u8>)> = (0..32)
        .map(|_| {
            common::random_region(
                common::Tier::Host,
                src.region_bytes(),
                0,
                dir.path(),
                &mut rng,
            )
        })
        .collect();
    let host_src = BlockLayout::new(
        llama3_8b(BLOCKS),
        kind,
        regions.iter().map(|r| r.0.clone()).collect(),
        4096,
    )
    .unwrap();
    let engine = TransferEngine::new(Default::default()).unwrap();
    let ids: Vec<usize> = (0..BLOCKS).collect();
    engine
        .copy_blocks(&host_src, &ids, &src, &ids)
        .unwrap()
        .wait()
        .unwrap();

    let mut config = config_on_disk(dir.path());
    if let Some(d) = config.disk.as_mut() {
        d.write = kvmem::cache::WritePolicy::WriteThrough;
    }
    let cache = BlockCache::open(config).unwrap();
    assert_eq!(cache.host_pool_kind(), HostPoolKind::Pinned);
    let tokens: Vec<u32> = (0..(BLOCKS * 512) as u32).collect();
    let keys = chain_keys(None, &tokens, 512);
    let bytes = BLOCKS * cache.block_bytes();
    let t = Duration::from_secs(120);

    // The engine's own bandwidth for the same bytes: device -> pinned, pinned -> device.
    let pinned = BlockLayout::allocate(llama3_8b(BLOCKS), LayoutKind::FullyContiguous, 4096, |n| {
        Ok(Buffer::new(MappedPinnedStorage::new(&gpu, n)?))
    })
    .unwrap();
    let engine_copy = |from: &BlockLayout, to: &BlockLayout| {
        timed(|| {
            engine
                .copy_blocks(from, &ids, to, &ids)
                .unwrap()
                .wait()
                .unwrap()
        })
        .1
    };
    let engine_d2h = engine_copy(&src, &pinned);
    let engine_h2d = engine_copy(&pinned, &dst);

    let (r, store) = timed(|| cache.store(&keys, &src, &ids, t).unwrap().wait().unwrap());
    assert_eq!(r.stored, BLOCKS);
    let (r, load) = timed(|| cache.load(&keys, &dst, &ids, t).unwrap().wait().unwrap());
    assert!(r.complete() && r.from_host == BLOCKS, "{r:?}");
    assert_holds(&dst, &regions, "a block loaded from host differs");
    println!(
        "store {:.1} GiB/s (engine {:.1}, ratio {:.3}); load from host {:.1} GiB/s (engine {:.1}, ratio {:.3})",
        gib_s(bytes, store),
        gib_s(bytes, engine_d2h),
        engine_d2h.as_secs_f64() / store.as_secs_f64(),
        gib_s(bytes, load),
        gib_s(bytes, engine_h2d),
        engine_h2d.as_secs_f64() / load.as_secs_f64(),
    );

    // Disk: wait for the write-through, drop the cache, reopen (host empty), load from disk.
    for _ in 0..12_000 {
        if keys.iter().all(|k| cache.residency(*k).disk) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(cache);
    let cache = BlockCache::open(config_on_disk(dir.path())).unwrap();
    assert_eq!(cache.stats().recovered, BLOCKS as u64);
    let zero = BlockLayout::allocate(llama3_8b(BLOCKS), kind, 4096, device).unwrap();
    let (r, disk_load) = timed(|| cache.load(&keys, &zero, &ids, t).unwrap().wait().unwrap());
    assert!(r.complete() && r.from_disk == BLOCKS, "{r:?}");
    assert_holds(&zero, &regions, "a block loaded from disk differs");
    println!(
        "load from disk (checked) {:.2} GiB/s",
        gib_s(bytes, disk_load)
    );
}
