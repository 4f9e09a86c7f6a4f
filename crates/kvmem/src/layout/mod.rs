//! KV-cache block layouts over any storage.
//!
//! A [`BlockLayout`] places the chunks of a paged KV cache — one chunk per (block, layer, outer)
//! triple, see [`LayoutConfig`] — in one or more [`Buffer`]s of any tier: host memory, a file,
//! GPU memory. It only computes addresses; the [`transfer`](crate::transfer) engine moves bytes.
//!
//! | kind | regions | order inside a region |
//! |---|---|---|
//! | [`LayoutKind::FullyContiguous`] | 1 | `[block, layer, outer, page, inner]` |
//! | [`LayoutKind::LayerSeparate`]`(`[`BlockDim::First`]`)` | one per layer | `[block, outer, page, inner]` |
//! | [`LayoutKind::LayerSeparate`]`(`[`BlockDim::Second`]`)` | one per layer | `[outer, block, page, inner]` (vLLM) |
//!
//! Everything is validated at construction with checked arithmetic — dimensions, region count
//! and sizes, storage kinds, alignment of region starts and chunk sizes — so that afterwards
//! every chunk address of every valid block id is known to lie inside its region.
//!
//! ```
//! use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
//! use kvmem::{Buffer, SystemStorage};
//!
//! let config = LayoutConfig {
//!     num_blocks: 8, num_layers: 4, outer_dim: 2, page_size: 16, inner_dim: 128, dtype_bytes: 2,
//! };
//! let layout = BlockLayout::allocate(config, LayoutKind::FullyContiguous, 4096, |bytes| {
//!     Ok(Buffer::new(SystemStorage::new(bytes)?))
//! })?;
//! let chunk = layout.chunk(3, 1, 0)?;
//! assert_eq!(chunk.len, 16 * 128 * 2);
//! assert_eq!(chunk.addr, layout.regions()[0].addr() + (3 * 4 * 2 + 1 * 2) * chunk.len);
//! # use kvmem::MemoryDescriptor;
//! # Ok::<(), kvmem::Error>(())
//! ```

mod config;

pub use config::{BlockDim, LayoutConfig, LayoutKind};

use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{BoundsError, Error, LayoutError, Result};
use crate::kind::StorageKind;
use crate::storage::DIRECT_IO_ALIGN;

/// Where one chunk lives: `len` bytes at `addr` in region `region` of a layout.
///
/// For host and device memory `addr` is a virtual address; for disk it is the offset in the
/// file of that region's [`StorageKind::Disk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Index of the region in [`BlockLayout::regions`].
    pub region: usize,
    /// Address (or file offset) of the first byte.
    pub addr: usize,
    /// Length in bytes (the layout's chunk size).
    pub len: usize,
}

/// A validated KV-cache block layout over one or more regions. Cheap to clone: the regions are
/// shared [`Buffer`]s, and the layout keeps them alive.
#[derive(Debug, Clone)]
pub struct BlockLayout {
    config: LayoutConfig,
    kind: LayoutKind,
    regions: Vec<Buffer>,
    alignment: usize,
    chunk_bytes: usize,
    region_bytes: usize,
    /// Byte strides inside a region; `layer_stride` is 0 for layer-separate layouts, whose layers
    /// are separate regions.
    block_stride: usize,
    layer_stride: usize,
    outer_stride: usize,
}

