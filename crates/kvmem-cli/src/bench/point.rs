//! One bench point, whatever its path: what it moves ([`PointSpec`]), the two ways it is moved
//! ([`Candidate`]: the block transfer and its reference), and the one runner ([`run`]) that
//! checks every candidate's bytes once and then times them interleaved with each other and with
//! any yardsticks (fio, a single-threaded memcpy).

use super::Pattern;
use super::report::{Percentiles, Point};
use crate::error::Result;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// What one point moves: `blocks` blocks of `block_bytes` each, in `pattern` order.
#[derive(Debug, Clone, Copy)]
pub struct PointSpec {
    /// The path's name in the report (`host->disk`, `nixl-write`, ...).
    pub label: &'static str,
    /// Which blocks go where.
    pub pattern: Pattern,
    /// Bytes per block (per chunk, for layer-separate layouts).
    pub block_bytes: usize,
    /// Blocks per transfer.
    pub blocks: usize,
    /// Bytes per transfer: `blocks * block_bytes` times the chunks of each block.
    pub bytes: usize,
    /// Timed runs of each candidate.
    pub iterations: usize,
    /// Seed of the sweep; the scattered order of a point is drawn from it and the block size.
    pub seed: u64,
}

impl PointSpec {
    /// The block pairs: pair `k` moves source block `ids.0[k]` to destination block `ids.1[k]`.
    pub fn ids(&self) -> (Vec<usize>, Vec<usize>) {
        block_ids(
            self.pattern,
            self.blocks,
            self.seed ^ self.block_bytes as u64,
        )
    }

    /// Chunk pairs per transfer before merging: blocks times the chunks of each block.
    pub fn chunks(&self) -> usize {
        self.bytes / self.block_bytes.max(1)
    }

    /// `label pattern size`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}-byte blocks",
            self.label,
            format!("{:?}", self.pattern).to_lowercase(),
            self.block_bytes
        )
    }
}

/// The block ids of a point: pair `k` moves block `src[k]` to block `dst[k]`. Sequential: both
/// `0..blocks`; scattered: two independent random permutations, so that nothing merges;
/// gather: a random permutation into `0..blocks`; scatter: `0..blocks` into a random
/// permutation.
pub fn block_ids(pattern: Pattern, blocks: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut src: Vec<usize> = (0..blocks).collect();
    let mut dst = src.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    if pattern.src_scattered() {
        src.shuffle(&mut rng);
    }
    if pattern.dst_scattered() {
        dst.shuffle(&mut rng);
    }
    (src, dst)
}

/// One timed block transfer.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds from the call (planning included) to completion.
    pub secs: f64,
    /// Seconds planning the same request takes, timed apart (for local transfers; part of
    /// `secs`, overlapped with the copies where the transfer plans its rest while they run).
    pub plan_secs: f64,
    /// Copies (or descriptors) the transfer was executed as.
    pub copies: usize,
    /// CPU time of the calling thread spent submitting (building and enqueueing the copies:
    /// the call's less planning's), in seconds; `None` where the candidate does not measure it.
    pub submit_cpu_secs: Option<f64>,
}

/// One way of moving a point's blocks, with its reference: one copy of the same bytes over
/// the same path.
pub trait Candidate {
    /// Poisons the destination, moves the blocks once, reads the destination back and compares
    /// every block pair with its source. Returns the bytes compared; fails on any difference.
    fn verify(&self, spec: &PointSpec) -> Result<u64>;
    /// Moves the blocks once.
    fn transfer(&self) -> Result<Sample>;
    /// Moves the same bytes as one region, by the fastest plain way over this path; returns
    /// the seconds it took.
    fn reference(&self) -> Result<f64>;
    /// How [`reference`](Self::reference) moves its bytes, for the report.
    fn reference_method(&self) -> &'static str;
}

/// What the runner measured of one candidate.
#[derive(Debug, Default)]
pub struct Measured {
    /// Block-transfer times.
    pub times: Vec<f64>,
    /// Planning times within them.
    pub plan: Vec<f64>,
    /// Reference times.
    pub refs: Vec<f64>,
    /// Submit CPU times ([`Sample::submit_cpu_secs`]) of the timed transfers that had one.
    pub submit_cpu: Vec<f64>,
    /// Copies of the block transfer.
    pub copies: usize,
    /// Bytes compared by [`Candidate::verify`].
    pub verified_bytes: u64,
}

