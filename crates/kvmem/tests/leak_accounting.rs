//! Leak accounting (`kvmem::accounting::snapshot`) returns to its baseline after each scenario:
//! disk files opened and dropped, NIXL registrations and transfers (done, failed), disk
//! transfers through both disk backends. One test, its scenarios in sequence: the counters are
//! process-wide.

#[path = "nixl_common/mod.rs"]
mod common;

use common::*;
use kvmem::accounting::{Snapshot, snapshot};
use kvmem::nixl::raw::{LocalBlocks, RawTransfers, RemoteBlocks};
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine};
use kvmem::{Buffer, Completion, DiskStorage, SystemStorage};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `now` equals `base` in everything but the registered bytes of agents not in `agents`.
fn assert_baseline(base: &Snapshot, agents: &[&str], what: &str) {
    let now = snapshot();
    for a in agents {
        assert_eq!(
            now.registered_bytes_of(a),
            0,
            "{what}: agent {a} still registered"
        );
    }
    assert_eq!(
        now.in_flight_transfers, base.in_flight_transfers,
        "{what}: {now:?}"
    );
    assert_eq!(now.open_disk_files, base.open_disk_files, "{what}: {now:?}");
    assert_eq!(
        now.quarantined_buffers, base.quarantined_buffers,
        "{what}: {now:?}"
    );
    assert_eq!(
        now.quarantined_bytes, base.quarantined_bytes,
        "{what}: {now:?}"
    );
}

#[test]
fn accounting_returns_to_baseline_after_each_scenario() {
    let base = snapshot();
    let dir = tempfile::tempdir().unwrap();

    // Disk files: counted while open.
    {
        let files: Vec<DiskStorage> = (0..3)
            .map(|_| DiskStorage::new_in(dir.path(), 1 << 20).unwrap())
            .collect();
        assert_eq!(snapshot().open_disk_files, base.open_disk_files + 3);
        drop(files);
    }
    assert_baseline(&base, &[], "disk files");

    // NIXL registrations and transfers between two agents.
    let a = agent("acct-a");
    let b = agent("acct-b");
    let (a_name, b_name) = (a.name().to_owned(), b.name().to_owned());
    {
        let src = filled(&a, &random_bytes(3, 1 << 20));
        let small = poisoned(&a, 64 << 10);
        let dst = poisoned(&b, 1 << 20);
        let now = snapshot();
        assert_eq!(now.registered_bytes_of(&a_name), (1 << 20) + (64 << 10));
        assert_eq!(now.registered_bytes_of(&b_name), 1 << 20);
        let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
        let local = LocalBlocks::whole(&src).unwrap();
        let mut remote = RemoteBlocks::new(&peer);
        remote
            .push(kvmem::nixl::NixlDescriptor::dram(
                kvmem::MemoryDescriptor::addr(&dst) as u64,
                1 << 20,
            ))
            .unwrap();
        for _ in 0..5 {
            let t = a.write(&local, &remote, None).unwrap();
            t.wait_for(WAIT).unwrap();
        }
        assert_same(bytes(&dst), bytes(&src), "written");
        assert_eq!(snapshot().in_flight_transfers, base.in_flight_transfers);
        // A transfer refused before it is posted (the peer was invalidated) counts nothing.
        a.invalidate_peer(&b_name).unwrap();
        assert!(a.write(&local, &remote, None).is_err());
        assert_eq!(snapshot().in_flight_transfers, base.in_flight_transfers);
        drop(small);
    }
    assert_baseline(
        &base,
        &[&a_name, &b_name],
        "NIXL registrations and transfers",
    );

    // Disk transfers through both backends (io_uring; NIXL's POSIX backend posts NIXL requests).
    for backend in [DiskBackend::IoUring, DiskBackend::NixlPosix] {
        let engine = TransferEngine::new(EngineConfig {
            disk_backend: backend,
            ..EngineConfig::default()
        })
        .unwrap();
        let host = Buffer::new(SystemStorage::new(1 << 20).unwrap());
        let file = Buffer::new(DiskStorage::new_in(dir.path(), 1 << 20).unwrap());
        for _ in 0..3 {
            engine.copy_region(&host, &file).unwrap().wait().unwrap();
            engine.copy_region(&file, &host).unwrap().wait().unwrap();
        }
        drop((host, file));
        drop(engine);
        assert_baseline(&base, &[], &format!("disk transfers over {backend:?}"));
    }
    println!("baseline {base:?}; after the scenarios {:?}", snapshot());
}
