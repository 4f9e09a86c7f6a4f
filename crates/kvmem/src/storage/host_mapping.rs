//! Large anonymous host mappings for pinned memory: hugetlb pages where the system has reserved
//! them, transparent huge pages otherwise; optionally placed on one NUMA node; first touched by
//! several threads at once so that page faults and zeroing run in parallel.

// This module owns raw memory mappings: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use crate::error::{BoundsError, Error, MemoryError, Result};
use memmap2::{Advice, MmapMut, MmapOptions};
use serde::Serialize;
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// The size of the pages backing a host mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PageTier {
    /// Pages from a reserved hugetlb pool (`/sys/kernel/mm/hugepages`) of this size in bytes.
    HugeTlb {
        /// Page size in bytes (2 MiB or 1 GiB on x86-64).
        page_size: usize,
    },
    /// Transparent huge pages: `huge_bytes` of the mapping are backed by 2 MiB pages, the rest by
    /// base pages.
    Transparent {
        /// Bytes in huge pages, as `/proc/self/smaps` reports them after the first touch.
        huge_bytes: usize,
    },
    /// Base pages only (4 KiB on x86-64).
    Base,
}

impl fmt::Display for PageTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HugeTlb { page_size } => write!(f, "hugetlb ({} KiB pages)", page_size >> 10),
            Self::Transparent { huge_bytes } => {
                write!(
                    f,
                    "transparent huge pages ({} MiB in 2 MiB pages)",
                    huge_bytes >> 20
                )
            }
            Self::Base => f.write_str("base pages (4 KiB)"),
        }
    }
}

/// How to build a [`HostMapping`].
#[derive(Debug, Clone)]
pub(crate) struct MappingOptions {
    pub(crate) hugetlb: bool,
    pub(crate) transparent: bool,
    pub(crate) numa_node: Option<u32>,
    pub(crate) threads: Option<usize>,
    /// First-touch every page now (in parallel). Off for memory that is populated later, range
    /// by range ([`HostMapping::populate`]): the pages are then faulted in on first use.
    pub(crate) touch: bool,
}

/// A private anonymous mapping, every page touched (so present and zeroed), unmapped on drop.
pub(crate) struct HostMapping {
    map: MmapMut,
    len: usize,
    tier: PageTier,
    threads: usize,
}

impl HostMapping {
    /// Maps and touches `len` bytes (`len > 0`).
    ///
    /// # Errors
    /// [`MemoryError::HostAlloc`] when the OS refuses the mapping, [`MemoryError::NumaPlacement`] when the
    /// node is not usable.
    pub(crate) fn new(len: usize, options: &MappingOptions) -> Result<Self> {
        if len == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "host mapping",
            }));
        }
        let (map, huge_page) = match options.hugetlb.then(|| map_hugetlb(len)).flatten() {
            Some((map, page_size)) => (map, Some(page_size)),
            None => {
                let map = MmapMut::map_anon(len).map_err(|source| {
                    Error::Memory(MemoryError::HostAlloc { size: len, source })
                })?;
                if options.transparent
                    && let Err(e) = map.advise(Advice::HugePage)
                {
                    tracing::debug!(error = %e, "madvise(MADV_HUGEPAGE) refused; using base pages");
                }
                (map, None)
            }
        };
        if let Some(node) = options.numa_node {
            prefer_node(&map, node)?;
        }
        let threads = if options.touch {
            worker_threads(len, options.threads)
        } else {
            0
        };
        let stride = huge_page.unwrap_or(crate::PAGE_SIZE);
        let base = map.as_ptr() as usize;
        if options.touch {
            parallel_chunks(map.len(), stride, threads, |range| {
                for offset in range.step_by(stride) {
                    // SAFETY: `offset` lies inside the mapping, which is alive and writable for
                    // the whole call; the chunks of different threads are disjoint.
                    unsafe { std::ptr::write_volatile((base + offset) as *mut u8, 0) };
                }
            });
        }
        let tier = match huge_page {
            Some(page_size) => PageTier::HugeTlb { page_size },
            None if !options.touch => PageTier::Base,
            None => match anon_huge_bytes(base) {
                Some(huge_bytes) if huge_bytes > 0 => PageTier::Transparent {
                    huge_bytes: huge_bytes.min(len),
                },
                _ => PageTier::Base,
            },
        };
        Ok(Self {
            map,
            len,
            tier,
            threads,
        })
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The length asked for (the mapping itself may be rounded up to whole huge pages).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn tier(&self) -> PageTier {
        self.tier
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.map[..self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }

    /// The size of the pages backing the mapping: the hugetlb page size, else the base page.
    pub(crate) fn page_size(&self) -> usize {
        match self.tier {
            PageTier::HugeTlb { page_size } => page_size,
            _ => crate::PAGE_SIZE,
        }
    }

    /// Gives up the mapping without unmapping it: for memory a driver may still be using.
    pub(crate) fn leak(self) {
        tracing::error!(
            addr = ?self.map.as_ptr(),
            len = self.map.len(),
            "leaking a host mapping that could not be released safely"
        );
        crate::accounting::quarantined(1, self.map.len() as u64);
        std::mem::forget(self.map);
    }
}

