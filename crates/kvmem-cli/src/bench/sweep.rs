//! The sweep: buffers, points, interleaved timing of transfer, reference and fio.

use super::fio::{self, FioJob};
use super::memory::random_host;
use super::report::{FioPoint, Machine, MemcpyPoint, Percentiles, Point, Report, Settings};
use super::{BenchArgs, BenchPath, Pattern};
use crate::error::{CliError, Result};
use indicatif::ProgressBar;
use kvmem::Completion;
use kvmem::cuda::CudaDevice;
use kvmem::layout::BlockDim;
use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
use kvmem::nixl::raw::TransferOp;
use kvmem::transfer::{DiskBackend, EngineConfig, TransferEngine, TransferPlan};
use kvmem::{Buffer, DiskStorage, HostMemory, OffsetBuffer, SystemStorage};
use kvmem::{DeviceStorage, PinnedStorage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

/// The memory a sweep copies between, allocated once.
struct Buffers {
    host_src: Buffer,
    host_dst: Buffer,
    disk: Option<(Buffer, PathBuf, bool)>,
    /// Plain storages for the host path's second yardstick, one `memcpy` on one thread.
    memcpy: Option<(SystemStorage, SystemStorage)>,
    /// Pinned and device memory for the GPU paths.
    gpu: Option<GpuBuffers>,
}

struct GpuBuffers {
    pinned_src: Buffer,
    pinned_dst: Buffer,
    dev_src: Buffer,
    dev_dst: Buffer,
}

impl GpuBuffers {
    fn new(len: usize) -> Result<Self> {
        let gpu = CudaDevice::new(0)?;
        let mut src = PinnedStorage::new(&gpu, len)?;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in src.as_mut_slice() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut dst = PinnedStorage::new(&gpu, len)?;
        dst.memset(0xa5);
        let dev_src = DeviceStorage::new(&gpu, len)?;
        let dev_dst = DeviceStorage::new(&gpu, len)?;
        kvmem::cuda::copy_host_to_device(&src, &dev_src)?;
        kvmem::cuda::copy_host_to_device(&dst, &dev_dst)?;
        Ok(Self {
            pinned_src: Buffer::new(src),
            pinned_dst: Buffer::new(dst),
            dev_src: Buffer::new(dev_src),
            dev_dst: Buffer::new(dev_dst),
        })
    }
}

/// Layers and k/v of the layer-separate point.
const LAYERS: usize = 32;
const KV: usize = 2;

pub fn run(args: &BenchArgs) -> Result<Report> {
    let paths = args.paths.clone().unwrap_or_else(BenchPath::defaults);
    if args.iterations == 0 {
        return Err(CliError::Bench("--iterations must be at least 1".into()));
    }
    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let wants_disk = paths.iter().any(|p| p.touches_disk());
    if wants_disk && let Some(bad) = sizes.iter().find(|s| *s % kvmem::PAGE_SIZE != 0) {
        return Err(CliError::Bench(format!(
            "disk paths use O_DIRECT, so block sizes must be multiples of {} bytes; {bad} is not",
            kvmem::PAGE_SIZE
        )));
    }
    let max_size = sizes.last().copied().unwrap_or(kvmem::PAGE_SIZE);
    let bytes_for = |default: usize| -> Result<usize> {
        match args.blocks {
            Some(0) => Err(CliError::Bench("--blocks must be at least 1".into())),
            Some(b) => b
                .checked_mul(max_size)
                .ok_or_else(|| CliError::Bench("--blocks times the largest size overflows".into())),
            None => Ok(default),
        }
    };
    let host_bytes = bytes_for(args.host_bytes)?;
    let disk_bytes = bytes_for(args.disk_bytes)?.next_multiple_of(kvmem::PAGE_SIZE);
    let nixl_bytes = bytes_for(args.nixl_bytes)?;
    // Two UCX agents in this process; the peer's region holds the largest point.
    let nixl_ends = if paths.iter().any(|p| p.uses_nixl()) {
        Some(super::nixl::NixlEnds::loopback(nixl_bytes, args.seed)?)
    } else {
        None
    };

    let mut config = EngineConfig {
        queue_depth: args.queue_depth.max(1),
        gpu_method: args.gpu_method.into(),
        ..EngineConfig::default()
    };
    if let Some(b) = args.disk_backend {
        config.disk_backend = b.into();
    }
    if let Some(m) = args.max_io {
        config.max_io_bytes = m;
    }
    if let Some(t) = args.threads {
        config.host_threads = t.max(1);
    }
    let engine = TransferEngine::new(config)?;

    let host_len = host_bytes.max(if wants_disk { disk_bytes } else { 0 });
    let wants_host = paths.contains(&BenchPath::Host);
    let mut buffers = Buffers {
        host_src: random_host(host_len, args.seed, args.small_pages)?,
        host_dst: random_host(host_len, !args.seed, args.small_pages)?,
        disk: if wants_disk {
            let d = match &args.disk_dir {
                Some(dir) => DiskStorage::new_in(dir, disk_bytes)?,
                None => DiskStorage::new(disk_bytes)?,
            };
            let (path, direct) = (d.path().to_path_buf(), d.is_direct());
            Some((Buffer::new(d), path, direct))
        } else {
            None
        },
        gpu: if paths.iter().any(|p| p.needs_gpu()) {
            Some(GpuBuffers::new(args.gpu_bytes.max(args.layers_bytes))?)
        } else {
            None
        },
        memcpy: if wants_host {
            let mut a = SystemStorage::new(host_bytes)?;
            StdRng::seed_from_u64(args.seed ^ 1).fill_bytes(a.as_mut_slice());
            let mut b = SystemStorage::new(host_bytes)?;
            b.memset(0xc3);
            Some((a, b))
        } else {
            None
        },
    };
    let disk_dir = buffers
        .disk
        .as_ref()
        .and_then(|(_, p, _)| p.parent().map(|p| p.to_path_buf()));

    // fio: same directory, same file size, same queue depth.
    let fio_version = if args.no_fio || !wants_disk {
        None
    } else {
        fio::version()
    };
    let fio_note = match (&fio_version, args.no_fio, wants_disk) {
        (_, _, false) => "no disk paths in this sweep".to_string(),
        (_, true, _) => "skipped (--no-fio)".to_string(),
        (Some(v), _, _) => format!(
            "{v}, O_DIRECT, io_uring, iodepth {}, on kvmem's disk file",
            config.queue_depth
        ),
        (None, _, _) => {
            "fio NOT FOUND on PATH: disk points have no fio comparison (apt-get install fio)"
                .to_string()
        }
    };
    // fio runs on kvmem's own disk file: the same file system, and the same file, so that
    // neither side is favoured by where its blocks happen to lie or what a virtual disk's host
    // has cached.
    let fio_file = match (&fio_version, &buffers.disk) {
        (Some(_), Some((_, path, _))) => Some(path.clone()),
        _ => None,
    };
    // Fill the disk file (and warm the disk path) so that reads read written data.
    let mut skipped = Vec::new();
    let mut other = None;
    if let Some((disk, _, _)) = &buffers.disk {
        let src = view(&buffers.host_src, disk_bytes)?;
        engine.copy_region(&src, disk)?.wait()?;
        // The other disk backend, for the points at --compare-disk-backend sizes; started (and
        // warmed) here, so that a backend this machine lacks is a note, not a failed sweep.
        if args.compare_disk_backend.iter().any(|s| s.is_some()) {
            let backend = match config.disk_backend {
                DiskBackend::IoUring => DiskBackend::NixlPosix,
                _ => DiskBackend::IoUring,
            };
            let started = TransferEngine::new(EngineConfig {
                disk_backend: backend,
                ..config
            })
            .map_err(CliError::from)
            .and_then(|e| {
                e.copy_region(&src, disk)?.wait()?;
                Ok(e)
            });
            match started {
                Ok(e) => other = Some(e),
                Err(e) => skipped.push(format!("disk backend {backend} not compared: {e}")),
            }
        }
    }

    let mut plan = Vec::new();
    for &path in &paths {
        for &pattern in &args.patterns {
            for &size in &sizes {
                plan.push((path, pattern, size));
            }
        }
    }
    let bar = super::progress_bar((plan.len() * (args.iterations + 1)) as u64);
    let started = Instant::now();
    let load_before = super::report::load_average();
    let mut points = Vec::new();
    for (path, pattern, size) in plan {
        let total = match path {
            p if p.uses_nixl() => nixl_bytes,
            p if p.touches_disk() => disk_bytes,
            BenchPath::LayersD2h => args.layers_bytes / (LAYERS * KV),
            p if p.needs_gpu() => args.gpu_bytes,
            _ => host_bytes,
        };
        let blocks = args.blocks.unwrap_or(match path {
            BenchPath::LayersD2h => (total / size).min(1024),
            _ => total / size,
        });
        if blocks == 0 {
            skipped.push(format!(
                "{} {:?} {}: block larger than the {} bytes per transfer",
                path_name(path),
                pattern,
                size,
                total
            ));
            bar.inc(args.iterations as u64 + 1);
            continue;
        }
        bar.set_message(format!("{} {:?} {}", path_name(path), pattern, human(size)));
        let fio_job = match (&fio_file, path) {
            (Some(f), BenchPath::DiskWrite | BenchPath::DiskRead) => Some(FioJob {
                file: f.clone(),
                size: blocks * size,
                block: size,
                write: path == BenchPath::DiskWrite,
                random: pattern == Pattern::Scattered,
                queue_depth: config.queue_depth,
            }),
            _ => None,
        };
        if let Some(ends) = &nixl_ends {
            let op = match path {
                BenchPath::NixlWrite => Some(TransferOp::Write),
                BenchPath::NixlRead => Some(TransferOp::Read),
                _ => None,
            };
            if let Some(op) = op {
                points.push(super::nixl::measure(
                    ends,
                    &engine,
                    path_name(path),
                    op,
                    pattern,
                    size,
                    blocks,
                    args.iterations,
                    args.seed,
                    &bar,
                )?);
                continue;
            }
        }
        let compare = other
            .as_ref()
            .filter(|_| path.touches_disk() && args.compare_disk_backend.contains(&Some(size)));
        points.extend(measure(
            &engine,
            &mut buffers,
            args,
            path,
            pattern,
            size,
            blocks,
            fio_job,
            compare,
            &bar,
        )?);
    }
    bar.finish_and_clear();
    let direct_io = buffers.disk.as_ref().map(|(_, _, d)| *d);
    let mut report = report_of(&config, args, started, load_before, points, skipped);
    report.settings.disk_dir = disk_dir.map(|d| d.display().to_string());
    report.settings.direct_io = direct_io;
    report.fio = fio_note;
    Ok(report)
}

/// The report of a sweep that started at `started` (no disk or fio settings).
pub fn report_of(
    config: &EngineConfig,
    args: &BenchArgs,
    started: Instant,
    load_before: Option<f64>,
    points: Vec<Point>,
    skipped: Vec<String>,
) -> Report {
    let mut machine = Machine::detect();
    machine.load_average_after = super::report::load_average();
    machine.load_average_before = load_before;
    Report {
        kvmem_version: env!("CARGO_PKG_VERSION"),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        machine,
        settings: Settings {
            host_threads: config.host_threads,
            queue_depth: config.queue_depth,
            max_io_bytes: config.max_io_bytes,
            disk_backend: config.disk_backend.name(),
            iterations: args.iterations,
            disk_dir: None,
            direct_io: None,
            small_pages: args.small_pages,
            seed: args.seed,
        },
        fio: "no disk paths in this sweep".to_string(),
        two_node: None,
        duration_s: started.elapsed().as_secs_f64(),
        points,
        skipped,
    }
}

fn view(base: &Buffer, len: usize) -> Result<Buffer> {
    Ok(Buffer::new(OffsetBuffer::new(base.clone(), 0, len)?))
}

pub fn path_name(path: BenchPath) -> &'static str {
    match path {
        BenchPath::Host => "host->host",
        BenchPath::DiskWrite => "host->disk",
        BenchPath::DiskRead => "disk->host",
        BenchPath::H2d => "pinned->device",
        BenchPath::D2h => "device->pinned",
        BenchPath::D2d => "device->device",
        BenchPath::LayersD2h => "layers(device)->contiguous(pinned)",
        BenchPath::NixlWrite => "nixl-write",
        BenchPath::NixlRead => "nixl-read",
    }
}

