//! The one worker skeleton every background executor uses: a named thread that owns a backend
//! (an `io_uring`, a NIXL agent, CUDA bounce buffers, a set of posted NIXL transfers), fed jobs
//! in order through a channel, restarted after a backend failure, and joined on drop.
//!
//! - **Start**: [`Worker::start`] spawns the thread, which builds the backend there (so that a
//!   backend bound to its thread, like a single-issuer ring, is created where it is used) and
//!   reports whether that worked before `start` returns. A thread that cannot be spawned is
//!   [`TransferError::WorkerSpawn`](crate::error::TransferError::WorkerSpawn).
//! - **Submit**: [`Worker::submit`] queues a job; a job for a worker that has stopped is handed
//!   back so the caller can fail it (dropping a [`Work`](super::handle::Work) reports
//!   [`TransferError::Aborted`](crate::error::TransferError::Aborted)).
//! - **Restart**: a backend whose [`run`](Backend::run) (or [`poll`](Backend::poll)) reports
//!   [`Health::Broken`] is dropped and built again; if that fails, the worker stops and later
//!   jobs are failed.
//! - **Drop**: closes the queue and waits for the thread to finish every queued job (and, for a
//!   backend with work in flight, that work), so nothing a job uses outlives the executor — but
//!   never past the last job's deadline (plus a grace period): a thread stuck in a stalled
//!   backend by then is detached, not joined. Every job it holds has been reported as timed
//!   out by then, with its memory quarantined, and the thread owns what its backend uses, so
//!   nothing is freed under it; dropping an executor never hangs.
//! - **Stalls**: [`Worker::stalled`] tells when the job the thread runs is past its deadline;
//!   the owner may then [`abandon`](Worker::abandon) the worker and start a fresh one.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long past the last job's deadline dropping a worker waits for its thread.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// A job with a deadline: past it, the job's handle reports a timeout and its memory is
/// quarantined, so a worker still running it may be detached.
pub(crate) trait Deadlined {
    /// When the job times out.
    fn deadline(&self) -> Instant;
}

/// Nanoseconds since `base` (0: nothing running).
fn nanos_since(base: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(base).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Whether a backend can go on after a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// It can take the next job.
    Ok,
    /// It failed in a way that leaves it unusable (I/O may still be in flight into what it
    /// leaked); the worker builds a fresh one.
    Broken,
}

/// What a worker thread runs. It reports every job's outcome itself (through the job's
/// completion), so the worker only needs to know whether to go on.
pub(crate) trait Backend: Sized {
    /// One unit of work.
    type Job: Send + 'static;

    /// Runs (or starts) one job.
    fn run(&mut self, job: Self::Job) -> Health;

    /// True while jobs the backend started are still in flight; the worker then calls
    /// [`poll`](Self::poll) instead of blocking on the queue.
    fn busy(&self) -> bool {
        false
    }

    /// Advances the work in flight (and waits a little, with a [`Backoff`](crate::backoff::Backoff),
    /// when nothing finished).
    fn poll(&mut self) -> Health {
        Health::Ok
    }
}

/// A running worker thread and the queue feeding it.
pub(crate) struct Worker<J: Deadlined + Send + 'static> {
    name: &'static str,
    tx: Option<mpsc::Sender<J>>,
    thread: Option<JoinHandle<()>>,
    /// The latest deadline of the jobs submitted.
    latest: Mutex<Option<Instant>>,
    /// The deadline of the job the thread is running, as nanoseconds since `base` (0: none).
    running: Arc<AtomicU64>,
    base: Instant,
}

