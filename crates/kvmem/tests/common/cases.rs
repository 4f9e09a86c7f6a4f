//! One randomized block-copy case: random layouts on two tiers, random block ids, the copy,
//! and a byte-for-byte comparison with a reference computed from the documented dimension orders.

use super::{Tier, random_region, read_region};
use kvmem::Completion;
use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
use kvmem::transfer::TransferEngine;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Every pair of layouts, `cases` random cases each, for each pair of tiers; case seeds count up
/// from `seed`.
pub fn every_layout_pair(engine: &TransferEngine, tiers: &[(Tier, Tier)], seed: u64, cases: usize) {
    every_layout_pair_of(engine, tiers, seed, cases, CaseSize::Small);
}

/// How many blocks a random case moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseSize {
    /// Up to 13 blocks.
    Small,
    /// 4,096 blocks or more (of small chunks): requests the engine plans in two parts between
    /// pinned and device memory.
    Large,
}

/// [`every_layout_pair`] with cases of `size`.
pub fn every_layout_pair_of(
    engine: &TransferEngine,
    tiers: &[(Tier, Tier)],
    mut seed: u64,
    cases: usize,
    size: CaseSize,
) {
    for &(src_tier, dst_tier) in tiers {
        for src_kind in LayoutKind::ALL {
            for dst_kind in LayoutKind::ALL {
                for _ in 0..cases {
                    seed += 1;
                    run_case(
                        engine,
                        (src_tier, dst_tier),
                        (src_kind, dst_kind),
                        seed,
                        size,
                    );
                }
            }
        }
    }
}

/// Offset of chunk (block, layer, outer) in its region, written out from the documented
/// dimension orders; the region is 0 for fully contiguous layouts and `layer` otherwise.
pub fn reference_offset(
    kind: LayoutKind,
    c: &LayoutConfig,
    b: usize,
    l: usize,
    o: usize,
) -> (usize, usize) {
    let chunk = c.page_size * c.inner_dim * c.dtype_bytes;
    match kind {
        LayoutKind::FullyContiguous => (0, (((b * c.num_layers) + l) * c.outer_dim + o) * chunk),
        LayoutKind::LayerSeparate(BlockDim::First) => (l, (b * c.outer_dim + o) * chunk),
        LayoutKind::LayerSeparate(BlockDim::Second) => (l, (o * c.num_blocks + b) * chunk),
    }
}

pub struct Side {
    pub layout: BlockLayout,
    pub images: Vec<Vec<u8>>,
}

pub fn make_side(
    tier: Tier,
    kind: LayoutKind,
    config: LayoutConfig,
    align: usize,
    dir: &std::path::Path,
    rng: &mut StdRng,
) -> Side {
    let (count, bytes) = config.regions(kind).unwrap();
    let mut regions = Vec::new();
    let mut images = Vec::new();
    for _ in 0..count {
        // Sometimes place the region at an aligned offset inside a larger storage.
        let offset = if rng.random_bool(0.3) {
            align * rng.random_range(1..4)
        } else {
            0
        };
        let (region, image) = random_region(tier, bytes, offset, dir, rng);
        regions.push(region);
        images.push(image);
    }
    let layout = BlockLayout::new(config, kind, regions, align).unwrap();
    Side { layout, images }
}

/// Blocks of `num_layers` layers x 2 (K and V) x `page_size` tokens x `inner_dim` 2-byte values.
pub fn geometry(
    num_blocks: usize,
    num_layers: usize,
    page_size: usize,
    inner_dim: usize,
) -> LayoutConfig {
    LayoutConfig {
        num_blocks,
        num_layers,
        outer_dim: 2,
        page_size,
        inner_dim,
        dtype_bytes: 2,
    }
}

pub fn random_config(
    disk: bool,
    rng: &mut StdRng,
    src_blocks: usize,
    dst_blocks: usize,
) -> (LayoutConfig, LayoutConfig, usize) {
    let (page_size, inner_dim, dtype_bytes, align) = if disk {
        // Chunks must be whole 4 KiB pages for O_DIRECT.
        (
            rng.random_range(1..3),
            1024 * rng.random_range(1..3),
            4,
            4096,
        )
    } else {
        // Odd chunk sizes too, with byte alignment.
        (
            rng.random_range(1..5),
            rng.random_range(1..200),
            [1, 2, 4][rng.random_range(0..3)],
            1,
        )
    };
    let base = LayoutConfig {
        num_blocks: src_blocks,
        num_layers: rng.random_range(1..5),
        outer_dim: rng.random_range(1..3),
        page_size,
        inner_dim,
        dtype_bytes,
    };
    let dst = LayoutConfig {
        num_blocks: dst_blocks,
        ..base
    };
    (base, dst, align)
}

