//! Two kvmem agents in one process over NIXL's UCX backend (the real runtime): WRITE and READ of
//! random data, notifications, views, prepared lists, chunked registrations.

#[path = "nixl_common/mod.rs"]
mod common;

use common::*;
use kvmem::error::{NixlError, PeerError, TransferError};
use kvmem::nixl::raw::{LocalBlocks, RemoteBlocks, TransferOp};
use kvmem::nixl::{Agent, AgentConfig, NixlDescriptor};
use kvmem::{Buffer, Error, MemoryDescriptor, OffsetBuffer, SystemStorage};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn remote_whole(peer: &kvmem::nixl::Peer, buffer: &Buffer) -> RemoteBlocks {
    let mut r = RemoteBlocks::new(peer);
    r.push(NixlDescriptor::dram(buffer.addr() as u64, buffer.size()))
        .expect("block inside the peer's memory");
    r
}

/// `a` writes all of `src` to all of the peer's `dst` with notification `note`, and waits for the
/// transfer (not for the notification).
#[track_caller]
fn write_whole(a: &Agent, src: &Buffer, peer: &kvmem::nixl::Peer, dst: &Buffer, note: &[u8]) {
    a.write(
        &LocalBlocks::whole(src).unwrap(),
        &remote_whole(peer, dst),
        Some(note),
    )
    .unwrap()
    .wait_for(WAIT)
    .unwrap();
}

fn write_then_read(size: usize, seed: u64) {
    let a = agent("ucx-a");
    let b = agent("ucx-b");
    let data = random_bytes(seed, size);
    let src = filled(&a, &data);
    let dst = poisoned(&b, size);
    let back = poisoned(&a, size);
    // b's metadata is taken after it registered `dst`: it carries the registration.
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    assert_eq!(peer.name(), b.name());
    assert!(
        peer.manifest()
            .is_some_and(|m| m.contains(&NixlDescriptor::dram(dst.addr() as u64, size)))
    );
    let remote = remote_whole(&peer, &dst);

    // WRITE a -> b with a notification.
    let msg = format!("wrote-{size}");
    let t = a
        .write(
            &LocalBlocks::whole(&src).unwrap(),
            &remote,
            Some(msg.as_bytes()),
        )
        .unwrap();
    assert!(
        t.wait_timeout(WAIT),
        "the WRITE did not finish within {WAIT:?}"
    );
    assert!(t.is_done());
    assert_eq!(t.op(), TransferOp::Write);
    t.wait().unwrap();
    b.wait_for_message(a.name(), msg.as_bytes(), WAIT).unwrap();
    assert_same(bytes(&dst), &data, "WRITE destination");
    assert_same(bytes(&src), &data, "WRITE source");

    // READ b -> a into a poisoned buffer, with a notification to b.
    let msg = format!("read-{size}");
    a.read(
        &LocalBlocks::whole(&back).unwrap(),
        &remote,
        Some(msg.as_bytes()),
    )
    .unwrap()
    .wait_for(WAIT)
    .unwrap();
    b.wait_for_message(a.name(), msg.as_bytes(), WAIT).unwrap();
    assert_same(bytes(&back), &data, "READ destination");
}

#[test]
fn write_and_read_4k() {
    write_then_read(4096, 1);
}

#[test]
fn write_and_read_64m() {
    write_then_read(64 << 20, 2);
}

#[test]
fn views_move_only_their_range() {
    let (a, _b, data, src, dst, peer) = pair("view", 3, 1 << 20);
    // 64 KiB from offset 128 KiB of src to offset 512 KiB of dst, through a view.
    let view = OffsetBuffer::new(src.clone(), 128 << 10, 64 << 10).unwrap();
    assert!(
        view.nixl_descriptor().is_some(),
        "a view of a registered buffer is registered"
    );
    let mut remote = RemoteBlocks::new(&peer);
    remote.push_region(0, 512 << 10, 64 << 10).unwrap();
    a.write(&LocalBlocks::whole(&view).unwrap(), &remote, None)
        .unwrap()
        .wait_for(WAIT)
        .unwrap();
    let got = bytes(&dst);
    assert_same(
        &got[512 << 10..576 << 10],
        &data[128 << 10..192 << 10],
        "viewed range",
    );
    assert!(
        got[..512 << 10].iter().all(|&x| x == POISON),
        "bytes before the range untouched"
    );
    assert!(
        got[576 << 10..].iter().all(|&x| x == POISON),
        "bytes after the range untouched"
    );
}