impl<J: Deadlined + Send + 'static> Worker<J> {
    /// Starts thread `name`, which builds its backend with `make` (again after every
    /// [`Health::Broken`]) and runs the jobs submitted to it.
    ///
    /// # Errors
    /// [`TransferError::WorkerSpawn`](crate::error::TransferError::WorkerSpawn) when the thread cannot be started; `make`'s error when the first
    /// backend cannot be built.
    pub(crate) fn start<B, F>(name: &'static str, make: F) -> Result<Self>
    where
        B: Backend<Job = J>,
        F: FnMut() -> Result<B> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<J>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let running = Arc::new(AtomicU64::new(0));
        let base = Instant::now();
        let on_thread = Arc::clone(&running);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut make = make;
                match make() {
                    Ok(backend) => {
                        // `start` waits for this message; if it is gone, nobody will submit.
                        let _ = ready_tx.send(Ok(()));
                        serve(name, backend, make, rx, &on_thread, base);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| Error::spawn(name, source))?;
        let mut worker = Self {
            name,
            tx: Some(tx),
            thread: Some(thread),
            latest: Mutex::new(None),
            running,
            base,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => {
                worker.stop();
                Err(e)
            }
            // The thread ended without a word: it panicked while building the backend.
            Err(mpsc::RecvError) => {
                worker.stop();
                Err(Error::spawn(
                    name,
                    std::io::Error::other("the thread panicked while starting"),
                ))
            }
        }
    }

    /// Queues `job`. Hands it back if the worker has stopped (its backend could not be
    /// restarted, or it panicked), so the caller can fail it or run it another way.
    pub(crate) fn submit(&self, job: J) -> std::result::Result<(), J> {
        let deadline = job.deadline();
        {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            *latest = Some(latest.map_or(deadline, |l| l.max(deadline)));
        }
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|mpsc::SendError(job)| {
                tracing::error!(worker = self.name, "worker has stopped; failing the job");
                job
            }),
            // Only `stop` takes the sender, and nothing submits after it.
            None => Err(job),
        }
    }

    /// True when the job the thread is running is past its deadline (plus a grace period):
    /// the backend has stalled, and jobs queued behind it would only time out too.
    pub(crate) fn stalled(&self) -> bool {
        let running = self.running.load(Ordering::SeqCst);
        running != 0
            && nanos_since(self.base, Instant::now())
                > running.saturating_add(STOP_GRACE.as_nanos() as u64)
    }

    /// Closes the queue and lets the thread go without waiting for it: for a worker that has
    /// [`stalled`](Self::stalled). The thread keeps what its jobs use (their handles have
    /// timed out and quarantined their memory, or will at their deadlines) and ends if its
    /// backend ever returns.
    pub(crate) fn abandon(mut self) {
        drop(self.tx.take());
        if self.thread.take().is_some() {
            tracing::error!(
                worker = self.name,
                "backend stalled past a job's deadline; detaching its thread and starting a fresh one"
            );
        }
    }

    /// Closes the queue and waits for the thread to finish what was queued, but not past the
    /// latest deadline of what was queued (plus a grace period): a thread still stuck then is
    /// detached.
    fn stop(&mut self) {
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        let latest = *self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let give_up = latest.map(|l| l.max(Instant::now()) + STOP_GRACE);
        let mut backoff = crate::backoff::Backoff::patient();
        while !thread.is_finished() {
            if give_up.is_some_and(|g| Instant::now() >= g) {
                tracing::error!(
                    worker = self.name,
                    "worker thread still stuck past its jobs' deadlines; detaching it (its jobs timed out and their memory is quarantined)"
                );
                return;
            }
            backoff.snooze();
        }
        if thread.join().is_err() {
            tracing::error!(worker = self.name, "worker thread panicked");
        }
    }
}

