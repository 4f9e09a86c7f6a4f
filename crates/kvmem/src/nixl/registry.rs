//! What an agent has registered, per address space: for the overlap check, for splitting
//! transfer blocks at registration-chunk boundaries, and for the manifest peers receive.

use crate::region::{AddressSpace, NixlDescriptor};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
struct Entry {
    end: u64,
    id: u64,
    chunk: u64,
}

/// The ranges an agent has registered, per address space: for the overlap check, for splitting
/// transfer blocks at chunk boundaries, and for the manifest peers receive.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    spaces: BTreeMap<AddressSpace, BTreeMap<u64, Entry>>,
    next_id: u64,
    /// Registrations made of more than one chunk.
    chunked: usize,
}

impl Registry {
    /// Records `start..start+len`, or returns the registration it overlaps.
    pub(crate) fn reserve(
        &mut self,
        space: AddressSpace,
        start: u64,
        len: u64,
        chunk: u64,
    ) -> std::result::Result<u64, (u64, u64)> {
        let end = start + len;
        let ranges = self.spaces.entry(space).or_default();
        if let Some((&s, e)) = ranges.range(..end).next_back()
            && e.end > start
        {
            return Err((s, e.end - s));
        }
        self.next_id += 1;
        let id = self.next_id;
        ranges.insert(start, Entry { end, id, chunk });
        if len > chunk {
            self.chunked += 1;
        }
        Ok(id)
    }

    pub(crate) fn release(&mut self, space: AddressSpace, start: u64, id: u64) {
        let Some(ranges) = self.spaces.get_mut(&space) else {
            return;
        };
        if ranges.get(&start).is_some_and(|e| e.id == id)
            && let Some(e) = ranges.remove(&start)
            && e.end - start > e.chunk
        {
            self.chunked -= 1;
        }
        if ranges.is_empty() {
            self.spaces.remove(&space);
        }
    }

    /// The registration holding all of `addr..addr+len`: `(start, end, chunk)`.
    pub(crate) fn covering(
        &self,
        space: AddressSpace,
        addr: u64,
        len: u64,
    ) -> Option<(u64, u64, u64)> {
        let end = addr.checked_add(len)?;
        let (&s, e) = self.spaces.get(&space)?.range(..=addr).next_back()?;
        (end <= e.end).then_some((s, e.end, e.chunk))
    }

    /// True when some registration is made of several chunks.
    pub(crate) fn has_chunked(&self) -> bool {
        self.chunked > 0
    }

    /// The chunk boundaries strictly inside `addr..addr+len`, for a range inside one
    /// registration (none when it is not registered or not chunked).
    pub(crate) fn chunk_cuts(&self, space: AddressSpace, addr: u64, len: u64) -> Vec<u64> {
        let Some((start, _, chunk)) = self.covering(space, addr, len) else {
            return Vec::new();
        };
        let end = addr + len;
        let first = start + ((addr - start) / chunk + 1) * chunk;
        (0..)
            .map(|i| first + i * chunk)
            .take_while(|&cut| cut < end)
            .collect()
    }

    /// Every registration, for a peer manifest.
    pub(crate) fn regions(&self) -> Vec<NixlDescriptor> {
        self.spaces
            .iter()
            .flat_map(|(space, ranges)| {
                // A registered length came from a usize.
                ranges.iter().map(move |(&start, e)| {
                    NixlDescriptor::new(*space, start, (e.end - start) as usize)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::MemType;

    #[test]
    fn registry_refuses_overlaps_and_finds_cuts() {
        let mut r = Registry::default();
        let s = AddressSpace::new(MemType::Dram, 0);
        let id = r.reserve(s, 1000, 100, 40).unwrap();
        assert_eq!(r.reserve(s, 1099, 10, 40), Err((1000, 100)));
        assert_eq!(r.reserve(s, 990, 11, 40), Err((1000, 100)));
        assert!(r.reserve(s, 1100, 10, 40).is_ok());
        assert!(r.reserve(s, 990, 10, 40).is_ok());
        let vram = AddressSpace::new(MemType::Vram, 0);
        let vid = r.reserve(vram, 1000, 100, 40).unwrap();
        assert!(r.has_chunked());
        assert_eq!(r.covering(s, 1010, 90), Some((1000, 1100, 40)));
        assert_eq!(r.covering(s, 1010, 91), None);
        assert_eq!(r.chunk_cuts(s, 1010, 80), vec![1040, 1080]);
        assert_eq!(r.chunk_cuts(s, 1040, 40), Vec::<u64>::new());
        r.release(s, 1000, id);
        assert!(r.has_chunked(), "the VRAM registration is still chunked");
        r.release(vram, 1000, vid + 1); // a stale id releases nothing
        assert!(r.has_chunked());
        r.release(vram, 1000, vid);
        assert!(!r.has_chunked());
        assert!(r.reserve(s, 1000, 100, 400).is_ok());
        assert_eq!(r.regions().len(), 3);
    }
}
