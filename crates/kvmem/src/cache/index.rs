//! The index: key → record (where the block lives in each tier and in which state), the tiers'
//! slot allocators and policies, and the allocation and eviction decisions. Everything here
//! runs under the cache's one lock and does no I/O.

use super::config::{Admission, WritePolicy};
use super::journal::{Entry, EntryKind};
use super::policy::{Policy, PolicyKind, Scan};
use super::slots::{NO_SLOT, Slot, SlotAllocator};
use super::stats::Counters;
use super::table::{KeyTable, NO_REC, REMOVED, RecId, Record, Res};
use crate::key::{BlockKey, KeyBuild};
use std::collections::{HashMap, HashSet, VecDeque};

/// One tier's slots, their owners and its policy.
pub(crate) struct TierState {
    pub(crate) slots: SlotAllocator,
    /// The record whose block each slot holds (meaningful for occupied slots only).
    pub(crate) owner: Vec<RecId>,
    /// Checksum of each disk slot's bytes (empty for the host tier).
    pub(crate) sums: Vec<u64>,
    pub(crate) policy: Box<dyn Policy>,
}

impl TierState {
    pub(crate) fn new(capacity: usize, policy: Box<dyn Policy>, disk: bool) -> Self {
        Self {
            slots: SlotAllocator::new(capacity),
            owner: vec![NO_REC; capacity],
            sums: if disk { vec![0; capacity] } else { Vec::new() },
            policy,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
            + self.owner.capacity() * std::mem::size_of::<RecId>()
            + self.sums.capacity() * 8
            + self.policy.heap_bytes()
    }
}

/// A block evicted from host memory to be written to disk before its host slot is reused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteBack {
    pub(crate) id: RecId,
    pub(crate) host: Slot,
    pub(crate) disk: Slot,
}

/// The I/O an operation must do before its own copies: write-backs of evicted blocks, and
/// journal entries of disk slots given up.
#[derive(Debug, Default)]
pub(crate) struct Prelude {
    pub(crate) writebacks: Vec<WriteBack>,
    pub(crate) freed: Vec<Entry>,
    /// Blocks evicted from (host, disk) to make room: counted once the lock is released.
    pub(crate) evicted: (usize, usize),
}

/// Keys recently refused by the disk admission filter ("admit on second use").
struct Doorkeeper {
    set: HashSet<u64, KeyBuild>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Doorkeeper {
    fn new(cap: usize) -> Self {
        Self {
            set: HashSet::with_capacity_and_hasher(cap.min(1 << 20), Default::default()),
            order: VecDeque::new(),
            cap,
        }
    }

    /// True if `key` was seen before; remembers it otherwise.
    fn seen(&mut self, key: BlockKey) -> bool {
        let k = key.low64();
        if self.set.contains(&k) {
            return true;
        }
        if self.cap == 0 {
            return false;
        }
        if self.order.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(k);
        self.order.push_back(k);
        false
    }
}

/// Everything under the cache's lock.
pub(crate) struct Index {
    pub(crate) map: KeyTable,
    pub(crate) host: TierState,
    pub(crate) disk: Option<TierState>,
    pub(crate) write: WritePolicy,
    admission: Admission,
    doorkeeper: Doorkeeper,
    chain_aware: bool,
}

/// How many evictable candidates chain-aware eviction compares.
const CHAIN_WINDOW: usize = 8;

impl Index {
    pub(crate) fn new(
        host: TierState,
        disk: Option<TierState>,
        write: WritePolicy,
        admission: Admission,
        chain_aware: bool,
    ) -> Self {
        let cap = host.slots.capacity() + disk.as_ref().map_or(0, |d| d.slots.capacity());
        let door = disk.as_ref().map_or(0, |d| d.slots.capacity());
        Self {
            map: KeyTable::with_capacity(cap),
            host,
            disk,
            write,
            admission,
            doorkeeper: Doorkeeper::new(door),
            chain_aware,
        }
    }

