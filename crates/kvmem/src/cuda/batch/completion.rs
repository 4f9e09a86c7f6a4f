//! The completion of a list of copies: an event recorded after them, polled or waited on.

use super::{CopyMethod, CopyStream, DescBuffers};
use crate::backoff::Backoff;
use crate::cuda::driver::{self, DeferredErrors};
use crate::error::{Error, Result};
use cudarc::driver::CudaEvent;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The completion of one [`CopyStream::copy_async`]: poll it, wait for it (through
/// [`Completion`](crate::Completion)), or drop it (which waits).
///
/// Copies queued on a stream cannot be taken back: [`cancel`](crate::Completion::cancel) does
/// nothing, and the copies run to their end.
pub struct CopyCompletion {
    event: CudaEvent,
    /// After `event`: logs what destroying it recorded.
    _deferred: DeferredErrors,
    stream: CopyStream,
    method: CopyMethod,
    state: Mutex<CopyState>,
}

/// What a [`CopyCompletion`] learned so far.
struct CopyState {
    /// The event completed (successfully or not); the descriptors went back to the stream.
    finished: bool,
    /// The failure an `is_done` saw, kept for `wait`.
    failed: Option<Error>,
    descs: Option<DescBuffers>,
}

impl CopyCompletion {
    pub(super) fn record(
        stream: CopyStream,
        method: CopyMethod,
        descs: Option<DescBuffers>,
    ) -> Result<Self> {
        let ctx = stream.inner.device.context();
        // Without flags cudarc creates it with timing disabled, the cheap kind.
        let event = match ctx.new_event(None) {
            Ok(event) => event,
            Err(e) => {
                if let Some(d) = descs {
                    // Synchronize before the descriptors are reused.
                    driver::log_failure(
                        "synchronize the copy stream",
                        stream.inner.stream.synchronize(),
                    );
                    stream.give_back(d);
                }
                return Err(driver::error("create an event", e));
            }
        };
        let completion = Self {
            event,
            _deferred: DeferredErrors::new(ctx.clone(), "release a copy completion's event"),
            stream,
            method,
            state: Mutex::new(CopyState {
                finished: false,
                failed: None,
                descs,
            }),
        };
        completion
            .event
            .record(&completion.stream.inner.stream)
            .map_err(|e| driver::error("record an event", e))?;
        Ok(completion)
    }

    /// The method the copies ran with.
    pub fn method(&self) -> CopyMethod {
        self.method
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CopyState> {
        // Plain flags updated in single assignments: a poisoned lock holds a consistent value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queries the event once: true once the copies finished, successfully or not.
    fn query(&self, state: &mut CopyState) -> bool {
        if state.finished || state.failed.is_some() {
            return true;
        }
        if let Err(e) = self.stream.inner.device.bind() {
            state.failed = Some(e);
            return true;
        }
        match self.event.try_is_complete() {
            Ok(true) => {
                self.finish(state);
                true
            }
            Ok(false) => false,
            Err(e) => {
                state.failed = Some(driver::error("query copy completion", e));
                true
            }
        }
    }

    fn synchronize(&self, state: &mut CopyState) -> Result<()> {
        if state.finished {
            return state.failed.take().map_or(Ok(()), Err);
        }
        let waited = self.stream.inner.device.bind().and_then(|()| {
            self.event
                .synchronize()
                .map_err(|e| driver::error("wait for copies", e))
        });
        // A failure an earlier query saw comes first.
        let result = match state.failed.take() {
            Some(e) => Err(e),
            None => waited,
        };
        if result.is_err() {
            // The copies may still read the descriptors: never reuse them (a small leak on a
            // context that has failed anyway).
            state.finished = true;
            if state.descs.take().is_some() {
                tracing::warn!("leaking a copy-descriptor buffer after a failed wait");
            }
            return result;
        }
        self.finish(state);
        result
    }

    fn finish(&self, state: &mut CopyState) {
        state.finished = true;
        if let Some(d) = state.descs.take() {
            self.stream.give_back(d);
        }
    }
}

impl crate::Completion for CopyCompletion {
    type Output = ();

    fn is_done(&self) -> bool {
        let mut state = self.lock();
        self.query(&mut state)
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        loop {
            if self.is_done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            backoff.snooze();
        }
    }

    /// Waits for the copies to finish.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if a copy failed.
    fn wait(self) -> Result<()> {
        let mut state = self.lock();
        self.synchronize(&mut state)
    }

    /// Does nothing: copies queued on a CUDA stream cannot be taken back.
    fn cancel(&self) {}
}

impl Drop for CopyCompletion {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut state = std::mem::replace(
            state,
            CopyState {
                finished: true,
                failed: None,
                descs: None,
            },
        );
        if let Err(e) = self.synchronize(&mut state) {
            tracing::warn!(error = %e, "copies failed after their completion was dropped");
        }
        // The event is destroyed by its own drop, after this.
    }
}