impl BlockLayout {
    /// A layout of `kind` over `regions` (one region for a fully contiguous layout, one per layer
    /// for a layer-separate one), whose region starts and chunk size are multiples of
    /// `alignment`. Regions on disk are held to at least [`DIRECT_IO_ALIGN`], as `O_DIRECT`
    /// needs.
    ///
    /// # Errors
    /// - [`BoundsError::ZeroSize`] / [`BoundsError::Overflow`] for zero or overflowing dimensions;
    /// - [`LayoutError::Invalid`] when `alignment` is not a power of two, the region count is
    ///   wrong, or regions are of different storage kinds (files may differ, tiers may not);
    /// - [`BoundsError::Misaligned`] when a region start or the chunk size is not aligned;
    /// - [`BoundsError::RegionTooSmall`] when a region cannot hold its share of the layout.
    pub fn new(
        config: LayoutConfig,
        kind: LayoutKind,
        regions: Vec<Buffer>,
        alignment: usize,
    ) -> Result<Self> {
        let chunk_bytes = config.chunk_bytes()?;
        let (count, region_bytes) = config.regions(kind)?;
        if !alignment.is_power_of_two() {
            return Err(Error::Layout(LayoutError::Invalid(format!(
                "alignment {alignment} is not a power of two"
            ))));
        }
        if regions.len() != count {
            return Err(Error::Layout(LayoutError::Invalid(format!(
                "a {kind} layout of {} layers needs {count} region(s), got {}",
                config.num_layers,
                regions.len()
            ))));
        }
        let first = regions[0].storage_kind();
        for (i, r) in regions.iter().enumerate() {
            if !same_tier(first, r.storage_kind()) {
                return Err(Error::Layout(LayoutError::Invalid(format!(
                    "region {i} is {} memory but region 0 is {first}; all regions of a layout must \
                     be in one tier",
                    r.storage_kind()
                ))));
            }
        }
        let alignment = if first.is_disk() {
            alignment.max(DIRECT_IO_ALIGN)
        } else {
            alignment
        };
        if chunk_bytes % alignment != 0 {
            return Err(Error::Bounds(BoundsError::Misaligned {
                what: "layout chunk size",
                value: chunk_bytes as u64,
                align: alignment as u64,
            }));
        }
        for (i, r) in regions.iter().enumerate() {
            if r.addr() % alignment != 0 {
                return Err(Error::Bounds(BoundsError::Misaligned {
                    what: "layout region start",
                    value: r.addr() as u64,
                    align: alignment as u64,
                }));
            }
            if r.size() < region_bytes {
                return Err(Error::Bounds(BoundsError::RegionTooSmall {
                    region: i,
                    needed: region_bytes,
                    size: r.size(),
                }));
            }
            // With the size check above, every chunk address is below this end, so the unchecked
            // additions in `chunk` cannot overflow.
            r.addr()
                .checked_add(region_bytes)
                .ok_or(Error::Bounds(BoundsError::Overflow {
                    what: "layout region end address",
                }))?;
        }
        let (block_stride, layer_stride, outer_stride) = strides(&config, kind, chunk_bytes);
        Ok(Self {
            config,
            kind,
            regions,
            alignment,
            chunk_bytes,
            region_bytes,
            block_stride,
            layer_stride,
            outer_stride,
        })
    }

    /// Allocates the regions a layout of `kind` needs with `alloc` (called with each region's
    /// size in bytes) and builds the layout over them.
    ///
    /// ```
    /// # use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
    /// # use kvmem::{Buffer, SystemStorage};
    /// # let config = LayoutConfig { num_blocks: 2, num_layers: 3, outer_dim: 2, page_size: 4, inner_dim: 8, dtype_bytes: 2 };
    /// let vllm = BlockLayout::allocate(config, LayoutKind::LayerSeparate(BlockDim::Second), 64,
    ///     |bytes| Ok(Buffer::new(SystemStorage::new(bytes)?)))?;
    /// assert_eq!(vllm.regions().len(), 3);
    /// # Ok::<(), kvmem::Error>(())
    /// ```
    ///
    /// # Errors
    /// Whatever `alloc` returns, and as for [`new`](Self::new).
    pub fn allocate(
        config: LayoutConfig,
        kind: LayoutKind,
        alignment: usize,
        mut alloc: impl FnMut(usize) -> Result<Buffer>,
    ) -> Result<Self> {
        let (count, bytes) = config.regions(kind)?;
        let regions = (0..count)
            .map(|_| alloc(bytes))
            .collect::<Result<Vec<_>>>()?;
        Self::new(config, kind, regions, alignment)
    }

    /// Where chunk (`block`, `layer`, `outer`) lives.
    ///
    /// # Errors
    /// [`LayoutError::BlockOutOfRange`] for a block id past the end; [`BoundsError::OutOfBounds`] for a
    /// layer or outer index past its dimension.
    pub fn chunk(&self, block: usize, layer: usize, outer: usize) -> Result<Chunk> {
        self.check_block("source", block)?;
        if layer >= self.config.num_layers {
            return Err(Error::Bounds(BoundsError::OutOfBounds {
                offset: layer,
                len: 1,
                size: self.config.num_layers,
            }));
        }
        if outer >= self.config.outer_dim {
            return Err(Error::Bounds(BoundsError::OutOfBounds {
                offset: outer,
                len: 1,
                size: self.config.outer_dim,
            }));
        }
        Ok(self.chunk_unchecked(block, layer, outer))
    }

    /// [`chunk`](Self::chunk) for indices already known to be in range.
    pub(crate) fn chunk_unchecked(&self, block: usize, layer: usize, outer: usize) -> Chunk {
        let region = self.kind.region_of_layer(layer);
        // In range by the caller's check; then the offset is below the region size checked in
        // `new`, and the region end does not overflow.
        let offset = self.chunk_offset_unchecked(block, layer, outer);
        Chunk {
            region,
            addr: self.regions[region].addr() + offset,
            len: self.chunk_bytes,
        }
    }

