//! 8 threads storing, loading, looking up, touching and removing 64 overlapping keys through
//! one cache with a small host tier and a write-back disk tier: 100,000 operations, no
//! deadlock (a watchdog fails the test instead of hanging), every loaded block byte-exact, and
//! the index's invariants holding throughout and at the end.

mod cache_common;

use cache_common::*;
use kvmem::Completion;
use kvmem::cache::{BlockCache, CacheConfig, Capacity, HostMemoryKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const THREADS: u64 = 8;
const OPS: u64 = 100_000;
const KEYS: u64 = 64;

#[test]
fn eight_threads_hundred_thousand_ops() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        CacheConfig::new(block(), Capacity::Blocks(16)).with_disk(dir.path(), Capacity::Blocks(48));
    config.host_memory = HostMemoryKind::System;
    config.workers = 4;
    let cache = Arc::new(BlockCache::open(config).unwrap());
    let loaded = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..THREADS {
        let cache = Arc::clone(&cache);
        let loaded = Arc::clone(&loaded);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(t);
            // Per thread, one "GPU" layout holding every key's block (block i = key i) to store
            // from, and one that receives loads.
            let all: Vec<_> = (0..KEYS).map(key).collect();
            let patterns: Vec<_> = all.iter().map(|k| pattern(*k)).collect();
            let source = gpu_with(&all, KEYS as usize);
            let sink = gpu_with(&[], 4);
            let mut result = Ok(());
            for i in 0..OPS / THREADS {
                let n = rng.usize(1..=4);
                let start = rng.u64(0..KEYS);
                let idx: Vec<usize> = (0..n as u64)
                    .map(|j| ((start + j) % KEYS) as usize)
                    .collect();
                let ks: Vec<_> = idx.iter().map(|i| all[*i]).collect();
                let ids: Vec<usize> = (0..n).collect();
                let step = match rng.u8(0..10) {
                    0..=3 => cache
                        .store(&ks, &source, &idx, Duration::from_secs(30))
                        .and_then(|h| h.wait())
                        .map(|_| ())
                        .map_err(|e| format!("store: {e}")),
                    4..=7 => {
                        match cache
                            .load(&ks, &sink, &ids, Duration::from_secs(30))
                            .and_then(|h| h.wait())
                        {
                            Err(e) => Err(format!("load: {e}")),
                            Ok(r) if !r.corrupt.is_empty() => {
                                Err(format!("corrupt blocks: {:?}", r.corrupt))
                            }
                            Ok(r) => {
                                let mut bad = None;
                                for (b, k) in ks.iter().enumerate() {
                                    if r.failed().any(|f| f == k) {
                                        continue;
                                    }
                                    loaded.fetch_add(1, Ordering::Relaxed);
                                    if read_block(&sink, b) != patterns[idx[b]] {
                                        bad = Some(format!("{k} served wrong bytes ({r:?})"));
                                    }
                                }
                                bad.map_or(Ok(()), Err)
                            }
                        }
                    }
                    8 => {
                        let l = cache.lookup(&ks);
                        if l.hits > ks.len() || l.host + l.disk != l.hits {
                            Err(format!("lookup {l:?}"))
                        } else {
                            cache.touch(&ks);
                            Ok(())
                        }
                    }
                    _ => {
                        if rng.u8(0..4) == 0 {
                            cache.remove(&ks[..1]);
                        }
                        Ok(())
                    }
                };
                if let Err(e) = step {
                    result = Err(format!("thread {t} op {i}: {e}"));
                    break;
                }
                if t == 0
                    && i % 1000 == 0
                    && let Err(e) = cache.check_invariants()
                {
                    result = Err(format!("invariants during the run: {e}"));
                    break;
                }
            }
            let _ = tx.send(result);
        });
    }
    drop(tx);
    for _ in 0..THREADS {
        match rx.recv_timeout(Duration::from_secs(240)) {
            Ok(r) => r.unwrap(),
            Err(e) => panic!("a thread did not finish within 4 minutes (deadlock?): {e}"),
        }
    }
    cache.check_invariants().unwrap();
    let (h, d) = cache.resident();
    assert!(h <= 16 && d <= 48);
    let s = cache.stats();
    assert!(
        loaded.load(Ordering::Relaxed) > 1000,
        "too few loads hit to mean anything: {s:?}"
    );
    assert!(
        s.evictions_host > 0 && s.loaded_disk > 0,
        "the run must evict and load from disk: {s:?}"
    );
}
