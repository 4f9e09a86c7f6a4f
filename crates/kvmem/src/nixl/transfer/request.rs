//! A posted transfer request: its state, polling, waiting, cancelling and release.

use super::{Owners, TransferOp};
use crate::error::{Error, NixlStatus, Result, TransferError};
use crate::nixl::agent::Agent;
use nixl_sys::{NixlError as SysError, XferStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(super) enum State {
    InFlight,
    Done,
    Failed(NixlStatus),
    Cancelled,
}

/// The part of a [`Transfer`] that polling and cancelling change.
pub(super) struct Live {
    pub(super) request: Option<nixl_sys::XferRequest>,
    pub(super) state: State,
    /// Failed or cancelled in a way that leaves it unknown whether the backend still uses the
    /// memory.
    pub(super) unsettled: bool,
    /// Counted in [`accounting`](crate::accounting)'s in-flight transfers.
    pub(super) counted: bool,
}

impl Live {
    /// Moves to `state`; leaving [`State::InFlight`] ends the in-flight count.
    pub(super) fn settle(&mut self, state: State) {
        if self.counted && !matches!(state, State::InFlight) {
            self.counted = false;
            crate::accounting::transfer_ended();
        }
        self.state = state;
    }
}

/// A posted transfer. Poll it, wait for it or cancel it through
/// [`Completion`](crate::Completion); dropping it while it runs cancels it (see the
/// [module docs](crate::nixl::raw)).
///
/// [`cancel`](crate::Completion::cancel) releases the request, which makes NIXL cancel it; its
/// local buffers (and the files it names) are then kept alive for the rest of the process,
/// because the backend may still touch them, and [`wait`](crate::Completion::wait) reports
/// [`TransferError::Cancelled`].
///
/// # Deadline
/// [`wait`](crate::Completion::wait) gives the transfer
/// [`DEFAULT_DEADLINE`](crate::completion::DEFAULT_DEADLINE) plus
/// [`DEFAULT_DEADLINE_PER_GIB`](crate::completion::DEFAULT_DEADLINE_PER_GIB) per GiB it moves,
/// from posting on. A transfer still in flight then (a peer that never answers, a stalled disk)
/// is released, which makes NIXL cancel it, and reported as [`TransferError::TimedOut`]; its
/// local buffers (and files) are quarantined as after a cancel: kept for the rest of the
/// process, counted in [`accounting`](crate::accounting). Reuse nothing it named: its
/// destination may still be written, its source still read.
/// [`wait_timeout`](crate::Completion::wait_timeout) waits for any time you choose and releases
/// nothing.
#[must_use = "a transfer is cancelled when dropped; wait for it"]
pub struct Transfer {
    // Declared first: the request is released before the memory it uses can be freed.
    pub(super) live: Mutex<Live>,
    pub(super) owners: Option<(Owners, Option<Owners>)>,
    pub(super) agent: Agent,
    pub(super) op: TransferOp,
    pub(super) target: String,
    pub(super) bytes: usize,
    /// When it was posted, and when [`wait`](crate::Completion::wait) gives up.
    pub(super) posted: Instant,
    pub(super) deadline: Instant,
}

impl Transfer {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // Updated in single assignments: a poisoned lock holds a consistent value.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn failed(&self, source: NixlStatus) -> Error {
        Error::Transfer(TransferError::Failed {
            op: self.op.name(),
            peer: self.target.clone(),
            source,
        })
    }

    /// Checks progress once: `Ok(true)` when all data has moved, `Ok(false)` while it runs.
    ///
    /// Errors: [`TransferError::Failed`] when the transfer failed (the peer died, disconnected or
    /// was invalidated meanwhile), [`TransferError::Cancelled`] after a cancel; every later poll
    /// reports it again.
    pub(crate) fn poll(&self) -> Result<bool> {
        let mut live = self.lock();
        #[cfg(test)]
        if stall::stalls(&self.target) && matches!(live.state, State::InFlight | State::Done) {
            return Ok(false);
        }
        match live.state {
            State::Done => return Ok(true),
            State::Failed(e) => return Err(self.failed(e)),
            State::Cancelled => {
                return Err(Error::Transfer(TransferError::Cancelled {
                    done: 0,
                    total: self.bytes,
                }));
            }
            State::InFlight => {}
        }
        let Some(request) = live.request.as_ref() else {
            live.settle(State::Done);
            return Ok(true);
        };
        match self.agent.nixl().get_xfer_status(request) {
            Ok(XferStatus::Success) => {
                live.settle(State::Done);
                Ok(true)
            }
            Ok(XferStatus::InProgress) => Ok(false),
            Err(source) => {
                // NOT_FOUND: the peer was invalidated under the transfer; NIXL stopped tracking
                // it without saying whether the backend is done with the memory.
                live.unsettled = matches!(source, SysError::NotFound);
                let status = NixlStatus::of(&source);
                live.settle(State::Failed(status));
                Err(self.failed(status))
            }
        }
    }

    /// Polls until the transfer has finished (`Ok(true)`), failed, or `timeout` passed
    /// (`Ok(false)`).
    ///
    /// Yields the CPU between polls; after 2 ms it sleeps 50 µs between polls when the agent runs
    /// NIXL's progress thread (which then moves the data), and keeps polling when it does not (the
    /// polls themselves move the data).
    pub(crate) fn poll_for(&self, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        // Without NIXL's progress thread, each poll is what moves the data: keep polling. With
        // it, back off to short sleeps once the transfer turns out to be a long one.
        let mut backoff = if self.agent.config().progress_thread {
            crate::backoff::Backoff::new()
        } else {
            crate::backoff::Backoff::busy()
        };
        loop {
            if self.poll()? {
                return Ok(true);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Ok(false);
            }
            backoff.snooze();
        }
    }

    /// The deadline of a transfer of `bytes` posted at `posted`.
    pub(super) fn deadline_for(posted: Instant, bytes: usize) -> Instant {
        use crate::completion::{DEFAULT_DEADLINE, DEFAULT_DEADLINE_PER_GIB, deadline_for};
        let limit = deadline_for(DEFAULT_DEADLINE, DEFAULT_DEADLINE_PER_GIB, bytes);
        crate::completion::instant_after(posted, limit)
    }

    /// The transfer with its [deadline](Transfer#deadline) `limit` after it was posted.
    #[cfg(test)]
    pub(crate) fn deadline_in(mut self, limit: Duration) -> Self {
        self.deadline = crate::completion::instant_after(self.posted, limit);
        self
    }

    /// For a transfer still in flight past its deadline: releases the request (NIXL cancels
    /// it), leaves its buffers to be quarantined when it is dropped, and returns the timeout.
    fn time_out(&self) -> Error {
        let mut live = self.lock();
        drop(live.request.take());
        live.settle(State::Cancelled);
        live.unsettled = true;
        drop(live);
        let held_buffers = self.owners.as_ref().map_or(0, |(owners, files)| {
            owners.len() + files.as_ref().map_or(0, |f| f.len())
        });
        let error = TransferError::TimedOut {
            path: format!("NIXL {} with '{}'", self.op.name(), self.target),
            bytes: self.bytes,
            waited: self.deadline.saturating_duration_since(self.posted),
            held_buffers,
            held_bytes: self.bytes as u64,
        };
        tracing::error!(agent = %self.agent.name(), error = %error, "NIXL transfer timed out");
        Error::Transfer(error)
    }

    /// The direction.
    pub fn op(&self) -> TransferOp {
        self.op
    }

    /// The peer's name (this agent's own name for file transfers).
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl crate::Completion for Transfer {
    type Output = ();

    fn is_done(&self) -> bool {
        !matches!(self.poll(), Ok(false))
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        !matches!(self.poll_for(timeout), Ok(false))
    }

    /// Waits until the transfer has finished, but not past its [deadline](Transfer#deadline).
    ///
    /// # Errors
    /// [`TransferError::Failed`] when the transfer failed (the peer died, disconnected or was
    /// invalidated meanwhile); [`TransferError::Cancelled`] after a cancel;
    /// [`TransferError::TimedOut`] when it was still in flight at its deadline (its buffers are
    /// then quarantined).
    fn wait(self) -> Result<()> {
        if self.poll_for(self.deadline.saturating_duration_since(Instant::now()))? {
            return Ok(());
        }
        Err(self.time_out())
    }

    fn cancel(&self) {
        let mut live = self.lock();
        if !matches!(live.state, State::InFlight) {
            return;
        }
        let running = live.request.as_ref().is_some_and(|r| {
            matches!(
                self.agent.nixl().get_xfer_status(r),
                Ok(XferStatus::InProgress) | Err(SysError::NotFound)
            )
        });
        if !running {
            // It finished meanwhile; the next poll reports how.
            return;
        }
        // Releasing a running request cancels it.
        drop(live.request.take());
        live.settle(State::Cancelled);
        live.unsettled = true;
        tracing::warn!(
            agent = %self.agent.name(),
            op = self.op.name(),
            target = %self.target,
            "transfer cancelled: its local buffers are kept alive for the rest of the process \
             because the backend may still touch them"
        );
    }
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("op", &self.op)
            .field("target", &self.target)
            .field("state", &self.lock().state)
            .finish()
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let live = self.live.get_mut().unwrap_or_else(|p| p.into_inner());
        let running = live.unsettled
            || matches!(live.state, State::InFlight)
                && live.request.as_ref().is_some_and(|r| {
                    matches!(
                        self.agent.nixl().get_xfer_status(r),
                        Ok(XferStatus::InProgress) | Err(SysError::NotFound)
                    )
                });
        // Releasing a running request cancels it.
        drop(live.request.take());
        if live.counted {
            live.counted = false;
            crate::accounting::transfer_ended();
        }
        if running {
            tracing::warn!(
                agent = %self.agent.name(),
                op = self.op.name(),
                target = %self.target,
                "transfer dropped while running: cancelled; its local buffers are kept alive for \
                 the rest of the process because the backend may still touch them"
            );
            if let Some((owners, files)) = self.owners.take() {
                let n = owners.len() + files.as_ref().map_or(0, |f| f.len());
                crate::accounting::quarantined(n as u64, self.bytes as u64);
                std::mem::forget((owners, files));
            }
        }
    }
}

/// Test double for a peer that never answers: transfers with a peer whose name starts with
/// [`PREFIX`](stall::PREFIX) look in flight to every poll, however they went.
#[cfg(test)]
pub(crate) mod stall {
    /// Names of the peers that never answer.
    pub(crate) const PREFIX: &str = "never-answers-";

    pub(super) fn stalls(peer: &str) -> bool {
        peer.starts_with(PREFIX)
    }
}
