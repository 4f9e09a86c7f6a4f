//! Checking a point's bytes: read a region back to host memory (host memory is read in place,
//! a file with `pread`, device memory with a synchronous driver copy — none of them through
//! the transfer engine under test), and compare every block pair with its source.
//!
//! Test hook: with `KVMEM_BENCH_TEST_CORRUPT` set to a path label (`host->disk`, `nixl-read`,
//! ...) or to `*`, the read-back destination of the matching points has one byte flipped
//! after it was read back and before it is compared, so a test can show that a wrong byte
//! fails the run. It changes no transfer, only the copy being checked.

use super::point::PointSpec;
use crate::error::{CliError, Result};
use kvmem::layout::BlockLayout;
use kvmem::nixl::Registered;
use kvmem::{
    Buffer, DiskStorage, HostMemory, MemoryDescriptor, OffsetBuffer, PinnedStorage, StorageKind,
    SystemStorage,
};

/// Destination bytes are set to this before a checked transfer.
pub const POISON: u8 = 0xA5;

/// The test hook's variable (see the module docs).
pub const CORRUPT_VAR: &str = "KVMEM_BENCH_TEST_CORRUPT";

/// The bytes of a region, read back for checking.
pub enum Image<'a> {
    /// Host memory, read in place.
    Borrowed(&'a [u8]),
    /// A copy (of a file or device memory, or of host memory the test hook changed).
    Owned(SystemStorage),
}

impl Image<'_> {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Borrowed(b) => b,
            Self::Owned(s) => s.as_slice(),
        }
    }

    /// Applies the test hook for a point labelled `label`: flips the byte at `at`.
    fn corrupt_if_asked(&mut self, label: &str, at: usize) -> Result<()> {
        let asked = std::env::var(CORRUPT_VAR).is_ok_and(|v| v == "*" || v == label);
        if !asked || at >= self.bytes().len() {
            return Ok(());
        }
        if let Self::Borrowed(b) = self {
            let mut copy = SystemStorage::new(b.len())?;
            copy.as_mut_slice().copy_from_slice(b);
            *self = Self::Owned(copy);
        }
        if let Self::Owned(s) = self {
            s.as_mut_slice()[at] ^= 0xFF;
        }
        Ok(())
    }
}

/// The host bytes of `buf` in place, for the host storages the bench allocates.
pub fn host_slice(buf: &Buffer) -> Option<&[u8]> {
    if let Some(s) = buf.downcast_ref::<SystemStorage>() {
        return Some(s.as_slice());
    }
    if let Some(s) = buf.downcast_ref::<PinnedStorage>() {
        return Some(s.as_slice());
    }
    buf.downcast_ref::<Registered<SystemStorage>>()
        .map(|s| s.as_slice())
}

/// The first `len` bytes of `buf` (host memory, a [`DiskStorage`] or device memory).
///
/// # Errors
/// A read or copy that fails, or a storage the bench does not allocate.
pub fn read_back(buf: &Buffer, len: usize) -> Result<Image<'_>> {
    let short = || {
        CliError::Bench(format!(
            "internal: reading back {len} bytes of a {}-byte region",
            buf.size()
        ))
    };
    if len > buf.size() {
        return Err(short());
    }
    if let Some(s) = host_slice(buf) {
        return Ok(Image::Borrowed(s.get(..len).ok_or_else(short)?));
    }
    // Page-aligned (for `O_DIRECT` reads) and a whole number of pages.
    let mut copy = SystemStorage::new(len.next_multiple_of(kvmem::PAGE_SIZE))?;
    match buf.storage_kind() {
        StorageKind::Disk(_) => {
            let disk = buf.downcast_ref::<DiskStorage>().ok_or_else(|| {
                CliError::Bench("internal: a disk region that is not a DiskStorage".into())
            })?;
            let n = copy.size().min(disk.size());
            disk.read_at(0, &mut copy.as_mut_slice()[..n])?;
        }
        StorageKind::Device(_) => {
            let part = Buffer::new(OffsetBuffer::new(buf.clone(), 0, len)?);
            let mut exact = SystemStorage::new(len)?;
            kvmem::cuda::copy_device_to_host(&part, &mut exact)?;
            copy = exact;
        }
        other => {
            return Err(CliError::Bench(format!(
                "internal: cannot read back a {other:?} region"
            )));
        }
    }
    Ok(Image::Owned(copy))
}

/// Fails unless the first `len` bytes of `buf` are all [`POISON`]: a destination whose poison
/// did not take could hold the right bytes from an earlier run and pass a broken transfer.
pub fn check_poisoned(spec: &PointSpec, buf: &Buffer, len: usize) -> Result<()> {
    let image = read_back(buf, len)?;
    match image.bytes()[..len].iter().position(|b| *b != POISON) {
        None => Ok(()),
        Some(i) => Err(CliError::Verify(format!(
            "{}: the destination still holds {:#04x} at byte {i} after it was poisoned",
            spec.describe(),
            image.bytes()[i]
        ))),
    }
}

