//! Model-based property tests of the block cache: random sequences of store, load, lookup,
//! touch, remove, prefetch and simulated crash (drop and reopen) against a plain model.
//!
//! Checked after every step: the index's own invariants (one owner per slot, no slot both free
//! and owned, capacities), no key the model does not have (nothing phantom or removed is ever
//! served), every loaded block byte-for-byte equal to what was stored under its key, and — in
//! the configuration whose disk holds every key — no key lost except by a crash of a block that
//! was only in host memory.

mod cache_common;

use cache_common::*;
use kvmem::Completion;
use kvmem::cache::{
    Admission, BlockCache, CacheConfig, Capacity, HostMemoryKind, PolicyKind, WritePolicy,
};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::time::Duration;

const UNIVERSE: u64 = 20;
const T: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Op {
    Store(Vec<u64>),
    Load(Vec<u64>),
    Lookup(Vec<u64>),
    Touch(Vec<u64>),
    Remove(Vec<u64>),
    Prefetch(Vec<u64>),
    Crash,
}

fn keys() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::btree_set(0..UNIVERSE, 1..7).prop_map(|s| s.into_iter().collect())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => keys().prop_map(Op::Store),
        4 => keys().prop_map(Op::Load),
        1 => keys().prop_map(Op::Lookup),
        1 => keys().prop_map(Op::Touch),
        1 => keys().prop_map(Op::Remove),
        1 => keys().prop_map(Op::Prefetch),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Setup {
    /// 6 host blocks, no disk: evictions, no persistence.
    HostOnly,
    /// 4 host blocks, 32 disk blocks, write-back, LRU: the disk holds every key.
    WriteBackRoomy,
    /// 4 host blocks, 8 disk blocks, write-through, admit on second use, S3-FIFO, chain-aware.
    WriteThroughTight,
}

fn config(setup: Setup, dir: &std::path::Path) -> CacheConfig {
    let mut c = CacheConfig::new(block(), Capacity::Blocks(6));
    c.host_memory = HostMemoryKind::System;
    match setup {
        Setup::HostOnly => {}
        Setup::WriteBackRoomy => {
            c = c.with_disk(dir, Capacity::Blocks(32));
            c.host = Capacity::Blocks(4);
        }
        Setup::WriteThroughTight => {
            c = c.with_disk(dir, Capacity::Bytes(8 * BLOCK_BYTES as u64));
            c.host = Capacity::Bytes(4 * BLOCK_BYTES as u64 + 100);
            c.policy = PolicyKind::S3Fifo;
            c.chain_aware = true;
            if let Some(d) = c.disk.as_mut() {
                d.write = WritePolicy::WriteThrough;
                d.admission = Admission::SecondUse;
            }
        }
    }
    c
}

fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = Some(BlockCache::open(config(setup, dir.path())).unwrap());
    // Keys stored and not removed since (what may be present).
    let mut model: BTreeSet<u64> = BTreeSet::new();
    let roomy = matches!(setup, Setup::WriteBackRoomy);
    for op in ops {
        let c = cache.as_ref().unwrap();
        match &op {
            Op::Store(ids) => {
                let ks: Vec<_> = ids.iter().map(|i| key(*i)).collect();
                let gpu = gpu_with(&ks, ks.len());
                let gpu_ids: Vec<usize> = (0..ks.len()).collect();
                let before: Vec<_> = ks.iter().map(|k| c.residency(*k)).collect();
                let in_host = before.iter().filter(|r| r.host).count();
                let fresh = before.iter().filter(|r| !r.present()).count();
                let r = c.store(&ks, &gpu, &gpu_ids, T).unwrap().wait().unwrap();
                prop_assert_eq!(r.present, ks.len() - fresh);
                // Nothing else is claimed in a sequential run: only new keys beyond the host
                // slots this store does not hold itself find no slot.
                prop_assert_eq!(
                    r.no_space.len(),
                    fresh.saturating_sub(c.host_blocks() - in_host),
                    "{:?}",
                    r
                );
                prop_assert_eq!(r.stored + r.present + r.no_space.len(), ks.len());
                for (i, k) in ids.iter().zip(&ks) {
                    if r.no_space.contains(k) {
                        continue;
                    }
                    model.insert(*i);
                    prop_assert!(
                        c.residency(*k).present(),
                        "{k} absent right after its store"
                    );
                }
            }
            Op::Load(ids) => {
                let ks: Vec<_> = ids.iter().map(|i| key(*i)).collect();
                let gpu = gpu_with(&[], ks.len());
                let gpu_ids: Vec<usize> = (0..ks.len()).collect();
                let res: Vec<_> = ks.iter().map(|k| c.residency(*k)).collect();
                let before: Vec<bool> = res.iter().map(|r| r.present()).collect();
                let in_host = res.iter().filter(|r| r.host).count();
                let disk_only = res.iter().filter(|r| r.disk && !r.host).count();
                let r = c.load(&ks, &gpu, &gpu_ids, T).unwrap().wait().unwrap();
                prop_assert!(
                    r.corrupt.is_empty(),
                    "nothing corrupts the disk here: {r:?}"
                );
                // Only disk blocks beyond the host slots this load does not hold itself find
                // no staging slot.
                prop_assert_eq!(
                    r.no_space.len(),
                    disk_only.saturating_sub(c.host_blocks() - in_host),
                    "{:?}",
                    r
                );
                for (b, k) in ks.iter().enumerate() {
                    if r.no_space.contains(k) {
                        prop_assert!(res[b].disk && c.residency(*k).disk);
                        continue;
                    }
                    let failed = r.missing.contains(k);
                    prop_assert_eq!(
                        failed,
                        !before[b],
                        "{} missing = {} but present before = {}",
                        k,
                        failed,
                        before[b]
                    );
                    if !failed {
                        prop_assert!(
                            model.contains(&ids[b]),
                            "{k} served but never stored or removed"
                        );
                        prop_assert_eq!(
                            read_block(&gpu, b),
                            pattern(*k),
                            "{} served wrong bytes",
                            k
                        );
                    } else {
                        prop_assert!(
                            read_block(&gpu, b).iter().all(|x| *x == 0),
                            "a missing key's GPU block was written"
                        );
                    }
                }
            }
            Op::Lookup(ids) => {
                let ks: Vec<_> = ids.iter().map(|i| key(*i)).collect();
                let l = c.lookup(&ks);
                let expect = ks.iter().take_while(|k| c.residency(**k).present()).count();
                prop_assert_eq!(l.hits, expect);
                prop_assert_eq!(l.host + l.disk, l.hits);
            }
            Op::Touch(ids) => {
                let ks: Vec<_> = ids.iter().map(|i| key(*i)).collect();
                c.touch(&ks);
            }
            Op::Remove(ids) => {
                let ks: Vec<_> = ids.iter().map(|i| key(*i)).collect();
                c.remove(&ks);
                for (i, k) in ids.iter().zip(&ks) {
                    model.remove(i);
                    prop_assert!(!c.residency(*k).present(), "{k} present after remove");
                }
            }
            Op::Prefetch(ids) => {
                let ks: Vec<_> = ids.iter().map(|i| key(*i)).collect();
                let r = c.prefetch(&ks, T).unwrap().wait().unwrap();
                prop_assert!(r.corrupt.is_empty());
            }
            Op::Crash => {
                let on_disk: BTreeSet<u64> = (0..UNIVERSE)
                    .filter(|i| c.residency(key(*i)).disk)
                    .collect();
                drop(cache.take());
                let c = BlockCache::open(config(setup, dir.path())).unwrap();
                for i in 0..UNIVERSE {
                    let r = c.residency(key(i));
                    prop_assert!(!r.host, "host memory does not survive a restart");
                    prop_assert_eq!(
                        r.disk,
                        on_disk.contains(&i),
                        "key {} on disk before the restart: {}",
                        i,
                        on_disk.contains(&i)
                    );
                }
                if roomy {
                    // Only blocks that were in host memory alone are gone.
                    model.retain(|i| on_disk.contains(i));
                }
                cache = Some(c);
            }
        }
        let c = cache.as_ref().unwrap();
        c.check_invariants()
            .map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
        let (h, d) = c.resident();
        prop_assert!(h <= c.host_blocks() && d <= c.disk_blocks());
        for i in 0..UNIVERSE {
            let present = c.residency(key(i)).present();
            if present {
                prop_assert!(
                    model.contains(&i),
                    "key {} present but not in the model after {:?}",
                    i,
                    op
                );
            } else if roomy {
                prop_assert!(
                    !model.contains(&i),
                    "key {} lost (the disk has room for every key) after {:?}",
                    i,
                    op
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn host_only_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(Setup::HostOnly, ops)?;
    }

    #[test]
    fn write_back_loses_nothing(ops in prop::collection::vec(op(), 1..40)) {
        run(Setup::WriteBackRoomy, ops)?;
    }

    #[test]
    fn write_through_tight_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(Setup::WriteThroughTight, ops)?;
    }
}

/// The index costs at most 64 bytes per resident block (issue 11's bookkeeping goal), counted
/// by the cache itself from its tables' allocations, with the host tier full.
#[test]
fn index_stays_within_64_bytes_per_resident_block() {
    let blocks = 1 << 16;
    let cache = tiny_cache(blocks);
    let fill = 4096;
    let gpu = tiny_layout(fill);
    let ids: Vec<usize> = (0..fill).collect();
    // Twice the capacity: the second half evicts the first.
    for start in (0..2 * blocks as u64).step_by(fill) {
        let ks: Vec<_> = (start..start + fill as u64).map(key).collect();
        let r = cache.store(&ks, &gpu, &ids, T).unwrap().wait().unwrap();
        assert_eq!(r.stored, fill);
    }
    assert_eq!(cache.resident().0, blocks);
    assert_eq!(cache.keys(), blocks);
    cache.check_invariants().unwrap();
    let per_block = cache.index_bytes() as f64 / blocks as f64;
    assert!(
        per_block <= 64.0,
        "{per_block:.1} bytes of index per resident block"
    );
}
