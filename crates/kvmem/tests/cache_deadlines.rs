//! Deadlines, failures and cancellation: a store that misses its deadline or fails leaves its
//! keys absent (and a copy finishing later does not change that), a failed load names the keys
//! it did not load, and claims are released either way.

mod cache_common;

use cache_common::*;
use kvmem::Completion;
use kvmem::cache::{BlockCache, BlockKey, CacheConfig, CacheError, Capacity, HostMemoryKind};
use std::time::Duration;

fn cache() -> BlockCache {
    let mut c = CacheConfig::new(block(), Capacity::Blocks(64));
    c.host_memory = HostMemoryKind::System;
    BlockCache::open(c).unwrap()
}

#[test]
fn a_store_past_its_deadline_leaves_its_keys_absent() {
    let cache = cache();
    let ks: Vec<_> = (0..32).map(key).collect();
    let gpu = gpu_with(&ks, ks.len());
    let ids: Vec<usize> = (0..ks.len()).collect();
    let e = cache
        .store(&ks, &gpu, &ids, Duration::ZERO)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            e,
            kvmem::Error::Cache(CacheError::Timeout {
                op: "store",
                keys: 32,
                ..
            })
        ),
        "{e}"
    );
    for _ in 0..3 {
        // Whenever the copy itself finishes, the keys stay absent.
        assert_eq!(cache.lookup(&ks).hits, 0);
        assert!(ks.iter().all(|k| !cache.residency(*k).present()));
        std::thread::sleep(Duration::from_millis(50));
    }
    cache.check_invariants().unwrap();
    assert_eq!(
        cache.resident().0,
        0,
        "the timed-out store's slots are free again"
    );
    // The same keys store fine with time to do it.
    let r = cache
        .store(&ks, &gpu, &ids, Duration::from_secs(10))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(r.stored, 32);
    assert_eq!(cache.lookup(&ks).hits, 32);
}

/// Asserts that `e` is the cache's failure of `op`, naming exactly `ks`.
fn failed_naming(e: &kvmem::Error, op: &str, ks: &[BlockKey]) {
    match e {
        kvmem::Error::Cache(CacheError::Failed { op: o, keys, .. }) if *o == op => {
            assert_eq!(keys, ks)
        }
        other => panic!("expected the cache's {op} failure, got {other}"),
    }
}

#[test]
fn a_failed_copy_names_its_keys_and_releases_them() {
    let cache = cache();
    let ks: Vec<_> = (100..104).map(key).collect();
    let gpu = gpu_with(&ks, ks.len());
    let t = Duration::from_secs(10);
    let store = |ids: &[usize]| cache.store(&ks, &gpu, ids, t).unwrap().wait();
    // Block 9 does not exist in a 4-block layout: the copy fails before moving anything.
    failed_naming(&store(&[0, 1, 2, 9]).unwrap_err(), "store", &ks);
    assert_eq!(
        cache.lookup(&ks).hits,
        0,
        "a failed store leaves its keys absent"
    );
    cache.check_invariants().unwrap();

    store(&[0, 1, 2, 3]).unwrap();
    let sink = gpu_with(&[], 4);
    let load = |ids: &[usize]| cache.load(&ks, &sink, ids, t).unwrap().wait();
    failed_naming(&load(&[0, 1, 2, 7]).unwrap_err(), "load", &ks);
    // The blocks are still there, unclaimed: removable and loadable.
    let r = load(&[0, 1, 2, 3]).unwrap();
    assert!(r.complete());
    for (b, k) in ks.iter().enumerate() {
        assert_eq!(read_block(&sink, b), pattern(*k));
    }
    assert_eq!(cache.remove(&ks), 4);
    assert_eq!(cache.keys(), 0, "no claim was left behind");
    cache.check_invariants().unwrap();
}

#[test]
fn a_cancelled_store_is_absent_or_complete_never_half() {
    let cache = cache();
    for round in 0..20u64 {
        let ks: Vec<_> = (round * 8..round * 8 + 8).map(|i| key(1000 + i)).collect();
        let gpu = gpu_with(&ks, ks.len());
        let ids: Vec<usize> = (0..ks.len()).collect();
        let h = cache
            .store(&ks, &gpu, &ids, Duration::from_secs(10))
            .unwrap();
        h.cancel();
        match h.wait() {
            Ok(r) => {
                assert_eq!(r.stored, 8);
                assert_eq!(cache.lookup(&ks).hits, 8);
            }
            Err(kvmem::Error::Cache(CacheError::Cancelled { op: "store" })) => {
                std::thread::sleep(Duration::from_millis(20));
                assert_eq!(
                    cache.lookup(&ks).hits,
                    0,
                    "a cancelled store leaves its keys absent"
                );
            }
            Err(e) => panic!("{e}"),
        }
        cache.check_invariants().unwrap();
    }
}
