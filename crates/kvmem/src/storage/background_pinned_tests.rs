//! Unit tests of `background_pinned`: the chunk bookkeeping, without a GPU.

use super::*;

#[test]
fn chunks_are_whole_huge_pages_within_the_registration_limit() {
    let mib = 1 << 20;
    assert_eq!(pin_chunk(0, 4096), 2 * mib);
    assert_eq!(pin_chunk(3 * mib, 4096), 4 * mib);
    assert_eq!(pin_chunk(256 * mib, 4096), 256 * mib);
    assert_eq!(pin_chunk(256 * mib, 1 << 30), 1 << 30);
    assert_eq!(
        pin_chunk(usize::MAX, 4096),
        crate::cuda::MAX_HOST_REGISTRATION
    );
}

/// 10 bytes in chunks of 4: [0, 4), [4, 8), [8, 10).
fn ten() -> Chunks {
    Chunks::new(10, 4, Instant::now())
}

#[test]
fn a_range_needs_exactly_the_chunks_it_touches() {
    let c = ten();
    assert_eq!(c.count(), 3);
    assert_eq!(c.range(2), 8..10);
    assert_eq!(c.needed(once(0..1)), vec![0]);
    assert_eq!(c.needed(once(3..5)), vec![0, 1]);
    assert_eq!(c.needed(once(4..8)), vec![1]);
    assert_eq!(c.needed([9..10, 0..2]), vec![0, 2]);
    assert_eq!(c.needed(once(5..5)), Vec::<usize>::new());
    assert_eq!(c.needed(once(0..100)), vec![0, 1, 2]);
}

#[test]
fn progress_counts_bytes_and_milestones() {
    let c = ten();
    assert_eq!(c.progress().first_chunk, None);
    c.mark_pinned(2);
    c.mark_pinned(2); // twice counts once
    let p = c.progress();
    assert_eq!((p.pinned_bytes, p.pinned_chunks, p.chunks), (2, 1, 3));
    assert!(p.first_chunk.is_some() && p.fully_pinned.is_none());
    c.mark_pinned(0);
    c.mark_pinned(1);
    let p = c.progress();
    assert_eq!((p.pinned_bytes, p.total_bytes), (10, 10));
    assert!(p.fully_pinned.is_some());
}

#[test]
fn a_wait_returns_once_its_chunks_are_pinned_not_before() {
    let c = Arc::new(ten());
    c.mark_pinned(0);
    // Chunk 0 is enough for the first block, however far the rest is.
    c.wait(&c.needed(once(0..4)), 0..4, Duration::ZERO).unwrap();
    assert!(!c.all_ready(&c.needed(once(0..10))));
    let pinner = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.mark_pinned(1);
            std::thread::sleep(Duration::from_millis(50));
            c.mark_pinned(2);
        })
    };
    let t = Instant::now();
    c.wait(&c.needed(once(6..9)), 6..9, Duration::from_secs(20))
        .unwrap();
    // Both chunks 1 and 2 were needed: the wait outlived the first mark.
    assert!(
        t.elapsed() >= Duration::from_millis(90),
        "{:?}",
        t.elapsed()
    );
    assert!(c.all_ready(&c.needed(once(0..10))));
    pinner.join().unwrap();
}

#[test]
fn the_other_pinning_threads_start_once_the_first_chunk_is_pinned_or_pinning_stops() {
    let stop = AtomicBool::new(false);
    let c = Arc::new(ten());
    let marker = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            c.mark_pinned(0);
        })
    };
    let t = Instant::now();
    assert!(c.wait_first(&stop));
    assert!(c.all_ready(&[0]) && t.elapsed() >= Duration::from_millis(25));
    marker.join().unwrap();
    // A failure or a stop ends the wait with false.
    let failed = ten();
    failed.fail("refused".into());
    assert!(!failed.wait_first(&stop));
    stop.store(true, Ordering::Release);
    assert!(!ten().wait_first(&stop));
}

#[test]
fn a_wait_times_out_with_the_numbers() {
    let c = ten();
    c.mark_pinned(0);
    let t = Instant::now();
    let e = c
        .wait(&c.needed(once(4..6)), 4..6, Duration::from_millis(30))
        .unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(30));
    match e {
        Error::Memory(MemoryError::PinningTimeout {
            offset,
            end,
            waited,
            pinned,
            total,
        }) => {
            assert_eq!((offset, end, pinned, total), (4, 6, 4, 10));
            assert!(waited >= Duration::from_millis(30));
        }
        other => panic!("expected PinningTimeout, got {other:?}"),
    }
    assert!(e_message(&c).contains("wait longer"));
}

fn e_message(c: &Chunks) -> String {
    c.wait(&[1], 4..8, Duration::ZERO).unwrap_err().to_string()
}

#[test]
fn a_failure_wakes_the_waiters_and_pinned_chunks_stay_usable() {
    let c = Arc::new(ten());
    c.mark_pinned(0);
    let failer = {
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c.fail("CUDA_ERROR_OUT_OF_MEMORY".into());
            c.fail("a later reason".into());
        })
    };
    let t = Instant::now();
    let e = c.wait(&[1], 4..8, Duration::from_secs(20)).unwrap_err();
    // Woken by the failure, long before the timeout.
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(&e, Error::Memory(MemoryError::PinningFailed { reason, offset: 4, end: 8 }) if reason == "CUDA_ERROR_OUT_OF_MEMORY"),
        "{e:?}"
    );
    c.wait(&[0], 0..4, Duration::ZERO).unwrap();
    failer.join().unwrap();
}