    /// A host slot for a new block: a free one, or one taken from an evictable block (whose
    /// write-back, if any, is added to `prelude`). `None` when every block is claimed.
    pub(crate) fn alloc_host(&mut self, prelude: &mut Prelude, stats: &Counters) -> Option<Slot> {
        if let Some(s) = self.host.slots.alloc() {
            return Some(s);
        }
        let slot = pick_victim(&mut self.host, &self.map, self.chain_aware, true)?;
        let id = self.host.owner[slot as usize];
        prelude.evicted.0 += 1;
        let mut rec = self.map[id];
        rec.host = NO_SLOT;
        rec.host_state = Res::None;
        let write_back = self.write == WritePolicy::WriteBack
            && self.disk.is_some()
            && rec.disk_state == Res::None;
        if write_back && self.admit(&rec, stats) {
            if let Some(d) = self.alloc_disk(prelude) {
                rec.disk = d;
                rec.disk_state = Res::Writing;
                rec.claims += 1;
                if let Some(disk) = self.disk.as_mut() {
                    disk.owner[d as usize] = id;
                }
                prelude.writebacks.push(WriteBack {
                    id,
                    host: slot,
                    disk: d,
                });
            }
        }
        self.map[id] = rec;
        self.map.settle(id);
        Some(slot)
    }

    /// Hint, ahead of placing the new keys `keys` in host memory after `before` other new
    /// keys: starts loading the table lines their insertions read and, for the allocations
    /// that must evict, what evicting the policy's victims for them reads (their records,
    /// then their keys' table lines), so that these misses overlap instead of following one
    /// another. `ids` is scratch space. Changes nothing; a victim that turns out different
    /// only costs its miss later.
    pub(crate) fn prefetch_for_new(
        &self,
        keys: impl Iterator<Item = BlockKey>,
        before: usize,
        ids: &mut Vec<RecId>,
    ) {
        let mut n = 0;
        for key in keys {
            self.map.prefetch_key(&key);
            n += 1;
        }
        let free = self.host.slots.capacity() - self.host.slots.used();
        let (skip, upto) = (
            before.saturating_sub(free),
            (before + n).saturating_sub(free),
        );
        if upto == skip {
            return;
        }
        ids.clear();
        let (map, owner) = (&self.map, &self.host.owner);
        let mut seen = 0;
        self.host.policy.upcoming(upto, &mut |slot| {
            seen += 1;
            if seen > skip
                && let Some(&id) = owner.get(slot as usize)
            {
                map.prefetch_record(id);
                ids.push(id);
            }
        });
        for &id in ids.iter() {
            if (id as usize) < map.slab_len() {
                map.prefetch_key(&map[id].key);
            }
        }
    }

    /// A disk slot: a free one or one taken from an evictable disk block (its journal entry is
    /// freed in `prelude`).
    pub(crate) fn alloc_disk(&mut self, prelude: &mut Prelude) -> Option<Slot> {
        let disk = self.disk.as_mut()?;
        if let Some(s) = disk.slots.alloc() {
            return Some(s);
        }
        let slot = pick_victim(disk, &self.map, self.chain_aware, false)?;
        let id = disk.owner[slot as usize];
        prelude.evicted.1 += 1;
        let rec = &mut self.map[id];
        prelude.freed.push(Entry::freed(slot, rec.key));
        rec.disk = NO_SLOT;
        rec.disk_state = Res::None;
        self.map.settle(id);
        Some(slot)
    }

    /// Whether the admission filter lets `rec` onto disk.
    pub(crate) fn admit(&mut self, rec: &Record, stats: &Counters) -> bool {
        let ok = match self.admission {
            Admission::All => true,
            Admission::SecondUse => rec.uses >= 2 || self.doorkeeper.seen(rec.key),
        };
        if !ok {
            stats.refused();
        }
        ok
    }

    /// Gives up record `id`'s host slot.
    pub(crate) fn drop_host(&mut self, id: RecId) {
        let rec = &mut self.map[id];
        if rec.host != NO_SLOT {
            self.host.policy.remove(rec.host);
            self.host.slots.release(rec.host);
        }
        rec.host = NO_SLOT;
        rec.host_state = Res::None;
    }

    /// Gives up record `id`'s disk slot; returns the journal entry that records it.
    pub(crate) fn drop_disk(&mut self, id: RecId) -> Option<Entry> {
        let disk = self.disk.as_mut()?;
        let rec = &mut self.map[id];
        if rec.disk == NO_SLOT {
            return None;
        }
        let slot = rec.disk;
        disk.policy.remove(slot);
        disk.slots.release(slot);
        rec.disk = NO_SLOT;
        rec.disk_state = Res::None;
        Some(Entry::freed(slot, rec.key))
    }

