//! The fixed cost of one small transfer: how much longer a copy takes through kvmem's layers than
//! through the bare call underneath.
//!
//! ```text
//! cargo bench -p kvmem --bench copy_latency -- [--sizes 4096,65536] [--iterations 2000] [--host-only]
//! ```
//!
//! For each size, every round times one copy of each candidate, in turn (so that drift of the
//! machine hits them all alike), and prints the median, 10th and 90th percentile in µs, and the
//! median's difference to the path's bare reference: that difference is the fixed cost a
//! transfer pays on top of moving its bytes.
//!
//! - host → host (any machine): `memcpy` of two `Vec`s, the bare reference; a
//!   [`TransferEngine::copy_region`] between two `SystemStorage` regions, waited for (planning,
//!   the host executor's hand-off and the handle's wake-up).
//! - device → device (with a CUDA GPU; skipped, and said so, without one): one `cuMemcpyDtoDAsync` and
//!   `cuStreamSynchronize` on a stream of kvmem's context, the bare reference; kvmem's
//!   [`CopyStream::copy_async`] with [`CopyMethod::PerCopy`] and the completion's `wait` (the
//!   CUDA layer: the same copy plus an event); the engine's `copy_region` with the per-copy method
//!   and with `Auto` (the CUDA layer plus planning, the GPU worker's hand-off and the handle).
//!
//! Every candidate's destination is checked against its source at the end (the run exits 3 on a
//! mismatch).

use kvmem::cuda::batch::{CopyMethod, CopyStream, DeviceCopy, Location};
use kvmem::cuda::cudarc::driver::result;
use kvmem::cuda::{self, CudaDevice};
use kvmem::transfer::{EngineConfig, TransferEngine};
use kvmem::{
    Buffer, Completion, DeviceStorage, HostMemory, MemoryDescriptor, OffsetBuffer, SystemStorage,
};
use std::time::Instant;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// cudarc's driver error as a boxed error (it implements `Debug` only).
fn driver(e: result::DriverError) -> Box<dyn std::error::Error> {
    format!("CUDA driver: {e:?}").into()
}

struct Args {
    sizes: Vec<usize>,
    iterations: usize,
    host_only: bool,
}