/// The name of a disk point timed on `backend`, the disk backend compared with the sweep's.
fn compared_path_name(path: BenchPath, backend: DiskBackend) -> &'static str {
    match (path, backend) {
        (BenchPath::DiskWrite, DiskBackend::NixlPosix) => "host->disk (nixl-posix)",
        (BenchPath::DiskRead, DiskBackend::NixlPosix) => "disk->host (nixl-posix)",
        (BenchPath::DiskWrite, _) => "host->disk (io_uring)",
        (BenchPath::DiskRead, _) => "disk->host (io_uring)",
        _ => path_name(path),
    }
}

pub fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    engine: &TransferEngine,
    buffers: &mut Buffers,
    args: &BenchArgs,
    path: BenchPath,
    pattern: Pattern,
    size: usize,
    blocks: usize,
    fio_job: Option<FioJob>,
    other: Option<&TransferEngine>,
    bar: &ProgressBar,
) -> Result<Vec<Point>> {
    let bytes = blocks * size;
    let disk = || {
        buffers
            .disk
            .as_ref()
            .map(|(b, _, _)| b.clone())
            .ok_or_else(|| CliError::Bench("disk path without a disk file".into()))
    };
    let gpu = || {
        buffers
            .gpu
            .as_ref()
            .ok_or_else(|| CliError::Bench("GPU path without GPU buffers".into()))
    };
    let (src, dst) = match path {
        BenchPath::Host => (buffers.host_src.clone(), buffers.host_dst.clone()),
        BenchPath::DiskWrite => (buffers.host_src.clone(), disk()?),
        BenchPath::DiskRead => (disk()?, buffers.host_dst.clone()),
        BenchPath::H2d => (gpu()?.pinned_src.clone(), gpu()?.dev_dst.clone()),
        BenchPath::D2h | BenchPath::LayersD2h => {
            (gpu()?.dev_src.clone(), gpu()?.pinned_dst.clone())
        }
        BenchPath::D2d => (gpu()?.dev_src.clone(), gpu()?.dev_dst.clone()),
        BenchPath::NixlWrite | BenchPath::NixlRead => {
            return Err(CliError::Bench(
                "internal: NIXL path without NIXL agents".into(),
            ));
        }
    };
    let (layers, outer) = match path {
        BenchPath::LayersD2h => (LAYERS, KV),
        _ => (1, 1),
    };
    let config = LayoutConfig {
        num_blocks: blocks,
        num_layers: layers,
        outer_dim: outer,
        page_size: 1,
        inner_dim: size,
        dtype_bytes: 1,
    };
    let bytes = bytes * layers * outer;
    let src_layout = if path == BenchPath::LayersD2h {
        // One region per layer, each `blocks * k/v * size` bytes, in vLLM's block-second order.
        let kind = LayoutKind::LayerSeparate(BlockDim::Second);
        let (count, region) = config.regions(kind)?;
        let regions = (0..count)
            .map(|l| {
                Ok(Buffer::new(OffsetBuffer::new(
                    src.clone(),
                    l * region,
                    region,
                )?))
            })
            .collect::<Result<Vec<_>>>()?;
        BlockLayout::new(config, kind, regions, 4096)?
    } else {
        BlockLayout::new(config, LayoutKind::FullyContiguous, vec![src.clone()], 4096)?
    };
    let dst_layout =
        BlockLayout::new(config, LayoutKind::FullyContiguous, vec![dst.clone()], 4096)?;
    let (src_ids, dst_ids): (Vec<usize>, Vec<usize>) = match pattern {
        Pattern::Sequential => ((0..blocks).collect(), (0..blocks).collect()),
        Pattern::Scattered => {
            let mut rng = StdRng::seed_from_u64(args.seed ^ size as u64);
            let mut s: Vec<usize> = (0..blocks).collect();
            let mut d = s.clone();
            s.shuffle(&mut rng);
            d.shuffle(&mut rng);
            (s, d)
        }
    };
    let (src_ref, dst_ref) = (view(&src, bytes)?, view(&dst, bytes)?);

    // `copy_blocks` is `TransferPlan::blocks` + `submit`; timed in its two halves.
    let transfer = |engine: &TransferEngine| -> Result<(f64, usize, f64)> {
        let t = Instant::now();
        let plan = TransferPlan::blocks(&src_layout, &src_ids, &dst_layout, &dst_ids)?;
        let planned = t.elapsed().as_secs_f64();
        let stats = engine.submit(plan)?.wait()?;
        Ok((t.elapsed().as_secs_f64(), stats.ops, planned))
    };
    let reference = |engine: &TransferEngine| -> Result<f64> {
        let t = Instant::now();
        engine.copy_region(&src_ref, &dst_ref)?.wait()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut memcpy = match path {
        BenchPath::Host => buffers.memcpy.as_mut(),
        _ => None,
    };
    let mut memcpy_run = || -> Option<f64> {
        let (a, b) = memcpy.as_mut()?;
        let t = Instant::now();
        b.as_mut_slice()[..bytes].copy_from_slice(&a.as_slice()[..bytes]);
        Some(t.elapsed().as_secs_f64())
    };
    // Warm-up, untimed.
    let (_, copies, _) = transfer(engine)?;
    reference(engine)?;
    if let Some(other) = other {
        transfer(other)?;
        reference(other)?;
    }
    let has_memcpy = memcpy_run().is_some();
    bar.inc(1);

    #[derive(Clone, Copy)]
    enum Run {
        Transfer,
        Reference,
        OtherTransfer,
        OtherReference,
        Memcpy,
        Fio,
    }
    let mut order = vec![Run::Transfer, Run::Reference];
    if other.is_some() {
        order.extend([Run::OtherTransfer, Run::OtherReference]);
    }
    if has_memcpy {
        order.push(Run::Memcpy);
    }
    if fio_job.is_some() {
        order.push(Run::Fio);
    }
    let mut own = Timings::default();
    let mut theirs = Timings::default();
    let mut memcpy_times = Vec::new();
    let mut fio_runs = Vec::new();
    let mut fio_error = None;
    for i in 0..args.iterations {
        // Rotate the order each round so that no candidate always follows another.
        if i > 0 {
            order.rotate_left(1);
        }
        for run in &order {
            match run {
                Run::Transfer => own.push_transfer(transfer(engine)?),
                Run::Reference => own.refs.push(reference(engine)?),
                Run::OtherTransfer | Run::OtherReference => {
                    if let Some(other) = other {
                        match run {
                            Run::OtherTransfer => theirs.push_transfer(transfer(other)?),
                            _ => theirs.refs.push(reference(other)?),
                        }
                    }
                }
                Run::Memcpy => memcpy_times.extend(memcpy_run()),
                Run::Fio => {
                    if let Some(job) = &fio_job
                        && fio_error.is_none()
                    {
                        match fio::run(job) {
                            Ok(r) => fio_runs.push(r),
                            Err(e) => fio_error = Some(e),
                        }
                    }
                }
            }
        }
        bar.inc(1);
    }
    let gib = |secs: f64| bytes as f64 / secs / f64::from(1u32 << 30);
    let point = |name: &'static str, backend: Option<&'static str>, t: &Timings| {
        let median_time = Percentiles::of(&t.times).p50;
        let median_ref = Percentiles::of(&t.refs).p50;
        let fio = match (&fio_job, &fio_error) {
            (None, _) => None,
            (Some(_), Some(e)) => Some(FioPoint::failed(e.clone())),
            (Some(_), None) => Some(FioPoint::from_runs(&fio_runs, gib(median_time))),
        };
        let memcpy = (!memcpy_times.is_empty()).then(|| {
            let g = gib(Percentiles::of(&memcpy_times).p50);
            MemcpyPoint {
                gib_s: g,
                ratio: gib(median_time) / g,
            }
        });
        Point {
            path: name,
            disk_backend: backend,
            pattern,
            block_bytes: size,
            blocks,
            bytes,
            copies,
            iterations: args.iterations,
            gib_s: gib(median_time),
            reference_gib_s: gib(median_ref),
            ratio: median_ref / median_time,
            plan_ms: Percentiles::of(&t.plan).p50 * 1e3,
            exec_ratio: median_ref
                / Percentiles::of(
                    &t.times
                        .iter()
                        .zip(&t.plan)
                        .map(|(t, p)| t - p)
                        .collect::<Vec<_>>(),
                )
                .p50,
            latency_ms: Percentiles::of(&t.times).scaled(1e3),
            reference_latency_ms: Percentiles::of(&t.refs).scaled(1e3),
            fio,
            memcpy,
            verified_bytes: None,
        }
    };
    let disk_backend =
        |e: &TransferEngine| path.touches_disk().then(|| e.config().disk_backend.name());
    let mut points = vec![point(path_name(path), disk_backend(engine), &own)];
    if let Some(other) = other {
        let backend = other.config().disk_backend;
        points.push(point(
            compared_path_name(path, backend),
            disk_backend(other),
            &theirs,
        ));
    }
    Ok(points)
}

/// Timings of one candidate of a point.
#[derive(Default)]
struct Timings {
    times: Vec<f64>,
    plan: Vec<f64>,
    refs: Vec<f64>,
}

impl Timings {
    fn push_transfer(&mut self, (t, _, p): (f64, usize, f64)) {
        self.times.push(t);
        self.plan.push(p);
    }
}
