//! One vocabulary for everything kvmem starts in the background and finishes later.
//!
//! A copy list on a CUDA stream ([`CopyCompletion`](crate::cuda::batch::CopyCompletion)), a
//! block transfer of the [`TransferEngine`](crate::transfer::TransferEngine)
//! ([`TransferHandle`](crate::transfer::TransferHandle)) and a raw NIXL request
//! ([`Transfer`](crate::nixl::raw::Transfer)) all implement [`Completion`], with the same four
//! verbs and return types:
//!
//! | verb | blocks | returns |
//! |---|---|---|
//! | [`is_done`](Completion::is_done) | never | `true` once it finished, successfully or not |
//! | [`wait_timeout`](Completion::wait_timeout) | at most `timeout` | `true` if it finished meanwhile |
//! | [`wait`](Completion::wait) | until it finished, never past its deadline | the outcome, `Result<Output>` |
//! | [`cancel`](Completion::cancel) | never | — (asks it to stop as early as it can) |
//!
//! Every `wait` has a deadline: a [`TransferHandle`](crate::transfer::TransferHandle)'s is set
//! by its engine's [`EngineConfig`](crate::transfer::EngineConfig); a `CopyCompletion` and a raw
//! NIXL `Transfer` get [`DEFAULT_DEADLINE`] plus [`DEFAULT_DEADLINE_PER_GIB`] per GiB they move.
//! An operation still running at its deadline is reported as
//! [`TransferError::TimedOut`](crate::error::TransferError::TimedOut), which says what it holds.
//!
//! ```
//! use kvmem::Completion;
//! use std::time::Duration;
//!
//! /// Waits for any completion, giving up (and cancelling) after a second.
//! fn finish<C: Completion>(c: C) -> kvmem::Result<Option<C::Output>> {
//!     if !c.wait_timeout(Duration::from_secs(1)) {
//!         c.cancel();
//!         // A cancelled operation still has to be waited for: its memory is in use until then.
//!         return c.wait().map(|_| None);
//!     }
//!     c.wait().map(Some)
//! }
//! # let _ = finish::<kvmem::transfer::TransferHandle>;
//! ```

use crate::error::Result;
use std::time::Duration;

/// The time an operation without a deadline of its own is given by
/// [`wait`](Completion::wait) — a [`CopyCompletion`](crate::cuda::batch::CopyCompletion) or a
/// raw NIXL [`Transfer`](crate::nixl::raw::Transfer), counted from its start — before it
/// reports [`TransferError::TimedOut`](crate::error::TransferError::TimedOut): this, plus
/// [`DEFAULT_DEADLINE_PER_GIB`] per GiB it moves. The same rule, and the same defaults, as
/// [`EngineConfig::deadline_for`](crate::transfer::EngineConfig::deadline_for).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The time [`DEFAULT_DEADLINE`] adds per GiB moved (about 100 MiB/s: far below any working
/// disk, GPU link or network).
pub const DEFAULT_DEADLINE_PER_GIB: Duration = Duration::from_secs(10);

/// `base` plus `per_gib` per GiB of `bytes`: the time an operation moving `bytes` is given.
pub(crate) fn deadline_for(base: Duration, per_gib: Duration, bytes: usize) -> Duration {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    base.saturating_add(
        Duration::try_from_secs_f64(per_gib.as_secs_f64() * gib).unwrap_or(Duration::MAX),
    )
}

/// The instant `limit` after `start`, saturating far in the future (a limit too long to add is
/// no limit).
pub(crate) fn instant_after(start: std::time::Instant, limit: Duration) -> std::time::Instant {
    start
        .checked_add(limit)
        .unwrap_or(start + Duration::from_secs(1 << 32))
}

/// An operation running in the background: poll it, wait for it (with or without a limit), or ask
/// it to stop.
///
/// # What a caller may reuse, and when
///
/// * While it runs — after [`is_done`](Self::is_done) or [`wait_timeout`](Self::wait_timeout)
///   returned `false` — nothing changed: the operation keeps running, the handle is as good as
///   before and every verb may be called again. The memory the operation reads and writes is still
///   in use: do not write its sources nor read its destinations.
/// * After [`cancel`](Self::cancel), the operation stops as early as it can, but it is not over
///   yet: the caller still waits ([`wait`](Self::wait), or `wait_timeout` until it returns `true`).
///   `wait` then returns the outcome: `Ok` if everything had finished before the cancel took
///   effect, [`TransferError::Cancelled`](crate::error::TransferError::Cancelled) (or the failure
///   it ran into) otherwise. After a cancel the destination is partly written, with undefined
///   contents: write it again before reading it; the sources are unchanged.
/// * Once it finished (`is_done` or `wait_timeout` returned `true`, or `wait` returned), the
///   sources and destinations may be reused — with the exception each implementation documents
///   (a raw NIXL request that was cancelled or lost its peer keeps its buffers for the rest of the
///   process, because the backend may still touch them).
///
/// * After a timeout — [`wait`](Self::wait) past the operation's deadline (a
///   [`TransferHandle`](crate::transfer::TransferHandle)'s
///   [deadline](crate::transfer::TransferHandle#deadline), a
///   [`CopyCompletion`'s](crate::cuda::batch::CopyCompletion#deadline), a raw NIXL
///   [`Transfer`'s](crate::nixl::raw::Transfer#deadline)) reports
///   [`TransferError::TimedOut`](crate::error::TransferError::TimedOut) — the backend may still
///   read the sources and write the destinations: reuse neither (their memory is quarantined,
///   never freed); a handle's verbs all report the timeout from then on.
///
/// Dropping a handle never frees memory under a running operation; what else it does is the
/// implementation's to say (a [`TransferHandle`](crate::transfer::TransferHandle) lets the
/// transfer run on, a raw NIXL [`Transfer`](crate::nixl::raw::Transfer) cancels it, a
/// [`CopyCompletion`](crate::cuda::batch::CopyCompletion) waits).
pub trait Completion {
    /// What a successful operation reports.
    type Output;

    /// True once the operation has finished, successfully or not. Never blocks.
    fn is_done(&self) -> bool;

    /// Blocks at most `timeout` for the operation to finish; true if it has.
    fn wait_timeout(&self, timeout: Duration) -> bool;

    /// Blocks until the operation has finished and returns its outcome.
    ///
    /// # Errors
    /// What the operation failed with (each implementation lists its errors), or
    /// [`TransferError::Cancelled`](crate::error::TransferError::Cancelled) after a
    /// [`cancel`](Self::cancel) that took effect.
    fn wait(self) -> Result<Self::Output>
    where
        Self: Sized;

    /// Asks the operation to stop as early as it can; wait for it afterwards (see the
    /// [trait docs](Self)). Does nothing once it has finished.
    fn cancel(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default deadline of a `wait` below the engine is the engine's default rule.
    #[test]
    fn the_default_deadline_is_the_engine_default() {
        let engine = crate::transfer::EngineConfig::default();
        for bytes in [0, 1 << 20, 3 << 30] {
            assert_eq!(
                deadline_for(DEFAULT_DEADLINE, DEFAULT_DEADLINE_PER_GIB, bytes),
                engine.deadline_for(bytes)
            );
        }
        assert_eq!(
            deadline_for(DEFAULT_DEADLINE, DEFAULT_DEADLINE_PER_GIB, 3 << 30),
            Duration::from_secs(90)
        );
    }
}
