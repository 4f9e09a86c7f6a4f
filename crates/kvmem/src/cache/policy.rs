//! Eviction policies: which resident block of a tier goes when a slot is needed.
//!
//! A [`Policy`] tracks the occupied slots of one tier. The cache tells it about insertions,
//! accesses and removals, and asks it for a victim, offering each candidate to a closure that
//! says whether the block may go now (a claimed or half-written block may not) — so the policy
//! never needs to know about claims.

use super::slots::{NO_SLOT, Slot};
use crate::key::BlockKey;
use std::collections::{HashSet, VecDeque};

/// What the cache says about a candidate the policy offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Evict this one: the policy forgets it and returns it.
    Take,
    /// Not this one (claimed, being written); keep it and offer the next.
    Skip,
    /// Stop scanning; the policy returns `None` and keeps every candidate.
    Stop,
}

/// An eviction policy over the slots of one tier of `capacity` slots.
pub trait Policy: Send {
    /// `slot` now holds `key`.
    fn insert(&mut self, slot: Slot, key: BlockKey);
    /// The block in `slot` was used.
    fn access(&mut self, slot: Slot);
    /// `slot` was emptied by the cache (removal, failure, move to another tier).
    fn remove(&mut self, slot: Slot);
    /// Offers candidates in eviction order to `scan` until it answers [`Scan::Take`] (that
    /// slot is forgotten and returned) or [`Scan::Stop`], or no candidate is left.
    fn victim(&mut self, scan: &mut dyn FnMut(Slot) -> Scan) -> Option<Slot>;
    /// Offers to `f` up to `n` of the slots that [`victim`](Self::victim) would offer next,
    /// in that order, changing nothing. A hint: the cache uses it to start loading what
    /// evicting them will read before it asks for the victims. It may offer fewer (the
    /// default offers none) or slots that will not be taken.
    fn upcoming(&self, n: usize, f: &mut dyn FnMut(Slot)) {
        let _ = (n, f);
    }
    /// The policy's name for reports.
    fn name(&self) -> &'static str;
    /// Bytes of memory the policy holds.
    fn heap_bytes(&self) -> usize;
}

/// Which built-in policy a tier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Least recently used (the default).
    #[default]
    Lru,
    /// S3-FIFO (Yang et al., SOSP'23): a small probationary FIFO, a main FIFO with
    /// reinsertion of blocks used again, and a ghost FIFO of recently evicted keys.
    S3Fifo,
}

impl PolicyKind {
    /// A policy of this kind for `capacity` slots.
    pub(crate) fn build(self, capacity: usize) -> Box<dyn Policy> {
        match self {
            Self::Lru => Box::new(Lru::new(capacity)),
            Self::S3Fifo => Box::new(S3Fifo::new(capacity)),
        }
    }

    /// The name used on the command line and in reports (`lru`, `s3fifo`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::S3Fifo => "s3fifo",
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lru" => Ok(Self::Lru),
            "s3fifo" | "s3-fifo" => Ok(Self::S3Fifo),
            _ => Err(format!("unknown policy '{s}'; use lru or s3fifo")),
        }
    }
}

/// Least recently used, as an intrusive doubly-linked list over slot numbers: O(1) insert,
/// access and remove, 8 bytes per slot.
#[derive(Debug)]
pub struct Lru {
    prev: Vec<Slot>,
    next: Vec<Slot>,
    /// Most recently used.
    head: Slot,
    /// Least recently used.
    tail: Slot,
    linked: Vec<bool>,
}

impl Lru {
    /// An empty LRU list over `capacity` slots.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            prev: vec![NO_SLOT; capacity],
            next: vec![NO_SLOT; capacity],
            head: NO_SLOT,
            tail: NO_SLOT,
            linked: vec![false; capacity],
        }
    }

    fn unlink(&mut self, s: Slot) {
        let i = s as usize;
        if !self.linked.get(i).copied().unwrap_or(false) {
            return;
        }
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NO_SLOT {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NO_SLOT {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.linked[i] = false;
    }

    fn push_front(&mut self, s: Slot) {
        let i = s as usize;
        if i >= self.linked.len() {
            return;
        }
        self.prev[i] = NO_SLOT;
        self.next[i] = self.head;
        if self.head != NO_SLOT {
            self.prev[self.head as usize] = s;
        }
        self.head = s;
        if self.tail == NO_SLOT {
            self.tail = s;
        }
        self.linked[i] = true;
    }
}

impl Policy for Lru {
    fn insert(&mut self, slot: Slot, _key: BlockKey) {
        self.unlink(slot);
        self.push_front(slot);
    }
    fn access(&mut self, slot: Slot) {
        if self.linked.get(slot as usize).copied().unwrap_or(false) {
            self.unlink(slot);
            self.push_front(slot);
        }
    }
    fn remove(&mut self, slot: Slot) {
        self.unlink(slot);
    }
    fn victim(&mut self, scan: &mut dyn FnMut(Slot) -> Scan) -> Option<Slot> {
        let mut s = self.tail;
        while s != NO_SLOT {
            match scan(s) {
                Scan::Take => {
                    self.unlink(s);
                    return Some(s);
                }
                Scan::Skip => s = self.prev[s as usize],
                Scan::Stop => return None,
            }
        }
        None
    }
    fn upcoming(&self, n: usize, f: &mut dyn FnMut(Slot)) {
        let mut s = self.tail;
        for _ in 0..n {
            let Some(&prev) = self.prev.get(s as usize) else {
                return;
            };
            f(s);
            s = prev;
        }
    }
    fn name(&self) -> &'static str {
        "lru"
    }
    fn heap_bytes(&self) -> usize {
        self.prev.capacity() * 4 + self.next.capacity() * 4 + self.linked.capacity()
    }
}