impl Measured {
    /// Median bandwidth of the block transfer, GiB/s.
    pub fn gib_s(&self, bytes: usize) -> f64 {
        gib_s(bytes, Percentiles::of(&self.times).p50)
    }

    /// The report's point for `spec`: bandwidths, ratios and latencies from medians; no
    /// baseline and no disk backend (the caller adds them where the path has them).
    pub fn point(&self, spec: &PointSpec, reference_method: &'static str) -> Point {
        let median = Percentiles::of(&self.times).p50;
        let median_ref = Percentiles::of(&self.refs).p50;
        let exec: Vec<f64> = self
            .times
            .iter()
            .zip(&self.plan)
            .map(|(t, p)| t - p)
            .collect();
        Point {
            path: spec.label,
            disk_backend: None,
            pattern: spec.pattern,
            block_bytes: spec.block_bytes,
            blocks: spec.blocks,
            bytes: spec.bytes,
            copies: self.copies,
            iterations: spec.iterations,
            gib_s: gib_s(spec.bytes, median),
            reference_gib_s: gib_s(spec.bytes, median_ref),
            reference_method,
            ratio: median_ref / median,
            plan_ms: Percentiles::of(&self.plan).p50 * 1e3,
            exec_ratio: median_ref / Percentiles::of(&exec).p50,
            latency_ms: Percentiles::of(&self.times).scaled(1e3),
            reference_latency_ms: Percentiles::of(&self.refs).scaled(1e3),
            fio: None,
            memcpy: None,
            verified_bytes: self.verified_bytes,
            chunks: spec.chunks(),
            submit_cpu_us_per_chunk: (!self.submit_cpu.is_empty())
                .then(|| Percentiles::of(&self.submit_cpu).p50 * 1e6 / spec.chunks().max(1) as f64),
            compute: None,
        }
    }
}

/// CPU time consumed so far by the calling thread, in seconds
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
pub fn thread_cpu_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The calling thread's minor page faults so far (`/proc/thread-self/stat`), `None` where
/// that cannot be read.
pub fn thread_minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command (which may hold spaces) start at the state, field 3; minflt is 10.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// `bytes` in `secs`, in GiB/s.
pub fn gib_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / f64::from(1u32 << 30)
}

/// A yardstick timed alongside the candidates (fio, memcpy): it records its own results.
pub type Yardstick<'a> = &'a mut dyn FnMut() -> Result<()>;

