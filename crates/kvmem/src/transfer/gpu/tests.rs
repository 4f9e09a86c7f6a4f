//! Unit tests of the gpu module.

use super::super::plan::CopyOp;
use super::*;
use bounce::{bounce_copies, packed, slabs, stage_through_disk};
use copies::device_copies;

/// Staging moves file ranges into and out of a packed bounce buffer through the engine's
/// disk backend (each backend in turn), no GPU needed: file → bounce in the slab's order,
/// then bounce → other file ranges, read back. ("nixl" in the name: it loads the NIXL runtime,
/// so scripts/valgrind.sh skips it, as it does every test that dlopens NIXL.)
#[test]
fn staging_runs_through_the_selected_disk_backend_io_uring_and_nixl_posix() {
    use super::super::DiskBackend;
    use super::super::disk_queue::DiskQueue;
    use crate::{DiskStorage, HostMemory, SystemStorage};
    const P: usize = crate::PAGE_SIZE;
    // Page-aligned host memory, as `O_DIRECT` file I/O needs.
    let mut io = SystemStorage::new(P).unwrap();
    for backend in DiskBackend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStorage::new_in(dir.path(), 6 * P).unwrap();
        io.as_mut_slice().fill(0xA1);
        disk.write_at(0, io.as_slice()).unwrap();
        io.as_mut_slice().fill(0xB2);
        disk.write_at(2 * P as u64, io.as_slice()).unwrap();
        let file = Buffer::new(disk);
        let bounce = Buffer::new(SystemStorage::new(2 * P).unwrap());
        let lane = DiskLane::new(
            backend,
            DiskQueue {
                queue_depth: 4,
                max_io_bytes: P,
            },
        );
        let plan = TransferPlan::copies(
            (file.storage_kind(), StorageKind::System),
            Vec::new(),
            vec![file.clone()],
        )
        .unwrap();
        let kind = file.storage_kind();
        let op = |src, dst| CopyOp { src, dst, len: P };
        // File offsets 2P then 0 into the bounce buffer, packed.
        let slab_in = [op(2 * P, 0), op(0, 0)];
        let ops = packed(&slab_in, bounce.addr(), |o| o.src, false);
        stage_through_disk(&lane, kind, &bounce, ops, &plan, false)
            .unwrap_or_else(|e| panic!("{backend}: staging in failed: {e}"));
        // The packed bounce buffer out to file offsets 4P and 5P.
        let slab_out = [op(0, 4 * P), op(0, 5 * P)];
        let ops = packed(&slab_out, bounce.addr(), |o| o.dst, true);
        stage_through_disk(&lane, kind, &bounce, ops, &plan, true)
            .unwrap_or_else(|e| panic!("{backend}: staging out failed: {e}"));
        let disk = file.as_any().downcast_ref::<DiskStorage>().unwrap();
        disk.read_at(4 * P as u64, io.as_mut_slice()).unwrap();
        assert!(
            io.as_slice().iter().all(|&b| b == 0xB2),
            "{backend}: first slab piece"
        );
        disk.read_at(5 * P as u64, io.as_mut_slice()).unwrap();
        assert!(
            io.as_slice().iter().all(|&b| b == 0xA1),
            "{backend}: second slab piece"
        );
    }
}

#[test]
fn packed_copies_follow_the_slab_order_in_both_directions() {
    let slab = [
        CopyOp {
            src: 4096,
            dst: 100,
            len: 8192,
        },
        CopyOp {
            src: 0,
            dst: 200,
            len: 4096,
        },
    ];
    let from_file = packed(&slab, 0x10_0000, |o| o.src, false);
    assert_eq!(
        from_file,
        vec![
            CopyOp {
                src: 4096,
                dst: 0x10_0000,
                len: 8192
            },
            CopyOp {
                src: 0,
                dst: 0x10_0000 + 8192,
                len: 4096
            },
        ]
    );
    let to_file = packed(&slab, 0x10_0000, |o| o.dst, true);
    assert_eq!(to_file[1].src, 0x10_0000 + 8192);
    assert_eq!(to_file[1].dst, 200);
}

