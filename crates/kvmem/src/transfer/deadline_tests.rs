//! Deadlines: a stalled executor is reported as `TransferError::TimedOut` by its deadline, the
//! memory it uses is quarantined, the engine goes on, and dropping it does not hang. Each test
//! runs its scenario on a thread and fails (instead of hanging) when the outcome does not come
//! back in time.

use super::handle::TransferHandle;
use super::plan::TransferPath;
use super::{DiskBackend, EngineConfig, TransferEngine};
use crate::error::{Error, TransferError};
use crate::{Buffer, Completion, DiskStorage, HostMemory, SystemStorage, accounting};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const P: usize = crate::PAGE_SIZE;

/// Runs `scenario` on its own thread; panics if it does not finish within `limit` (a hang).
fn within(limit: Duration, scenario: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        scenario();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => thread.join().unwrap(),
        // The scenario panicked: report its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(thread.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung: no outcome within {limit:?}"),
    }
}

fn short_deadline(backend: DiskBackend) -> EngineConfig {
    EngineConfig {
        disk_backend: backend,
        deadline: Duration::from_millis(300),
        deadline_per_gib: Duration::ZERO,
        ..EngineConfig::default()
    }
}

/// Checks `e` is the timeout of a transfer that held `buffers` buffers of `bytes` bytes.
fn assert_timed_out(e: &Error, buffers: usize, bytes: u64) {
    match e {
        Error::Transfer(TransferError::TimedOut {
            held_buffers,
            held_bytes,
            ..
        }) => {
            assert_eq!((*held_buffers, *held_bytes), (buffers, bytes), "{e}");
            assert!(e.to_string().contains("quarantined"), "{e}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
}

#[test]
fn the_first_outcome_wins_a_late_success_never_replaces_a_timeout() {
    within(Duration::from_secs(10), || {
        // A deadline far from the first wait's 10 ms, so that a slow run (valgrind) still
        // makes that wait well before it.
        let (handle, completion) = TransferHandle::start(
            TransferPath::HostToHost,
            100,
            1,
            Duration::from_millis(1000),
        );
        assert!(!handle.wait_timeout(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(1100));
        // Past the deadline: polling reports it finished (timed out)...
        assert!(handle.is_done());
        // ...and the executor's late success is ignored.
        completion.complete(Ok(()));
        assert_timed_out(&handle.wait().unwrap_err(), 0, 0);
    });
}

#[test]
fn a_stalled_host_copy_times_out_and_its_buffers_are_quarantined() {
    within(Duration::from_secs(20), || {
        // A size no other test uses, so that only this transfer stalls.
        const BYTES: usize = 3 * P + 40;
        let src = Buffer::new(SystemStorage::new(BYTES).unwrap());
        let dst = Buffer::new(SystemStorage::new(BYTES).unwrap());
        let engine = TransferEngine::new(short_deadline(DiskBackend::IoUring)).unwrap();
        super::host::stall::hold(BYTES);
        let before = accounting::snapshot().quarantined_buffers;
        let started = Instant::now();
        let e = engine.copy_region(&src, &dst).unwrap().wait().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_timed_out(&e, 2, 2 * BYTES as u64);
        assert!(accounting::snapshot().quarantined_buffers >= before + 2);
        super::host::stall::release(BYTES);
        // The engine goes on.
        let other = Buffer::new(SystemStorage::new(P).unwrap());
        let back = Buffer::new(SystemStorage::new(P).unwrap());
        engine.copy_region(&other, &back).unwrap().wait().unwrap();
    });
}

/// A disk → host read from a FIFO nobody writes: the backend blocks in the kernel.
fn stalled_disk_read(backend: DiskBackend) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stall");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let disk = Buffer::new(DiskStorage::stalling_fifo(&fifo, 2 * P).unwrap());
    let host = Buffer::new(SystemStorage::new(2 * P).unwrap());
    let engine = TransferEngine::new(short_deadline(backend)).unwrap();
    let before = accounting::snapshot().quarantined_buffers;
    let started = Instant::now();
    let handle = match engine.copy_region(&disk, &host) {
        Ok(h) => h,
        Err(e) => panic!("{backend}: submit failed: {e}"),
    };
    let e = handle.wait().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{backend}");
    assert_timed_out(&e, 2, 4 * P as u64);
    assert!(accounting::snapshot().quarantined_buffers >= before + 2);
    // Once the stall outlasts the grace period, the next transfer gets a fresh backend instead
    // of queueing behind the stuck one.
    std::thread::sleep(Duration::from_millis(1500));
    let file = Buffer::new(DiskStorage::new_in(dir.path(), 2 * P).unwrap());
    let mut src = SystemStorage::new(2 * P).unwrap();
    src.as_mut_slice().fill(0x5A);
    let src = Buffer::new(src);
    engine
        .copy_region(&src, &file)
        .unwrap()
        .wait()
        .unwrap_or_else(|e| panic!("{backend}: a transfer after the stall failed: {e}"));
    let mut back = SystemStorage::new(2 * P).unwrap();
    file.downcast_ref::<DiskStorage>()
        .unwrap()
        .read_at(0, back.as_mut_slice())
        .unwrap();
    assert!(back.as_slice().iter().all(|&b| b == 0x5A), "{backend}");
    // Dropping the engine with the old backend still stuck returns.
    drop(engine);
    // Unblock the stuck read so its thread ends.
    let w = rustix::fs::open(
        &fifo,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let _ = rustix::io::write(&w, &[0u8; 2 * P]);
}

#[test]
fn a_stalled_io_uring_read_times_out_quarantines_and_the_lane_recovers() {
    within(Duration::from_secs(30), || {
        stalled_disk_read(DiskBackend::IoUring)
    });
}

/// Fails the test (it never passes by skipping) when the NIXL runtime cannot be loaded.
fn nixl_runtime() {
    if let Err(e) = crate::nixl::runtime::ensure_loaded() {
        panic!("the NIXL runtime is needed (source scripts/env.sh): {e}");
    }
}

#[test]
fn a_stalled_nixl_posix_read_times_out_quarantines_and_the_lane_recovers() {
    nixl_runtime();
    within(Duration::from_secs(30), || {
        stalled_disk_read(DiskBackend::NixlPosix)
    });
}

/// A NIXL WRITE to a peer that never answers (a test double in the polling thread: the request
/// looks in flight for ever) times out, and the engine's next transfer to a live peer works.
#[test]
fn a_nixl_write_to_a_peer_that_never_answers_times_out() {
    use crate::layout::{BlockLayout, LayoutConfig, LayoutKind};
    use crate::nixl::{Agent, AgentConfig};
    use crate::transfer::{RegisteredLayout, RemoteLayout};
    nixl_runtime();
    within(Duration::from_secs(30), || {
        let config = LayoutConfig {
            num_blocks: 4,
            num_layers: 2,
            outer_dim: 2,
            page_size: 4,
            inner_dim: 64,
            dtype_bytes: 2,
        };
        let layout = |agent: &Agent| {
            let (count, len) = config.regions(LayoutKind::FullyContiguous).unwrap();
            let regions = (0..count)
                .map(|_| Buffer::new(agent.register(SystemStorage::new(len).unwrap()).unwrap()))
                .collect();
            let l = BlockLayout::new(config, LayoutKind::FullyContiguous, regions, 1).unwrap();
            RegisteredLayout::new(agent, l).unwrap()
        };
        let pid = std::process::id();
        let a = Agent::new(AgentConfig::new(format!("stall-initiator-{pid}"))).unwrap();
        let engine = TransferEngine::new(short_deadline(DiskBackend::IoUring)).unwrap();
        let src = layout(&a);
        for (name, stalls) in [
            (format!("{}{pid}", crate::nixl::raw::stall::PREFIX), true),
            (format!("answers-{pid}"), false),
        ] {
            let b = Agent::new(AgentConfig::new(name)).unwrap();
            let dst = layout(&b);
            let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
            let remote = RemoteLayout::new(&a, &peer, dst.descriptor()).unwrap();
            let started = Instant::now();
            let outcome = engine
                .write_remote(&src, &[0, 1], &remote, &[2, 3], None)
                .unwrap()
                .wait();
            assert!(started.elapsed() < Duration::from_secs(5));
            if stalls {
                // The request keeps its own buffers; the handle held none.
                assert_timed_out(&outcome.unwrap_err(), 0, 0);
            } else {
                outcome.unwrap();
            }
        }
    });
}

/// `raw::Transfer::wait`, used directly below the engine, ends at the transfer's deadline: a
/// WRITE to a peer that never answers (the test double: every poll sees it in flight) is released
/// and reported as `TimedOut`, and its buffer is quarantined. Before the deadline, `wait` waited
/// for ever.
#[test]
fn a_raw_nixl_wait_ends_at_the_transfer_deadline() {
    use crate::nixl::raw::{LocalBlocks, RawTransfers, RemoteBlocks};
    use crate::nixl::{Agent, AgentConfig};
    nixl_runtime();
    within(Duration::from_secs(30), || {
        let pid = std::process::id();
        let a = Agent::new(AgentConfig::new(format!("raw-initiator-{pid}"))).unwrap();
        let b = Agent::new(AgentConfig::new(format!(
            "{}raw-{pid}",
            crate::nixl::raw::stall::PREFIX
        )))
        .unwrap();
        let src = Buffer::new(a.register(SystemStorage::new(P).unwrap()).unwrap());
        let dst = Buffer::new(b.register(SystemStorage::new(P).unwrap()).unwrap());
        let peer = a.load_peer(&b.local_metadata().unwrap()).unwrap();
        let mut remote = RemoteBlocks::new(&peer);
        remote.push_region(0, 0, P).unwrap();
        let before = accounting::snapshot();
        let started = Instant::now();
        let transfer = a
            .write(&LocalBlocks::whole(&src).unwrap(), &remote, None)
            .unwrap()
            .deadline_in(Duration::from_millis(300));
        let e = transfer.wait().unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("NIXL WRITE"), "{e}");
        assert_timed_out(&e, 1, P as u64);
        // Dropped with the wait: the request is released and the buffer quarantined.
        let after = accounting::snapshot();
        assert!(after.quarantined_buffers > before.quarantined_buffers);
        assert!(after.quarantined_bytes >= before.quarantined_bytes + P as u64);
        drop(dst);
    });
}
