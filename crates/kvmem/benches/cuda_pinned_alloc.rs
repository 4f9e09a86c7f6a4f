//! Pinned host memory on a GPU machine: how long allocating it takes with `cuMemHostAlloc` and
//! with kvmem's fast path ([`MappedPinnedStorage`]), and whether the fast path's memory is as
//! fast for DMA (host-to-device copy bandwidth).
//!
//! ```text
//! cargo bench -p kvmem --bench cuda_pinned_alloc -- [--sizes-gib 1,8] [--reps 3]
//!     [--settle-ms 1000] [--copy-gib 1] [--copies 10] [--json PATH]
//! ```
//!
//! Methods timed, each allocation followed by its free, in alternating order, with a pause of
//! `--settle-ms` before each so that deferred work of the previous free is not counted:
//! - `cuMemHostAlloc`: the driver call alone (portable + device-mapped), the baseline;
//! - `PinnedStorage::new`: the same plus kvmem's parallel zero-fill;
//! - `MappedPinnedStorage (THP)`: the fast path with hugetlb off, as on a machine with no
//!   hugetlb pool (the goal is measured on this row);
//! - `MappedPinnedStorage (hugetlb)`: the fast path from a reserved hugetlb pool, only when the
//!   pool has room for the size.
//!
//! With `--background` it measures background pinning instead ([`BackgroundPinnedStorage`]; see
//! `pinned_alloc/background.rs`): `--pin-threads 1,2,4,8`, `--pin-chunk-mib 256`.
//!
//! Prints a table and, last, one JSON object (also written to `--json PATH`). Needs a CUDA GPU.
//! Every copy's bytes are checked; the run exits 3 when any copy read back wrong bytes (the speed
//! goals are only reported).

use kvmem::cuda::cudarc::driver::{result, sys};
use kvmem::cuda::{self, CudaDevice};
use kvmem::{
    DeviceStorage, HostMemory, MappedPinnedOptions, MappedPinnedStorage, PinnedStorage,
    SystemStorage,
};
use serde::Serialize;
use std::time::{Duration, Instant};

#[path = "pinned_alloc/background.rs"]
mod background;

const GIB: usize = 1 << 30;

#[derive(Debug)]
struct Args {
    sizes_gib: Vec<usize>,
    reps: usize,
    settle_ms: u64,
    copy_gib: usize,
    copies: usize,
    json: Option<String>,
    /// `--background`: the background-pinning bench instead.
    background: Option<background::BackgroundArgs>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes_gib: vec![1, 8],
        reps: 3,
        settle_ms: 1000,
        copy_gib: 1,
        copies: 10,
        json: None,
        background: None,
    };
    let mut pin_threads = vec![1, 2, 4, 8];
    let mut pin_chunk_mib = kvmem::storage::DEFAULT_PIN_CHUNK >> 20;
    let mut background = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        match flag.as_str() {
            "--sizes-gib" => {
                args.sizes_gib = value()?
                    .split(',')
                    .map(|s| number(s.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--reps" => args.reps = number(value()?)?.max(1),
            "--settle-ms" => args.settle_ms = number(value()?)? as u64,
            "--copy-gib" => args.copy_gib = number(value()?)?.max(1),
            "--copies" => args.copies = number(value()?)?.max(1),
            "--json" => args.json = Some(value()?),
            "--background" => background = true,
            "--pin-threads" => {
                pin_threads = value()?
                    .split(',')
                    .map(|s| number(s.to_string()).map(|n| n.max(1)))
                    .collect::<Result<_, _>>()?
            }
            "--pin-chunk-mib" => pin_chunk_mib = number(value()?)?,
            // `cargo bench` passes --bench; ignore it and anything libtest-like.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    args.background = background.then_some(background::BackgroundArgs {
        threads: pin_threads,
        chunk_mib: pin_chunk_mib,
    });
    Ok(args)
}

#[derive(Debug, Serialize)]
struct AllocSample {
    method: &'static str,
    size: usize,
    rep: usize,
    alloc_s: f64,
    free_s: f64,
    /// Fast path only: mapping and first touch, and `cuMemHostRegister`.
    map_touch_s: Option<f64>,
    register_s: Option<f64>,
    detail: String,
}

#[derive(Debug, Serialize)]
struct AllocSummary {
    size: usize,
    host_alloc_median_s: f64,
    pinned_storage_median_s: f64,
    /// The THP fast path.
    fast_path_median_s: f64,
    /// The hugetlb fast path, when a pool had room.
    hugetlb_median_s: Option<f64>,
    /// THP fast path / raw cuMemHostAlloc; the goal is <= 0.15 at 8 GiB.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct CopySample {
    source: &'static str,
    size: usize,
    h2d_median_gbps: f64,
    h2d_best_gbps: f64,
    d2h_median_gbps: f64,
    /// Every D2H copy read back exactly the random bytes the H2D copies put on the device.
    verified: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    device: cuda::DeviceInfo,
    driver_cuda_version: (u32, u32),
    cpus: usize,
    thp_mode: String,
    numa_node_used: Option<u32>,
    warm_up_s: f64,
    alloc: Vec<AllocSample>,
    alloc_summary: Vec<AllocSummary>,
    copy: Vec<CopySample>,
    /// fast path H2D median / cuMemHostAlloc H2D median; the goal is >= 0.95.
    h2d_ratio: f64,
    goal_alloc_met: Option<bool>,
    goal_bandwidth_met: bool,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Raw `cuMemHostAlloc` + `cuMemFreeHost`: the driver call alone, no zeroing.
fn time_host_alloc(device: &CudaDevice, size: usize) -> Result<(Duration, Duration), String> {
    device.bind().map_err(|e| e.to_string())?;
    let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
    let t = Instant::now();
    // SAFETY: a plain allocation, freed right below.
    let ptr = unsafe { result::malloc_host(size, flags) }.map_err(|e| format!("{e:?}"))?;
    let alloc = t.elapsed();
    let t = Instant::now();
    // SAFETY: `ptr` came from cuMemHostAlloc above and is freed once.
    unsafe { result::free_host(ptr) }.map_err(|e| format!("{e:?}"))?;
    Ok((alloc, t.elapsed()))
}

/// Fills `buf` with random bytes using every CPU.
fn randomize(buf: &mut [u8]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = buf.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in buf.chunks_mut(chunk) {
            s.spawn(move || fastrand::Rng::new().fill(part));
        }
    });
}

