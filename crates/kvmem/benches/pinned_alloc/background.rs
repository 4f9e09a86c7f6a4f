//! `cuda_pinned_alloc --background`: how soon a [`BackgroundPinnedStorage`] is usable and fully
//! pinned, per pinning-thread count, against one `cuMemHostAlloc` and the fast path
//! ([`MappedPinnedStorage`]) of the same size, and what pinning does to a small copy's latency
//! on another stream meanwhile.
//!
//! ```text
//! cargo bench -p kvmem --bench cuda_pinned_alloc -- --background [--sizes-gib 8]
//!     [--pin-threads 1,2,4,8] [--pin-chunk-mib 256] [--reps 3] [--settle-ms 1000] [--json PATH]
//! ```
//!
//! Per rep and size, in rotating order: `cuMemHostAlloc` (driver call only), the fast path
//! (THP), and one background pool per thread count. For a background pool: `returned` is the
//! constructor's time, `first_block` the time from the call until the first 2 MiB are pinned
//! (`wait_range_pinned`), `fully_pinned` until every chunk is. Meanwhile a second thread runs
//! 64 KiB pinned → device copies on its own stream back to back (each waited for) and records
//! their latencies; the same copies are timed with nothing pinning first, as the baseline.
//! Every small copy's bytes are checked at the end of each series; wrong bytes exit 3.

use super::{GIB, median, secs, time_host_alloc};
use kvmem::Completion as _;
use kvmem::cuda::CudaDevice;
use kvmem::cuda::batch::{CopyMethod, CopyStream, DeviceCopy, Location};
use kvmem::{
    BackgroundPinnedOptions, BackgroundPinnedStorage, DeviceStorage, HostMemory,
    MappedPinnedOptions, MappedPinnedStorage, MemoryDescriptor, PinnedStorage,
};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SMALL: usize = 64 << 10;

/// What `--background` takes.
#[derive(Debug)]
pub struct BackgroundArgs {
    /// Pinning-thread counts to measure.
    pub threads: Vec<usize>,
    /// Bytes per `cuMemHostRegister` call.
    pub chunk_mib: usize,
}

#[derive(Debug, Serialize)]
struct Sample {
    method: String,
    size: usize,
    rep: usize,
    threads: Option<usize>,
    /// The constructor's time.
    returned_s: f64,
    /// Until the first 2 MiB are usable as pinned memory (all of it for the one-shot methods).
    first_block_s: f64,
    /// Until all of it is pinned.
    fully_pinned_s: f64,
    /// Small-copy latencies on another stream during the allocation, microseconds.
    small_copy_p50_us: f64,
    small_copy_p99_us: f64,
    small_copy_max_us: f64,
    small_copies: usize,
}

#[derive(Debug, Serialize)]
struct Summary {
    method: String,
    size: usize,
    threads: Option<usize>,
    first_block_median_s: f64,
    fully_pinned_median_s: f64,
    /// fully pinned / the fast path's allocation time (the goal is <= 0.5 at 64 GiB).
    vs_fast_path: f64,
    /// fully pinned / cuMemHostAlloc's.
    vs_host_alloc: f64,
    small_copy_p99_median_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    device: String,
    chunk_bytes: usize,
    idle_small_copy_p50_us: f64,
    idle_small_copy_p99_us: f64,
    samples: Vec<Sample>,
    summary: Vec<Summary>,
    /// Every small copy read back the bytes written.
    verified: bool,
}

/// Runs `alloc` while a second thread copies 64 KiB pinned → device on its own stream, back to
/// back; returns what `alloc` returned and the copies' latencies (and whether their bytes were
/// right).
fn with_small_copies<T>(
    device: &CudaDevice,
    small: &Small,
    alloc: impl FnOnce() -> Result<T, String>,
) -> Result<(T, Vec<f64>), String> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let copier = scope.spawn(|| small.run(device, &stop));
        let out = alloc();
        stop.store(true, Ordering::Release);
        let lat = copier
            .join()
            .map_err(|_| "the small-copy thread panicked".to_string())??;
        Ok((out?, lat))
    })
}

/// The small copy: a pinned source of random bytes and a device destination.
struct Small {
    src: PinnedStorage,
    dst: DeviceStorage,
    check: std::sync::Mutex<PinnedStorage>,
}

