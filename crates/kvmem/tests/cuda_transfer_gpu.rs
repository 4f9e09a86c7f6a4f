//! The transfer engine's CUDA paths on a real GPU: randomized block copies between every pair of
//! layouts over pinned, device, pageable host and disk tiers, checked byte for byte against a
//! reference computed from the dimension orders (tests/common/cases.rs). Run with `--ignored`.

mod common;

use common::cases::every_layout_pair;
use common::{Tier, engine_with};
use kvmem::transfer::{CopyMethod, EngineConfig, TransferEngine};

fn engine(gpu_method: CopyMethod) -> TransferEngine {
    TransferEngine::new(EngineConfig {
        gpu_method,
        // Small bounce buffers, so staged transfers run through several slabs.
        bounce_bytes: 64 << 10,
        ..EngineConfig::default()
    })
    .unwrap()
}

/// Three random cases for every pair of layouts on each pair of tiers.
fn sweep(engine: &TransferEngine, pairs: &[(Tier, Tier)], seed: u64) {
    every_layout_pair(engine, pairs, seed, 3);
}

const GPU_PAIRS: [(Tier, Tier); 8] = [
    (Tier::Pinned, Tier::Device),
    (Tier::Device, Tier::Pinned),
    (Tier::Device, Tier::Device),
    (Tier::Host, Tier::Device),
    (Tier::Device, Tier::Host),
    (Tier::Disk, Tier::Device),
    (Tier::Device, Tier::Disk),
    (Tier::Pinned, Tier::Host),
];

/// One test per copy method, `name: method, seed;`, each sweeping every GPU tier pair with the
/// engine's GPU method set to it (one test per method, so that the GPU harness can run each by
/// name, under memcheck too). `Auto` picks per copy list; the others force one, staged included.
macro_rules! every_gpu_tier_pair_by_method {
    ($($name:ident: $method:ident, $seed:literal;)*) => {$(
        #[test]
        #[ignore = "needs a CUDA GPU"]
        fn $name() {
            sweep(&engine(CopyMethod::$method), &GPU_PAIRS, $seed);
        }
    )*};
}

every_gpu_tier_pair_by_method! {
    every_layout_pair_over_gpu_tiers_auto: Auto, 0x6B00;
    every_layout_pair_over_gpu_tiers_batched: Batched, 0x7C00;
    every_layout_pair_over_gpu_tiers_kernel: Kernel, 0x8C00;
    every_layout_pair_over_gpu_tiers_per_copy: PerCopy, 0x9C00;
    every_layout_pair_over_gpu_tiers_staged: Staged, 0xAC00;
}

/// Pinned host memory to and from files, on each disk backend (the host ↔ disk executors, with
/// page-locked buffers).
#[test]
#[ignore = "needs a CUDA GPU"]
fn every_layout_pair_pinned_and_disk_each_disk_backend() {
    for (i, disk_backend) in kvmem::transfer::DiskBackend::ALL.into_iter().enumerate() {
        sweep(
            &engine_with(disk_backend),
            &[(Tier::Pinned, Tier::Disk), (Tier::Disk, Tier::Pinned)],
            0x8D00 + 1000 * i as u64,
        );
    }
}