#[test]
fn registering_a_view_registers_its_range() {
    let a = agent("regview-a");
    let b = agent("regview-b");
    let base = Buffer::new(SystemStorage::new(1 << 20).unwrap());
    // Register only 256 KiB in the middle of an unregistered buffer.
    let view = OffsetBuffer::new(base.clone(), 256 << 10, 256 << 10).unwrap();
    let registered = Buffer::new(b.register(view).unwrap());
    assert_eq!(registered.addr(), base.addr() + (256 << 10));
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    assert_eq!(peer.regions().len(), 1);
    assert_eq!(peer.regions()[0].size, 256 << 10);
    assert_eq!(peer.regions()[0].addr, (base.addr() + (256 << 10)) as u64);
    // Outside the view is outside what the peer registered.
    let mut r = RemoteBlocks::new(&peer);
    assert!(matches!(
        r.push(NixlDescriptor::dram(base.addr() as u64, 4096)),
        Err(Error::Peer(PeerError::OutOfBounds { .. }))
    ));
    // Inside works end to end.
    let data = random_bytes(4, 256 << 10);
    let src = filled(&a, &data);
    r.push_region(0, 0, 256 << 10).unwrap();
    a.write(&LocalBlocks::whole(&src).unwrap(), &r, None)
        .unwrap()
        .wait_for(WAIT)
        .unwrap();
    let reg = registered
        .downcast_ref::<kvmem::nixl::Registered<OffsetBuffer>>()
        .unwrap();
    assert_eq!(reg.storage().offset(), 256 << 10);
    let base_bytes = base.downcast_ref::<SystemStorage>().unwrap();
    assert_same(
        &kvmem::HostMemory::as_slice(base_bytes)[256 << 10..512 << 10],
        &data,
        "registered view",
    );
}

#[test]
fn prepared_lists_are_reused_and_indexable() {
    const N: usize = 64;
    const BLOCK: usize = 4096;
    let a = agent("prep-a");
    let b = agent("prep-b");
    let data = random_bytes(7, N * BLOCK);
    let src = filled(&a, &data);
    let dst = poisoned(&b, N * BLOCK);
    let poison = filled(&a, &vec![POISON; N * BLOCK]);
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    let mut local = LocalBlocks::new();
    let mut remote = RemoteBlocks::new(&peer);
    for i in 0..N {
        local
            .push(&OffsetBuffer::new(src.clone(), i * BLOCK, BLOCK).unwrap())
            .unwrap();
        remote.push_region(0, (i * BLOCK) as u64, BLOCK).unwrap();
    }
    let pl = a.prepare_local(&local).unwrap();
    let pr = a.prepare_remote(&remote).unwrap();
    assert_eq!((pl.len(), pr.len()), (N, N));

    // The same prepared lists move the blocks again and again; dst is poisoned before each post.
    for round in 0..3 {
        a.write(
            &LocalBlocks::whole(&poison).unwrap(),
            &remote_whole(&peer, &dst),
            None,
        )
        .unwrap()
        .wait_for(WAIT)
        .unwrap();
        assert!(bytes(&dst).iter().all(|&x| x == POISON));
        let note = format!("round-{round}");
        wait_landed(
            a.post_prepared(TransferOp::Write, &pl, &pr, Some(note.as_bytes())),
            &a,
            &b,
            note.as_bytes(),
        );
        assert_same(bytes(&dst), &data, "prepared WRITE");
    }

    // Selected indices: local block i goes to remote block N-1-i.
    write_reversed(&a, &pl, &pr, N);
    assert_reversed(bytes(&dst), &data, BLOCK, "reversed blocks");
    // Bad selections are typed errors.
    assert!(matches!(
        a.post_prepared_selected(TransferOp::Write, &pl, &[N], &pr, &[0], None),
        Err(Error::Transfer(TransferError::Mismatch { .. }))
    ));
    assert!(matches!(
        a.post_prepared_selected(TransferOp::Write, &pl, &[0, 1], &pr, &[0], None),
        Err(Error::Transfer(TransferError::Mismatch { .. }))
    ));
}

#[test]
fn regions_larger_than_a_chunk_are_registered_in_chunks() {
    let cfg = |p: &str| AgentConfig {
        registration_chunk: 1 << 20,
        ..config(p)
    };
    let a = Agent::new(cfg("chunk-a")).unwrap();
    let b = Agent::new(cfg("chunk-b")).unwrap();
    let size = (4 << 20) + (512 << 10);
    let data = random_bytes(5, size);
    let mut s = SystemStorage::new(size).unwrap();
    kvmem::HostMemory::copy_from(&mut s, 0, &data).unwrap();
    let reg = a.register(s).unwrap();
    assert_eq!(reg.chunks(), 5);
    let src = Buffer::new(reg);
    let dst = poisoned(&b, size);
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    // One block across all five chunks: kvmem splits it at the chunk boundaries.
    write_whole(&a, &src, &peer, &dst, b"chunked");
    b.wait_for_message(a.name(), b"chunked", WAIT).unwrap();
    assert_same(bytes(&dst), &data, "chunked WRITE");
    // A prepared list keeps one descriptor per block, so a crossing block is refused clearly.
    assert!(matches!(
        a.prepare_local(&LocalBlocks::whole(&src).unwrap()),
        Err(Error::Transfer(TransferError::Mismatch { .. }))
    ));
    // Overlapping re-registration is refused, and hands the storage back.
    let again = OffsetBuffer::new(src.clone(), 4096, 4096).unwrap();
    let err = refused(&a, again, 4096);
    assert!(
        matches!(err, Error::Nixl(NixlError::AlreadyRegistered { .. })),
        "{err}"
    );
}