impl<J: Deadlined + Send + 'static> Drop for Worker<J> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The worker's loop: jobs in order, polls while the backend is busy, a fresh backend after a
/// failure. Returns once the queue is closed and nothing is in flight.
fn serve<B: Backend>(
    name: &'static str,
    mut backend: B,
    mut make: impl FnMut() -> Result<B>,
    rx: mpsc::Receiver<B::Job>,
    running: &AtomicU64,
    base: Instant,
) where
    B::Job: Deadlined,
{
    let run = |backend: &mut B, job: B::Job| {
        running.store(nanos_since(base, job.deadline()), Ordering::SeqCst);
        let health = backend.run(job);
        running.store(0, Ordering::SeqCst);
        health
    };
    let mut open = true;
    loop {
        let health = if backend.busy() {
            match rx.try_recv() {
                Ok(job) => run(&mut backend, job),
                Err(TryRecvError::Empty) => backend.poll(),
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    backend.poll()
                }
            }
        } else if open {
            match rx.recv() {
                Ok(job) => run(&mut backend, job),
                Err(mpsc::RecvError) => return,
            }
        } else {
            return;
        };
        if health == Health::Broken {
            // The failed backend leaked what may still be in use; drop the rest of it.
            drop(backend);
            tracing::warn!(worker = name, "backend failed; starting a fresh one");
            backend = match make() {
                Ok(fresh) => fresh,
                Err(e) => {
                    tracing::error!(worker = name, error = %e, "cannot restart the backend; worker stops");
                    return;
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BoundsError;
    use std::sync::atomic::AtomicUsize;

    impl Deadlined for u32 {
        fn deadline(&self) -> Instant {
            Instant::now() + Duration::from_secs(3600)
        }
    }

    /// Records the jobs it ran; a job of 0 breaks it.
    struct Recorder {
        generation: usize,
        log: Arc<Mutex<Vec<(usize, u32)>>>,
    }

    impl Backend for Recorder {
        type Job = u32;
        fn run(&mut self, job: u32) -> Health {
            self.log.lock().unwrap().push((self.generation, job));
            if job == 0 { Health::Broken } else { Health::Ok }
        }
    }

    #[test]
    fn runs_jobs_in_order_restarts_after_a_failure_and_joins_on_drop() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let built = Arc::new(AtomicUsize::new(0));
        let (l, b) = (log.clone(), built.clone());
        let worker = Worker::start("kvmem-test-worker", move || {
            Ok(Recorder {
                generation: b.fetch_add(1, Ordering::SeqCst),
                log: l.clone(),
            })
        })
        .unwrap();
        for job in [1, 2, 0, 3] {
            assert!(worker.submit(job).is_ok());
        }
        drop(worker);
        // Dropping joined the thread: every job ran, the one after the failure on a fresh
        // backend.
        assert_eq!(*log.lock().unwrap(), vec![(0, 1), (0, 2), (0, 0), (1, 3)]);
        assert_eq!(built.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_backend_that_cannot_be_built_is_reported_by_start() {
        let started = Worker::<u32>::start("kvmem-test-worker", || -> Result<Recorder> {
            Err(BoundsError::ZeroSize {
                what: "test backend",
            }
            .into())
        });
        assert!(matches!(
            started,
            Err(Error::Bounds(BoundsError::ZeroSize { .. }))
        ));
    }

    #[test]
    fn jobs_after_a_failed_restart_are_handed_back() {
        let built = Arc::new(AtomicUsize::new(0));
        let b = built.clone();
        let worker = Worker::start("kvmem-test-worker", move || {
            if b.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(Recorder {
                    generation: 0,
                    log: Arc::default(),
                })
            } else {
                Err(BoundsError::ZeroSize {
                    what: "test backend",
                }
                .into())
            }
        })
        .unwrap();
        assert!(worker.submit(0).is_ok());
        // The worker stops once the restart fails; a later submit gets its job back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut returned = None;
        while std::time::Instant::now() < deadline {
            if let Err(job) = worker.submit(7) {
                returned = Some(job);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(returned, Some(7));
    }

    /// Keeps `pending` jobs in flight and finishes one per poll.
    struct Poller {
        pending: u32,
        finished: Arc<AtomicUsize>,
    }

    impl Backend for Poller {
        type Job = u32;
        fn run(&mut self, job: u32) -> Health {
            self.pending += job;
            Health::Ok
        }
        fn busy(&self) -> bool {
            self.pending > 0
        }
        fn poll(&mut self) -> Health {
            self.pending -= 1;
            self.finished.fetch_add(1, Ordering::SeqCst);
            Health::Ok
        }
    }

    #[test]
    fn drop_waits_for_work_in_flight() {
        let finished = Arc::new(AtomicUsize::new(0));
        let f = finished.clone();
        let worker = Worker::start("kvmem-test-poller", move || {
            Ok(Poller {
                pending: 0,
                finished: f.clone(),
            })
        })
        .unwrap();
        assert!(worker.submit(5).is_ok());
        assert!(worker.submit(3).is_ok());
        drop(worker);
        assert_eq!(finished.load(Ordering::SeqCst), 8);
    }
}