fn parse_args() -> AnyResult<Args> {
    let mut args = Args {
        sizes: vec![4096, 65536],
        iterations: 2000,
        host_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            // Cargo's bench runner passes `--bench`.
            "--bench" => {}
            "--host-only" => args.host_only = true,
            "--sizes" => {
                let v = it.next().ok_or("--sizes needs a list of byte counts")?;
                args.sizes = v
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?;
            }
            "--iterations" => {
                args.iterations = it.next().ok_or("--iterations needs a count")?.parse()?;
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if args.sizes.is_empty() || args.sizes.contains(&0) || args.iterations == 0 {
        return Err("sizes and iterations must be positive".into());
    }
    Ok(args)
}

/// One way of copying `size` bytes, timed per call.
struct Candidate<'a> {
    name: &'static str,
    run: Box<dyn FnMut(usize) -> AnyResult<()> + 'a>,
    micros: Vec<f64>,
}

impl<'a> Candidate<'a> {
    fn new(name: &'static str, run: impl FnMut(usize) -> AnyResult<()> + 'a) -> Self {
        Self {
            name,
            run: Box::new(run),
            micros: Vec::new(),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Times every candidate `iterations` times at `size`, interleaved, and prints one row each; the
/// first candidate is the reference.
fn measure(
    path: &str,
    size: usize,
    iterations: usize,
    cands: &mut [Candidate<'_>],
) -> AnyResult<()> {
    // Warm-up: first-use costs (thread start, stream creation, page faults) are not counted.
    for c in cands.iter_mut() {
        for _ in 0..10 {
            (c.run)(size)?;
        }
        c.micros.clear();
    }
    for _ in 0..iterations {
        for c in cands.iter_mut() {
            let t = Instant::now();
            (c.run)(size)?;
            c.micros.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let mut reference = None;
    for c in cands.iter_mut() {
        c.micros.sort_by(f64::total_cmp);
        let median = percentile(&c.micros, 0.5);
        let over = reference.map_or(0.0, |r| median - r);
        reference.get_or_insert(median);
        println!(
            "{path:<16} {size:>9} {:<34} {median:>9.2} {:>9.2} {:>9.2} {over:>+10.2}",
            c.name,
            percentile(&c.micros, 0.1),
            percentile(&c.micros, 0.9),
        );
    }
    Ok(())
}

fn header(args: &Args) {
    println!(
        "copy_latency: {} rounds per size, µs per transfer (interleaved)",
        args.iterations
    );
    println!(
        "{:<16} {:>9} {:<34} {:>9} {:>9} {:>9} {:>10}",
        "path", "bytes", "candidate", "p50", "p10", "p90", "p50 - ref"
    );
}

/// A view of the first `size` bytes of `base`.
fn view(base: &Buffer, size: usize) -> AnyResult<Buffer> {
    Ok(Buffer::new(OffsetBuffer::new(base.clone(), 0, size)?))
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 + 7) as u8).collect()
}

fn host(args: &Args, wrong: &mut Vec<String>) -> AnyResult<()> {
    let max = *args.sizes.iter().max().unwrap_or(&4096);
    let engine = TransferEngine::new(EngineConfig::default())?;
    let mut src = SystemStorage::new(max)?;
    src.as_mut_slice().copy_from_slice(&pattern(max));
    let (src, dst) = (Buffer::new(src), Buffer::new(SystemStorage::new(max)?));
    let (a, mut b) = (pattern(max), vec![0u8; max]);
    for &size in &args.sizes {
        let (s, d) = (view(&src, size)?, view(&dst, size)?);
        let mut cands = [
            Candidate::new("memcpy (reference)", |n| {
                b[..n].copy_from_slice(&a[..n]);
                std::hint::black_box(&b);
                Ok(())
            }),
            Candidate::new("engine copy_region + wait", |_| {
                engine.copy_region(&s, &d)?.wait()?;
                Ok(())
            }),
        ];
        measure("host->host", size, args.iterations, &mut cands)?;
    }
    let got = dst
        .downcast_ref::<SystemStorage>()
        .ok_or("internal: host destination is not a SystemStorage")?;
    if got.as_slice() != pattern(max).as_slice() || b != a {
        wrong.push("host->host".into());
    }
    Ok(())
}

fn device(args: &Args, wrong: &mut Vec<String>) -> AnyResult<()> {
    let max = *args.sizes.iter().max().unwrap_or(&4096);
    let gpu = CudaDevice::new(0)?;
    let mut staging = SystemStorage::new(max)?;
    staging.as_mut_slice().copy_from_slice(&pattern(max));
    let src = DeviceStorage::new(&gpu, max)?;
    cuda::copy_host_to_device(&staging, &src)?;
    let src = Buffer::new(src);
    // One destination per candidate, so each one's bytes are checked.
    let dsts: Vec<Buffer> = (0..4)
        .map(|_| DeviceStorage::new(&gpu, max).map(Buffer::new))
        .collect::<Result<_, _>>()?;
    let ctx = gpu.context().clone();
    let raw = ctx.new_stream().map_err(driver)?;
    let stream = CopyStream::new(&gpu)?;
    let per_copy = TransferEngine::new(EngineConfig {
        gpu_method: CopyMethod::PerCopy,
        ..EngineConfig::default()
    })?;
    let auto = TransferEngine::new(EngineConfig::default())?;
    let (s_addr, ordinal) = (src.addr() as u64, gpu.ordinal() as u32);
    for &size in &args.sizes {
        let s = view(&src, size)?;
        let d: Vec<Buffer> = dsts
            .iter()
            .map(|d| view(d, size))
            .collect::<AnyResult<_>>()?;
        let (d0, d1) = (dsts[0].addr() as u64, dsts[1].addr() as u64);
        let mut cands = [
            Candidate::new("cuMemcpyDtoDAsync + sync (ref)", |n| {
                // SAFETY: both ranges are device allocations of `max >= n` bytes that live for the
                // whole function; the stream belongs to their context; the copy is waited for
                // before the next one is enqueued, and nothing else uses `dsts[0]`.
                unsafe { result::memcpy_dtod_async(d0, s_addr, n, raw.cu_stream()) }
                    .map_err(driver)?;
                raw.synchronize().map_err(driver)?;
                Ok(())
            }),
            Candidate::new("CopyStream per-copy + wait", |n| {
                let copy = DeviceCopy {
                    src: s_addr,
                    dst: d1,
                    len: n as u64,
                };
                let at = Location::Device(ordinal);
                // SAFETY: as above; the completion is waited for right here.
                let c = unsafe { stream.copy_async(&[copy], CopyMethod::PerCopy, at, at) }?;
                c.wait()?;
                Ok(())
            }),
            Candidate::new("engine per-copy copy_region + wait", |_| {
                per_copy.copy_region(&s, &d[2])?.wait()?;
                Ok(())
            }),
            Candidate::new("engine auto copy_region + wait", |_| {
                auto.copy_region(&s, &d[3])?.wait()?;
                Ok(())
            }),
        ];
        measure("device->device", size, args.iterations, &mut cands)?;
    }
    let expected = pattern(max);
    for (i, d) in dsts.iter().enumerate() {
        let dev = d
            .downcast_ref::<DeviceStorage>()
            .ok_or("internal: device destination is not a DeviceStorage")?;
        cuda::copy_device_to_host(dev, &mut staging)?;
        if staging.as_slice() != expected.as_slice() {
            wrong.push(format!("device->device candidate {i}"));
        }
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("copy_latency: {e}");
            std::process::exit(2);
        }
    };
    header(&args);
    let mut wrong = Vec::new();
    if let Err(e) = host(&args, &mut wrong) {
        eprintln!("copy_latency: host->host failed: {e}");
        std::process::exit(1);
    }
    if args.host_only {
        println!("device->device: skipped (--host-only)");
    } else {
        match cuda::device_count() {
            Ok(n) if n > 0 => {
                if let Err(e) = device(&args, &mut wrong) {
                    eprintln!("copy_latency: device->device failed: {e}");
                    std::process::exit(1);
                }
            }
            Ok(_) => println!("device->device: skipped (no CUDA device)"),
            Err(e) => println!("device->device: skipped (no CUDA driver: {e})"),
        }
    }
    if !wrong.is_empty() {
        eprintln!("copy_latency: wrong bytes after {}", wrong.join(", "));
        std::process::exit(3);
    }
}
