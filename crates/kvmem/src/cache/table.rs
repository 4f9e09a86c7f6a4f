//! The key table: each present key's [`Record`], stored once in a slab and found through an
//! open-addressing table of 4-byte record ids.
//!
//! A record's id is stable for as long as the record lives (it has a slot in some tier or a
//! claim), so the tiers' slot tables and the operations that hold claims name records by id
//! and reach them without hashing. Keys are already uniform hashes, so the table places a key
//! by its low 64 bits as they are.
//!
//! Memory per record: 32 bytes in the slab plus 5 bytes per table bucket (the table keeps a
//! power of two of buckets, at most 7/8 full).
//!
//! With a million resident blocks the table and the slab are far out of the CPU's caches, and
//! an operation on many new keys would wait for memory one miss at a time. The table can
//! therefore be asked to start loading, ahead of use, the lines a key's lookup or insertion
//! will read ([`KeyTable::prefetch_key`]) and a record's slab line
//! ([`KeyTable::prefetch_record`]), so that the misses of many keys overlap. These are hints:
//! they change nothing the program can observe, only when lines arrive. The one unsafe call
//! (the CPU's prefetch instruction) lives here, with the data it is about.
#![allow(unsafe_code)]

use super::slots::{NO_SLOT, Slot};
use crate::key::BlockKey;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// The id of a record in the slab.
pub(crate) type RecId = u32;

/// "No record".
pub(crate) const NO_REC: RecId = RecId::MAX;

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
/// Set on slab entries that hold no record (their `host` field links the free list).
const VACANT: u8 = 2;

/// One key's record: 32 bytes, the key included.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    pub(crate) key: BlockKey,
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
    /// A record of `key` with no residency, used once.
    pub(crate) fn new(key: BlockKey, depth: u16) -> Self {
        Self {
            key,
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

/// Records beyond the tiers' capacity the slab has room for: records of new keys exist for a
/// moment before eviction frees the victim's.
const SLACK: usize = 64;

/// Key → record, with records addressable by id.
pub(crate) struct KeyTable {
    table: HashTable<RecId>,
    slab: Vec<Record>,
    /// Head of the list of vacant slab entries.
    vacant: RecId,
    /// Where the table's buckets end (and its control bytes begin), learned from the bucket of
    /// the last insertion; 0 before the first. Used only to aim prefetch hints: hashbrown
    /// keeps bucket `i`'s value at `end - (i + 1) * 4` and its control byte at `end + i`, and
    /// probes for a hash first at `hash & (buckets - 1)`. Should a hashbrown release lay its
    /// table out otherwise, the hints load useless lines; nothing else changes (the test
    /// `prefetch_aims_at_the_buckets_lookups_read` would say so).
    end: usize,
}

/// Asks the CPU to start loading the cache line holding `addr` into its caches.
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is unsafe to call only because it is declared with the `sse`
    // target feature, which every x86_64 CPU has (it is part of the x86_64 baseline). The
    // PREFETCHT0 instruction it emits is a hint: it never faults, whatever the address, and
    // reads or writes nothing the program can observe, so any address — one that points
    // nowhere included — is sound. No pointer is dereferenced.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::without_provenance(addr));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

fn hash(key: BlockKey) -> u64 {
    key.low64()
}

impl KeyTable {
    /// An empty table with room for `capacity` records before it grows.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut slab = Vec::new();
        slab.reserve_exact(capacity + SLACK);
        Self {
            table: HashTable::with_capacity(capacity),
            slab,
            vacant: NO_REC,
            end: 0,
        }
    }

    /// Hint: starts loading the lines that a lookup or an insertion of `key` reads first (its
    /// home group of control bytes and home bucket), so that they arrive while the caller
    /// works on other keys. Changes nothing.
    #[inline]
    pub(crate) fn prefetch_key(&self, key: &BlockKey) {
        if self.end == 0 {
            return;
        }
        let pos = hash(*key) as usize & (self.table.num_buckets() - 1);
        // A group of control bytes is 16 bytes from `pos`: it may cross into the next line.
        prefetch(self.end.wrapping_add(pos));
        prefetch(self.end.wrapping_add(pos + 15));
        prefetch(
            self.end
                .wrapping_sub((pos + 1) * std::mem::size_of::<RecId>()),
        );
    }

    /// Hint: starts loading record `id`'s slab line. Changes nothing.
    #[inline]
    pub(crate) fn prefetch_record(&self, id: RecId) {
        if let Some(rec) = self.slab.get(id as usize) {
            prefetch(std::ptr::from_ref(rec).addr());
        }
    }

    /// Entries in the slab, vacant ones included (every valid id is below).
    pub(crate) fn slab_len(&self) -> usize {
        self.slab.len()
    }

    /// Records in the table.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The id of `key`'s record.
    #[inline]
    pub(crate) fn find(&self, key: &BlockKey) -> Option<RecId> {
        let slab = &self.slab;
        self.table
            .find(hash(*key), |&id| slab[id as usize].key == *key)
            .copied()
    }

    /// `key`'s record.
    #[inline]
    pub(crate) fn get(&self, key: &BlockKey) -> Option<&Record> {
        self.find(key).map(|id| &self.slab[id as usize])
    }

    /// `key`'s record, to change.
    #[inline]
    pub(crate) fn get_mut(&mut self, key: &BlockKey) -> Option<&mut Record> {
        let id = self.find(key)?;
        Some(&mut self.slab[id as usize])
    }

    /// The id of `key`'s record, inserting `Record::new(key, depth)` when there is none.
    pub(crate) fn find_or_insert(&mut self, key: BlockKey, depth: u16) -> RecId {
        let Self {
            table,
            slab,
            vacant,
            ..
        } = self;
        let entry = {
            let slab = &*slab;
            table.entry(
                hash(key),
                |&id| slab[id as usize].key == key,
                |&id| hash(slab[id as usize].key),
            )
        };
        let entry = match entry {
            Entry::Occupied(found) => return *found.get(),
            Entry::Vacant(entry) => entry,
        };
        let rec = Record::new(key, depth);
        let id = if *vacant != NO_REC {
            let id = *vacant;
            *vacant = slab[id as usize].host;
            slab[id as usize] = rec;
            id
        } else {
            // Ids stay below NO_REC: the tiers hold fewer slots than that, and a record
            // without a slot lives only while an operation plans under the lock.
            let id = slab.len() as RecId;
            if slab.len() == slab.capacity() {
                // Grow by a sixteenth rather than doubling: the slab is sized for the tiers,
                // and doubling would add 32 bytes per block for a few records more.
                slab.reserve_exact((slab.len() / 16).max(SLACK));
            }
            slab.push(rec);
            id
        };
        let entry = entry.insert(id);
        // Insertion is the only place the table may have moved (it grows there).
        self.end = std::ptr::from_ref(entry.get()).addr()
            + (entry.bucket_index() + 1) * std::mem::size_of::<RecId>();
        id
    }

    /// Drops record `id` if it holds nothing any more ([`Record::is_empty`]); its id may then
    /// be reused.
    pub(crate) fn settle(&mut self, id: RecId) {
        let Some(rec) = self.slab.get(id as usize) else {
            return;
        };
        if !rec.is_empty() || rec.flags & VACANT != 0 {
            return;
        }
        if let Ok(entry) = self.table.find_entry(hash(rec.key), |&i| i == id) {
            entry.remove();
        }
        let rec = &mut self.slab[id as usize];
        rec.flags = VACANT;
        rec.host = self.vacant;
        self.vacant = id;
    }

    /// The live records with their ids.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (RecId, &Record)> {
        self.slab
            .iter()
            .enumerate()
            .filter(|(_, r)| r.flags & VACANT == 0)
            .map(|(i, r)| (i as RecId, r))
    }

    /// Bytes of memory the table holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.table.allocation_size() + self.slab.capacity() * std::mem::size_of::<Record>()
    }
}

