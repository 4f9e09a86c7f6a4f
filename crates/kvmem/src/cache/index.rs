//! The index: key → record (where the block lives in each tier and in which state), the tiers'
//! slot allocators and policies, and the allocation and eviction decisions. Everything here
//! runs under the cache's one lock and does no I/O.

use super::config::{Admission, WritePolicy};
use super::journal::{Entry, EntryKind};
use super::key::{BlockKey, KeyBuild};
use super::policy::{Policy, Scan};
use super::slots::{NO_SLOT, Slot, SlotAllocator};
use super::stats::{Counters, TierLabel};
use std::collections::{HashMap, HashSet, VecDeque};

/// A block's state in one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Res {
    /// Not in this tier.
    None,
    /// Its slot is being written; not loadable.
    Writing,
    /// Complete and loadable.
    Ready,
}

/// Set when `remove` found the record claimed: it goes when the last claim is released.
pub(crate) const REMOVED: u8 = 1;

/// One key's record: 16 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    pub(crate) host: Slot,
    pub(crate) disk: Slot,
    /// Operations holding the block (loads reading it, stores writing it): while non-zero the
    /// block is evicted from no tier and its slots are not reused.
    pub(crate) claims: u16,
    /// Position in its prefix chain (0 = first block), for chain-aware eviction.
    pub(crate) depth: u16,
    pub(crate) host_state: Res,
    pub(crate) disk_state: Res,
    /// Uses seen (stores and loads), saturating; for the admission filter.
    pub(crate) uses: u8,
    pub(crate) flags: u8,
}

impl Record {
    /// A record of no residency, used once.
    pub(crate) fn new(depth: u16) -> Self {
        Self {
            host: NO_SLOT,
            disk: NO_SLOT,
            claims: 0,
            depth,
            host_state: Res::None,
            disk_state: Res::None,
            uses: 1,
            flags: 0,
        }
    }

    /// True when the record holds a block in no tier and nothing uses it.
    pub(crate) fn is_empty(&self) -> bool {
        self.host_state == Res::None && self.disk_state == Res::None && self.claims == 0
    }

    /// True when a load or store may treat the key as present.
    pub(crate) fn present(&self) -> bool {
        self.host_state != Res::None || self.disk_state != Res::None
    }
}

/// One tier's slots, their owners and its policy.
pub(crate) struct TierState {
    pub(crate) slots: SlotAllocator,
    pub(crate) owner: Vec<BlockKey>,
    /// Checksum of each disk slot's bytes (empty for the host tier).
    pub(crate) sums: Vec<u64>,
    pub(crate) policy: Box<dyn Policy>,
}

impl TierState {
    pub(crate) fn new(capacity: usize, policy: Box<dyn Policy>, disk: bool) -> Self {
        Self {
            slots: SlotAllocator::new(capacity),
            owner: vec![BlockKey::default(); capacity],
            sums: if disk { vec![0; capacity] } else { Vec::new() },
            policy,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
            + self.owner.capacity() * std::mem::size_of::<BlockKey>()
            + self.sums.capacity() * 8
            + self.policy.heap_bytes()
    }
}

/// A block evicted from host memory to be written to disk before its host slot is reused.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteBack {
    pub(crate) key: BlockKey,
    pub(crate) host: Slot,
    pub(crate) disk: Slot,
}

