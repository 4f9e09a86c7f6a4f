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
}