    /// Byte offset of chunk (block, layer, outer) inside its region, for ids already checked.
    #[inline]
    fn chunk_offset_unchecked(&self, block: usize, layer: usize, outer: usize) -> usize {
        block * self.block_stride + layer * self.layer_stride + outer * self.outer_stride
    }

    /// Bytes between the same chunk of consecutive blocks.
    #[inline]
    pub(crate) fn block_stride(&self) -> usize {
        self.block_stride
    }

    /// Checks a block id, naming `side` (`source` or `destination`) in the error.
    pub(crate) fn check_block(&self, side: &'static str, block: usize) -> Result<()> {
        if block >= self.config.num_blocks {
            return Err(Error::Layout(LayoutError::BlockOutOfRange {
                side,
                block,
                num_blocks: self.config.num_blocks,
            }));
        }
        Ok(())
    }

    /// The dimensions.
    pub fn config(&self) -> &LayoutConfig {
        &self.config
    }

    /// The arrangement.
    pub fn kind(&self) -> LayoutKind {
        self.kind
    }

    /// The regions, in layer order for a layer-separate layout.
    pub fn regions(&self) -> &[Buffer] {
        &self.regions
    }

    /// The storage kind of the first region (all regions are in the same tier).
    pub fn storage_kind(&self) -> StorageKind {
        self.regions[0].storage_kind()
    }

    /// The alignment the layout was validated against, in bytes.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Bytes per chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Bytes the layout uses in each region (a region may be larger).
    pub fn region_bytes(&self) -> usize {
        self.region_bytes
    }

    /// Blocks in the layout.
    pub fn num_blocks(&self) -> usize {
        self.config.num_blocks
    }
}

/// True when two kinds are the same tier: equal, or both files.
/// Byte strides of a block, a layer and an outer part inside a region of a `kind` layout of
/// `config` (the layer stride is 0 for layer-separate layouts, whose layers are separate
/// regions). For dimensions validated by [`LayoutConfig::regions`], the products are bounded by
/// the region size it computed with checked arithmetic.
pub(crate) fn strides(
    config: &LayoutConfig,
    kind: LayoutKind,
    chunk_bytes: usize,
) -> (usize, usize, usize) {
    match kind {
        LayoutKind::FullyContiguous => (
            chunk_bytes * config.num_layers * config.outer_dim,
            chunk_bytes * config.outer_dim,
            chunk_bytes,
        ),
        LayoutKind::LayerSeparate(BlockDim::First) => {
            (chunk_bytes * config.outer_dim, 0, chunk_bytes)
        }
        LayoutKind::LayerSeparate(BlockDim::Second) => {
            (chunk_bytes, 0, chunk_bytes * config.num_blocks)
        }
    }
}

