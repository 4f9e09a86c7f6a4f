//! Size, offset, range and alignment errors.

/// How the sizes of a copy's two sides must relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// Source and destination must be the same size.
    Equal,
    /// The destination must hold at least the source.
    AtLeast,
}

impl std::fmt::Display for SizeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SizeRule::Equal => "exactly as large as",
            SizeRule::AtLeast => "at least as large as",
        })
    }
}

/// A size, offset, range or alignment is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoundsError {
    /// A size of zero was given where at least one byte is needed.
    #[error("{what} must not be zero bytes; pass a positive size")]
    ZeroSize {
        /// What the size was for.
        what: &'static str,
    },

    /// A range does not lie inside the region it was taken from.
    #[error(
        "range of {len} bytes at offset {offset} does not fit in a region of {size} bytes; \
         keep offset + len <= {size}"
    )]
    OutOfBounds {
        /// Requested offset.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Size of the region.
        size: usize,
    },

    /// Arithmetic on sizes or addresses overflowed.
    #[error("{what} overflows the address space; use smaller sizes or offsets")]
    Overflow {
        /// The computation that overflowed.
        what: &'static str,
    },

    /// A value is not a multiple of the alignment it needs.
    #[error("{what} = {value} is not a multiple of {align}; align it to {align} bytes")]
    Misaligned {
        /// What is misaligned.
        what: &'static str,
        /// The misaligned value.
        value: u64,
        /// The alignment it needs.
        align: u64,
    },

    /// A region handed to a block layout is smaller than the layout needs.
    #[error(
        "layout region {region} holds {size} bytes but the layout needs {needed}; allocate \
         at least {needed} bytes or describe fewer blocks"
    )]
    RegionTooSmall {
        /// Index of the region (0 for a fully contiguous layout, the layer for a layer-separate one).
        region: usize,
        /// Bytes the layout needs in that region.
        needed: usize,
        /// Bytes the region has.
        size: usize,
    },

    /// The two sides of a copy have sizes that do not fit together.
    #[error(
        "{op}: the source has {src} bytes and the destination {dst}; give a destination {rule} \
         the source"
    )]
    SizeMismatch {
        /// The operation.
        op: &'static str,
        /// Source size in bytes.
        src: usize,
        /// Destination size in bytes.
        dst: usize,
        /// How the two sizes must relate.
        rule: SizeRule,
    },

    /// Ranges of one transfer overlap, which would make the copy's result depend on its order.
    #[error(
        "{what} overlap at address {addr:#x}; source and destination ranges of one transfer must be disjoint"
    )]
    OverlappingCopy {
        /// Which ranges overlap (`destination ranges`, `source and destination ranges`).
        what: &'static str,
        /// An address inside the overlap.
        addr: usize,
    },
}
