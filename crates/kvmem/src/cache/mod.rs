//! The KV block cache: content keys to residency in pinned host memory and on disk.
//!
//! The engine keeps its GPU memory and decides what leaves it; the cache owns the tiers below.
//! Blocks are named by a 128-bit [`BlockKey`] (the engine's chained prefix hash, or
//! [`chain_keys`] over token ids) and move between the engine's layout and the cache's tiers
//! through the [`TransferEngine`]:
//!
//! | operation | does | I/O |
//! |---|---|---|
//! | [`lookup`](BlockCache::lookup) | the longest present prefix, per tier | none, no allocation |
//! | [`store`](BlockCache::store) | GPU → host; present keys skipped | copy, write-back/-through to disk |
//! | [`load`](BlockCache::load) | host or disk → GPU (disk through host memory, checksum checked) | copies |
//! | [`prefetch`](BlockCache::prefetch) | disk → host | copy |
//! | [`touch`](BlockCache::touch), [`remove`](BlockCache::remove) | recency, removal | journal only |
//!
//! Guarantees: a block is loadable only once its copy finished; a store that fails or misses
//! its deadline leaves its keys absent; a load says which keys it did not load; a copy that
//! completes after its operation failed never turns it into a success; a block claimed by an
//! operation is never evicted nor its slot reused; a disk block whose bytes do not match the
//! checksum recorded when it was written is dropped, never served.
//!
//! The disk tier is a directory: `blocks.kvd` (one fully contiguous layout, `O_DIRECT`),
//! `journal.log` (append-only, checksummed records of completed writes), `meta.json` (the
//! geometry, capacity and model fingerprint it was written for) and `lock`. Reopening it
//! recovers the journaled blocks; another geometry or fingerprint is refused.
//!
//! Metrics, through the `metrics` facade (install any recorder, e.g. a Prometheus exporter):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `kvmem_cache_lookups_total` | counter | |
//! | `kvmem_cache_lookup_blocks_total` | counter | |
//! | `kvmem_cache_hits_total` | counter | `tier` = `host` / `disk` |
//! | `kvmem_cache_bytes_total` | counter | `tier`, `direction` = `in` / `out` |
//! | `kvmem_cache_evictions_total` | counter | `tier` |
//! | `kvmem_cache_admissions_refused_total` | counter | |
//! | `kvmem_cache_corrupt_blocks_total` | counter | |
//! | `kvmem_cache_disk_write_failures_total` | counter | |
//! | `kvmem_cache_ops_in_flight` | gauge | |
//! | `kvmem_cache_op_seconds` | histogram | `op` = `store` / `load` / `prefetch` |
//!
//! ```
//! use kvmem::Completion;
//! use kvmem::cache::{BlockCache, CacheConfig, Capacity, chain_keys};
//! use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
//! use kvmem::{Buffer, SystemStorage};
//! use std::time::Duration;
//!
//! let block = LayoutConfig { num_blocks: 4, num_layers: 2, outer_dim: 2, page_size: 16, inner_dim: 64, dtype_bytes: 2 };
//! // Host memory stands in for the GPU here; a DeviceStorage layout works the same way.
//! let gpu = BlockLayout::allocate(block, LayoutKind::FullyContiguous, 2048, |n| Ok(Buffer::new(SystemStorage::new(n)?)))?;
//! let cache = BlockCache::open(CacheConfig::new(block, Capacity::Blocks(8)))?;
//!
//! let tokens: Vec<u32> = (0..48).collect();
//! let keys = chain_keys(None, &tokens, 16);
//! let stored = cache.store(&keys, &gpu, &[0, 1, 2], Duration::from_secs(5))?.wait()?;
//! assert_eq!(stored.stored, 3);
//! assert_eq!(cache.lookup(&keys).hits, 3);
//! let loaded = cache.load(&keys[..2], &gpu, &[2, 3], Duration::from_secs(5))?.wait()?;
//! assert!(loaded.complete());
//! # Ok::<(), kvmem::Error>(())
//! ```

mod config;
mod handle;
mod index;
mod invariants;
mod jobs;
mod journal;
mod policy;
mod slots;
mod stats;
mod table;
mod tier;

pub use crate::error::{CacheError, CacheResult};
pub use crate::key::{BlockKey, chain_keys};
pub use config::{Admission, CacheConfig, Capacity, DiskConfig, WritePolicy};
pub use handle::{CacheHandle, LoadReport, StoreReport};
pub use policy::{Lru, Policy, PolicyKind, S3Fifo, Scan};
pub use stats::CacheStats;
pub use tier::{HostMemoryKind, HostPoolKind};