/// Faults in the pages of `addr..addr + len` writable without writing them
/// (`MADV_POPULATE_WRITE`, Linux 5.14+), so other threads may use the bytes meanwhile. Returns
/// false when the kernel refuses (too old: the pages are then faulted in by whoever touches or
/// page-locks them first).
///
/// # Safety
/// The range must lie inside a private anonymous mapping that stays mapped for the call.
pub(crate) unsafe fn populate(addr: usize, len: usize) -> bool {
    // SAFETY: the caller vouches for the range; MADV_POPULATE_WRITE neither reads nor writes
    // the bytes (it only faults the pages in, as a write fault would), so it races with nothing.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) == 0 }
}

/// Threads to touch `len` bytes with: as asked, else one per available CPU but no more than one
/// per 64 MiB.
pub(crate) fn worker_threads(len: usize, asked: Option<usize>) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    asked
        .unwrap_or_else(|| cpus.min(len.div_ceil(64 << 20)))
        .max(1)
}

/// Runs `f` on `threads` disjoint, `align`-aligned sub-ranges covering `0..len`, in parallel.
pub(crate) fn parallel_chunks(
    len: usize,
    align: usize,
    threads: usize,
    f: impl Fn(Range<usize>) + Sync,
) {
    let align = align.max(1);
    let units = len.div_ceil(align);
    let per_thread = units.div_ceil(threads.max(1)).max(1) * align;
    if per_thread >= len {
        f(0..len);
        return;
    }
    std::thread::scope(|scope| {
        let f = &f;
        for start in (0..len).step_by(per_thread) {
            let end = (start + per_thread).min(len);
            scope.spawn(move || f(start..end));
        }
    });
}

/// Free hugetlb page sizes in bytes with enough free pages for `len`, largest first.
fn hugetlb_sizes(len: usize) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return Vec::new();
    };
    let mut sizes: Vec<usize> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let kib: usize = name
                .to_str()?
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let size = kib.checked_mul(1024)?;
            let free: usize = read_number(&entry.path().join("free_hugepages"))?;
            (free.checked_mul(size)? >= len.checked_next_multiple_of(size)?).then_some(size)
        })
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes
}

fn read_number(path: &Path) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Maps `len` bytes (rounded up to whole pages) from the largest hugetlb pool that has room.
fn map_hugetlb(len: usize) -> Option<(MmapMut, usize)> {
    for page_size in hugetlb_sizes(len) {
        let rounded = len.checked_next_multiple_of(page_size)?;
        let bits = u8::try_from(page_size.trailing_zeros()).ok()?;
        match MmapOptions::new().len(rounded).huge(Some(bits)).map_anon() {
            Ok(map) => return Some((map, page_size)),
            Err(e) => tracing::debug!(page_size, error = %e, "hugetlb mapping refused"),
        }
    }
    None
}

/// Sets the NUMA policy of the mapping to prefer `node` (pages fall back to other nodes rather
/// than fail when the node is full).
fn prefer_node(map: &MmapMut, node: u32) -> Result<()> {
    const MASK_WORDS: usize = 16;
    let bits = MASK_WORDS * 64;
    let index = node as usize;
    if index >= bits {
        return Err(Error::Memory(MemoryError::NumaPlacement {
            node,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        }));
    }
    let mut mask = [0u64; MASK_WORDS];
    mask[index / 64] |= 1 << (index % 64);
    // SAFETY: mbind only changes the memory policy of the given range, which is this mapping;
    // `mask` is a live array of `bits` bits. (maxnode is one more than the mask width, as
    // libnuma passes it, because the kernel drops the last bit.)
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            map.as_ptr(),
            map.len(),
            libc::MPOL_PREFERRED,
            mask.as_ptr(),
            bits + 1,
            0u32,
        )
    };
    if rc != 0 {
        return Err(Error::Memory(MemoryError::NumaPlacement {
            node,
            source: std::io::Error::last_os_error(),
        }));
    }
    Ok(())
}