/// Touches `bytes` of fresh memory once, so that the VM has it before anything is timed.
fn warm_up(bytes: usize) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = SystemStorage::new(bytes).map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = bytes.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for part in s.as_mut_slice().chunks_mut(chunk) {
            scope.spawn(move || {
                for page in part.chunks_mut(4096) {
                    page[0] = 1;
                }
            });
        }
    });
    drop(s);
    Ok(t.elapsed())
}

/// Free bytes in the 2 MiB hugetlb pool.
fn hugetlb_free_bytes() -> usize {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(0, |pages| pages * (2 << 20))
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Host-to-device and device-to-host bandwidth of `host`, and a check that the data arrived.
///
/// `expected` keeps a CPU copy of the random source. Every D2H copy lands in `host` after it was
/// poisoned (outside the timed region) and is compared with `expected` afterwards, so each D2H
/// copy, and the H2D copies that put the data on the device, are checked.
fn measure_copies(
    source: &'static str,
    host: &mut dyn HostMemory,
    dev: &DeviceStorage,
    expected: &mut PinnedStorage,
    copies: usize,
) -> Result<CopySample, String> {
    let e = |e: kvmem::Error| e.to_string();
    randomize(host.as_mut_slice());
    expected.as_mut_slice().copy_from_slice(host.as_slice());
    cuda::copy_host_to_device(host, dev).map_err(e)?; // warm-up
    let mut h2d = Vec::new();
    for _ in 0..copies {
        let t = Instant::now();
        cuda::copy_host_to_device(host, dev).map_err(e)?;
        h2d.push(gbps(host.size(), t.elapsed()));
    }
    let mut verified = true;
    let mut d2h = Vec::new();
    for i in 0..copies {
        // A different poison each time: a copy that writes nothing leaves it there.
        host.memset(0xa5 ^ i as u8);
        let t = Instant::now();
        cuda::copy_device_to_host(dev, host).map_err(e)?;
        d2h.push(gbps(host.size(), t.elapsed()));
        verified &= host.as_slice() == expected.as_slice();
    }
    let best = h2d.iter().copied().fold(0.0, f64::max);
    Ok(CopySample {
        source,
        size: host.size(),
        h2d_median_gbps: median(h2d),
        h2d_best_gbps: best,
        d2h_median_gbps: median(d2h),
        verified,
    })
}

fn run(args: &Args) -> Result<Report, String> {
    let e = |e: kvmem::Error| e.to_string();
    let device = CudaDevice::new(0).map_err(e)?;
    let info = device.info().map_err(e)?;
    let driver = *cuda::load_driver().map_err(e)?;
    let node = device.numa_node().map_err(e)?;
    let thp_mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "device 0: {} ({} GiB), driver CUDA {}.{}, {cpus} CPUs, THP: {thp_mode}, GPU NUMA node {node:?}",
        info.name,
        info.total_memory / GIB,
        driver.cuda_version.0,
        driver.cuda_version.1
    );
    let fast = MappedPinnedOptions {
        numa_node: node,
        ..Default::default()
    };

    // Driver lazy initialisation out of the timings, then the VM's memory.
    drop(PinnedStorage::new(&device, 64 << 20).map_err(e)?);
    drop(MappedPinnedStorage::with_options(&device, 64 << 20, &fast).map_err(e)?);
    let largest = args.sizes_gib.iter().copied().max().unwrap_or(1) * GIB;
    let warm = warm_up(2 * largest)?;
    eprintln!(
        "warm-up: touched {} GiB in {:.2} s",
        2 * largest / GIB,
        secs(warm)
    );

    let thp = MappedPinnedOptions {
        hugetlb: false,
        ..fast.clone()
    };
    let mut alloc = Vec::new();
    let mut alloc_summary = Vec::new();
    for &gib in &args.sizes_gib {
        let size = gib * GIB;
        let hugetlb_room = hugetlb_free_bytes() >= size;
        for rep in 0..args.reps {
            // Alternate the order so that no method always follows the same one.
            let mut order = vec![0u8, 1, 2];
            if hugetlb_room {
                order.push(3);
            }
            if rep % 2 == 1 {
                order.reverse();
            }
            for m in order {
                std::thread::sleep(Duration::from_millis(args.settle_ms));
                let sample = match m {
                    0 => {
                        let (a, f) = time_host_alloc(&device, size)?;
                        AllocSample {
                            method: "cuMemHostAlloc",
                            size,
                            rep,
                            alloc_s: secs(a),
                            free_s: secs(f),
                            map_touch_s: None,
                            register_s: None,
                            detail: "driver call only".into(),
                        }
                    }
                    1 => {
                        let t = Instant::now();
                        let s = PinnedStorage::new(&device, size).map_err(e)?;
                        let a = t.elapsed();
                        let t = Instant::now();
                        drop(s);
                        AllocSample {
                            method: "PinnedStorage::new",
                            size,
                            rep,
                            alloc_s: secs(a),
                            free_s: secs(t.elapsed()),
                            map_touch_s: None,
                            register_s: None,
                            detail: "cuMemHostAlloc + parallel zero-fill".into(),
                        }
                    }
                    _ => {
                        let (method, options) = if m == 2 {
                            ("MappedPinnedStorage (THP)", &thp)
                        } else {
                            ("MappedPinnedStorage (hugetlb)", &fast)
                        };
                        let t = Instant::now();
                        let s =
                            MappedPinnedStorage::with_options(&device, size, options).map_err(e)?;
                        let a = t.elapsed();
                        let r = s.report().clone();
                        let t = Instant::now();
                        drop(s);
                        AllocSample {
                            method,
                            size,
                            rep,
                            alloc_s: secs(a),
                            free_s: secs(t.elapsed()),
                            map_touch_s: Some(secs(r.map_and_touch)),
                            register_s: Some(secs(r.register)),
                            detail: format!(
                                "{}; map+touch {:.3} s on {} threads, register {:.3} s in {} call(s)",
                                r.tier,
                                secs(r.map_and_touch),
                                r.touch_threads,
                                secs(r.register),
                                r.registration_chunks
                            ),
                        }
                    }
                };
                eprintln!(
                    "{:>3} GiB rep {rep} {:<30} alloc {:>7.3} s  free {:>6.3} s  {}",
                    gib, sample.method, sample.alloc_s, sample.free_s, sample.detail
                );
                alloc.push(sample);
            }
        }
        let med = |method: &str| {
            median(
                alloc
                    .iter()
                    .filter(|s| s.size == size && s.method == method)
                    .map(|s| s.alloc_s)
                    .collect(),
            )
        };
        let host = med("cuMemHostAlloc");
        let fast_s = med("MappedPinnedStorage (THP)");
        alloc_summary.push(AllocSummary {
            size,
            host_alloc_median_s: host,
            pinned_storage_median_s: med("PinnedStorage::new"),
            fast_path_median_s: fast_s,
            hugetlb_median_s: hugetlb_room.then(|| med("MappedPinnedStorage (hugetlb)")),
            ratio: fast_s / host,
        });
    }

    let copy_size = args.copy_gib * GIB;
    let dev = DeviceStorage::new(&device, copy_size).map_err(e)?;
    let mut expected = PinnedStorage::new(&device, copy_size).map_err(e)?;
    let mut copy = Vec::new();
    {
        let mut host = PinnedStorage::new(&device, copy_size).map_err(e)?;
        copy.push(measure_copies(
            "cuMemHostAlloc",
            &mut host,
            &dev,
            &mut expected,
            args.copies,
        )?);
    }
    {
        let mut host = MappedPinnedStorage::with_options(&device, copy_size, &thp).map_err(e)?;
        copy.push(measure_copies(
            "MappedPinnedStorage (THP)",
            &mut host,
            &dev,
            &mut expected,
            args.copies,
        )?);
    }
    {
        let mut host = SystemStorage::new(copy_size).map_err(e)?;
        copy.push(measure_copies(
            "pageable (control)",
            &mut host,
            &dev,
            &mut expected,
            args.copies,
        )?);
    }
    let h2d_ratio = copy[1].h2d_median_gbps / copy[0].h2d_median_gbps;
    let goal_alloc_met = alloc_summary
        .iter()
        .find(|s| s.size == 8 * GIB)
        .map(|s| s.ratio <= 0.15);
    Ok(Report {
        device: info,
        driver_cuda_version: driver.cuda_version,
        cpus,
        thp_mode,
        numa_node_used: node,
        warm_up_s: secs(warm),
        alloc,
        alloc_summary,
        goal_bandwidth_met: h2d_ratio >= 0.95 && copy[0].verified && copy[1].verified,
        copy,
        h2d_ratio,
        goal_alloc_met,
    })
}