/// One block pair's bytes: `len` bytes at `dst` in the destination image hold `len` bytes at
/// `src` in the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPair {
    /// The pair's index in the point's id lists.
    pub pair: usize,
    /// Destination block.
    pub dst_block: usize,
    /// Source block.
    pub src_block: usize,
    /// Offset in the destination image.
    pub dst: usize,
    /// Offset in the source image.
    pub src: usize,
    /// Bytes.
    pub len: usize,
}

/// The chunk pairs of block pairs `(src_ids[k], dst_ids[k])` between two fully contiguous
/// runs of `block`-byte blocks.
pub fn contiguous_pairs(block: usize, src_ids: &[usize], dst_ids: &[usize]) -> Vec<ChunkPair> {
    src_ids
        .iter()
        .zip(dst_ids)
        .enumerate()
        .map(|(pair, (&s, &d))| ChunkPair {
            pair,
            dst_block: d,
            src_block: s,
            dst: d * block,
            src: s * block,
            len: block,
        })
        .collect()
}

/// The chunk pairs of block pairs `(src_ids[k], dst_ids[k])` between two layouts, as offsets
/// from `src_base` and `dst_base`, the regions the images were read from.
pub fn layout_pairs(
    src: &BlockLayout,
    src_ids: &[usize],
    src_base: &Buffer,
    dst: &BlockLayout,
    dst_ids: &[usize],
    dst_base: &Buffer,
) -> Result<Vec<ChunkPair>> {
    let c = src.config();
    let mut pairs = Vec::with_capacity(src_ids.len() * c.num_layers * c.outer_dim);
    for (pair, (&s, &d)) in src_ids.iter().zip(dst_ids).enumerate() {
        for layer in 0..c.num_layers {
            for outer in 0..c.outer_dim {
                let (sc, dc) = (src.chunk(s, layer, outer)?, dst.chunk(d, layer, outer)?);
                let offset = |addr: usize, base: &Buffer| {
                    addr.checked_sub(base.addr())
                        .ok_or_else(|| CliError::Bench("internal: a chunk before its image".into()))
                };
                pairs.push(ChunkPair {
                    pair,
                    dst_block: d,
                    src_block: s,
                    dst: offset(dc.addr, dst_base)?,
                    src: offset(sc.addr, src_base)?,
                    len: sc.len.min(dc.len),
                });
            }
        }
    }
    Ok(pairs)
}

/// Compares every pair of `pairs`; returns the bytes compared. The test hook (module docs)
/// applies to `dst` here, before the comparison.
///
/// # Errors
/// [`CliError::Verify`] naming the first pair and byte that differ.
pub fn compare(
    spec: &PointSpec,
    mut dst: Image<'_>,
    src: &Image<'_>,
    pairs: &[ChunkPair],
) -> Result<u64> {
    if let Some(first) = pairs.first() {
        dst.corrupt_if_asked(spec.label, first.dst)?;
    }
    let (d, s) = (dst.bytes(), src.bytes());
    let mut compared = 0u64;
    for p in pairs {
        let (Some(got), Some(want)) = (d.get(p.dst..p.dst + p.len), s.get(p.src..p.src + p.len))
        else {
            return Err(CliError::Bench(format!(
                "internal: {}: pair {} lies outside the images read back",
                spec.describe(),
                p.pair
            )));
        };
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            return Err(CliError::Verify(format!(
                "{}: pair {} (block {} <- block {}) differs at byte {} of a {}-byte chunk: got \
                 {:#04x}, expected {:#04x}",
                spec.describe(),
                p.pair,
                p.dst_block,
                p.src_block,
                i,
                p.len,
                got[i],
                want[i]
            )));
        }
        compared += p.len as u64;
    }
    Ok(compared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Pattern;

    fn spec() -> PointSpec {
        PointSpec {
            label: "t",
            pattern: Pattern::Scattered,
            block_bytes: 4,
            blocks: 4,
            bytes: 16,
            iterations: 1,
            seed: 0,
        }
    }

    #[test]
    fn compare_checks_the_paired_blocks_and_counts_what_it_compared() {
        let src: Vec<u8> = (0..16u8).collect();
        // dst block 0 holds src block 3, dst block 3 holds src block 0, 1 and 2 in place.
        let mut dst = src.clone();
        dst[..4].copy_from_slice(&src[12..]);
        dst[12..].copy_from_slice(&src[..4]);
        let s = Image::Borrowed(&src);
        let swapped = contiguous_pairs(4, &[3, 1, 2, 0], &[0, 1, 2, 3]);
        assert_eq!(
            compare(&spec(), Image::Borrowed(&dst), &s, &swapped).unwrap(),
            16
        );
        assert_eq!(compare(&spec(), Image::Borrowed(&dst), &s, &[]).unwrap(), 0);
        let straight = contiguous_pairs(4, &[0, 1, 2, 3], &[0, 1, 2, 3]);
        let err = compare(&spec(), Image::Borrowed(&dst), &s, &straight).unwrap_err();
        assert!(err.to_string().contains("pair 0"), "{err}");
        dst[6] ^= 1;
        let err = compare(&spec(), Image::Borrowed(&dst), &s, &swapped).unwrap_err();
        assert!(
            matches!(err, CliError::Verify(_)) && err.to_string().contains("byte 2"),
            "{err}"
        );
    }
}
