//! Block layout, block list and tensor description errors.

/// A block layout, a block list or a tensor description is inconsistent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A block layout's description or regions are inconsistent.
    #[error("invalid block layout: {0}")]
    Invalid(String),

    /// A tensor description is inconsistent.
    #[error("invalid tensor descriptor: {0}")]
    InvalidTensor(String),

    /// A block id does not exist in the layout it names.
    #[error(
        "{side} block id {block} is out of range: the layout has {num_blocks} blocks (ids 0..{num_blocks})"
    )]
    BlockOutOfRange {
        /// `source` or `destination`.
        side: &'static str,
        /// The offending id.
        block: usize,
        /// Blocks in the layout.
        num_blocks: usize,
    },

    /// Source and destination block lists differ in length.
    #[error(
        "{src} source block ids but {dst} destination block ids; pass one destination per source"
    )]
    BlockCountMismatch {
        /// Number of source ids.
        src: usize,
        /// Number of destination ids.
        dst: usize,
    },

    /// The same destination block is named twice, so two copies would write one place.
    #[error(
        "destination block {block} appears more than once; each destination may be written once per transfer"
    )]
    DuplicateBlock {
        /// The repeated id.
        block: usize,
    },

    /// Two layouts cannot be copied block for block because their shapes differ.
    #[error(
        "layouts differ in {what}: source has {src}, destination has {dst}; copy between layouts of the same chunk size, layer count and k/v dimension"
    )]
    Mismatch {
        /// The differing property (`chunk size`, `layers`, `outer dimension`).
        what: &'static str,
        /// Source value.
        src: usize,
        /// Destination value.
        dst: usize,
    },
}