impl Small {
    fn new(device: &CudaDevice) -> Result<Self, String> {
        let e = |e: kvmem::Error| e.to_string();
        let mut src = PinnedStorage::new(device, SMALL).map_err(e)?;
        fastrand::Rng::new().fill(src.as_mut_slice());
        Ok(Self {
            src,
            dst: DeviceStorage::new(device, SMALL).map_err(e)?,
            check: std::sync::Mutex::new(PinnedStorage::new(device, SMALL).map_err(e)?),
        })
    }

    /// Copies until `stop` (at least once), each copy waited for; microseconds each.
    fn run(&self, device: &CudaDevice, stop: &AtomicBool) -> Result<Vec<f64>, String> {
        let e = |e: kvmem::Error| e.to_string();
        device.bind().map_err(e)?;
        let stream = CopyStream::new(device).map_err(e)?;
        let copy = [DeviceCopy {
            src: self.src.addr() as u64,
            dst: self.dst.addr() as u64,
            len: SMALL as u64,
        }];
        let mut lat = Vec::new();
        loop {
            let t = Instant::now();
            // SAFETY: the source is pinned memory and the destination device memory, both
            // owned by `self` and alive until the copy is waited for right here; nothing else
            // writes either meanwhile.
            let c = unsafe {
                stream.copy_async(
                    &copy,
                    CopyMethod::PerCopy,
                    Location::Host,
                    Location::Device(device.ordinal() as u32),
                )
            }
            .map_err(e)?;
            c.wait().map_err(e)?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            if stop.load(Ordering::Acquire) {
                break;
            }
        }
        Ok(lat)
    }