/// Where a slot sits in [`S3Fifo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    None,
    Small,
    Main,
}

/// S3-FIFO: new blocks enter a small FIFO (10% of the capacity); a block used again while
/// there moves to the main FIFO, one that is not is evicted and its key remembered in a ghost
/// FIFO; a block whose key is a ghost goes straight to main. Main evicts in FIFO order,
/// reinserting blocks used since they were last looked at (up to 3 uses are counted).
#[derive(Debug)]
pub struct S3Fifo {
    small: VecDeque<(Slot, u32)>,
    main: VecDeque<(Slot, u32)>,
    queue: Vec<Queue>,
    freq: Vec<u8>,
    generation: Vec<u32>,
    keys: Vec<u64>,
    ghost: VecDeque<u64>,
    ghost_set: HashSet<u64, crate::key::KeyBuild>,
    small_target: usize,
    small_len: usize,
    ghost_cap: usize,
    /// Entries the current scan skipped, put back where they were when it ends.
    skipped: Vec<((Slot, u32), bool)>,
}

impl S3Fifo {
    /// An empty S3-FIFO over `capacity` slots.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            small: VecDeque::with_capacity(capacity),
            main: VecDeque::with_capacity(capacity),
            queue: vec![Queue::None; capacity],
            freq: vec![0; capacity],
            generation: vec![0; capacity],
            keys: vec![0; capacity],
            ghost: VecDeque::with_capacity(capacity),
            ghost_set: HashSet::with_capacity_and_hasher(capacity, Default::default()),
            small_target: (capacity / 10).max(1),
            small_len: 0,
            ghost_cap: capacity,
            skipped: Vec::new(),
        }
    }

    fn live(&self, (s, g): (Slot, u32), q: Queue) -> bool {
        self.queue.get(s as usize) == Some(&q) && self.generation[s as usize] == g
    }

    fn remember(&mut self, key: u64) {
        if self.ghost_cap == 0 {
            return;
        }
        if self.ghost.len() >= self.ghost_cap
            && let Some(old) = self.ghost.pop_front()
        {
            self.ghost_set.remove(&old);
        }
        if self.ghost_set.insert(key) {
            self.ghost.push_back(key);
        }
    }

    fn forget(&mut self, s: Slot) {
        let i = s as usize;
        if self.queue[i] == Queue::Small {
            self.small_len -= 1;
        }
        self.queue[i] = Queue::None;
        self.generation[i] = self.generation[i].wrapping_add(1);
    }
}