    /// Drops record `id` from every tier (its freed disk slot's journal entry goes to
    /// `freed`), or marks it to go when its last claim is released.
    pub(crate) fn remove(&mut self, id: RecId, freed: &mut Vec<Entry>) {
        if self.map[id].claims > 0 {
            self.map[id].flags |= REMOVED;
        } else {
            self.drop_host(id);
            freed.extend(self.drop_disk(id));
        }
        self.map.settle(id);
    }

    /// Releases one claim on each record of `ids`, dropping those that `remove` marked.
    pub(crate) fn release(&mut self, ids: &[RecId], freed: &mut Vec<Entry>) {
        for &id in ids {
            let rec = &mut self.map[id];
            rec.claims = rec.claims.saturating_sub(1);
            if rec.claims == 0 && rec.flags & REMOVED != 0 {
                self.drop_host(id);
                freed.extend(self.drop_disk(id));
            }
            self.map.settle(id);
        }
    }

    /// Bytes of memory the index holds (table, slot tables, policies).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.map.heap_bytes()
            + self.host.heap_bytes()
            + self.disk.as_ref().map_or(0, TierState::heap_bytes)
    }
}

/// A victim slot of `tier` from its policy: an evictable block (ready in that tier, unclaimed);
/// with `chain_aware`, the deepest of the first few evictable candidates.
fn pick_victim(
    tier: &mut TierState,
    map: &KeyTable,
    chain_aware: bool,
    host: bool,
) -> Option<Slot> {
    let TierState { policy, owner, .. } = tier;
    let evictable = |slot: Slot| -> Option<u16> {
        let rec = &map[*owner.get(slot as usize)?];
        let (s, state) = if host {
            (rec.host, rec.host_state)
        } else {
            (rec.disk, rec.disk_state)
        };
        (s == slot && state == Res::Ready && rec.claims == 0).then_some(rec.depth)
    };
    if !chain_aware {
        return policy.victim(&mut |slot| {
            if evictable(slot).is_some() {
                Scan::Take
            } else {
                Scan::Skip
            }
        });
    }
    let mut seen = 0;
    let mut best: Option<(u16, Slot)> = None;
    policy.victim(&mut |slot| match evictable(slot) {
        Some(depth) => {
            seen += 1;
            if best.is_none_or(|(d, _)| depth > d) {
                best = Some((depth, slot));
            }
            if seen >= CHAIN_WINDOW {
                Scan::Stop
            } else {
                Scan::Skip
            }
        }
        None => Scan::Skip,
    });
    let (_, slot) = best?;
    policy.remove(slot);
    Some(slot)
}

/// The disk tier's state from its journal: the last complete write of each slot, unless a
/// later entry freed it; a key written to two slots keeps the later one. The caller sets the
/// slots' owners once it has records for the keys.
pub(super) fn recover(
    entries: &[Entry],
    capacity: usize,
    block_bytes: usize,
    policy: PolicyKind,
) -> (TierState, Vec<(Slot, BlockKey)>) {
    let mut slot_key: Vec<Option<(BlockKey, u64)>> = vec![None; capacity];
    let mut key_slot: HashMap<BlockKey, Slot, KeyBuild> = Default::default();
    for e in entries {
        let s = e.slot as usize;
        if s >= capacity {
            continue;
        }
        match e.kind {
            EntryKind::Written if e.len as usize == block_bytes => {
                if let Some((old, _)) = slot_key[s] {
                    key_slot.remove(&old);
                }
                if let Some(prev) = key_slot.insert(e.key, e.slot)
                    && prev != e.slot
                {
                    slot_key[prev as usize] = None;
                }
                slot_key[s] = Some((e.key, e.sum));
            }
            EntryKind::Written => {}
            EntryKind::Freed => {
                if slot_key[s].is_some_and(|(k, _)| k == e.key) {
                    slot_key[s] = None;
                    key_slot.remove(&e.key);
                }
            }
        }
    }
    let used: Vec<bool> = slot_key.iter().map(Option::is_some).collect();
    let mut tier = TierState::new(capacity, policy.build(capacity), true);
    tier.slots = SlotAllocator::with_used(capacity, &used);
    let mut recovered = Vec::new();
    for (s, entry) in slot_key.iter().enumerate() {
        if let Some((key, sum)) = entry {
            tier.sums[s] = *sum;
            tier.policy.insert(s as Slot, *key);
            recovered.push((s as Slot, *key));
        }
    }
    (tier, recovered)
}