    /// True when the device holds the source's bytes.
    fn verify(&self) -> Result<bool, String> {
        let mut check = self.check.lock().map_err(|_| "poisoned".to_string())?;
        check.memset(0xa5);
        kvmem::cuda::copy_device_to_host(&self.dst, &mut *check).map_err(|e| e.to_string())?;
        Ok(check.as_slice() == self.src.as_slice())
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs the background-pinning bench and prints its table and JSON.
pub fn run(
    device: &CudaDevice,
    sizes_gib: &[usize],
    reps: usize,
    settle: Duration,
    args: &BackgroundArgs,
    json: Option<&str>,
) -> Result<bool, String> {
    let e = |e: kvmem::Error| e.to_string();
    let name = device.info().map_err(e)?.name;
    let node = device.numa_node().map_err(e)?;
    let chunk = args.chunk_mib.max(2) << 20;
    let small = Small::new(device)?;
    // Driver warm-up, and the idle baseline of the small copy (100 ms of copies).
    drop(BackgroundPinnedStorage::new(device, 64 << 20).map_err(e)?);
    let (_, idle) = with_small_copies(device, &small, || {
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    })?;
    let mut verified = small.verify()?;
    let fast = MappedPinnedOptions {
        numa_node: node,
        hugetlb: false,
        ..Default::default()
    };
    let mut samples = Vec::new();
    for &gib in sizes_gib {
        let size = gib * GIB;
        for rep in 0..reps {
            let mut order: Vec<Option<usize>> = vec![None, Some(0)];
            order.extend(args.threads.iter().map(|&t| Some(t)));
            let turn = rep % order.len();
            order.rotate_left(turn);
            for m in order {
                std::thread::sleep(settle);
                let sample = match m {
                    None => {
                        let ((alloc, _free), lat) =
                            with_small_copies(device, &small, || time_host_alloc(device, size))?;
                        sample(
                            "cuMemHostAlloc".into(),
                            size,
                            rep,
                            None,
                            alloc,
                            alloc,
                            alloc,
                            &lat,
                        )
                    }
                    Some(0) => {
                        let t = Instant::now();
                        let (s, lat) = with_small_copies(device, &small, || {
                            MappedPinnedStorage::with_options(device, size, &fast).map_err(e)
                        })?;
                        let d = t.elapsed();
                        drop(s);
                        sample("fast path (THP)".into(), size, rep, None, d, d, d, &lat)
                    }
                    Some(threads) => {
                        let options = BackgroundPinnedOptions {
                            memory: fast.clone(),
                            chunk,
                            threads,
                            ..Default::default()
                        };
                        let t = Instant::now();
                        let ((returned, first, full, pool), lat) =
                            with_small_copies(device, &small, || {
                                let pool =
                                    BackgroundPinnedStorage::with_options(device, size, &options)
                                        .map_err(e)?;
                                let returned = t.elapsed();
                                let wait = Duration::from_secs(600);
                                pool.wait_range_pinned(0, 2 << 20, wait).map_err(e)?;
                                let first = t.elapsed();
                                pool.wait_pinned(wait).map_err(e)?;
                                Ok((returned, first, t.elapsed(), pool))
                            })?;
                        drop(pool);
                        sample(
                            format!("background, {threads} threads"),
                            size,
                            rep,
                            Some(threads),
                            returned,
                            first,
                            full,
                            &lat,
                        )
                    }
                };
                verified &= small.verify()?;
                eprintln!(
                    "{gib:>3} GiB rep {rep} {:<24} returned {:>8.4} s  first block {:>8.4} s  fully pinned {:>7.3} s  small copy p50 {:>6.1} us p99 {:>7.1} us max {:>8.1} us ({} copies)",
                    sample.method,
                    sample.returned_s,
                    sample.first_block_s,
                    sample.fully_pinned_s,
                    sample.small_copy_p50_us,
                    sample.small_copy_p99_us,
                    sample.small_copy_max_us,
                    sample.small_copies
                );
                samples.push(sample);
            }
        }
    }
    let mut summary = Vec::new();
    for &gib in sizes_gib {
        let size = gib * GIB;
        let of = |method: &str, f: fn(&Sample) -> f64| {
            median(
                samples
                    .iter()
                    .filter(|s| s.size == size && s.method == method)
                    .map(f)
                    .collect(),
            )
        };
        let host = of("cuMemHostAlloc", |s| s.fully_pinned_s);
        let fast_s = of("fast path (THP)", |s| s.fully_pinned_s);
        let mut methods = vec![("cuMemHostAlloc".to_string(), None)];
        methods.push(("fast path (THP)".to_string(), None));
        methods.extend(
            args.threads
                .iter()
                .map(|&t| (format!("background, {t} threads"), Some(t))),
        );
        for (method, threads) in methods {
            let full = of(&method, |s| s.fully_pinned_s);
            summary.push(Summary {
                first_block_median_s: of(&method, |s| s.first_block_s),
                fully_pinned_median_s: full,
                vs_fast_path: full / fast_s,
                vs_host_alloc: full / host,
                small_copy_p99_median_us: of(&method, |s| s.small_copy_p99_us),
                method,
                size,
                threads,
            });
        }
    }
    let report = Report {
        device: name,
        chunk_bytes: chunk,
        idle_small_copy_p50_us: percentile(&idle, 0.5),
        idle_small_copy_p99_us: percentile(&idle, 0.99),
        samples,
        summary,
        verified,
    };
    println!();
    println!(
        "Background pinning on {} ({} MiB chunks), medians; small 64 KiB copy idle: p50 {:.1} us, p99 {:.1} us",
        report.device,
        chunk >> 20,
        report.idle_small_copy_p50_us,
        report.idle_small_copy_p99_us
    );
    println!(
        "{:>8} | {:<24} | {:>13} | {:>14} | {:>10} | {:>13} | {:>16}",
        "size",
        "method",
        "first block s",
        "fully pinned s",
        "/fast path",
        "/HostAlloc",
        "small copy p99 us"
    );
    for s in &report.summary {
        println!(
            "{:>4} GiB | {:<24} | {:>13.4} | {:>14.3} | {:>9.3}x | {:>12.3}x | {:>16.1}",
            s.size / GIB,
            s.method,
            s.first_block_median_s,
            s.fully_pinned_median_s,
            s.vs_fast_path,
            s.vs_host_alloc,
            s.small_copy_p99_median_us
        );
    }
    println!("goals (64 GiB): first block <= 0.050 s; fully pinned <= 0.5x the fast path");
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{text}");
    if let Some(path) = json {
        std::fs::write(path, &text).map_err(|err| format!("could not write {path}: {err}"))?;
    }
    Ok(report.verified)
}

#[allow(clippy::too_many_arguments)]
fn sample(
    method: String,
    size: usize,
    rep: usize,
    threads: Option<usize>,
    returned: Duration,
    first: Duration,
    full: Duration,
    lat: &[f64],
) -> Sample {
    Sample {
        method,
        size,
        rep,
        threads,
        returned_s: secs(returned),
        first_block_s: secs(first),
        fully_pinned_s: secs(full),
        small_copy_p50_us: percentile(lat, 0.5),
        small_copy_p99_us: percentile(lat, 0.99),
        small_copy_max_us: lat.iter().copied().fold(0.0, f64::max),
        small_copies: lat.len(),
    }
}
