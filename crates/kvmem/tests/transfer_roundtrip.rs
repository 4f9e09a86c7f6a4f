//! Randomized block copies between every pair of layouts, over every pair of storage tiers this
//! machine has (host memory, files), checked byte for byte against a reference computed here from
//! the dimension orders alone. Sources hold random bytes; destinations are poisoned with other
//! random bytes, so a chunk copied to the wrong place, a copy that is missed, or a write outside
//! the copied blocks all show up. Host ↔ disk runs once per [`DiskBackend`].

mod common;

use common::cases::{every_layout_pair, geometry, make_side, reference_offset};
use common::{Tier, engine_with, random_region, read_region};
use kvmem::Completion;
use kvmem::error::UnsupportedError;
use kvmem::layout::{BlockDim, LayoutConfig, LayoutKind};
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine, TransferPath};
use kvmem::{Buffer, Error};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

#[test]
fn every_layout_pair_over_host_memory() {
    let engine = TransferEngine::new(EngineConfig::default()).unwrap();
    every_layout_pair(&engine, &[(Tier::Host, Tier::Host)], 0xC0FFEE, 6);
}

/// Host ↔ disk with one disk backend.
fn every_layout_pair_over_host_and_disk(backend: DiskBackend) {
    let engine = engine_with(backend);
    every_layout_pair(
        &engine,
        &[(Tier::Host, Tier::Disk), (Tier::Disk, Tier::Host)],
        0xD15C,
        6,
    );
}

each_disk_backend!(every_layout_pair_over_host_and_disk: every_layout_pair_over_host_and_disk_io_uring, every_layout_pair_over_host_and_disk_nixl_posix);

#[test]
fn large_host_transfers_split_over_threads_are_exact() {
    // Above the parallel threshold; then with tiny parallel and streaming thresholds, so that
    // small pieces and the non-temporal copy path are checked too.
    for config in [
        EngineConfig::default(),
        EngineConfig {
            host_threads: 3,
            parallel_threshold: 1,
            streaming_threshold: 1,
            ..EngineConfig::default()
        },
    ] {
        let engine = TransferEngine::new(config).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let dir = tempfile::tempdir().unwrap();
        let c = geometry(64, 2, 16, 1000);
        let src = make_side(
            Tier::Host,
            LayoutKind::FullyContiguous,
            c,
            1,
            dir.path(),
            &mut rng,
        );
        let dst = make_side(
            Tier::Host,
            LayoutKind::LayerSeparate(BlockDim::Second),
            c,
            1,
            dir.path(),
            &mut rng,
        );
        let mut ids: Vec<usize> = (0..64).collect();
        ids.shuffle(&mut rng);
        let stats = engine
            .copy_blocks(&src.layout, &ids, &dst.layout, &(0..64).collect::<Vec<_>>())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(stats.path, TransferPath::HostToHost);
        let chunk = 16 * 1000 * 2;
        for (d, &s) in ids.iter().enumerate() {
            for l in 0..2 {
                for o in 0..2 {
                    let (_, so) = reference_offset(LayoutKind::FullyContiguous, &c, s, l, o);
                    let (_, doff) =
                        reference_offset(LayoutKind::LayerSeparate(BlockDim::Second), &c, d, l, o);
                    assert!(
                        read_region(&dst.layout.regions()[l])[doff..doff + chunk]
                            == src.images[0][so..so + chunk]
                    );
                }
            }
        }
    }
}

/// Region copies on every supported path, with small disk requests (split copies) and a
/// shallow queue.
fn region_copies_over_every_supported_path(disk_backend: DiskBackend) {
    let engine = TransferEngine::new(EngineConfig {
        max_io_bytes: 8192,
        queue_depth: 4,
        disk_backend,
        ..EngineConfig::default()
    })
    .unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let dir = tempfile::tempdir().unwrap();
    for (s, d) in [
        (Tier::Host, Tier::Host),
        (Tier::Host, Tier::Disk),
        (Tier::Disk, Tier::Host),
    ] {
        let len = 4096 * 37;
        let (src, src_image) = random_region(s, len, 0, dir.path(), &mut rng);
        let (dst, dst_image) = random_region(d, len + 8192, 4096, dir.path(), &mut rng);
        let stats = engine.copy_region(&src, &dst).unwrap().wait().unwrap();
        assert_eq!(stats.bytes, len);
        let after = read_region(&dst);
        assert!(after[..len] == src_image[..], "{s:?} -> {d:?}");
        assert!(
            after[len..] == dst_image[len..],
            "{s:?} -> {d:?} wrote past the copy"
        );
    }
    // Disk to disk has no executor: refused before anything moves.
    let (a, _) = random_region(Tier::Disk, 4096, 0, dir.path(), &mut rng);
    let (b, b_image) = random_region(Tier::Disk, 4096, 0, dir.path(), &mut rng);
    assert!(matches!(
        engine.copy_region(&a, &b),
        Err(Error::Unsupported(UnsupportedError::Transfer { .. }))
    ));
    assert!(read_region(&b) == b_image);
    let _: &Buffer = &a;
}

each_disk_backend!(region_copies_over_every_supported_path: region_copies_over_every_supported_path_io_uring, region_copies_over_every_supported_path_nixl_posix);

/// A layer-separate layout whose layers are views of one file with gaps between them (several
/// disjoint registrations of one file descriptor for NIXL), and of one host allocation.
fn layers_as_views_of_one_file(disk_backend: DiskBackend) {
    use kvmem::OffsetBuffer;
    let engine = engine_with(disk_backend);
    let dir = tempfile::tempdir().unwrap();
    let c = LayoutConfig {
        dtype_bytes: 4,
        ..geometry(8, 3, 1, 1024)
    };
    let kind = LayoutKind::LayerSeparate(BlockDim::First);
    let (count, bytes) = c.regions(kind).unwrap();
    let gap = 8192;
    let stride = bytes + gap;
    let views = |tier, seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        let (base, image) = random_region(tier, count * stride, 0, dir.path(), &mut rng);
        let regions: Vec<Buffer> = (0..count)
            .map(|l| Buffer::new(OffsetBuffer::new(base.clone(), l * stride, bytes).unwrap()))
            .collect();
        (base, image, regions)
    };
    let (_, host_image, host_regions) = views(Tier::Host, 12);
    let (file, file_image, file_regions) = views(Tier::Disk, 13);
    assert!(host_image != file_image);
    let host = kvmem::layout::BlockLayout::new(c, kind, host_regions, 4096).unwrap();
    let disk = kvmem::layout::BlockLayout::new(c, kind, file_regions, 4096).unwrap();
    let ids = [5, 0, 7];
    let to = [1, 6, 2];
    engine
        .copy_blocks(&host, &ids, &disk, &to)
        .unwrap()
        .wait()
        .unwrap();
    let chunk = c.chunk_bytes().unwrap();
    let mut expected = file_image.clone();
    for (&s, &d) in ids.iter().zip(&to) {
        for l in 0..count {
            for o in 0..2 {
                let (_, so) = reference_offset(kind, &c, s, l, o);
                let (_, doff) = reference_offset(kind, &c, d, l, o);
                let (so, doff) = (l * stride + so, l * stride + doff);
                expected[doff..doff + chunk].copy_from_slice(&host_image[so..so + chunk]);
            }
        }
    }
    assert!(
        read_region(&file) == expected,
        "{disk_backend}: file differs"
    );
}

each_disk_backend!(layers_as_views_of_one_file: layers_as_views_of_one_file_io_uring, layers_as_views_of_one_file_nixl_posix);