fn print_table(r: &Report) {
    println!();
    println!(
        "Pinned allocation on {} (driver CUDA {}.{}), median of the reps, seconds:",
        r.device.name, r.driver_cuda_version.0, r.driver_cuda_version.1
    );
    println!(
        "{:>8} | {:>14} | {:>18} | {:>15} | {:>15} | {:>14}",
        "size",
        "cuMemHostAlloc",
        "PinnedStorage::new",
        "fast path (THP)",
        "fast (hugetlb)",
        "THP / HostAlloc"
    );
    for s in &r.alloc_summary {
        let hugetlb = s
            .hugetlb_median_s
            .map_or_else(|| "not reserved".to_string(), |v| format!("{v:.3}"));
        println!(
            "{:>4} GiB | {:>14.3} | {:>18.3} | {:>15.3} | {:>15} | {:>14.3}x",
            s.size / GIB,
            s.host_alloc_median_s,
            s.pinned_storage_median_s,
            s.fast_path_median_s,
            hugetlb,
            s.ratio
        );
    }
    println!();
    println!("Copy bandwidth, GB/s (median of the copies):");
    println!(
        "{:<22} | {:>8} | {:>8} | {:>8} | {:>8}",
        "host buffer", "H2D", "H2D best", "D2H", "verified"
    );
    for c in &r.copy {
        println!(
            "{:<22} | {:>8.2} | {:>8.2} | {:>8.2} | {:>8}",
            c.source, c.h2d_median_gbps, c.h2d_best_gbps, c.d2h_median_gbps, c.verified
        );
    }
    println!();
    match r.goal_alloc_met {
        Some(met) => println!(
            "goal: fast path (THP) <= 0.15x cuMemHostAlloc at 8 GiB: {}",
            if met { "MET" } else { "NOT MET" }
        ),
        None => println!("goal: fast path (THP) <= 0.15x cuMemHostAlloc at 8 GiB: not measured"),
    }
    println!(
        "goal: fast-path H2D >= 0.95x cuMemHostAlloc H2D: {} ({:.3}x)",
        if r.goal_bandwidth_met {
            "MET"
        } else {
            "NOT MET"
        },
        r.h2d_ratio
    );
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cuda_pinned_alloc: {e}");
            std::process::exit(2);
        }
    };
    if let Some(bg) = &args.background {
        let outcome = CudaDevice::new(0)
            .map_err(|e| e.to_string())
            .and_then(|device| {
                background::run(
                    &device,
                    &args.sizes_gib,
                    args.reps,
                    Duration::from_millis(args.settle_ms),
                    bg,
                    args.json.as_deref(),
                )
            });
        match outcome {
            Ok(true) => return,
            Ok(false) => {
                eprintln!("cuda_pinned_alloc: a small copy read back wrong bytes");
                std::process::exit(3);
            }
            Err(e) => {
                eprintln!("cuda_pinned_alloc: {e}");
                std::process::exit(1);
            }
        }
    }
    match run(&args) {
        Ok(report) => {
            print_table(&report);
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            println!("{json}");
            if let Some(path) = &args.json
                && let Err(e) = std::fs::write(path, &json)
            {
                eprintln!("cuda_pinned_alloc: could not write {path}: {e}");
                std::process::exit(1);
            }
            // The speed goals are reported, not enforced; wrong bytes fail the run.
            let wrong: Vec<&str> = report
                .copy
                .iter()
                .filter(|c| !c.verified)
                .map(|c| c.source)
                .collect();
            if !wrong.is_empty() {
                eprintln!(
                    "cuda_pinned_alloc: copies through {} did not read back the bytes written",
                    wrong.join(", ")
                );
                std::process::exit(3);
            }
        }
        Err(e) => {
            eprintln!("cuda_pinned_alloc: {e}");
            std::process::exit(1);
        }
    }
}