impl Policy for S3Fifo {
    fn insert(&mut self, slot: Slot, key: BlockKey) {
        let i = slot as usize;
        if i >= self.queue.len() {
            return;
        }
        if self.queue[i] != Queue::None {
            self.forget(slot);
        }
        let k = key.low64();
        self.keys[i] = k;
        self.freq[i] = 0;
        let g = self.generation[i];
        if self.ghost_set.remove(&k) {
            self.queue[i] = Queue::Main;
            self.main.push_back((slot, g));
        } else {
            self.queue[i] = Queue::Small;
            self.small_len += 1;
            self.small.push_back((slot, g));
        }
    }
    fn access(&mut self, slot: Slot) {
        if let Some(f) = self.freq.get_mut(slot as usize) {
            *f = (*f + 1).min(3);
        }
    }
    fn remove(&mut self, slot: Slot) {
        if self
            .queue
            .get(slot as usize)
            .is_some_and(|q| *q != Queue::None)
        {
            self.forget(slot);
        }
    }
    fn victim(&mut self, scan: &mut dyn FnMut(Slot) -> Scan) -> Option<Slot> {
        // Every live entry is looked at a bounded number of times: promoted entries go to the
        // back of main, skipped ones are put back where they were when the scan ends (so that
        // skipping does not reorder the queues), and a full pass without a victim ends it.
        let mut budget = 2 * (self.small.len() + self.main.len()) + 8;
        let mut found = None;
        while budget > 0 {
            budget -= 1;
            let from_small = (self.small_len >= self.small_target && !self.small.is_empty())
                || self.main.is_empty();
            let entry = if from_small {
                self.small.pop_front()
            } else {
                self.main.pop_front()
            };
            let Some(e) = entry else {
                break;
            };
            let q = if from_small {
                Queue::Small
            } else {
                Queue::Main
            };
            if !self.live(e, q) {
                continue;
            }
            let i = e.0 as usize;
            if from_small && self.freq[i] > 0 {
                // Used while on probation: promote.
                self.small_len -= 1;
                self.queue[i] = Queue::Main;
                self.freq[i] = 0;
                self.main.push_back(e);
                continue;
            }
            if !from_small && self.freq[i] > 0 {
                self.freq[i] -= 1;
                self.main.push_back(e);
                continue;
            }
            match scan(e.0) {
                Scan::Take => {
                    let key = self.keys[i];
                    self.forget(e.0);
                    if from_small {
                        self.remember(key);
                    }
                    found = Some(e.0);
                    break;
                }
                Scan::Skip => self.skipped.push((e, from_small)),
                Scan::Stop => {
                    self.skipped.push((e, from_small));
                    break;
                }
            }
        }
        while let Some((e, small)) = self.skipped.pop() {
            if small {
                self.small.push_front(e);
            } else {
                self.main.push_front(e);
            }
        }
        found
    }
    fn upcoming(&self, n: usize, f: &mut dyn FnMut(Slot)) {
        // The live, unused entries at the front of the queue `victim` takes from first (it
        // may switch queues on the way; this is a hint).
        let (queue, q) = if self.small_len >= self.small_target || self.main.is_empty() {
            (&self.small, Queue::Small)
        } else {
            (&self.main, Queue::Main)
        };
        queue
            .iter()
            .filter(|e| self.live(**e, q) && self.freq[e.0 as usize] == 0)
            .take(n)
            .for_each(|e| f(e.0));
    }
    fn name(&self) -> &'static str {
        "s3fifo"
    }
    fn heap_bytes(&self) -> usize {
        (self.small.capacity() + self.main.capacity()) * 8
            + self.queue.capacity()
            + self.freq.capacity()
            + self.generation.capacity() * 4
            + self.keys.capacity() * 8
            + self.ghost.capacity() * 8
            + self.ghost_set.capacity() * 9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_all(p: &mut dyn Policy) -> Option<Slot> {
        p.victim(&mut |_| Scan::Take)
    }

    /// Inserts slots `0..n`, slot `s` holding key `s`.
    fn fill(p: &mut dyn Policy, n: Slot) {
        for s in 0..n {
            p.insert(s, BlockKey(s as u128));
        }
    }

    #[test]
    fn lru_evicts_least_recent_and_skips() {
        let mut p = Lru::new(4);
        fill(&mut p, 4);
        p.access(0);
        assert_eq!(take_all(&mut p), Some(1));
        assert_eq!(
            p.victim(&mut |s| if s == 2 { Scan::Skip } else { Scan::Take }),
            Some(3)
        );
        p.remove(2);
        let mut next = Vec::new();
        p.upcoming(5, &mut |s| next.push(s));
        assert_eq!(next, [0], "upcoming offers what victim would");
        assert_eq!(take_all(&mut p), Some(0));
        assert_eq!(take_all(&mut p), None);
        assert_eq!(p.victim(&mut |_| Scan::Stop), None);
    }

    #[test]
    fn s3fifo_keeps_reused_blocks_and_remembers_ghosts() {
        let mut p = S3Fifo::new(10);
        fill(&mut p, 10);
        p.access(0);
        let mut next = Vec::new();
        p.upcoming(2, &mut |s| next.push(s));
        assert_eq!(next, [1, 2], "upcoming skips the used block");
        // 0 was used on probation, so 1 goes first.
        assert_eq!(take_all(&mut p), Some(1));
        // Key 1 comes back: straight to main.
        p.insert(1, BlockKey(1));
        assert_eq!(p.queue[1], Queue::Main);
        let mut seen = Vec::new();
        while let Some(s) = take_all(&mut p) {
            seen.push(s);
        }
        assert_eq!(seen.len(), 10);
        assert!(seen.iter().position(|s| *s == 0) > seen.iter().position(|s| *s == 2));
    }
}