pub fn run_case(
    engine: &TransferEngine,
    (src_tier, dst_tier): (Tier, Tier),
    (src_kind, dst_kind): (LayoutKind, LayoutKind),
    seed: u64,
    size: CaseSize,
) {
    let ctx = format!("{src_tier:?}/{src_kind} -> {dst_tier:?}/{dst_kind}, seed {seed}, {size:?}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let disk = src_tier == Tier::Disk || dst_tier == Tier::Disk;
    let blocks = match size {
        CaseSize::Small => 1..14,
        CaseSize::Large => 4100..4400,
    };
    let (src_blocks, dst_blocks) = (
        rng.random_range(blocks.clone()),
        rng.random_range(blocks.clone()),
    );
    let (mut sc, mut dc, align) = random_config(disk, &mut rng, src_blocks, dst_blocks);
    if size == CaseSize::Large {
        // Small chunks, so that thousands of blocks stay a few MiB.
        sc.inner_dim = sc.inner_dim.min(32);
        dc.inner_dim = sc.inner_dim;
    }
    let src = make_side(src_tier, src_kind, sc, align, dir.path(), &mut rng);
    let dst = make_side(dst_tier, dst_kind, dc, align, dir.path(), &mut rng);

    let fewest = match size {
        CaseSize::Small => 0,
        CaseSize::Large => 4096,
    };
    let n = rng.random_range(fewest..=src_blocks.min(dst_blocks));
    let (src_ids, dst_ids): (Vec<usize>, Vec<usize>) = if rng.random_bool(0.3) {
        // Runs of consecutive blocks, so that merging kicks in.
        let s0 = rng.random_range(0..=src_blocks - n);
        let d0 = rng.random_range(0..=dst_blocks - n);
        ((s0..s0 + n).collect(), (d0..d0 + n).collect())
    } else {
        let mut d: Vec<usize> = (0..dst_blocks).collect();
        d.shuffle(&mut rng);
        d.truncate(n);
        // Sources may repeat.
        ((0..n).map(|_| rng.random_range(0..src_blocks)).collect(), d)
    };

    let stats = engine
        .copy_blocks(&src.layout, &src_ids, &dst.layout, &dst_ids)
        .unwrap_or_else(|e| panic!("{ctx}: submit failed: {e}"))
        .wait()
        .unwrap_or_else(|e| panic!("{ctx}: transfer failed: {e}"));
    let chunk = sc.page_size * sc.inner_dim * sc.dtype_bytes;
    assert_eq!(
        stats.bytes,
        n * sc.num_layers * sc.outer_dim * chunk,
        "{ctx}"
    );

    // The expected destination: the poison, with every copied chunk overwritten.
    let mut expected = dst.images.clone();
    for (&s, &d) in src_ids.iter().zip(&dst_ids) {
        for l in 0..sc.num_layers {
            for o in 0..sc.outer_dim {
                let (sr, so) = reference_offset(src_kind, &sc, s, l, o);
                let (dr, doff) = reference_offset(dst_kind, &dc, d, l, o);
                expected[dr][doff..doff + chunk].copy_from_slice(&src.images[sr][so..so + chunk]);
            }
        }
    }
    for (i, region) in dst.layout.regions().iter().enumerate() {
        let actual = read_region(region);
        if actual != expected[i] {
            let first = actual.iter().zip(&expected[i]).position(|(a, b)| a != b);
            panic!(
                "{ctx}: destination region {i} differs from the reference, first at byte {first:?} (ids {src_ids:?} -> {dst_ids:?})"
            );
        }
    }
    // The source is untouched.
    for (i, region) in src.layout.regions().iter().enumerate() {
        assert!(
            read_region(region) == src.images[i],
            "{ctx}: source region {i} changed"
        );
    }
}