use crate::layout::BlockLayout;
use crate::transfer::TransferEngine;
use handle::OpState;
use index::{Index, Prelude, TierState, recover};
use slots::{NO_SLOT, Slot};
use stats::Counters;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use table::{RecId, Res};
use tier::{DirMeta, DiskTier, Geometry, HostPool};

/// Keys whose table lines (and victims' records) an operation requests at once, one chunk
/// ahead of working on them: enough for their memory misses to overlap, few enough for the
/// lines to stay in the core's cache until used.
const PREFETCH_CHUNK: usize = 32;

/// The result of a [`lookup`](BlockCache::lookup): how many leading keys are present, and in
/// which tier (each counted once, in the fastest tier that holds it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Leading keys present (host + disk).
    pub hits: usize,
    /// Of those, in host memory.
    pub host: usize,
    /// Of those, only on disk.
    pub disk: usize,
}

/// Where a key is now (complete copies only), for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residency {
    /// Loadable from host memory.
    pub host: bool,
    /// Loadable from disk.
    pub disk: bool,
}

impl Residency {
    /// True when the key is loadable from some tier.
    pub fn present(&self) -> bool {
        self.host || self.disk
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// State shared by the cache and its workers.
pub(crate) struct Shared {
    index: Mutex<Index>,
    host: HostPool,
    disk: Option<DiskTier>,
    engine: TransferEngine,
    geometry: Geometry,
    block_bytes: usize,
    stats: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Index> {
        // Index updates are completed before any call that could panic returns control, so a
        // poisoned lock still holds a consistent index.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The KV block cache: a pinned host pool and an optional disk directory, indexed by
/// [`BlockKey`]. Shareable between threads; dropping it waits for the operations in flight.
pub struct BlockCache {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Vec<JoinHandle<()>>,
    host_blocks: usize,
    disk_blocks: usize,
}

impl BlockCache {
    /// Builds the tiers of `config`, recovering the disk directory's journaled blocks.
    ///
    /// # Errors
    /// [`CacheError::Config`] for an impossible configuration; a memory or I/O [`Error`](crate::Error) when the
    /// host pool cannot be allocated or the directory cannot be created or written;
    /// [`CacheError::DirectoryMismatch`] for a directory written for another geometry,
    /// capacity or fingerprint; [`CacheError::DirectoryLocked`] when another cache has it open.
    pub fn open(config: CacheConfig) -> CacheResult<Self> {
        let geometry = Geometry::of(&config.block)?;
        let block_bytes = config.block.block_bytes()?;
        let host_blocks = config.host.blocks(block_bytes);
        let disk_blocks = config
            .disk
            .as_ref()
            .map_or(0, |d| d.capacity.blocks(block_bytes));
        if host_blocks >= NO_SLOT as usize || disk_blocks >= NO_SLOT as usize {
            return Err(CacheError::Config(format!(
                "at most {} blocks per tier; use larger blocks",
                NO_SLOT - 1
            ))
            .into());
        }
        if disk_blocks > 0 && host_blocks == 0 {
            return Err(CacheError::Config(
                "a disk tier needs a host tier of at least one block: disk blocks pass through host memory"
                    .into(),
            ).into());
        }
        if disk_blocks > 0 && block_bytes % crate::storage::DIRECT_IO_ALIGN != 0 {
            return Err(CacheError::Config(format!(
                "disk blocks must be multiples of {} bytes for O_DIRECT, not {block_bytes}",
                crate::storage::DIRECT_IO_ALIGN
            ))
            .into());
        }
        let host = HostPool::new(config.block, host_blocks, config.host_memory)?;
        let engine = TransferEngine::new(config.engine)?;
        let stats = Counters::default();
        let host_tier = TierState::new(host_blocks, config.policy.build(host_blocks), false);
        let (disk, disk_tier, write, admission) = match (&config.disk, disk_blocks) {
            (Some(d), n) if n > 0 => {
                let meta = DirMeta {
                    format: 1,
                    geometry,
                    blocks: n,
                    fingerprint: config.fingerprint.clone(),
                };
                let (tier, entries) = DiskTier::open(&d.dir, config.block, meta)?;
                let state = recover(&entries, n, block_bytes, config.policy);
                (Some(tier), Some(state), d.write, d.admission)
            }
            (Some(d), _) => (None, None, d.write, d.admission),
            (None, _) => (None, None, WritePolicy::HostOnly, Admission::All),
        };
        let mut index = Index::new(host_tier, None, write, admission, config.chain_aware);
        if let Some((mut tier, recovered)) = disk_tier {
            for (slot, key) in &recovered {
                let id = index.map.find_or_insert(*key, 0);
                let rec = &mut index.map[id];
                rec.disk = *slot;
                rec.disk_state = Res::Ready;
                tier.owner[*slot as usize] = id;
            }
            Counters::add(&stats.recovered, recovered.len());
            index.disk = Some(tier);
        }
        let shared = Arc::new(Shared {
            index: Mutex::new(index),
            host,
            disk,
            engine,
            geometry,
            block_bytes,
            stats,
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..config.workers.max(1) {
            let rx = Arc::clone(&rx);
            let worker = std::thread::Builder::new()
                .name(format!("kvmem-cache-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| crate::Error::spawn("kvmem-cache worker", e))?;
            workers.push(worker);
        }
        Ok(Self {
            shared,
            tx: Mutex::new(Some(tx)),
            workers,
            host_blocks,
            disk_blocks,
        })
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> usize {
        self.shared.block_bytes
    }

    /// Capacity of the host tier in blocks.
    pub fn host_blocks(&self) -> usize {
        self.host_blocks
    }

    /// Capacity of the disk tier in blocks (0 without one).
    pub fn disk_blocks(&self) -> usize {
        self.disk_blocks
    }

    /// What memory the host tier is made of.
    pub fn host_pool_kind(&self) -> HostPoolKind {
        self.shared.host.kind
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        self.shared.stats.snapshot()
    }

    /// Blocks resident in (host, disk), counting blocks being written.
    pub fn resident(&self) -> (usize, usize) {
        let ix = self.shared.lock();
        (
            ix.host.slots.used(),
            ix.disk.as_ref().map_or(0, |d| d.slots.used()),
        )
    }

    /// Keys in the index.
    pub fn keys(&self) -> usize {
        self.shared.lock().map.len()
    }

    /// Bytes of memory the index holds (hash table, slot tables, policies).
    pub fn index_bytes(&self) -> usize {
        self.shared.lock().heap_bytes()
    }

    /// The longest prefix of `keys` present, with its per-tier breakdown. Blocks still being
    /// written do not count. No I/O, no allocation.
    pub fn lookup(&self, keys: &[BlockKey]) -> Lookup {
        let mut out = Lookup::default();
        {
            let ix = self.shared.lock();
            for key in keys {
                match ix.map.get(key) {
                    Some(r) if r.host_state == Res::Ready => out.host += 1,
                    Some(r) if r.disk_state == Res::Ready => out.disk += 1,
                    _ => break,
                }
            }
        }
        out.hits = out.host + out.disk;
        self.shared.stats.lookup(keys.len(), out.host, out.disk);
        out
    }

    /// Where `key` is now.
    pub fn residency(&self, key: BlockKey) -> Residency {
        match self.shared.lock().map.get(&key) {
            Some(r) => Residency {
                host: r.host_state == Res::Ready,
                disk: r.disk_state == Res::Ready,
            },
            None => Residency::default(),
        }
    }

    /// Marks `keys` as used now (for the eviction policy). Absent keys are ignored.
    pub fn touch(&self, keys: &[BlockKey]) {
        let mut guard = self.shared.lock();
        let ix = &mut *guard;
        for key in keys {
            if let Some(r) = ix.map.get_mut(key) {
                r.uses = r.uses.saturating_add(1);
                if r.host_state == Res::Ready {
                    ix.host.policy.access(r.host);
                }
                if r.disk_state == Res::Ready
                    && let Some(d) = ix.disk.as_mut()
                {
                    d.policy.access(r.disk);
                }
            }
        }
    }

    /// Removes `keys` from every tier; a key an operation holds goes when it is released.
    /// Returns how many keys were present.
    pub fn remove(&self, keys: &[BlockKey]) -> usize {
        let mut freed = Vec::new();
        let mut present = 0;
        {
            let mut ix = self.shared.lock();
            for key in keys {
                if let Some(id) = ix.map.find(key) {
                    present += 1;
                    ix.remove(id, &mut freed);
                }
            }
        }
        self.shared.journal(&freed);
        present
    }

    /// Copies the blocks `gpu_ids[i]` of `gpu` (the engine's layout, any tier) into the host
    /// tier under `keys[i]`. Keys already present are skipped (counted as hits). Each block
    /// becomes loadable when the copy has finished; if it fails or does not finish within
    /// `timeout`, its keys stay absent. Blocks the policy evicts to make room are written to
    /// disk first under [`WritePolicy::WriteBack`].
    ///
    /// The engine must not overwrite the GPU blocks until the handle reports the outcome.
    ///
    /// # Errors
    /// Before anything moves: [`CacheError::CountMismatch`], [`CacheError::Geometry`]. The
    /// handle reports copy failures and timeouts.
    pub fn store(
        &self,
        keys: &[BlockKey],
        gpu: &BlockLayout,
        gpu_ids: &[usize],
        timeout: Duration,
    ) -> CacheResult<CacheHandle<StoreReport>> {
        self.check(keys, gpu, gpu_ids)?;
        let deadline = Instant::now() + timeout;
        let stats = &self.shared.stats;
        let mut prelude = Prelude::default();
        let mut new: Vec<(RecId, Slot)> = Vec::with_capacity(keys.len());
        let mut src = Vec::with_capacity(keys.len());
        let mut report = StoreReport::default();
        let mut held = Vec::new();
        {
            let mut guard = self.shared.lock();
            let ix = &mut *guard;
            // First claim every present key, so that making room for the new ones cannot
            // evict a block this store just found.
            // Keys are taken a chunk at a time, the table lines of a chunk's keys requested
            // before the first is looked up, so that their cache misses overlap.
            let mut fresh = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                if i % PREFETCH_CHUNK == 0 {
                    let from = if i == 0 { 0 } else { i + PREFETCH_CHUNK };
                    let to = (i + 2 * PREFETCH_CHUNK).min(keys.len());
                    for k in keys.get(from..to).unwrap_or_default() {
                        ix.map.prefetch_key(k);
                    }
                }
                match ix.map.find(key) {
                    Some(id) if ix.map[id].present() => {
                        let r = &mut ix.map[id];
                        r.uses = r.uses.saturating_add(1);
                        r.claims += 1;
                        if r.host_state == Res::Ready {
                            ix.host.policy.access(r.host);
                        } else if r.disk_state == Res::Ready
                            && let Some(d) = ix.disk.as_mut()
                        {
                            d.policy.access(r.disk);
                        }
                        held.push(id);
                    }
                    _ => fresh.push(i),
                }
            }
            // The parent of each new block: its depth is one more.
            let mut parent: Option<(usize, u16)> = None;
            let mut ahead = Vec::new();
            for (n, &i) in fresh.iter().enumerate() {
                if n % PREFETCH_CHUNK == 0 {
                    // The next chunk's lines, while this chunk works (and at the start this
                    // chunk's too).
                    if n == 0 {
                        let chunk = fresh.iter().take(PREFETCH_CHUNK);
                        ix.prefetch_for_new(chunk.map(|&j| keys[j]), 0, &mut ahead);
                    }
                    let next = fresh.iter().skip(n + PREFETCH_CHUNK).take(PREFETCH_CHUNK);
                    ix.prefetch_for_new(next.map(|&j| keys[j]), PREFETCH_CHUNK, &mut ahead);
                }
                let key = keys[i];
                let depth = match parent {
                    Some((p, d)) if p + 1 == i => d.saturating_add(1),
                    _ => match i.checked_sub(1).and_then(|p| ix.map.get(&keys[p])) {
                        Some(parent) => parent.depth.saturating_add(1),
                        None => 0,
                    },
                };
                parent = Some((i, depth));
                // Claim the record first, so that making room cannot pick it.
                let id = ix.map.find_or_insert(key, depth);
                let rec = &mut ix.map[id];
                rec.claims += 1;
                if rec.present() {
                    // The same key twice in this store: its first copy is being written.
                    held.push(id);
                    continue;
                }
                rec.depth = depth;
                let Some(slot) = ix.alloc_host(&mut prelude, stats) else {
                    report.no_space.push(key);
                    ix.release(&[id], &mut prelude.freed);
                    continue;
                };
                let rec = &mut ix.map[id];
                rec.host = slot;
                rec.host_state = Res::Writing;
                ix.host.owner[slot as usize] = id;
                new.push((id, slot));
                src.push(gpu_ids[i]);
            }
            report.present = held.len();
        }
        stats.evicted(prelude.evicted);
        Counters::add(&stats.store_present, report.present);
        Counters::add(&stats.no_space, report.no_space.len());
        let op = OpState::new();
        let handle = CacheHandle::new(Arc::clone(&op));
        let shared = Arc::clone(&self.shared);
        let gpu = gpu.clone();
        self.spawn(Box::new(move || {
            shared.store_job(&op, prelude, new, held, gpu, src, report, deadline)
        }));
        Ok(handle)
    }

    /// Copies the blocks of `keys` into blocks `gpu_ids[i]` of `gpu`: from host memory, or from
    /// disk through host memory with the checksum checked. The report lists the keys that were
    /// missing or corrupt (their GPU blocks are not written); a failed copy's error lists the
    /// keys it did not load. The blocks are claimed until the copy is done.
    ///
    /// # Errors
    /// As for [`store`](Self::store).
    pub fn load(
        &self,
        keys: &[BlockKey],
        gpu: &BlockLayout,
        gpu_ids: &[usize],
        timeout: Duration,
    ) -> CacheResult<CacheHandle<LoadReport>> {
        self.check(keys, gpu, gpu_ids)?;
        self.start_load(keys, Some((gpu, gpu_ids)), timeout)
    }

    /// Brings the disk-only blocks among `keys` into host memory, so that a later load is a
    /// host copy. Keys absent or already in host memory are left alone.
    ///
    /// # Errors
    /// None today; the handle reports copy failures and timeouts.
    pub fn prefetch(
        &self,
        keys: &[BlockKey],
        timeout: Duration,
    ) -> CacheResult<CacheHandle<LoadReport>> {
        self.start_load(keys, None, timeout)
    }

    fn start_load(
        &self,
        keys: &[BlockKey],
        gpu: Option<(&BlockLayout, &[usize])>,
        timeout: Duration,
    ) -> CacheResult<CacheHandle<LoadReport>> {
        let deadline = Instant::now() + timeout;
        let stats = &self.shared.stats;
        let mut plan = jobs::LoadPlan::default();
        {
            let mut guard = self.shared.lock();
            let ix = &mut *guard;
            // First claim every loadable key, so that staging disk blocks in host memory
            // cannot evict another block of this load.
            let mut staged = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                let gpu_id = gpu.map_or(0, |(_, ids)| ids[i]);
                let Some(id) = ix.map.find(key) else {
                    plan.report.missing.push(*key);
                    continue;
                };
                let r = &mut ix.map[id];
                if r.host_state == Res::Ready {
                    if gpu.is_none() {
                        continue;
                    }
                    r.claims += 1;
                    r.uses = r.uses.saturating_add(1);
                    ix.host.policy.access(r.host);
                    plan.claimed.push(id);
                    plan.host.push((id, r.host, gpu_id));
                } else if r.disk_state == Res::Ready && r.host_state == Res::None {
                    r.claims += 1;
                    r.uses = r.uses.saturating_add(1);
                    plan.claimed.push(id);
                    staged.push((id, r.disk, gpu_id));
                } else {
                    plan.report.missing.push(*key);
                }
            }
            for (id, dslot, gpu_id) in staged {
                let Some(hslot) = ix.alloc_host(&mut plan.prelude, stats) else {
                    plan.report.no_space.push(ix.map[id].key);
                    continue;
                };
                let r = &mut ix.map[id];
                r.host = hslot;
                r.host_state = Res::Writing;
                let key = r.key;
                ix.host.owner[hslot as usize] = id;
                let sum = match ix.disk.as_mut() {
                    Some(d) => {
                        d.policy.access(dslot);
                        d.sums[dslot as usize]
                    }
                    None => 0,
                };
                plan.disk.push(jobs::DiskPart {
                    id,
                    key,
                    disk: dslot,
                    host: hslot,
                    gpu: gpu_id,
                    sum,
                });
            }
        }
        stats.evicted(plan.prelude.evicted);
        let op = OpState::new();
        let handle = CacheHandle::new(Arc::clone(&op));
        let shared = Arc::clone(&self.shared);
        let gpu = gpu.map(|(l, _)| l.clone());
        self.spawn(Box::new(move || shared.load_job(&op, plan, gpu, deadline)));
        Ok(handle)
    }

    fn check(&self, keys: &[BlockKey], gpu: &BlockLayout, gpu_ids: &[usize]) -> CacheResult<()> {
        if keys.len() != gpu_ids.len() {
            return Err(CacheError::CountMismatch {
                keys: keys.len(),
                ids: gpu_ids.len(),
            }
            .into());
        }
        self.shared.geometry.check(gpu)
    }

    fn spawn(&self, job: Job) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // The workers only stop once the cache is dropped, so a send fails only then; run the
        // job here rather than lose it.
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    job();
                }
            }
            None => job(),
        }
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        // Closing the channel lets the workers finish the queued operations and exit.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("block_bytes", &self.shared.block_bytes)
            .field("host_blocks", &self.host_blocks)
            .field("disk_blocks", &self.disk_blocks)
            .field("host_pool", &self.shared.host.kind)
            .finish()
    }
}