fn same_tier(a: StorageKind, b: StorageKind) -> bool {
    a == b || (a.is_disk() && b.is_disk())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskStorage, OffsetBuffer, SystemStorage};

    fn cfg(num_blocks: usize) -> LayoutConfig {
        LayoutConfig {
            num_blocks,
            num_layers: 3,
            outer_dim: 2,
            page_size: 4,
            inner_dim: 16,
            dtype_bytes: 4,
        }
    }

    fn host(bytes: usize) -> Result<Buffer> {
        Ok(Buffer::new(SystemStorage::new(bytes)?))
    }

    /// Offsets written out from the dimension orders in the module docs, independently of the
    /// stride code.
    fn expected_offset(kind: LayoutKind, c: &LayoutConfig, b: usize, l: usize, o: usize) -> usize {
        let chunk = c.page_size * c.inner_dim * c.dtype_bytes;
        let (nb, nl, no) = (c.num_blocks, c.num_layers, c.outer_dim);
        let index = match kind {
            LayoutKind::FullyContiguous => ((b * nl) + l) * no + o,
            LayoutKind::LayerSeparate(BlockDim::First) => b * no + o,
            LayoutKind::LayerSeparate(BlockDim::Second) => o * nb + b,
        };
        index * chunk
    }

    #[test]
    fn every_chunk_is_where_the_dimension_order_says_and_chunks_tile_the_regions() {
        let c = cfg(5);
        for kind in LayoutKind::ALL {
            let layout = BlockLayout::allocate(c, kind, 256, host).unwrap();
            let mut seen = std::collections::HashSet::new();
            for b in 0..5 {
                for l in 0..3 {
                    for o in 0..2 {
                        let ch = layout.chunk(b, l, o).unwrap();
                        let region = &layout.regions()[ch.region];
                        assert_eq!(
                            ch.addr - region.addr(),
                            expected_offset(kind, &c, b, l, o),
                            "{kind} {b} {l} {o}"
                        );
                        assert!(seen.insert((ch.region, ch.addr)), "chunks alias");
                    }
                }
            }
            let (count, bytes) = c.regions(kind).unwrap();
            assert_eq!(seen.len() * 256, count * bytes, "chunks tile the regions");
        }
    }

    #[test]
    fn out_of_range_indices_are_errors() {
        let layout = BlockLayout::allocate(cfg(5), LayoutKind::FullyContiguous, 1, host).unwrap();
        assert!(matches!(
            layout.chunk(5, 0, 0),
            Err(Error::Layout(LayoutError::BlockOutOfRange {
                block: 5,
                num_blocks: 5,
                ..
            }))
        ));
        assert!(matches!(
            layout.chunk(0, 3, 0),
            Err(Error::Bounds(BoundsError::OutOfBounds { .. }))
        ));
        assert!(matches!(
            layout.chunk(0, 0, 2),
            Err(Error::Bounds(BoundsError::OutOfBounds { .. }))
        ));
    }

    #[test]
    fn construction_validates_regions_and_alignment() {
        let c = cfg(4);
        let (_, bytes) = c.regions(LayoutKind::FullyContiguous).unwrap();
        // too small
        let r = BlockLayout::new(
            c,
            LayoutKind::FullyContiguous,
            vec![host(bytes - 1).unwrap()],
            1,
        );
        assert!(
            matches!(r, Err(Error::Bounds(BoundsError::RegionTooSmall { needed, .. })) if needed == bytes)
        );
        // wrong count
        let r = BlockLayout::new(
            c,
            LayoutKind::LayerSeparate(BlockDim::First),
            vec![host(bytes).unwrap()],
            1,
        );
        assert!(matches!(r, Err(Error::Layout(LayoutError::Invalid(_)))));
        // alignment not a power of two
        let r = BlockLayout::new(
            c,
            LayoutKind::FullyContiguous,
            vec![host(bytes).unwrap()],
            3,
        );
        assert!(matches!(r, Err(Error::Layout(LayoutError::Invalid(_)))));
        // chunk (256 bytes) not a multiple of 512
        let r = BlockLayout::new(
            c,
            LayoutKind::FullyContiguous,
            vec![host(bytes).unwrap()],
            512,
        );
        assert!(matches!(
            r,
            Err(Error::Bounds(BoundsError::Misaligned {
                what: "layout chunk size",
                ..
            }))
        ));
        // region start misaligned
        let base = host(bytes + 64).unwrap();
        let view = Buffer::new(OffsetBuffer::new(base, 64, bytes).unwrap());
        let r = BlockLayout::new(c, LayoutKind::FullyContiguous, vec![view.clone()], 128);
        assert!(matches!(
            r,
            Err(Error::Bounds(BoundsError::Misaligned {
                what: "layout region start",
                ..
            }))
        ));
        assert!(BlockLayout::new(c, LayoutKind::FullyContiguous, vec![view], 64).is_ok());
    }

    #[test]
    fn disk_regions_need_direct_io_alignment_and_one_tier() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayoutConfig {
            num_blocks: 2,
            num_layers: 2,
            outer_dim: 1,
            page_size: 1,
            inner_dim: 1024,
            dtype_bytes: 4,
        };
        let (_, bytes) = c
            .regions(LayoutKind::LayerSeparate(BlockDim::First))
            .unwrap();
        let disk = || Buffer::new(DiskStorage::new_in(dir.path(), bytes).unwrap());
        let ok = BlockLayout::new(
            c,
            LayoutKind::LayerSeparate(BlockDim::First),
            vec![disk(), disk()],
            1,
        )
        .unwrap();
        assert_eq!(ok.alignment(), DIRECT_IO_ALIGN);
        let mixed = BlockLayout::new(
            c,
            LayoutKind::LayerSeparate(BlockDim::First),
            vec![disk(), host(bytes).unwrap()],
            1,
        );
        assert!(matches!(mixed, Err(Error::Layout(LayoutError::Invalid(_)))));
        let small = LayoutConfig {
            inner_dim: 512,
            ..c
        };
        let r = BlockLayout::allocate(small, LayoutKind::FullyContiguous, 1, |n| {
            Ok(Buffer::new(DiskStorage::new_in(dir.path(), n)?))
        });
        assert!(matches!(
            r,
            Err(Error::Bounds(BoundsError::Misaligned { align: 4096, .. }))
        ));
    }
}
