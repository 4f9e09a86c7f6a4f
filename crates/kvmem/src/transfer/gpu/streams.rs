//! The GPU executor's copy streams, one per device, and how a stalled one is replaced.
//!
//! Every wait of the worker ends at the transfer's deadline. Copies still running then (the
//! stream stalled: it waits for an event that never completes, or the GPU hangs) are left to the
//! stream for good: the handle reports
//! [`TransferError::TimedOut`](crate::error::TransferError::TimedOut) and quarantines the
//! transfer's buffers, the copy completions (events, descriptor buffers) and the bounce buffers
//! the stalled copies use are leaked, and the stream itself is quarantined here (never
//! destroyed, counted in [`accounting`](crate::accounting)): the next transfer on that device
//! gets a fresh stream. Each transfer claims its stream with its deadline; a transfer past its
//! deadline that the worker has not finished with marks the stream as stalled at once, so that a
//! transfer submitted right after the timeout does not queue behind the stall either.

use crate::cuda::CudaDevice;
use crate::cuda::batch::CopyStream;
use crate::error::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// `mutex`'s guard, poisoned or not (what it guards is updated in single steps).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The copy stream of one device, and the deadlines of the transfers with copies on it that the
/// worker has not finished with.
struct Lane {
    stream: CopyStream,
    open: Arc<Mutex<Vec<Instant>>>,
}

impl Lane {
    /// True when the stream stalled: copies on it timed out, or a transfer with copies on it is
    /// past its deadline (its handle reports the timeout) and still not finished.
    fn stalled(&self, now: Instant) -> bool {
        self.stream.is_stalled() || lock(&self.open).iter().any(|&d| d <= now)
    }
}

/// A transfer's place on a [`Lane`]: its deadline counts in the lane's open deadlines until this
/// is dropped (the worker has finished with the transfer's copies).
struct Claim {
    open: Arc<Mutex<Vec<Instant>>>,
    deadline: Instant,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(i) = open.iter().position(|&d| d == self.deadline) {
            open.swap_remove(i);
        }
    }
}

/// The streams one transfer uses, one per device, each with the transfer's claim on it.
#[derive(Default)]
pub(super) struct Lanes(Vec<(u32, CopyStream, Claim)>);

impl Lanes {
    /// The stream of device `ordinal` for a transfer due by `deadline`: the one this transfer
    /// already uses there, or the device's current stream (claimed).
    pub(super) fn stream(
        &mut self,
        streams: &Streams,
        ordinal: u32,
        deadline: Instant,
    ) -> Result<CopyStream> {
        if let Some((_, stream, _)) = self.0.iter().find(|(o, ..)| *o == ordinal) {
            return Ok(stream.clone());
        }
        let (stream, claim) = streams.claim(ordinal, deadline)?;
        self.0.push((ordinal, stream.clone(), claim));
        Ok(stream)
    }

    /// The devices whose stream stalled.
    pub(super) fn stalled(&self) -> impl Iterator<Item = u32> + '_ {
        self.0
            .iter()
            .filter(|(_, stream, _)| stream.is_stalled())
            .map(|(o, ..)| *o)
    }
}

/// One copy stream per device, shared by `submit` (direct paths) and the worker. A stream that
/// stalled is quarantined and replaced by a fresh one.
pub(super) struct Streams {
    by_device: Mutex<HashMap<u32, Lane>>,
    /// The staging ring of each stream made (`EngineConfig::staging_bytes`).
    staging_bytes: usize,
}

impl Streams {
    /// No streams yet; each made later gets a staging ring of `staging_bytes`.
    pub(super) fn new(staging_bytes: usize) -> Self {
        Self {
            by_device: Mutex::default(),
            staging_bytes,
        }
    }

    /// The current stream of device `ordinal` and a claim on it for a transfer due by
    /// `deadline`. A stream that stalled is quarantined first, and a fresh one made.
    fn claim(&self, ordinal: u32, deadline: Instant) -> Result<(CopyStream, Claim)> {
        let mut map = lock(&self.by_device);
        if map.get(&ordinal).is_some_and(|l| l.stalled(Instant::now()))
            && let Some(lane) = map.remove(&ordinal)
        {
            quarantine_stream(ordinal, lane);
        }
        let lane = match map.entry(ordinal) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let gpu = CudaDevice::new(ordinal as usize)?;
                e.insert(Lane {
                    stream: CopyStream::new(&gpu)?.with_staging_bytes(self.staging_bytes),
                    open: Arc::default(),
                })
            }
        };
        lock(&lane.open).push(deadline);
        let claim = Claim {
            open: Arc::clone(&lane.open),
            deadline,
        };
        Ok((lane.stream.clone(), claim))
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let now = Instant::now();
        let map = self.by_device.get_mut().unwrap_or_else(|e| e.into_inner());
        for (ordinal, lane) in map.drain() {
            if lane.stalled(now) {
                quarantine_stream(ordinal, lane);
            }
        }
    }
}

/// Leaves the stalled stream of `lane` to its work for good: never destroyed (destroying it, or
/// freeing what it holds, would wait for the stall or free memory under it).
fn quarantine_stream(ordinal: u32, lane: Lane) {
    tracing::error!(
        device = ordinal,
        "copies on the GPU copy stream missed their deadline: the stream is quarantined (kept, \
         with what it holds, for the rest of the process) and a fresh one takes the next transfers"
    );
    crate::accounting::stream_quarantined();
    std::mem::forget(lane.stream);
}
