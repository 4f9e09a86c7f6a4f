//! The queue settings both disk backends (`io_uring` and NIXL POSIX) share. They live apart
//! from the disk lane so that the backends depend on them without depending on the lane that
//! starts them.

/// How a disk backend queues I/O: the same two settings for `io_uring` and NIXL POSIX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskQueue {
    /// Requests kept in flight.
    pub(crate) queue_depth: u32,
    /// Largest single request in bytes; longer copies are split.
    pub(crate) max_io_bytes: usize,
}