#[test]
fn slabs_split_and_pack_within_the_bounce_size() {
    let ops = [
        CopyOp {
            src: 0,
            dst: 1000,
            len: 10,
        },
        CopyOp {
            src: 100,
            dst: 2000,
            len: 25,
        },
        CopyOp {
            src: 500,
            dst: 3000,
            len: 3,
        },
    ];
    let s = slabs(&ops, 16);
    assert!(
        s.iter()
            .all(|slab| slab.iter().map(|o| o.len).sum::<usize>() <= 16)
    );
    let flat: Vec<CopyOp> = s.concat();
    let total: usize = flat.iter().map(|o| o.len).sum();
    assert_eq!(total, 38);
    // Pieces of one op are contiguous on both sides and in order.
    assert_eq!(
        flat[1],
        CopyOp {
            src: 100,
            dst: 2000,
            len: 6
        }
    );
    assert_eq!(
        flat[2],
        CopyOp {
            src: 106,
            dst: 2006,
            len: 16
        }
    );
    assert_eq!(
        flat[3],
        CopyOp {
            src: 122,
            dst: 2022,
            len: 3
        }
    );
    let copies = bounce_copies(&s[0], 0x1_0000, true);
    assert_eq!(copies[1].src, 0x1_0000 + 10);
}

/// Copies are split exactly where their pinned host side crosses from one page-lock
/// registration into the next (the driver refuses a copy that crosses), on either side or both,
/// and the pieces still cover every byte once, in order; device-only copies are never split.
#[test]
fn copies_split_at_registration_boundaries_of_the_pinned_side() {
    let cuts = [1000, 2000, 3000];
    let pieces = |op: CopyOp, src, dst| {
        device_copies(&[op], src, dst, &cuts)
            .iter()
            .map(|c| (c.src as usize, c.dst as usize, c.len as usize))
            .collect::<Vec<_>>()
    };
    let (pinned, device) = (StorageKind::Pinned, StorageKind::Device(0));
    let op = |src, dst, len| CopyOp { src, dst, len };
    // Host source over two boundaries into device memory.
    assert_eq!(
        pieces(op(900, 50_000, 1200), pinned, device),
        vec![
            (900, 50_000, 100),
            (1000, 50_100, 1000),
            (2000, 51_100, 100)
        ]
    );
    // Host destination; a copy ending exactly on a boundary is not split.
    assert_eq!(
        pieces(op(50_000, 1000, 1000), device, pinned),
        vec![(50_000, 1000, 1000)]
    );
    assert_eq!(
        pieces(op(50_000, 1500, 1000), device, pinned),
        vec![(50_000, 1500, 500), (50_500, 2000, 500)]
    );
    // Both sides pinned: cut at whichever boundary comes first on either side.
    assert_eq!(
        pieces(op(1900, 2950, 200), pinned, pinned),
        vec![(1900, 2950, 50), (1950, 3000, 50), (2000, 3050, 100)]
    );
    // Device to device, or no cuts: one copy each, unchanged (read in place with no cuts).
    assert_eq!(pieces(op(900, 1900, 3000), device, device).len(), 1);
    let ops = [op(900, 1900, 3000), op(5, 7, 11)];
    let read = device_copies(&ops, pinned, device, &[]);
    assert!(matches!(read, std::borrow::Cow::Borrowed(_)));
    assert_eq!(
        read.iter()
            .map(|c| (c.src as usize, c.dst as usize, c.len as usize))
            .collect::<Vec<_>>(),
        vec![(900, 1900, 3000), (5, 7, 11)]
    );
}

/// The executor finds a storage through views, arena blocks and nestings of them (where a
/// pinned pool's registrations and pages are looked up).
#[test]
fn storages_are_found_under_views_and_arena_blocks() {
    use crate::arena::ArenaAllocator;
    use crate::descriptor::MemoryDescriptor;
    use crate::{OffsetBuffer, SystemStorage};
    let base = Buffer::new(SystemStorage::new(1 << 20).unwrap());
    let addr = base.addr();
    let view = Buffer::new(OffsetBuffer::new(base.clone(), 4096, 8192).unwrap());
    let nested = Buffer::new(OffsetBuffer::new(view.clone(), 4096, 4096).unwrap());
    let arena = ArenaAllocator::new(base.clone()).unwrap();
    let block = Buffer::new(arena.allocate(8192).unwrap());
    for b in [&base, &view, &nested, &block] {
        let found =
            crate::transfer::files::storage_under::<SystemStorage>(b.as_any()).expect("found");
        assert_eq!(found.addr(), addr);
    }
    assert!(
        crate::transfer::files::storage_under::<crate::storage::DiskStorage>(view.as_any())
            .is_none()
    );
}