#[test]
fn notifications_are_queued_per_peer() {
    let a = agent("notif-a");
    let c = agent("notif-c");
    let b = agent("notif-b");
    let blob = b.local_metadata().unwrap();
    a.load_peer(&blob).unwrap();
    c.load_peer(&blob).unwrap();
    for i in 0..3 {
        a.notify(b.name(), format!("a{i}").as_bytes()).unwrap();
        c.notify(b.name(), format!("c{i}").as_bytes()).unwrap();
    }
    // Wait for c's last message first: a's messages must stay queued meanwhile.
    b.wait_for_message(c.name(), b"c2", WAIT).unwrap();
    b.wait_for_message(a.name(), b"a2", WAIT).unwrap();
    let from_a = b.take_notifications(a.name()).unwrap();
    assert_eq!(from_a, vec![b"a0".to_vec(), b"a1".to_vec()]);
    let from_c = b.take_notifications(c.name()).unwrap();
    assert_eq!(from_c, vec![b"c0".to_vec(), b"c1".to_vec()]);
    assert!(b.take_all_notifications().unwrap().is_empty());
    assert!(matches!(
        b.wait_notification(a.name(), Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ));
}

#[test]
fn backends_are_tracked_case_insensitively() {
    let a = Agent::new(AgentConfig {
        backends: vec!["ucx".into(), "Posix".into()],
        ..config("backends")
    })
    .unwrap();
    assert_eq!(a.backends(), vec!["UCX", "POSIX"]);
    assert!(a.has_backend("Ucx") && a.has_backend("posix"));
    assert!(!a.has_backend("GDS_MT"));
    a.require_backend("UCX").unwrap();
    let err = a.require_backend("gds_mt").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        Error::Nixl(NixlError::BackendUnavailable { .. })
    ));
    assert!(
        msg.contains("UCX") && msg.contains("POSIX") && msg.contains("gds_mt"),
        "{msg}"
    );
}

#[test]
fn dropping_transfers_is_safe_and_the_agent_keeps_working() {
    let (a, b, data, src, dst, peer) = pair("drop", 6, 16 << 20);
    let remote = remote_whole(&peer, &dst);
    let local = LocalBlocks::whole(&src).unwrap();
    for _ in 0..5 {
        // Dropped without waiting: cancelled if still running, released if done.
        drop(a.write(&local, &remote, None).unwrap());
    }
    wait_landed(a.write(&local, &remote, Some(b"last")), &a, &b, b"last");
    assert_same(bytes(&dst), &data, "after dropped transfers");
}

#[test]
fn cancelled_transfers_finish_and_report_cancelled_or_success() {
    let (a, b, data, src, dst, peer) = pair("cancel", 7, 64 << 20);
    let remote = remote_whole(&peer, &dst);
    let local = LocalBlocks::whole(&src).unwrap();
    let (mut cancelled, mut finished) = (0, 0);
    for _ in 0..5 {
        let t = a.write(&local, &remote, None).unwrap();
        t.cancel();
        // A cancel never blocks and leaves a finished handle: the verbs answer at once.
        assert!(t.is_done(), "a cancelled transfer still reports running");
        assert!(t.wait_timeout(Duration::ZERO));
        match t.wait() {
            Ok(()) => finished += 1,
            Err(Error::Transfer(TransferError::Cancelled { done: 0, total })) => {
                assert_eq!(total, 64 << 20);
                cancelled += 1;
            }
            Err(e) => panic!("a cancelled transfer reported {e}"),
        }
    }
    eprintln!("{cancelled} cancelled, {finished} finished before the cancel took effect");
    // The agent and the peer keep working after the cancels.
    wait_landed(
        a.write(&local, &remote, Some(b"after-cancel")),
        &a,
        &b,
        b"after-cancel",
    );
    assert_same(bytes(&dst), &data, "after cancelled transfers");
}

#[test]
fn agents_without_progress_thread_move_data_through_polling() {
    let without_progress_thread = |p: &str| AgentConfig {
        progress_thread: false,
        ..config(p)
    };
    let a = Agent::new(without_progress_thread("nopt-a")).unwrap();
    let b = Agent::new(without_progress_thread("nopt-b")).unwrap();
    let data = random_bytes(8, 16 << 20);
    let src = filled(&a, &data);
    let dst = poisoned(&b, 16 << 20);
    let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
    // Without progress threads both sides must be driven by calls into NIXL: b waits for the
    // notification (polling its worker) while a waits for the transfer.
    let receiver = {
        let (b, a_name) = (b.clone(), a.name().to_owned());
        std::thread::spawn(move || b.wait_for_message(&a_name, b"polled", WAIT))
    };
    write_whole(&a, &src, &peer, &dst, b"polled");
    receiver.join().unwrap().unwrap();
    assert_same(bytes(&dst), &data, "WRITE without progress threads");
}
