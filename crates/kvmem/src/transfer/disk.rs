//! The disk side of the engine: the queue settings both disk backends share, the running
//! backend, and the lane through which host ↔ disk transfers (and the GPU executor's disk
//! staging) reach it.

use super::handle::{TransferHandle, Work};
use super::plan::TransferPlan;
use super::worker::Worker;
use super::{DiskBackend, nixl_posix, uring};
use crate::error::Result;
use std::sync::Mutex;

/// How a disk backend queues I/O: the same two settings for `io_uring` and NIXL POSIX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskQueue {
    /// Requests kept in flight.
    pub(crate) queue_depth: u32,
    /// Largest single request in bytes; longer copies are split.
    pub(crate) max_io_bytes: usize,
}

/// Starts the worker of `backend`.
fn start(backend: DiskBackend, queue: DiskQueue) -> Result<Worker<Work>> {
    match backend {
        DiskBackend::IoUring => uring::start(queue),
        DiskBackend::NixlPosix => nixl_posix::start(queue),
    }
}

/// The engine's way to the disk: starts the chosen backend on first use and hands it every
/// host ↔ disk plan, from the engine and from the GPU executor's staging alike, so that all disk
/// I/O runs through one backend at its configured queue depth.
pub(crate) struct DiskLane {
    backend: DiskBackend,
    queue: DiskQueue,
    executor: Mutex<Option<Worker<Work>>>,
}

impl DiskLane {
    /// A lane for `backend`; nothing starts until the first transfer.
    pub(crate) fn new(backend: DiskBackend, queue: DiskQueue) -> Self {
        Self {
            backend,
            queue,
            executor: Mutex::new(None),
        }
    }

    /// Starts `plan` (a host ↔ disk plan) on the backend, starting the backend first if needed.
    ///
    /// # Errors
    /// The backend's start errors ([`IoError::BackendUnavailable`](crate::error::IoError::BackendUnavailable),
    /// NIXL's); nothing has moved then.
    pub(crate) fn submit(&self, plan: TransferPlan) -> Result<TransferHandle> {
        let mut executor = self.executor.lock().unwrap_or_else(|e| e.into_inner());
        let executor = match &mut *executor {
            Some(executor) => executor,
            empty => empty.insert(start(self.backend, self.queue)?),
        };
        let (handle, work) = TransferHandle::new(plan);
        // A worker that has stopped hands the work back; dropping it reports
        // `TransferError::Aborted` through the handle.
        if let Err(work) = executor.submit(work) {
            drop(work);
        }
        Ok(handle)
    }

    /// Starts the backend if it is not running yet, so that a transfer staged through it fails
    /// at submission rather than in the background.
    ///
    /// # Errors
    /// As for [`submit`](Self::submit).
    pub(crate) fn start(&self) -> Result<()> {
        let mut executor = self.executor.lock().unwrap_or_else(|e| e.into_inner());
        if executor.is_none() {
            *executor = Some(start(self.backend, self.queue)?);
        }
        Ok(())
    }
}
