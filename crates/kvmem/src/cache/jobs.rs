//! What the cache's workers do: an operation's copies, in order, each to its deadline, and the
//! index updates once each copy has stopped.

use super::handle::{LoadReport, OpState, StoreReport};
use super::index::{Prelude, WriteBack};
use super::journal::Entry;
use super::slots::{NO_SLOT, Slot};
use super::stats::{Counters, InFlight, TierLabel};
use super::table::{RecId, Res};
use super::{Shared, WritePolicy};
use crate::Completion;
use crate::error::CacheError;
use crate::key::BlockKey;
use crate::layout::BlockLayout;
use crate::transfer::TransferHandle;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

/// A disk block being loaded: read into host slot `host`, checked against `sum`, then copied to
/// GPU block `gpu`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskPart {
    pub(crate) id: RecId,
    pub(crate) key: BlockKey,
    pub(crate) disk: Slot,
    pub(crate) host: Slot,
    pub(crate) gpu: usize,
    pub(crate) sum: u64,
}

/// A load or prefetch as planned under the lock.
#[derive(Debug, Default)]
pub(crate) struct LoadPlan {
    pub(crate) prelude: Prelude,
    /// Records whose claim this operation holds.
    pub(crate) claimed: Vec<RecId>,
    /// (record, host slot, GPU block) for blocks in host memory.
    pub(crate) host: Vec<(RecId, Slot, usize)>,
    pub(crate) disk: Vec<DiskPart>,
    pub(crate) report: LoadReport,
}

/// How a copy ended when it did not succeed.
enum CopyEnd {
    /// It failed; nothing was reported yet.
    Failed(crate::Error),
    /// It missed the deadline or was cancelled; the failure is reported and the copy stopped.
    Late,
}

/// True when `r` says the copy missed the engine's deadline: its backend may still be writing
/// the destination.
fn still_running<T>(r: &crate::Result<T>) -> bool {
    matches!(
        r,
        Err(crate::Error::Transfer(
            crate::error::TransferError::TimedOut { .. }
        ))
    )
}

/// Waits for `h` until `deadline`. On timeout or cancellation the operation's failure is
/// reported at once, and then this still waits for the copy to stop, so that its slots can be
/// reused safely. If the copy did not stop within the engine's own deadline (a stalled
/// backend), `stuck` is called: the caller retires the slots the copy writes, for good.
fn finish_copy<T>(
    h: TransferHandle,
    deadline: Instant,
    op: &OpState<T>,
    name: &'static str,
    keys: usize,
    stuck: &dyn Fn(),
) -> Result<usize, CopyEnd> {
    let start = Instant::now();
    loop {
        let now = Instant::now();
        let late = if op.cancelled() {
            Some(CacheError::Cancelled { op: name })
        } else if now >= deadline {
            Some(CacheError::Timeout {
                op: name,
                keys,
                waited: now - start,
            })
        } else {
            None
        };
        if let Some(e) = late {
            h.cancel();
            op.report(Err(e.into()));
            // The outcome no longer matters; what matters is that no copy still runs.
            if still_running(&h.wait()) {
                stuck();
            }
            return Err(CopyEnd::Late);
        }
        if h.wait_timeout((deadline - now).min(Duration::from_millis(20))) {
            let r = h.wait();
            if still_running(&r) {
                stuck();
            }
            return r.map(|s| s.bytes).map_err(CopyEnd::Failed);
        }
    }
}

