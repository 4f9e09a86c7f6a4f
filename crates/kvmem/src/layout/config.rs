//! The shape of a KV cache's blocks and the dimension orders they can be stored in.

use crate::error::{BoundsError, Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The dimensions of a paged KV cache.
///
/// A *block* holds `page_size` tokens for every layer; per layer it has `outer_dim` parts (2 for
/// separate keys and values, 1 for a combined latent cache), and each part is a *chunk* of
/// `page_size * inner_dim * dtype_bytes` contiguous bytes. Every layout stores each chunk
/// contiguously; layouts differ in where the chunks lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayoutConfig {
    /// Blocks in the layout.
    pub num_blocks: usize,
    /// Transformer layers.
    pub num_layers: usize,
    /// Parts per layer: 2 for keys and values, 1 for a combined (MLA) cache.
    pub outer_dim: usize,
    /// Tokens per block.
    pub page_size: usize,
    /// Elements per token per part (heads × head size).
    pub inner_dim: usize,
    /// Bytes per element.
    pub dtype_bytes: usize,
}

impl LayoutConfig {
    /// Bytes of one chunk: `page_size * inner_dim * dtype_bytes`.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] when any dimension is zero; [`BoundsError::Overflow`] when the product
    /// overflows.
    pub fn chunk_bytes(&self) -> Result<usize> {
        self.check_nonzero()?;
        self.page_size
            .checked_mul(self.inner_dim)
            .and_then(|n| n.checked_mul(self.dtype_bytes))
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "layout chunk size",
            }))
    }

    /// Bytes of one block across all layers and parts.
    ///
    /// # Errors
    /// As for [`chunk_bytes`](Self::chunk_bytes).
    pub fn block_bytes(&self) -> Result<usize> {
        self.chunk_bytes()?
            .checked_mul(self.num_layers)
            .and_then(|n| n.checked_mul(self.outer_dim))
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "layout block size",
            }))
    }

    /// Chunks in one block: `num_layers * outer_dim`.
    ///
    /// # Errors
    /// As for [`chunk_bytes`](Self::chunk_bytes).
    pub fn chunks_per_block(&self) -> Result<usize> {
        self.check_nonzero()?;
        self.num_layers
            .checked_mul(self.outer_dim)
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "chunks per block",
            }))
    }

    /// How many regions a layout of `kind` needs, and how many bytes each must hold.
    ///
    /// # Errors
    /// As for [`chunk_bytes`](Self::chunk_bytes).
    pub fn regions(&self, kind: LayoutKind) -> Result<(usize, usize)> {
        let overflow = Error::Bounds(BoundsError::Overflow {
            what: "layout region size",
        });
        match kind {
            LayoutKind::FullyContiguous => Ok((
                1,
                self.block_bytes()?
                    .checked_mul(self.num_blocks)
                    .ok_or(overflow)?,
            )),
            LayoutKind::LayerSeparate(_) => Ok((
                self.num_layers,
                self.chunk_bytes()?
                    .checked_mul(self.outer_dim)
                    .and_then(|n| n.checked_mul(self.num_blocks))
                    .ok_or(overflow)?,
            )),
        }
    }

    fn check_nonzero(&self) -> Result<()> {
        for (what, v) in [
            ("layout num_blocks", self.num_blocks),
            ("layout num_layers", self.num_layers),
            ("layout outer_dim", self.outer_dim),
            ("layout page_size", self.page_size),
            ("layout inner_dim", self.inner_dim),
            ("layout dtype_bytes", self.dtype_bytes),
        ] {
            if v == 0 {
                return Err(Error::Bounds(BoundsError::ZeroSize { what }));
            }
        }
        Ok(())
    }
}

/// Where the block dimension sits in a layer-separate layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlockDim {
    /// `[block, outer, page, inner]` per layer: one block's keys and values are adjacent.
    First,
    /// `[outer, block, page, inner]` per layer: all keys, then all values — vLLM's
    /// `[2, num_blocks, block_size, num_heads, head_size]`.
    Second,
}

/// How a layout arranges its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayoutKind {
    /// One region, `[block, layer, outer, page, inner]`: a whole block is one contiguous run.
    FullyContiguous,
    /// One region per layer, each ordered as the [`BlockDim`] says.
    LayerSeparate(BlockDim),
}

impl LayoutKind {
    /// Every layout kind, for sweeps and tests.
    pub const ALL: [LayoutKind; 3] = [
        LayoutKind::FullyContiguous,
        LayoutKind::LayerSeparate(BlockDim::First),
        LayoutKind::LayerSeparate(BlockDim::Second),
    ];

    /// The region holding layer `layer`'s chunks: region 0 of a fully contiguous layout, region
    /// `layer` of a layer-separate one.
    pub(crate) fn region_of_layer(self, layer: usize) -> usize {
        match self {
            LayoutKind::FullyContiguous => 0,
            LayoutKind::LayerSeparate(_) => layer,
        }
    }
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FullyContiguous => f.write_str("fully-contiguous"),
            Self::LayerSeparate(BlockDim::First) => f.write_str("layer-separate(block-first)"),
            Self::LayerSeparate(BlockDim::Second) => f.write_str("layer-separate(block-second)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LayoutConfig {
        LayoutConfig {
            num_blocks: 10,
            num_layers: 3,
            outer_dim: 2,
            page_size: 16,
            inner_dim: 8,
            dtype_bytes: 2,
        }
    }

    #[test]
    fn sizes() {
        let c = cfg();
        assert_eq!(c.chunk_bytes().unwrap(), 256);
        assert_eq!(c.block_bytes().unwrap(), 256 * 6);
        assert_eq!(
            c.regions(LayoutKind::FullyContiguous).unwrap(),
            (1, 256 * 60)
        );
        assert_eq!(
            c.regions(LayoutKind::LayerSeparate(BlockDim::Second))
                .unwrap(),
            (3, 256 * 20)
        );
    }

    #[test]
    fn zero_and_overflowing_dimensions_are_errors() {
        let c = LayoutConfig {
            outer_dim: 0,
            ..cfg()
        };
        assert!(matches!(
            c.chunk_bytes(),
            Err(Error::Bounds(BoundsError::ZeroSize { .. }))
        ));
        let c = LayoutConfig {
            inner_dim: usize::MAX / 2,
            ..cfg()
        };
        assert!(matches!(
            c.chunk_bytes(),
            Err(Error::Bounds(BoundsError::Overflow { .. }))
        ));
        let c = LayoutConfig {
            num_blocks: usize::MAX / 16,
            ..cfg()
        };
        assert!(matches!(
            c.regions(LayoutKind::FullyContiguous),
            Err(Error::Bounds(BoundsError::Overflow { .. }))
        ));
    }
}
