//! Transfer handles: waiting, polling, cancelling, and dropping the handle (or the engine)
//! while the transfer runs — which must never free memory the transfer still uses.

mod common;

use common::{Tier, random_bytes, random_region, read_region};
use kvmem::Completion;
use kvmem::error::TransferError;
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine};
use kvmem::{Buffer, DiskStorage, Error, HostMemory, SystemStorage};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Test double over host memory that, when freed, records whether the transfer using it was
/// complete by then, as told by `check` (for a destination, that it holds the source's bytes; for
/// a source, that the destination does): a buffer freed before its copy finished records `false`.
struct Watched {
    inner: SystemStorage,
    check: Box<dyn Fn(&SystemStorage) -> bool + Send + Sync>,
    report: Arc<Mutex<Option<bool>>>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Watched {
    /// A destination: complete once it holds `expected`.
    fn destination(
        inner: SystemStorage,
        expected: Vec<u8>,
        report: &Arc<Mutex<Option<bool>>>,
    ) -> Self {
        Self {
            inner,
            check: Box::new(move |s| s.as_slice() == &expected[..]),
            report: Arc::clone(report),
        }
    }
}

kvmem::forward_memory_descriptor!(Watched => inner, as_any: self, nixl_descriptor: |_| None);

impl Drop for Watched {
    fn drop(&mut self) {
        *self.report.lock().unwrap() = Some((self.check)(&self.inner));
    }
}

fn host_with(bytes: &[u8]) -> SystemStorage {
    let mut s = SystemStorage::new(bytes.len()).unwrap();
    s.as_mut_slice().copy_from_slice(bytes);
    s
}

fn wait_for(report: &Mutex<Option<bool>>) -> bool {
    let start = Instant::now();
    loop {
        if let Some(v) = *report.lock().unwrap() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "buffer never freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An engine with one host copy thread, on `disk_backend` (the default one for host copies).
fn one_thread_engine(disk_backend: DiskBackend) -> TransferEngine {
    TransferEngine::new(EngineConfig {
        host_threads: 1,
        disk_backend,
        ..EngineConfig::default()
    })
    .unwrap()
}

const BIG: usize = 32 << 20;

/// Copies `src` into a host destination of other bytes (random, from `seed`), drops the handle,
/// the source and the destination at once, and says whether the destination held `expected` by
/// the time it was freed.
fn destination_complete_when_freed(
    engine: &TransferEngine,
    src: Buffer,
    expected: Vec<u8>,
    seed: u64,
) -> bool {
    let report = Arc::new(Mutex::new(None));
    let dst = Buffer::new(Watched::destination(
        host_with(&random_bytes(BIG, seed)),
        expected,
        &report,
    ));
    let handle = engine.copy_region(&src, &dst).unwrap();
    drop((handle, src, dst));
    wait_for(&report)
}

#[test]
fn dropping_the_handle_keeps_a_host_copy_s_memory_alive_until_it_is_done() {
    let engine = one_thread_engine(DiskBackend::default());
    let data = random_bytes(BIG, 1);
    let src = Buffer::new(host_with(&data));
    assert!(
        destination_complete_when_freed(&engine, src, data, 2),
        "destination freed before the copy completed"
    );
}

each_disk_backend!(dropping_the_handle_keeps_disk_transfers_alive_until_done: dropping_the_handle_keeps_disk_transfers_alive_until_done_io_uring, dropping_the_handle_keeps_disk_transfers_alive_until_done_nixl_posix);

fn dropping_the_handle_keeps_disk_transfers_alive_until_done(backend: DiskBackend) {
    let engine = one_thread_engine(backend);
    let dir = tempfile::tempdir().unwrap();

    // host -> disk: the source stays allocated until the file holds its bytes.
    let path = dir.path().join("dst.kvd");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(BIG as u64)
        .unwrap();
    let data = random_bytes(BIG, 3);
    let report = Arc::new(Mutex::new(None));
    let src = Buffer::new(Watched {
        inner: host_with(&data),
        // The source never changes: what tells a finished write is the file's contents, read
        // (through the page cache, which O_DIRECT writes keep coherent) when the source is freed.
        check: {
            let (path, data) = (path.clone(), data.clone());
            Box::new(move |_| std::fs::read(&path).is_ok_and(|f| f == data))
        },
        report: Arc::clone(&report),
    });
    let dst = Buffer::new(DiskStorage::open_existing(&path).unwrap());
    let handle = engine.copy_region(&src, &dst).unwrap();
    drop((handle, src, dst));
    assert!(
        wait_for(&report),
        "source freed before the file held its bytes"
    );
    assert!(
        std::fs::read(&path).unwrap() == data,
        "file does not hold the source bytes"
    );

    // disk -> host: the destination is complete when freed.
    let mut rng = StdRng::seed_from_u64(4);
    let (file, image) = random_region(Tier::Disk, BIG, 0, dir.path(), &mut rng);
    assert!(destination_complete_when_freed(&engine, file, image, 5));
}

#[test]
fn dropping_the_engine_lets_submitted_transfers_finish() {
    let data = random_bytes(BIG, 6);
    let src = Buffer::new(host_with(&data));
    let dst = Buffer::new(SystemStorage::new(BIG).unwrap());
    let engine = one_thread_engine(DiskBackend::default());
    let handle = engine.copy_region(&src, &dst).unwrap();
    drop(engine);
    assert!(
        handle.wait_timeout(Duration::from_secs(60)),
        "transfer never finished"
    );
    assert!(handle.is_done());
    handle.wait().unwrap();
    assert!(read_region(&dst) == data);
}

#[test]
fn cancelled_transfers_report_cancellation_and_others_complete() {
    let engine = one_thread_engine(DiskBackend::default());
    let size = 128 << 20;
    let data = random_bytes(size, 7);
    let a_src = Buffer::new(host_with(&data));
    let a_dst = Buffer::new(SystemStorage::new(size).unwrap());
    let b_src = Buffer::new(SystemStorage::new(size).unwrap());
    let b_dst = Buffer::new(SystemStorage::new(size).unwrap());
    // On one copy thread, `b` waits behind `a` (or is stopped within one 4 MiB piece).
    let a = engine.copy_region(&a_src, &a_dst).unwrap();
    let b = engine.copy_region(&b_src, &b_dst).unwrap();
    b.cancel();
    match b.wait() {
        Err(Error::Transfer(TransferError::Cancelled { done, total })) => {
            assert!(done < total);
            assert_eq!(total, size);
        }
        other => panic!("expected a cancelled transfer, got {other:?}"),
    }
    assert_eq!(a.wait().unwrap().bytes, size);
    assert!(read_region(&a_dst) == data);
}

/// Cancelling a disk transfer drains the I/O in flight, then reports; the next transfer on the
/// same engine runs normally.
fn cancelled_disk_transfers_report_cancellation(backend: DiskBackend) {
    let engine = one_thread_engine(backend);
    let size = 128 << 20;
    let data = random_bytes(size, 8);
    let src = Buffer::new(host_with(&data));
    let dir = tempfile::tempdir().unwrap();
    let file = Buffer::new(DiskStorage::new_in(dir.path(), size).unwrap());
    let w = engine.copy_region(&src, &file).unwrap();
    w.cancel();
    match w.wait() {
        Err(Error::Transfer(TransferError::Cancelled { done, total })) => assert!(done < total),
        other => panic!("expected a cancelled transfer, got {other:?}"),
    }
    engine.copy_region(&src, &file).unwrap().wait().unwrap();
    assert!(read_region(&file) == data);
}

each_disk_backend!(cancelled_disk_transfers_report_cancellation: cancelled_disk_transfers_report_cancellation_io_uring, cancelled_disk_transfers_report_cancellation_nixl_posix);

#[test]
fn empty_transfers_complete_and_handles_poll() {
    for backend in DiskBackend::ALL {
        empty_transfers_complete(backend);
    }
}

fn empty_transfers_complete(backend: DiskBackend) {
    use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
    let engine = one_thread_engine(backend);
    let c = LayoutConfig {
        num_blocks: 4,
        num_layers: 2,
        outer_dim: 2,
        page_size: 1,
        inner_dim: 1024,
        dtype_bytes: 4,
    };
    let host = |n| Ok(Buffer::new(SystemStorage::new(n)?));
    let a = BlockLayout::allocate(c, LayoutKind::FullyContiguous, 4096, host).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = BlockLayout::allocate(c, LayoutKind::FullyContiguous, 4096, |n| {
        Ok(Buffer::new(DiskStorage::new_in(dir.path(), n)?))
    })
    .unwrap();
    for (s, d) in [(&a, &b), (&b, &a)] {
        let h = engine.copy_blocks(s, &[], d, &[]).unwrap();
        assert!(h.wait_timeout(Duration::from_secs(30)));
        assert!(h.is_done());
        let stats = h.wait().unwrap();
        assert_eq!((stats.bytes, stats.ops), (0, 0));
    }
}
