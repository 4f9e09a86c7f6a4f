//! `kvmem bench --with-compute`: each GPU point's block transfer again, beside an SM-saturating
//! compute kernel on its own stream ([`ComputeLoad`]), as an engine's matmuls run beside its
//! offload. Reported per point: the copy bandwidth while the kernel runs, and the kernel's
//! slowdown (its time beside the copies over its time alone, same run, interleaved).

use super::point::{Candidate, PointSpec, gib_s};
use super::report::{ComputePoint, Percentiles};
use crate::error::{CliError, Result};
use kvmem::cuda::CudaDevice;
use kvmem::cuda::compute::ComputeLoad;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One launch's target time: short, so the window can be sized to the transfer.
const LAUNCH: Duration = Duration::from_millis(1);
/// The shortest compute window, and how many transfer times it spans at least.
const MIN_WINDOW_S: f64 = 0.02;
const TRANSFERS_PER_WINDOW: f64 = 3.0;
const MAX_LAUNCHES: usize = 5000;

/// The compute kernel, calibrated once per sweep.
pub struct ComputeProbe {
    load: ComputeLoad,
    iterations: u32,
}

impl ComputeProbe {
    /// Loads the kernel on device 0 and calibrates one launch to about a millisecond.
    pub fn new() -> Result<Self> {
        let gpu = CudaDevice::new(0)?;
        let load = ComputeLoad::new(&gpu)?;
        let iterations = load.calibrate(LAUNCH)?;
        Ok(Self { load, iterations })
    }

    /// Launches for a window of about `TRANSFERS_PER_WINDOW` transfers of `transfer_s`, at
    /// least `MIN_WINDOW_S`.
    fn launches(transfer_s: f64) -> usize {
        let window = (TRANSFERS_PER_WINDOW * transfer_s).max(MIN_WINDOW_S);
        // (less a hair, so that an exact multiple does not round up through float error)
        ((window / LAUNCH.as_secs_f64() - 1e-6).ceil() as usize).clamp(1, MAX_LAUNCHES)
    }

    /// The kernel's window with `candidate`'s transfers run back to back beside it until the
    /// kernel is done (at least one): the window's seconds and each transfer's.
    fn beside(&self, launches: usize, candidate: &dyn Candidate) -> Result<(f64, Vec<f64>)> {
        let load = &self.load;
        load.synchronize()?;
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let started = Instant::now();
            let mut launched = Ok(());
            for _ in 0..launches {
                launched = load.launch(self.iterations);
                if launched.is_err() {
                    break;
                }
            }
            // The window ends when the stream is idle: a thread waits for it while this one
            // keeps transferring.
            let done = &done;
            let waiter = scope.spawn(move || {
                let r = load.synchronize().map(|()| started.elapsed());
                done.store(true, Ordering::Release);
                r
            });
            let mut copies = Vec::new();
            let mut failed = None;
            if launched.is_ok() {
                loop {
                    match candidate.transfer() {
                        Ok(s) => copies.push(s.secs),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
            let window = waiter
                .join()
                .map_err(|_| CliError::Bench("the compute waiter panicked".into()))?;
            launched?;
            if let Some(e) = failed {
                return Err(e);
            }
            Ok((window?.as_secs_f64(), copies))
        })
    }

    /// `spec.iterations` rounds of the kernel alone and beside `candidate`'s transfers,
    /// interleaved; `transfer_s` (the point's median transfer time) sizes the window and
    /// `reference_gib_s` (the point's reference, alone) is what the bandwidth beside the kernel
    /// is compared with.
    pub fn measure(
        &self,
        candidate: &dyn Candidate,
        spec: &PointSpec,
        transfer_s: f64,
        reference_gib_s: f64,
    ) -> Result<ComputePoint> {
        let launches = Self::launches(transfer_s);
        let mut alone = Vec::new();
        let mut with_copy = Vec::new();
        let mut copies = Vec::new();
        for round in 0..spec.iterations.max(1) {
            let mut timed_alone = || -> Result<()> {
                alone.push(self.load.time(self.iterations, launches)?.as_secs_f64());
                Ok(())
            };
            if round % 2 == 0 {
                timed_alone()?;
            }
            let (window, c) = self.beside(launches, candidate)?;
            with_copy.push(window);
            copies.extend(c);
            if round % 2 == 1 {
                timed_alone()?;
            }
        }
        Ok(summarize(
            &alone,
            &with_copy,
            &copies,
            spec.bytes,
            reference_gib_s,
            launches,
            self.iterations,
        ))
    }
}

/// The report's compute point from the timings (seconds).
fn summarize(
    alone: &[f64],
    with_copy: &[f64],
    copies: &[f64],
    bytes: usize,
    reference_gib_s: f64,
    launches: usize,
    iterations: u32,
) -> ComputePoint {
    let alone_s = Percentiles::of(alone).p50;
    let with_s = Percentiles::of(with_copy).p50;
    let copy = gib_s(bytes, Percentiles::of(copies).p50);
    ComputePoint {
        kernel_alone_ms: alone_s * 1e3,
        kernel_with_copy_ms: with_s * 1e3,
        slowdown: with_s / alone_s - 1.0,
        launches,
        iterations_per_launch: iterations,
        copy_gib_s: copy,
        copy_ratio: copy / reference_gib_s,
        transfers: copies.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_spans_several_transfers_and_at_least_20_ms() {
        assert_eq!(ComputeProbe::launches(0.0), 20);
        assert_eq!(ComputeProbe::launches(0.001), 20);
        assert_eq!(ComputeProbe::launches(0.1), 300);
        assert_eq!(ComputeProbe::launches(1e6), MAX_LAUNCHES);
    }

    #[test]
    fn slowdown_and_bandwidth_come_from_medians() {
        let gib = 1usize << 30;
        // Alone 10 ms, beside the copies 11 ms: 10% slower. Copies of 1 GiB in 25 ms median
        // (40 GiB/s) against a 50 GiB/s reference: 0.8.
        let p = summarize(
            &[0.010, 0.009, 0.012],
            &[0.011, 0.011, 0.030],
            &[0.025, 0.020, 0.030, 0.025],
            gib,
            50.0,
            20,
            777,
        );
        assert!((p.slowdown - 0.1).abs() < 1e-9, "{}", p.slowdown);
        assert!((p.kernel_alone_ms - 10.0).abs() < 1e-9);
        assert!((p.copy_gib_s - 40.0).abs() < 1e-9, "{}", p.copy_gib_s);
        assert!((p.copy_ratio - 0.8).abs() < 1e-9);
        assert_eq!(
            (p.launches, p.iterations_per_launch, p.transfers),
            (20, 777, 4)
        );
    }
}