impl std::ops::Index<RecId> for KeyTable {
    type Output = Record;
    fn index(&self, id: RecId) -> &Record {
        &self.slab[id as usize]
    }
}

impl std::ops::IndexMut<RecId> for KeyTable {
    fn index_mut(&mut self, id: RecId) -> &mut Record {
        &mut self.slab[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_inserts_settles_and_reuses_ids() {
        assert_eq!(std::mem::size_of::<Record>(), 32);
        let mut t = KeyTable::with_capacity(4);
        let a = t.find_or_insert(BlockKey(1), 0);
        let b = t.find_or_insert(BlockKey(2), 1);
        assert_ne!(a, b);
        assert_eq!(t.find_or_insert(BlockKey(1), 5), a);
        assert_eq!(t.len(), 2);
        t[a].host_state = Res::Ready;
        t.settle(a);
        assert_eq!(
            t.find(&BlockKey(1)),
            Some(a),
            "a record holding a block stays"
        );
        t.settle(b);
        assert_eq!(t.find(&BlockKey(2)), None, "an empty record goes");
        assert_eq!(t.len(), 1);
        let c = t.find_or_insert(BlockKey(3), 0);
        assert_eq!(c, b, "the vacant id is reused");
        assert_eq!(t.get(&BlockKey(3)).map(|r| r.key), Some(BlockKey(3)));
        assert_eq!(t.iter().count(), 2);
        t.settle(c);
        t.settle(c);
        assert_eq!(t.iter().count(), 1, "settling twice frees once");
    }

    /// The prefetch hints rely on hashbrown's layout (see `KeyTable::end`): check it, so that
    /// a hashbrown release that changes it is noticed (the hints would only load useless
    /// lines, which no other test would see).
    #[test]
    fn prefetch_aims_at_the_buckets_lookups_read() {
        let n = 50_000;
        let mut t = KeyTable::with_capacity(n);
        let keys: Vec<BlockKey> = (0..n as u64).map(BlockKey::from_u64).collect();
        for k in &keys {
            t.find_or_insert(*k, 0);
            t.prefetch_key(k);
        }
        let mask = t.table.num_buckets() - 1;
        let mut home = 0;
        for k in &keys {
            let i = t
                .table
                .find_bucket_index(hash(*k), |&id| t.slab[id as usize].key == *k)
                .expect("inserted");
            let value = std::ptr::from_ref(t.table.get_bucket(i).expect("full")).addr();
            assert_eq!(
                value,
                t.end - (i + 1) * 4,
                "bucket {i}'s value is not where aimed"
            );
            if i.wrapping_sub(hash(*k) as usize) & mask < 16 {
                home += 1;
            }
        }
        // At this load nearly every key sits in the group its hash probes first.
        assert!(home * 10 >= n * 9, "{home} of {n} keys in their home group");
        for id in 0..3 {
            t.prefetch_record(id);
        }
        t.prefetch_record(NO_REC);
    }
}