/// `AnonHugePages` of the mapping that contains `addr`, from `/proc/self/smaps`.
fn anon_huge_bytes(addr: usize) -> Option<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            inside = (start..end).contains(&addr);
            continue;
        }
        if inside && let Some(rest) = line.strip_prefix("AnonHugePages:") {
            let kib: usize = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            return kib.checked_mul(1024);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn options() -> MappingOptions {
        MappingOptions {
            hugetlb: true,
            transparent: true,
            numa_node: None,
            threads: Some(3),
            touch: true,
        }
    }

    #[test]
    fn chunks_are_disjoint_aligned_and_cover_everything() {
        for (len, align, threads) in [(10_000, 4096, 3), (1, 4096, 8), (8192, 4096, 2), (5, 1, 9)] {
            let seen = Mutex::new(Vec::new());
            parallel_chunks(len, align, threads, |r| seen.lock().unwrap().push(r));
            let mut ranges = seen.into_inner().unwrap();
            ranges.sort_by_key(|r| r.start);
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, len);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert_eq!(pair[1].start % align, 0);
            }
            assert!(ranges.len() <= threads);
        }
    }

    #[test]
    fn mapping_is_zeroed_writable_and_reports_a_tier() {
        let len = 8 << 20;
        let mut m = HostMapping::new(len, &options()).unwrap();
        assert_eq!(m.len(), len);
        assert_eq!(m.threads(), 3);
        assert!(m.as_slice().iter().all(|b| *b == 0));
        m.as_mut_slice()[len - 1] = 5;
        assert_eq!(m.as_slice()[len - 1], 5);
        // Which tier depends on the machine; it must agree with what the kernel reports.
        match m.tier() {
            PageTier::HugeTlb { page_size } => assert!(page_size >= 2 << 20),
            PageTier::Transparent { huge_bytes } => {
                assert!(huge_bytes > 0 && huge_bytes <= len);
                assert_eq!(
                    anon_huge_bytes(m.as_ptr() as usize).unwrap().min(len),
                    huge_bytes
                );
            }
            PageTier::Base => {
                assert_eq!(anon_huge_bytes(m.as_ptr() as usize).unwrap_or(0), 0);
            }
        }
    }

    #[test]
    fn without_huge_pages_the_tier_is_base() {
        let opts = MappingOptions {
            hugetlb: false,
            transparent: false,
            ..options()
        };
        let m = HostMapping::new(4 << 20, &opts).unwrap();
        let huge = anon_huge_bytes(m.as_ptr() as usize).unwrap_or(0);
        // With THP in "always" mode the kernel may use huge pages unasked; otherwise it may not.
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.contains("[always]") && huge > 0 {
            assert_eq!(m.tier(), PageTier::Transparent { huge_bytes: huge });
        } else {
            assert_eq!(huge, 0);
            assert_eq!(m.tier(), PageTier::Base);
        }
    }

    #[test]
    fn numa_node_zero_is_accepted_and_an_absurd_node_is_an_error() {
        let node0 = Path::new("/sys/devices/system/node/node0").exists();
        let opts = MappingOptions {
            numa_node: Some(0),
            ..options()
        };
        let result = HostMapping::new(1 << 20, &opts);
        if node0 {
            result.unwrap();
        } else {
            // Kernels without NUMA support refuse mbind.
            assert!(matches!(
                result,
                Err(Error::Memory(MemoryError::NumaPlacement { node: 0, .. }))
            ));
        }
        for missing in [4000, 1000] {
            let opts = MappingOptions {
                numa_node: Some(missing),
                ..options()
            };
            assert!(
                matches!(
                    HostMapping::new(1 << 20, &opts),
                    Err(Error::Memory(MemoryError::NumaPlacement { node, .. })) if node == missing
                ),
                "node {missing}"
            );
        }
    }

    #[test]
    fn zero_and_impossible_sizes_are_errors() {
        assert!(matches!(
            HostMapping::new(0, &options()),
            Err(Error::Bounds(BoundsError::ZeroSize { .. }))
        ));
        assert!(matches!(
            HostMapping::new(usize::MAX / 2, &options()),
            Err(Error::Memory(MemoryError::HostAlloc { .. }))
        ));
    }
}