/// The I/O an operation must do before its own copies: write-backs of evicted blocks, and
/// journal entries of disk slots given up.
#[derive(Debug, Default)]
pub(crate) struct Prelude {
    pub(crate) writebacks: Vec<WriteBack>,
    pub(crate) freed: Vec<Entry>,
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
    pub(crate) map: HashMap<BlockKey, Record, KeyBuild>,
    pub(crate) host: TierState,
    pub(crate) disk: Option<TierState>,
    pub(crate) write: WritePolicy,
    admission: Admission,
    doorkeeper: Doorkeeper,
    chain_aware: bool,
    candidates: Vec<Slot>,
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
            map: HashMap::with_capacity_and_hasher(cap, Default::default()),
            host,
            disk,
            write,
            admission,
            doorkeeper: Doorkeeper::new(door),
            chain_aware,
            candidates: Vec::with_capacity(CHAIN_WINDOW),
        }
    }

    /// A host slot for a new block: a free one, or one taken from an evictable block (whose
    /// write-back, if any, is added to `prelude`). `None` when every block is claimed.
    pub(crate) fn alloc_host(&mut self, prelude: &mut Prelude, stats: &Counters) -> Option<Slot> {
        if let Some(s) = self.host.slots.alloc() {
            return Some(s);
        }
        let slot = pick_victim(
            &mut self.host,
            &self.map,
            self.chain_aware,
            &mut self.candidates,
            true,
        )?;
        let key = self.host.owner[slot as usize];
        stats.eviction(TierLabel::Host);
        let Some(mut rec) = self.map.get(&key).copied() else {
            return Some(slot);
        };
        rec.host = NO_SLOT;
        rec.host_state = Res::None;
        let write_back = self.write == WritePolicy::WriteBack
            && self.disk.is_some()
            && rec.disk_state == Res::None;
        if write_back && self.admit(&rec, key, stats) {
            if let Some(d) = self.alloc_disk(prelude, stats) {
                rec.disk = d;
                rec.disk_state = Res::Writing;
                rec.claims += 1;
                if let Some(disk) = self.disk.as_mut() {
                    disk.owner[d as usize] = key;
                }
                prelude.writebacks.push(WriteBack {
                    key,
                    host: slot,
                    disk: d,
                });
            }
        }
        self.put(key, rec);
        Some(slot)
    }

    /// A disk slot: a free one or one taken from an evictable disk block (its journal entry is
    /// freed in `prelude`).
    pub(crate) fn alloc_disk(&mut self, prelude: &mut Prelude, stats: &Counters) -> Option<Slot> {
        let disk = self.disk.as_mut()?;
        if let Some(s) = disk.slots.alloc() {
            return Some(s);
        }
        let slot = pick_victim(
            disk,
            &self.map,
            self.chain_aware,
            &mut self.candidates,
            false,
        )?;
        let key = disk.owner[slot as usize];
        stats.eviction(TierLabel::Disk);
        prelude.freed.push(Entry {
            kind: EntryKind::Freed,
            slot,
            len: 0,
            key,
            sum: 0,
        });
        if let Some(mut rec) = self.map.get(&key).copied() {
            rec.disk = NO_SLOT;
            rec.disk_state = Res::None;
            self.put(key, rec);
        }
        Some(slot)
    }

    /// Whether the admission filter lets `rec` onto disk.
    pub(crate) fn admit(&mut self, rec: &Record, key: BlockKey, stats: &Counters) -> bool {
        let ok = match self.admission {
            Admission::All => true,
            Admission::SecondUse => rec.uses >= 2 || self.doorkeeper.seen(key),
        };
        if !ok {
            stats.refused();
        }
        ok
    }

    /// Writes `rec` back, or drops it when it holds nothing.
    pub(crate) fn put(&mut self, key: BlockKey, rec: Record) {
        if rec.is_empty() {
            self.map.remove(&key);
        } else {
            self.map.insert(key, rec);
        }
    }

    /// Gives up `key`'s host slot (not claimed by the caller's reasoning: the caller owns it).
    pub(crate) fn drop_host(&mut self, key: BlockKey, rec: &mut Record) {
        if rec.host != NO_SLOT {
            self.host.policy.remove(rec.host);
            self.host.slots.release(rec.host);
        }
        rec.host = NO_SLOT;
        rec.host_state = Res::None;
        let _ = key;
    }

    /// Gives up `key`'s disk slot; returns the journal entry that records it.
    pub(crate) fn drop_disk(&mut self, key: BlockKey, rec: &mut Record) -> Option<Entry> {
        let disk = self.disk.as_mut()?;
        if rec.disk == NO_SLOT {
            return None;
        }
        let slot = rec.disk;
        disk.policy.remove(slot);
        disk.slots.release(slot);
        rec.disk = NO_SLOT;
        rec.disk_state = Res::None;
        Some(Entry {
            kind: EntryKind::Freed,
            slot,
            len: 0,
            key,
            sum: 0,
        })
    }

    /// Releases one claim on each of `keys`, dropping records that `remove` marked.
    pub(crate) fn release(&mut self, keys: &[BlockKey], freed: &mut Vec<Entry>) {
        for key in keys {
            let Some(mut rec) = self.map.get(key).copied() else {
                continue;
            };
            rec.claims = rec.claims.saturating_sub(1);
            if rec.claims == 0 && rec.flags & REMOVED != 0 {
                self.drop_host(*key, &mut rec);
                freed.extend(self.drop_disk(*key, &mut rec));
            }
            self.put(*key, rec);
        }
    }

    /// Bytes of memory the index holds (table, slot tables, policies).
    pub(crate) fn heap_bytes(&self) -> usize {
        // The table's buckets: a power of two holding its capacity at a 7/8 load factor, each
        // with an entry and one control byte.
        let buckets = (self.map.capacity() * 8 / 7).max(1).next_power_of_two();
        let entry = std::mem::size_of::<(BlockKey, Record)>() + 1;
        buckets * entry
            + self.host.heap_bytes()
            + self.disk.as_ref().map_or(0, TierState::heap_bytes)
    }
}

/// A victim slot of `tier` from its policy: an evictable block (ready in that tier, unclaimed);
/// with `chain_aware`, the deepest of the first few evictable candidates.
fn pick_victim(
    tier: &mut TierState,
    map: &HashMap<BlockKey, Record, KeyBuild>,
    chain_aware: bool,
    candidates: &mut Vec<Slot>,
    host: bool,
) -> Option<Slot> {
    let TierState { policy, owner, .. } = tier;
    let evictable = |slot: Slot| -> Option<u16> {
        let rec = map.get(&owner[slot as usize])?;
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
    candidates.clear();
    let mut best: Option<(u16, Slot)> = None;
    policy.victim(&mut |slot| match evictable(slot) {
        Some(depth) => {
            candidates.push(slot);
            if best.is_none_or(|(d, _)| depth > d) {
                best = Some((depth, slot));
            }
            if candidates.len() >= CHAIN_WINDOW {
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
