//! Host memory errors.

/// Host memory could not be allocated, placed or sub-allocated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// A host allocation failed.
    #[error(
        "could not allocate {size} bytes of host memory: {source}; free memory or ask for less"
    )]
    HostAlloc {
        /// Requested size.
        size: usize,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// The arena has no free range large enough.
    #[error(
        "arena exhausted: {requested} bytes requested, {free} bytes free (largest free range \
         {largest} bytes); free buffers or make the arena larger"
    )]
    ArenaExhausted {
        /// Requested size in bytes.
        requested: usize,
        /// Free bytes in total.
        free: usize,
        /// Largest contiguous free range in bytes.
        largest: usize,
    },

    /// Page-locked host memory could not be allocated or locked.
    #[error(
        "could not page-lock {requested} bytes of host memory ({available} bytes available \
         according to /proc/meminfo); free memory, ask for less, or raise RLIMIT_MEMLOCK"
    )]
    PinnedOutOfMemory {
        /// Requested size in bytes.
        requested: usize,
        /// `MemAvailable` in bytes when the allocation failed (0 when unknown).
        available: u64,
    },

    /// Memory could not be placed on the requested NUMA node.
    #[error(
        "could not place memory on NUMA node {node}: {source}; pass a node that exists \
         (see /sys/devices/system/node) or none"
    )]
    NumaPlacement {
        /// The node asked for.
        node: u32,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },

    /// A range of a background-pinned pool was not page-locked within the time allowed.
    #[error(
        "bytes {offset}..{end} of a background-pinned pool were not page-locked after {waited:?} \
         ({pinned} of {total} bytes pinned so far); wait longer (wait_pinned), start the pool \
         earlier, or give it more pinning threads (BackgroundPinnedOptions::threads)"
    )]
    PinningTimeout {
        /// First byte (offset into the pool) of the range waited for.
        offset: usize,
        /// One past its last byte.
        end: usize,
        /// How long the caller waited.
        waited: std::time::Duration,
        /// Bytes of the pool page-locked when the wait gave up.
        pinned: usize,
        /// Bytes in the pool.
        total: usize,
    },

    /// Page-locking a background-pinned pool failed, so part of it will never be pinned.
    #[error(
        "page-locking a pinned pool in the background failed: {reason}; bytes {offset}..{end} \
         are not pinned and never will be: free memory or raise RLIMIT_MEMLOCK, then create the \
         pool again"
    )]
    PinningFailed {
        /// What the driver said.
        reason: String,
        /// First byte (offset into the pool) of the range asked for.
        offset: usize,
        /// One past its last byte.
        end: usize,
    },
}
