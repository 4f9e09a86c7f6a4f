//! The disk side of the engine: the running backend, and the lane through which host ↔ disk transfers (and the GPU executor's disk
//! staging) reach it.

use super::disk_queue::DiskQueue;
use super::handle::{TransferHandle, Work};
use super::plan::TransferPlan;
use super::worker::Worker;
use super::{DiskBackend, EngineConfig, nixl_posix, uring};
use crate::error::Result;
use std::sync::Mutex;

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
    /// Where each transfer's deadline comes from.
    config: EngineConfig,
    queue: DiskQueue,
    executor: Mutex<Option<Worker<Work>>>,
}

impl DiskLane {
    /// A lane for `backend`; nothing starts until the first transfer.
    pub(crate) fn new(backend: DiskBackend, queue: DiskQueue) -> Self {
        Self {
            backend,
            config: EngineConfig::default(),
            queue,
            executor: Mutex::new(None),
        }
    }

    /// The lane with the deadlines of `config` (the defaults' otherwise).
    pub(crate) fn with_deadlines(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts `plan` (a host ↔ disk plan) on the backend, starting the backend first if needed.
    /// A backend whose current transfer is stuck past its deadline is left to its thread and a
    /// fresh one is started, so that later transfers do not queue behind the stall.
    ///
    /// # Errors
    /// The backend's start errors ([`IoError::BackendUnavailable`](crate::error::IoError::BackendUnavailable),
    /// NIXL's); nothing has moved then.
    pub(crate) fn submit(&self, plan: TransferPlan) -> Result<TransferHandle> {
        let mut executor = self.executor.lock().unwrap_or_else(|e| e.into_inner());
        if executor.as_ref().is_some_and(Worker::stalled)
            && let Some(stalled) = executor.take()
        {
            stalled.abandon();
        }
        let executor = match &mut *executor {
            Some(executor) => executor,
            empty => empty.insert(start(self.backend, self.queue)?),
        };
        let limit = self.config.deadline_for(plan.total_bytes());
        let (handle, work) = TransferHandle::new(plan, limit);
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
