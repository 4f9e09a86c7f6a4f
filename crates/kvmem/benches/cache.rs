//! Criterion benchmarks of the block cache's bookkeeping, with 1M resident blocks.
//!
//! Blocks are 64 bytes so that the copies cost next to nothing and what is measured is the
//! cache's own work: the lock, the index, the policy, slot allocation and eviction, the worker
//! hand-off, planning, and waiting. Per-block numbers come from 1,000-block operations
//! (criterion's throughput, in elements = blocks). The index's memory per resident block is
//! printed once. The new-block stores run last: they evict the oldest blocks.
//!
//! References from the same run, in group `reference_1M`: a plain `std::collections::HashMap`
//! holding the same 1M keys (1,000 lookups; 1,000 new keys inserted and the 1,000 oldest
//! removed, keys computed in the loop as the cache bench computes them), and the
//! transfer engine's copy of the same 1,000 host blocks that a load does (the part of a load
//! that is not bookkeeping).
//!
//! `cargo bench -p kvmem --bench cache`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kvmem::Completion;
use kvmem::cache::{BlockKey, CacheResult};
use kvmem::transfer::{EngineConfig, TransferEngine};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

const RESIDENT: usize = 1 << 20;
const BATCH: usize = 1000;
const T: Duration = Duration::from_secs(60);

// The 64-byte blocks and the cache over them are the tests' own (`cache_model`'s index test).
#[path = "../tests/cache_common/mod.rs"]
mod cache_common;

use cache_common::{key, tiny_cache, tiny_layout};

/// The report of an operation the cache accepted; panics on a refusal or a failure.
fn done<H: Completion>(accepted: CacheResult<H>) -> H::Output {
    accepted.unwrap().wait().unwrap()
}

fn bench(c: &mut Criterion) {
    let cache = tiny_cache(RESIDENT);
    let fill = 8192;
    let gpu = tiny_layout(fill);
    let ids: Vec<usize> = (0..fill).collect();
    let mut next = 0u64;
    while (next as usize) < RESIDENT {
        let ks: Vec<_> = (next..next + fill as u64).map(key).collect();
        cache.store(&ks, &gpu, &ids, T).unwrap().wait().unwrap();
        next += fill as u64;
    }
    let (resident, _) = cache.resident();
    eprintln!(
        "cache index: {} bytes for {resident} resident blocks = {:.1} bytes per block",
        cache.index_bytes(),
        cache.index_bytes() as f64 / resident as f64
    );

    let present: Vec<_> = (next - 50_000..next - 50_000 + BATCH as u64)
        .map(key)
        .collect();
    let batch_ids: Vec<usize> = (0..BATCH).collect();

    {
        // The same keys in a plain table, and the same copies without the cache.
        let mut g = c.benchmark_group("reference_1M");
        g.throughput(Throughput::Elements(BATCH as u64));
        let mut plain: HashMap<BlockKey, u64> = (0..next).map(|i| (key(i), i)).collect();
        g.bench_function("hashmap_lookup_1000", |b| {
            b.iter(|| {
                let mut n = 0u64;
                for k in black_box(&present) {
                    n += plain.get(k).copied().unwrap_or(0);
                }
                black_box(n)
            })
        });
        // What a store of new blocks into a full cache does at the least: insert 1,000 new
        // keys and remove the 1,000 oldest (random places in a large table: memory-bound).
        let (mut newest, mut oldest) = (next, 0u64);
        g.bench_function("hashmap_churn_1000", |b| {
            b.iter(|| {
                for i in newest..newest + BATCH as u64 {
                    plain.insert(key(i), i);
                }
                for i in oldest..oldest + BATCH as u64 {
                    plain.remove(&key(i));
                }
                newest += BATCH as u64;
                oldest += BATCH as u64;
            })
        });
        drop(plain);
        let engine = TransferEngine::new(EngineConfig::default()).unwrap();
        let pool = tiny_layout(RESIDENT);
        let src: Vec<usize> = (0..BATCH).map(|i| i * 997 % RESIDENT).collect();
        g.bench_function("engine_copy_1000", |b| {
            b.iter(|| {
                engine
                    .copy_blocks(&pool, &src, &gpu, &batch_ids)
                    .unwrap()
                    .wait()
                    .unwrap()
            })
        });
        g.finish();
    }

    let mut g = c.benchmark_group("cache_1M_resident");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("lookup_1000", |b| {
        b.iter(|| black_box(cache.lookup(black_box(&present))))
    });
    let load = |keys: &[BlockKey]| done(cache.load(keys, &gpu, &batch_ids, T));
    let store = |keys: &[BlockKey]| done(cache.store(keys, &gpu, &batch_ids, T));
    g.bench_function("load_1000", |b| {
        b.iter(|| assert_eq!(load(&present).from_host, BATCH))
    });
    g.bench_function("store_1000_present", |b| {
        b.iter(|| assert_eq!(store(&present).present, BATCH))
    });
    g.bench_function("store_1000_new_evicting", |b| {
        b.iter(|| {
            let ks: Vec<_> = (next..next + BATCH as u64).map(key).collect();
            next += BATCH as u64;
            assert_eq!(store(&ks).stored, BATCH);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