impl Shared {
    /// Appends `entries` to the journal (nothing without a disk tier or with no entries).
    pub(crate) fn journal(&self, entries: &[Entry]) -> bool {
        let Some(disk) = &self.disk else { return true };
        if entries.is_empty() {
            return true;
        }
        let mut j = disk.journal.lock().unwrap_or_else(|e| e.into_inner());
        match j.append(entries) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %j.path().display(), error = %e, "cache journal append failed");
                false
            }
        }
    }

    /// Writes the prelude's blocks from host memory to disk and journals them. Returns how many
    /// reached disk, or `Late` when the deadline passed (the operation's failure is reported).
    fn run_prelude<T>(
        &self,
        p: Prelude,
        deadline: Instant,
        op: &OpState<T>,
        name: &'static str,
    ) -> Result<usize, ()> {
        let Some(disk) = &self.disk else { return Ok(0) };
        if p.writebacks.is_empty() {
            self.journal(&p.freed);
            return Ok(0);
        }
        let hs: Vec<usize> = p.writebacks.iter().map(|w| w.host as usize).collect();
        let ds: Vec<usize> = p.writebacks.iter().map(|w| w.disk as usize).collect();
        let mut late = false;
        let outcome = match self
            .engine
            .copy_blocks(&self.host.flat, &hs, &disk.layout, &ds)
        {
            Err(e) => Err(e),
            Ok(h) => match finish_copy(h, deadline, op, name, p.writebacks.len(), &|| {
                self.retire(false, &ds)
            }) {
                Ok(_) => Ok(()),
                Err(CopyEnd::Failed(e)) => Err(e),
                Err(CopyEnd::Late) => {
                    late = true;
                    Err(crate::Error::Transfer(crate::error::TransferError::Aborted))
                }
            },
        };
        let mut entries = p.freed;
        let mut sums = Vec::with_capacity(p.writebacks.len());
        let ok = match outcome {
            Ok(()) => {
                let keys = self.keys_of(p.writebacks.iter().map(|w| w.id));
                for (w, key) in p.writebacks.iter().zip(keys) {
                    // The host slot is claimed by this write-back: nothing writes it now.
                    let sum = xxh3_64(self.host.block(w.host));
                    sums.push(sum);
                    entries.push(Entry::written(w.disk, self.block_bytes as u32, key, sum));
                }
                self.journal(&entries)
            }
            Err(e) => {
                if !late {
                    tracing::warn!(error = %e, blocks = p.writebacks.len(), "cache: writing blocks to disk failed");
                }
                self.journal(&entries);
                false
            }
        };
        let n = p.writebacks.len();
        if ok {
            self.stats.bytes_out(TierLabel::Host, n * self.block_bytes);
            self.stats.bytes_in(TierLabel::Disk, n * self.block_bytes);
        } else {
            self.stats.disk_write_failed(n);
        }
        self.finish_writebacks(&p.writebacks, ok.then_some(&sums[..]));
        if late {
            Err(())
        } else {
            Ok(if ok { n } else { 0 })
        }
    }

    /// Publishes (with their checksums) or drops the disk copies of `wbs`, and releases their
    /// claims.
    fn finish_writebacks(&self, wbs: &[WriteBack], sums: Option<&[u64]>) {
        let mut freed = Vec::new();
        {
            let mut guard = self.lock();
            let ix = &mut *guard;
            for (i, w) in wbs.iter().enumerate() {
                let rec = &mut ix.map[w.id];
                if rec.disk == w.disk && rec.disk_state == Res::Writing {
                    match (sums, ix.disk.as_mut()) {
                        (Some(s), Some(d)) => {
                            rec.disk_state = Res::Ready;
                            d.sums[w.disk as usize] = s[i];
                            d.policy.insert(w.disk, rec.key);
                        }
                        _ => {
                            if let Some(d) = ix.disk.as_mut() {
                                d.slots.release(w.disk);
                            }
                            rec.disk = NO_SLOT;
                            rec.disk_state = Res::None;
                        }
                    }
                }
                ix.release(&[w.id], &mut freed);
            }
        }
        self.journal(&freed);
    }

    /// Takes `slots` of the host tier (`host`) or the disk tier out of use for good: a copy
    /// into them timed out in a stalled backend and may still write them.
    fn retire(&self, host: bool, slots: &[usize]) {
        let mut ix = self.lock();
        let tier = if host {
            Some(&mut ix.host)
        } else {
            ix.disk.as_mut()
        };
        if let Some(tier) = tier {
            for &s in slots {
                tier.slots.retire(s as Slot);
            }
        }
        tracing::error!(
            tier = if host { "host" } else { "disk" },
            slots = slots.len(),
            "cache: a copy outlived the engine's deadline; its destination slots are retired"
        );
    }

    /// Gives up the host slots of blocks whose copy into host memory did not complete. The
    /// records are claimed by the caller.
    fn drop_writing(&self, parts: &[(RecId, Slot)]) {
        let mut ix = self.lock();
        for &(id, slot) in parts {
            let rec = &ix.map[id];
            if rec.host == slot && rec.host_state == Res::Writing {
                ix.drop_host(id);
            }
        }
    }

    /// Releases the claims on `ids`.
    fn release(&self, ids: &[RecId]) {
        if ids.is_empty() {
            return;
        }
        let mut freed = Vec::new();
        self.lock().release(ids, &mut freed);
        self.journal(&freed);
    }

    /// The keys of claimed records `ids`.
    fn keys_of(&self, ids: impl Iterator<Item = RecId>) -> Vec<BlockKey> {
        let ix = self.lock();
        ids.map(|id| ix.map[id].key).collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store_job(
        &self,
        op: &OpState<StoreReport>,
        prelude: Prelude,
        new: Vec<(RecId, Slot)>,
        held: Vec<RecId>,
        gpu: BlockLayout,
        src: Vec<usize>,
        mut report: StoreReport,
        deadline: Instant,
    ) {
        let _flight = InFlight::start("store");
        let ids: Vec<RecId> = new.iter().map(|(id, _)| *id).collect();
        let finish = |ok: bool| {
            if !ok {
                self.drop_writing(&new);
            }
            let mut freed = Vec::new();
            {
                let mut ix = self.lock();
                ix.release(&ids, &mut freed);
                ix.release(&held, &mut freed);
            }
            self.journal(&freed);
        };
        match self.run_prelude(prelude, deadline, op, "store") {
            Ok(n) => report.written_to_disk += n,
            Err(()) => return finish(false),
        }
        if new.is_empty() {
            finish(true);
            op.report(Ok(report));
            return;
        }
        let dst: Vec<usize> = new.iter().map(|(_, s)| *s as usize).collect();
        let copied = match self.engine.copy_blocks(&gpu, &src, &self.host.layout, &dst) {
            Err(e) => Err(CopyEnd::Failed(e)),
            Ok(h) => finish_copy(h, deadline, op, "store", new.len(), &|| {
                self.retire(true, &dst)
            }),
        };
        match copied {
            Err(CopyEnd::Late) => return finish(false),
            Err(CopyEnd::Failed(e)) => {
                let keys = self.keys_of(ids.iter().copied());
                finish(false);
                op.report(Err(CacheError::Failed {
                    op: "store",
                    keys,
                    source: Box::new(e),
                }
                .into()));
                return;
            }
            Ok(bytes) => self.stats.bytes_in(TierLabel::Host, bytes),
        }
        // Publish; with write-through, claim the disk copies to write next.
        let mut through = Prelude::default();
        {
            let mut guard = self.lock();
            let ix = &mut *guard;
            let write_through = ix.write == WritePolicy::WriteThrough && ix.disk.is_some();
            for &(id, slot) in &new {
                let rec = &mut ix.map[id];
                if rec.host != slot || rec.host_state != Res::Writing {
                    continue;
                }
                rec.host_state = Res::Ready;
                ix.host.policy.insert(slot, rec.key);
                report.stored += 1;
                let rec = ix.map[id];
                if write_through
                    && rec.disk_state == Res::None
                    && ix.admit(&rec, &self.stats)
                    && let Some(d) = ix.alloc_disk(&mut through)
                    && let Some(disk) = ix.disk.as_mut()
                {
                    let r = &mut ix.map[id];
                    r.disk = d;
                    r.disk_state = Res::Writing;
                    r.claims += 1;
                    disk.owner[d as usize] = id;
                    through.writebacks.push(WriteBack {
                        id,
                        host: slot,
                        disk: d,
                    });
                }
            }
        }
        Counters::add(&self.stats.stored, report.stored);
        self.stats.evicted(through.evicted);
        let has_through = !through.writebacks.is_empty() || !through.freed.is_empty();
        // Release the claims before reporting, so that a caller who waited sees the blocks
        // evictable again.
        finish(true);
        if !has_through {
            op.report(Ok(report));
            return;
        }
        // The host copies are loadable now; the disk copies follow.
        let kept = op.report(Ok(report.clone()));
        let n = self
            .run_prelude(through, deadline, op, "store")
            .unwrap_or(0);
        if !kept {
            tracing::debug!(
                written = n,
                "cache store: write-through after the store was reported"
            );
        }
    }

    pub(crate) fn load_job(
        &self,
        op: &OpState<LoadReport>,
        mut plan: LoadPlan,
        gpu: Option<BlockLayout>,
        deadline: Instant,
    ) {
        let _flight = InFlight::start(if gpu.is_some() { "load" } else { "prefetch" });
        let name = if gpu.is_some() { "load" } else { "prefetch" };
        let staged: Vec<(RecId, Slot)> = plan.disk.iter().map(|p| (p.id, p.host)).collect();
        let finish = |staged_ok: bool| {
            if !staged_ok {
                self.drop_writing(&staged);
            }
            self.release(&plan.claimed);
        };
        if self
            .run_prelude(std::mem::take(&mut plan.prelude), deadline, op, name)
            .is_err()
        {
            return finish(false);
        }
        let mut failed: Vec<BlockKey> = Vec::new();
        let mut failure: Option<crate::Error> = None;
        let mut good: Vec<DiskPart> = Vec::with_capacity(plan.disk.len());
        if let (Some(disk), false) = (&self.disk, plan.disk.is_empty()) {
            let ds: Vec<usize> = plan.disk.iter().map(|p| p.disk as usize).collect();
            let hs: Vec<usize> = plan.disk.iter().map(|p| p.host as usize).collect();
            let read = match self
                .engine
                .copy_blocks(&disk.layout, &ds, &self.host.flat, &hs)
            {
                Err(e) => Err(CopyEnd::Failed(e)),
                Ok(h) => finish_copy(h, deadline, op, name, plan.disk.len(), &|| {
                    self.retire(true, &hs)
                }),
            };
            match read {
                Err(CopyEnd::Late) => return finish(false),
                Err(CopyEnd::Failed(e)) => {
                    self.drop_writing(&staged);
                    failed.extend(plan.disk.iter().map(|p| p.key));
                    failure = Some(e);
                }
                Ok(bytes) => {
                    self.stats.bytes_out(TierLabel::Disk, bytes);
                    self.stats.bytes_in(TierLabel::Host, bytes);
                    let mut corrupt = Vec::new();
                    let mut freed = Vec::new();
                    {
                        let mut guard = self.lock();
                        let ix = &mut *guard;
                        for p in &plan.disk {
                            // The staging slot is held by this load and not yet published.
                            let ok = xxh3_64(self.host.block(p.host)) == p.sum;
                            let rec = &mut ix.map[p.id];
                            if !ok {
                                ix.drop_host(p.id);
                                freed.extend(ix.drop_disk(p.id));
                                corrupt.push(p.key);
                            } else if rec.host == p.host && rec.host_state == Res::Writing {
                                rec.host_state = Res::Ready;
                                ix.host.policy.insert(p.host, p.key);
                                good.push(*p);
                            }
                        }
                    }
                    self.journal(&freed);
                    if !corrupt.is_empty() {
                        tracing::warn!(
                            blocks = corrupt.len(),
                            "cache: disk blocks failed their checksum and were dropped"
                        );
                        self.stats.corrupt(corrupt.len());
                    }
                    plan.report.corrupt = corrupt;
                    plan.report.from_disk = good.len();
                }
            }
        }
        if let Some(gpu) = &gpu {
            let mut src: Vec<usize> = plan.host.iter().map(|(_, s, _)| *s as usize).collect();
            let mut dst: Vec<usize> = plan.host.iter().map(|(_, _, g)| *g).collect();
            src.extend(good.iter().map(|p| p.host as usize));
            dst.extend(good.iter().map(|p| p.gpu));
            if !src.is_empty() {
                let copied = match self.engine.copy_blocks(&self.host.layout, &src, gpu, &dst) {
                    Err(e) => Err(CopyEnd::Failed(e)),
                    // The destination is the caller's GPU memory, not a cache slot; the
                    // caller gets the timeout and must not reuse it (see `TransferHandle`).
                    Ok(h) => finish_copy(h, deadline, op, name, src.len(), &|| {}),
                };
                match copied {
                    Err(CopyEnd::Late) => return finish(true),
                    Err(CopyEnd::Failed(e)) => {
                        failed.extend(self.keys_of(plan.host.iter().map(|(id, _, _)| *id)));
                        failed.extend(good.iter().map(|p| p.key));
                        failure = Some(e);
                        plan.report.from_disk = 0;
                    }
                    Ok(bytes) => {
                        self.stats.bytes_out(TierLabel::Host, bytes);
                        plan.report.from_host = plan.host.len();
                        Counters::add(&self.stats.loaded_host, plan.host.len());
                        Counters::add(&self.stats.loaded_disk, good.len());
                    }
                }
            }
        }
        finish(true);
        match failure {
            Some(source) => op.report(Err(CacheError::Failed {
                op: name,
                keys: failed,
                source: Box::new(source),
            }
            .into())),
            None => op.report(Ok(plan.report)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BlockCache, CacheConfig, Capacity, HostMemoryKind};
    use crate::Completion;
    use crate::error::CacheError;
    use crate::key::BlockKey;
    use crate::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
    use crate::transfer::EngineConfig;
    use crate::{Buffer, HostMemory, SystemStorage};
    use std::time::Duration;

    /// Blocks of 2 layers x k/v x 4 tokens x 128 x 2 bytes: 4096 bytes.
    fn block() -> LayoutConfig {
        LayoutConfig {
            num_blocks: 1,
            num_layers: 2,
            outer_dim: 2,
            page_size: 4,
            inner_dim: 128,
            dtype_bytes: 2,
        }
    }

    /// An engine-side (layer-separate) layout of `n` blocks in host memory, every byte `fill`.
    fn engine_layout(n: usize, fill: u8) -> BlockLayout {
        let config = LayoutConfig {
            num_blocks: n,
            ..block()
        };
        let kind = LayoutKind::LayerSeparate(BlockDim::Second);
        let (regions, bytes) = config.regions(kind).unwrap();
        let regions = (0..regions)
            .map(|_| {
                let mut s = SystemStorage::new(bytes).unwrap();
                s.as_mut_slice().fill(fill);
                Buffer::new(s)
            })
            .collect();
        BlockLayout::new(config, kind, regions, 1024).unwrap()
    }

    /// A store whose copy outlives even the engine's deadline (a stalled backend) fails with
    /// the cache's timeout, and the host slots that copy may still write are never handed out
    /// again: after the backend wakes up and writes them, a later store lands elsewhere and
    /// reads back its own bytes. ("quarantine" in the name: the stalled copy's buffers are
    /// leaked on purpose, so scripts/valgrind.sh skips it.)
    #[test]
    fn a_copy_that_outlives_the_engine_deadline_is_quarantined_and_retires_its_slots() {
        let mut c = CacheConfig::new(block(), Capacity::Blocks(10));
        c.host_memory = HostMemoryKind::System;
        c.engine = EngineConfig {
            deadline: Duration::from_millis(200),
            deadline_per_gib: Duration::ZERO,
            ..EngineConfig::default()
        };
        let cache = BlockCache::open(c).unwrap();
        // 7 blocks of 4096 bytes: a byte count no other test stalls.
        let n = 7;
        let stalled = engine_layout(n, 0xEE);
        let keys: Vec<BlockKey> = (0..n as u128).map(|i| BlockKey::new(i + 1)).collect();
        let ids: Vec<usize> = (0..n).collect();
        crate::transfer::host_stall::hold(n * 4096);
        let e = cache
            .store(&keys, &stalled, &ids, Duration::from_millis(50))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(
            matches!(
                e,
                crate::Error::Cache(CacheError::Timeout { op: "store", .. })
            ),
            "{e}"
        );
        // The failure is reported at the cache's deadline; the job retires the slots once the
        // engine's own deadline (200 ms) has passed too.
        let started = std::time::Instant::now();
        let retired = loop {
            let ix = cache.shared.lock();
            if ix.host.slots.retired().len() == n || started.elapsed() > Duration::from_secs(5) {
                assert_eq!(
                    ix.host.slots.used(),
                    n,
                    "the stuck copy's slots stay out of use"
                );
                break ix.host.slots.retired().to_vec();
            }
            drop(ix);
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(retired.len(), n);
        cache.check_invariants().unwrap();
        // The backend wakes up and writes 0xEE into the retired slots.
        crate::transfer::host_stall::release(n * 4096);
        std::thread::sleep(Duration::from_millis(100));
        // The 3 slots left take a new store, which reads back its own bytes.
        let fresh = engine_layout(3, 0x11);
        let new_keys: Vec<BlockKey> = (100..103).map(BlockKey::new).collect();
        let r = cache
            .store(&new_keys, &fresh, &[0, 1, 2], Duration::from_secs(10))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(r.stored, 3);
        {
            let ix = cache.shared.lock();
            for k in &new_keys {
                let id = ix.map.find(k).unwrap();
                let slot = ix.map[id].host;
                assert!(!retired.contains(&slot), "slot {slot} was retired");
            }
        }
        let back = engine_layout(3, 0);
        cache
            .load(&new_keys, &back, &[0, 1, 2], Duration::from_secs(10))
            .unwrap()
            .wait()
            .unwrap();
        for r in back.regions() {
            let s = r.downcast_ref::<SystemStorage>().unwrap().as_slice();
            assert!(s.iter().all(|&b| b == 0x11));
        }
        cache.check_invariants().unwrap();
    }
}
