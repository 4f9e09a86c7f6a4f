//! How kvmem waits for something it has to poll: one policy, one set of constants.
//!
//! Every polling wait first spins for [`SPIN`] (yielding the CPU between polls, so other threads
//! still run), since most of what kvmem waits for (a GPU copy, a disk request, a NIXL transfer)
//! finishes within microseconds and a sleep would add its whole timer slack to the latency.
//! After that, what happens depends on what the poll does:
//!
//! - [`Backoff::new`]: the awaited work progresses on its own (a GPU event, a NIXL transfer with
//!   NIXL's progress thread, the POSIX backend's kernel queue): sleep [`PAUSE`] between polls.
//! - [`Backoff::patient`]: a message from another process (a notification, a peer's metadata),
//!   typically milliseconds away: sleep [`PAUSE`], doubling up to [`MAX_PAUSE`].
//! - [`Backoff::busy`]: each poll is what moves the data (a NIXL agent without a progress
//!   thread): never sleep.
//!
//! A wait that can block instead (a [`TransferHandle`] waiting for its executor, an executor's
//! worker waiting for its next job) first [`spin_until`]s for at most [`handoff_spin`]
//! ([`HANDOFF_SPIN`] on machines of four CPUs or more): what arrives within that is seen at
//! once, without paying a sleeping thread's wake-up, which on an otherwise idle machine costs
//! microseconds on each side of a transfer (the figures are in docs/PERFORMANCE.md).
//!
//! [`TransferHandle`]: crate::transfer::TransferHandle

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a wait spins (yields) before it starts to sleep.
pub(crate) const SPIN: Duration = Duration::from_millis(2);
/// The first (and, for [`Backoff::new`], every) sleep after the spin.
pub(crate) const PAUSE: Duration = Duration::from_micros(20);
/// The longest sleep of a [`Backoff::patient`] wait.
pub(crate) const MAX_PAUSE: Duration = Duration::from_micros(200);

/// How long a waiter that could block polls first: of the order of a small GPU copy and of a
/// sleeping thread's wake-up (tens of µs), short enough that a long wait wastes little CPU.
pub(crate) const HANDOFF_SPIN: Duration = Duration::from_micros(50);

/// How long a waiter that could block spins first here: [`HANDOFF_SPIN`], or nothing on a
/// machine of fewer than four CPUs, where the thread it waits for most likely needs the CPU the
/// spinner holds.
pub(crate) fn handoff_spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 4 {
            HANDOFF_SPIN
        } else {
            Duration::ZERO
        }
    })
}

/// Polls `done` until it returns true or `limit` has passed, without sleeping (a CPU spin hint
/// between polls, a yield every few, so that the thread that sets the flag can run on a busy
/// machine). True if `done` returned true.
pub(crate) fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    if limit.is_zero() {
        return done();
    }
    let started = Instant::now();
    let mut polls: u32 = 0;
    loop {
        if done() {
            return true;
        }
        polls = polls.wrapping_add(1);
        if polls % 64 == 0 {
            if started.elapsed() >= limit {
                return false;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The state of one polling wait: call [`snooze`](Self::snooze) after every poll that found
/// nothing done.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    started: Instant,
    pause: Duration,
    grow: bool,
    sleeps: bool,
}

impl Backoff {
    /// A wait for work that progresses on its own: spin, then sleep [`PAUSE`] between polls.
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            pause: PAUSE,
            grow: false,
            sleeps: true,
        }
    }

    /// A wait for a message from another process: spin, then sleep from [`PAUSE`] doubling up to
    /// [`MAX_PAUSE`].
    pub(crate) fn patient() -> Self {
        Self {
            grow: true,
            ..Self::new()
        }
    }

    /// A wait whose polls move the data: never sleeps.
    pub(crate) fn busy() -> Self {
        Self {
            sleeps: false,
            ..Self::new()
        }
    }

    /// Starts the spin over (the waiter went idle and has new work).
    pub(crate) fn reset(&mut self) {
        self.started = Instant::now();
        self.pause = PAUSE;
    }

    /// Makes this wait [`busy`](Self::busy) (`true`) or not, keeping its progress.
    pub(crate) fn set_busy(&mut self, busy: bool) {
        self.sleeps = !busy;
    }

    /// Waits a little before the next poll.
    pub(crate) fn snooze(&mut self) {
        match self.next_sleep() {
            None => std::thread::yield_now(),
            Some(pause) => std::thread::sleep(pause),
        }
    }

    /// The sleep `snooze` takes now (`None`: it yields), advancing the policy.
    fn next_sleep(&mut self) -> Option<Duration> {
        if !self.sleeps || self.started.elapsed() < SPIN {
            return None;
        }
        let pause = self.pause;
        if self.grow {
            self.pause = (self.pause * 2).min(MAX_PAUSE);
        }
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past_spin(mut b: Backoff) -> Backoff {
        b.started -= SPIN;
        b
    }

    #[test]
    fn every_wait_spins_first() {
        // Each made right before its first call: under valgrind, making all three first could
        // take longer than the spin itself.
        for make in [Backoff::new, Backoff::patient, Backoff::busy] {
            let mut b = make();
            b.started = Instant::now();
            assert_eq!(b.next_sleep(), None);
        }
    }

    #[test]
    fn patient_pauses_double_up_to_the_cap_and_plain_ones_stay() {
        let mut patient = past_spin(Backoff::patient());
        let mut plain = past_spin(Backoff::new());
        assert_eq!(patient.next_sleep(), Some(PAUSE));
        assert_eq!(patient.next_sleep(), Some(PAUSE * 2));
        for _ in 0..12 {
            patient.next_sleep();
            assert_eq!(plain.next_sleep(), Some(PAUSE));
        }
        assert_eq!(patient.next_sleep(), Some(MAX_PAUSE));
        patient.reset();
        assert_eq!(patient.next_sleep(), None, "reset starts the spin over");
    }

    #[test]
    fn spin_until_sees_a_flag_and_gives_up_after_its_limit() {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        let setter =
            std::thread::spawn(move || f.store(true, std::sync::atomic::Ordering::Release));
        assert!(spin_until(Duration::from_secs(30), || flag
            .load(std::sync::atomic::Ordering::Acquire)));
        setter.join().unwrap();
        let t = Instant::now();
        assert!(!spin_until(Duration::from_millis(2), || false));
        assert!(t.elapsed() >= Duration::from_millis(2));
        // No limit: one poll.
        let mut polls = 0;
        assert!(!spin_until(Duration::ZERO, || {
            polls += 1;
            false
        }));
        assert_eq!(polls, 1);
    }

    #[test]
    fn busy_waits_never_sleep() {
        let mut busy = past_spin(Backoff::busy());
        assert_eq!(busy.next_sleep(), None);
        busy.set_busy(false);
        assert_eq!(busy.next_sleep(), Some(PAUSE));
    }
}