/// Runs one point: checks each candidate's bytes, warms up each transfer and reference
/// (untimed), then runs every candidate's transfer and reference and every yardstick
/// `spec.iterations` times, interleaved in an order that rotates each round so that none always
/// follows another (slow drifts of a shared machine stay out of the ratios). The bar advances
/// once for the check and once per round.
///
/// # Errors
/// The first error of a candidate or yardstick, or a verification failure.
pub fn run(
    spec: &PointSpec,
    candidates: &[&dyn Candidate],
    yardsticks: &mut [Yardstick<'_>],
    bar: &ProgressBar,
) -> Result<Vec<Measured>> {
    let mut measured: Vec<Measured> = Vec::with_capacity(candidates.len());
    for c in candidates {
        let verified_bytes = c.verify(spec)?;
        let copies = c.transfer()?.copies;
        c.reference()?;
        measured.push(Measured {
            copies,
            verified_bytes,
            ..Measured::default()
        });
    }
    bar.inc(1);
    #[derive(Clone, Copy)]
    enum Run {
        Transfer(usize),
        Reference(usize),
        Yardstick(usize),
    }
    let mut order: Vec<Run> = (0..candidates.len())
        .flat_map(|i| [Run::Transfer(i), Run::Reference(i)])
        .chain((0..yardsticks.len()).map(Run::Yardstick))
        .collect();
    for round in 0..spec.iterations {
        if round > 0 {
            order.rotate_left(1);
        }
        for run in &order {
            match *run {
                Run::Transfer(i) => {
                    let s = candidates[i].transfer()?;
                    measured[i].times.push(s.secs);
                    measured[i].plan.push(s.plan_secs);
                    measured[i].submit_cpu.extend(s.submit_cpu_secs);
                }
                Run::Reference(i) => measured[i].refs.push(candidates[i].reference()?),
                Run::Yardstick(i) => (yardsticks[i])()?,
            }
        }
        bar.inc(1);
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn scattered_ids_are_two_permutations_and_sequential_is_identity() {
        let (s, d) = block_ids(Pattern::Scattered, 100, 7);
        let mut ss = s.clone();
        ss.sort_unstable();
        let mut ds = d.clone();
        ds.sort_unstable();
        let all: Vec<usize> = (0..100).collect();
        assert_eq!((ss, ds), (all.clone(), all.clone()));
        assert_ne!(s, d, "independent orders on each side");
        assert_ne!(s, all, "scattered");
        assert_eq!(block_ids(Pattern::Sequential, 100, 7), (all.clone(), all));
    }

    #[test]
    fn gather_scatters_the_source_only_and_scatter_the_destination_only() {
        let all: Vec<usize> = (0..100).collect();
        let sorted = |mut v: Vec<usize>| {
            v.sort_unstable();
            v
        };
        let (s, d) = block_ids(Pattern::Gather, 100, 7);
        assert_eq!(d, all, "gather writes one contiguous run");
        assert_ne!(s, all, "gather reads scattered blocks");
        assert_eq!(sorted(s), all);
        let (s, d) = block_ids(Pattern::Scatter, 100, 7);
        assert_eq!(s, all, "scatter reads one contiguous run");
        assert_ne!(d, all, "scatter writes scattered blocks");
        assert_eq!(sorted(d), all);
    }

    #[test]
    fn thread_cpu_time_counts_this_threads_work_only() {
        let t0 = thread_cpu_secs();
        let mut x = 1u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        std::hint::black_box(x);
        let busy = thread_cpu_secs() - t0;
        assert!(busy > 0.0, "busy loop consumed no thread CPU time");
        let t1 = thread_cpu_secs();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let slept = thread_cpu_secs() - t1;
        assert!(
            slept < 0.1,
            "sleeping consumed {slept} s of thread CPU time"
        );
    }

    /// Records the order in which the runner calls it.
    struct Logged<'a> {
        name: &'static str,
        log: &'a RefCell<Vec<String>>,
        verified: u64,
    }

    impl Candidate for Logged<'_> {
        fn verify(&self, _: &PointSpec) -> Result<u64> {
            self.log.borrow_mut().push(format!("{} verify", self.name));
            Ok(self.verified)
        }
        fn transfer(&self) -> Result<Sample> {
            self.log
                .borrow_mut()
                .push(format!("{} transfer", self.name));
            Ok(Sample {
                secs: 2.0,
                plan_secs: 1.0,
                copies: 3,
                submit_cpu_secs: Some(4e-6),
            })
        }
        fn reference(&self) -> Result<f64> {
            self.log
                .borrow_mut()
                .push(format!("{} reference", self.name));
            Ok(1.0)
        }
        fn reference_method(&self) -> &'static str {
            "test"
        }
    }

    #[test]
    fn the_runner_checks_first_then_rotates_the_timed_order() {
        let log = RefCell::new(Vec::new());
        let a = Logged {
            name: "a",
            log: &log,
            verified: 10,
        };
        let b = Logged {
            name: "b",
            log: &log,
            verified: 0,
        };
        let mut fio = || {
            log.borrow_mut().push("fio".into());
            Ok(())
        };
        let spec = PointSpec {
            label: "t",
            pattern: Pattern::Sequential,
            block_bytes: 4,
            blocks: 4,
            bytes: 16,
            iterations: 2,
            seed: 0,
        };
        let bar = ProgressBar::hidden();
        let m = run(&spec, &[&a, &b], &mut [&mut fio], &bar).unwrap();
        let log = log.into_inner();
        assert_eq!(
            log[..6],
            [
                "a verify",
                "a transfer",
                "a reference",
                "b verify",
                "b transfer",
                "b reference"
            ]
        );
        assert_eq!(
            log[6..],
            [
                "a transfer",
                "a reference",
                "b transfer",
                "b reference",
                "fio",
                "a reference",
                "b transfer",
                "b reference",
                "fio",
                "a transfer"
            ]
        );
        assert_eq!(bar.position(), 3);
        assert_eq!((m[0].verified_bytes, m[1].verified_bytes), (10, 0));
        assert_eq!((m[0].times.len(), m[0].refs.len(), m[0].copies), (2, 2, 3));
        let p = m[0].point(&spec, "test");
        assert_eq!((p.ratio, p.exec_ratio, p.verified_bytes), (0.5, 1.0, 10));
        // 4 µs of submit CPU over 16 bytes / 4-byte blocks = 4 chunks.
        assert_eq!(p.chunks, 4);
        let us = p.submit_cpu_us_per_chunk.unwrap();
        assert!((us - 1.0).abs() < 1e-9, "{us}");
    }
}
