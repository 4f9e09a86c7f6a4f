//! The sweep of this machine's paths: buffers and engines set up once, then one point per path,
//! pattern and block size, each run by [`point::run`](super::point::run).

use super::compute::ComputeProbe;
use super::fio::{self, FioJob, FioRun};
use super::memory::random_host;
use super::point::{self, Candidate, PointSpec, Sample, Yardstick};
use super::report::{FioPoint, Machine, MemcpyPoint, Percentiles, Point, Report, Settings};
use super::verify::{self, POISON};
use super::{BenchArgs, BenchPath};
use crate::error::{CliError, Result};
use indicatif::ProgressBar;
use kvmem::Completion;
use kvmem::cuda::CudaDevice;
use kvmem::layout::BlockDim;
use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
use kvmem::nixl::raw::TransferOp;
use kvmem::transfer::{CopyMethod, DiskBackend, EngineConfig, TransferEngine, TransferPlan};
use kvmem::{Buffer, DiskStorage, HostMemory, OffsetBuffer, SystemStorage};
use kvmem::{DeviceStorage, PinnedStorage};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

/// How the reference of a GPU point moves its bytes, whatever method the point uses.
pub const GPU_REFERENCE_METHOD: &str = "one cuMemcpyAsync (DMA)";
/// How the reference of a host point moves its bytes.
const HOST_REFERENCE_METHOD: &str = "one region on the engine's host copy threads";

/// The memory a sweep copies between, allocated once.
struct Buffers {
    host_src: Buffer,
    host_dst: Buffer,
    disk: Option<(Buffer, PathBuf, bool)>,
    /// Pinned and device memory for the GPU paths.
    gpu: Option<GpuBuffers>,
    /// [`POISON`] in host memory, as long as the longest point: copied over a destination
    /// before its check.
    poison: Buffer,
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
        let dev_src = DeviceStorage::new(&gpu, len)?;
        kvmem::cuda::copy_host_to_device(&src, &dev_src)?;
        Ok(Self {
            pinned_src: Buffer::new(src),
            pinned_dst: Buffer::new(PinnedStorage::new(&gpu, len)?),
            dev_src: Buffer::new(dev_src),
            dev_dst: Buffer::new(DeviceStorage::new(&gpu, len)?),
        })
    }
}

/// Layers and k/v of the layer-separate point.
const LAYERS: usize = 32;
const KV: usize = 2;

/// The engine settings of `args`.
fn engine_config(args: &BenchArgs) -> EngineConfig {
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
    if let Some(s) = args.staging {
        config.staging_bytes = s;
    }
    config
}

/// The configuration of the engine that runs the references of GPU points: one plain DMA copy
/// (`cuMemcpyAsync`), whatever `--gpu-method` the points use, so that no method is measured
/// against itself.
fn gpu_reference_config(config: &EngineConfig) -> EngineConfig {
    EngineConfig {
        gpu_method: CopyMethod::PerCopy,
        host_threads: 1,
        ..*config
    }
}

/// One run of the sweep: the engines, buffers and yardsticks its points share.
struct Sweep<'a> {
    args: &'a BenchArgs,
    engine: TransferEngine,
    /// The engine of GPU references ([`gpu_reference_config`]).
    gpu_reference: Option<TransferEngine>,
    /// The other disk backend, for the points at `--compare-disk-backend` sizes.
    other_disk: Option<TransferEngine>,
    buffers: Buffers,
    /// Plain storages for the host path's second yardstick, one `memcpy` on one thread.
    memcpy: Option<(SystemStorage, SystemStorage)>,
    /// kvmem's disk file, when fio runs on it.
    fio_file: Option<PathBuf>,
    /// `--with-compute`: the compute kernel run beside GPU points.
    compute: Option<ComputeProbe>,
}

pub fn run(args: &BenchArgs) -> Result<Report> {
    let pairs = args.path_patterns();
    let mut paths: Vec<BenchPath> = Vec::new();
    for &(path, _) in &pairs {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    if args.iterations == 0 {
        return Err(CliError::Bench("--iterations must be at least 1".into()));
    }
    let mut sizes = args.sizes();
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

    let config = engine_config(args);
    let engine = TransferEngine::new(config)?;
    let wants_gpu = paths.iter().any(|p| p.needs_gpu());
    let gpu_reference = if wants_gpu {
        Some(TransferEngine::new(gpu_reference_config(&config))?)
    } else {
        None
    };

    let host_len = host_bytes.max(if wants_disk { disk_bytes } else { 0 });
    let gpu_len = args.gpu_bytes.max(args.layers_bytes);
    let wants_host = paths.contains(&BenchPath::Host);
    let mut poison = SystemStorage::new(host_len.max(if wants_gpu { gpu_len } else { 0 }))?;
    poison.memset(POISON);
    let buffers = Buffers {
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
        gpu: if wants_gpu {
            Some(GpuBuffers::new(gpu_len)?)
        } else {
            None
        },
        poison: Buffer::new(poison),
    };
    let memcpy = if wants_host {
        let mut a = SystemStorage::new(host_bytes)?;
        StdRng::seed_from_u64(args.seed ^ 1).fill_bytes(a.as_mut_slice());
        let mut b = SystemStorage::new(host_bytes)?;
        b.memset(0xc3);
        Some((a, b))
    } else {
        None
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
    let mut other_disk = None;
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
                Ok(e) => other_disk = Some(e),
                Err(e) => skipped.push(format!("disk backend {backend} not compared: {e}")),
            }
        }
    }
    let direct_io = buffers.disk.as_ref().map(|(_, _, d)| *d);
    let compute = match (args.with_compute, wants_gpu) {
        (true, true) => Some(ComputeProbe::new()?),
        (true, false) => {
            skipped.push("--with-compute: no GPU paths in this sweep".to_string());
            None
        }
        (false, _) => None,
    };
    let mut sweep = Sweep {
        compute,
        args,
        engine,
        gpu_reference,
        other_disk,
        buffers,
        memcpy,
        fio_file,
    };

    let mut plan = Vec::new();
    for &(path, pattern) in &pairs {
        for &size in &sizes {
            plan.push((path, pattern, size));
        }
    }
    let bar = super::progress_bar(plan.len(), args.iterations);
    let started = Started::now();
    let mut points = Vec::new();
    for (path, pattern, size) in plan {
        let total = match path {
            p if p.uses_nixl() => nixl_bytes,
            p if p.touches_disk() => disk_bytes,
            p if p.is_layered() => args.layers_bytes / (LAYERS * KV),
            p if p.needs_gpu() => args.gpu_bytes,
            _ => host_bytes,
        };
        let blocks = args.blocks.unwrap_or(match path {
            p if p.is_layered() => (total / size).min(1024),
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
        let chunks = if path.is_layered() { LAYERS * KV } else { 1 };
        let spec = PointSpec {
            label: path_name(path),
            pattern,
            block_bytes: size,
            blocks,
            bytes: blocks * size * chunks,
            iterations: args.iterations,
            seed: args.seed,
        };
        if let Some(ends) = &nixl_ends {
            let op = match path {
                BenchPath::NixlWrite => Some(TransferOp::Write),
                BenchPath::NixlRead => Some(TransferOp::Read),
                _ => None,
            };
            if let Some(op) = op {
                points.push(super::nixl::measure(ends, &sweep.engine, op, &spec, &bar)?);
                continue;
            }
        }
        points.extend(sweep.point(path, &spec, &bar)?);
    }
    bar.finish_and_clear();
    let mut report = report_of(&config, args, started, points, skipped);
    report.settings.disk_dir = disk_dir.map(|d| d.display().to_string());
    report.settings.direct_io = direct_io;
    report.fio = fio_note;
    Ok(report)
}

/// The blocks of one local point: both layouts and id lists, the regions their bytes are read
/// back from, and the reference's single regions.
struct Blocks {
    src: BlockLayout,
    src_ids: Vec<usize>,
    dst: BlockLayout,
    dst_ids: Vec<usize>,
    /// The regions the layouts lie in, from their first byte.
    src_base: Buffer,
    dst_base: Buffer,
    /// The reference's regions: the point's bytes, from the first.
    src_ref: Buffer,
    dst_ref: Buffer,
    /// Poison of the point's length.
    poison: Buffer,
}

/// A block transfer of a local point on `engine`, its reference on `reference`.
struct Local<'a> {
    /// The point's name in messages and the report (the compared disk backend's differs).
    label: &'static str,
    blocks: &'a Blocks,
    engine: &'a TransferEngine,
    reference: &'a TransferEngine,
    reference_method: &'static str,
}

impl Candidate for Local<'_> {
    fn verify(&self, spec: &PointSpec) -> Result<u64> {
        let spec = &PointSpec {
            label: self.label,
            ..*spec
        };
        let b = self.blocks;
        self.reference.copy_region(&b.poison, &b.dst_ref)?.wait()?;
        verify::check_poisoned(spec, &b.dst_base, spec.bytes)?;
        self.transfer()?;
        let pairs = verify::layout_pairs(
            &b.src,
            &b.src_ids,
            &b.src_base,
            &b.dst,
            &b.dst_ids,
            &b.dst_base,
        )?;
        let src = verify::read_back(&b.src_base, spec.bytes)?;
        let dst = verify::read_back(&b.dst_base, spec.bytes)?;
        verify::compare(spec, dst, &src, &pairs)
    }

    fn transfer(&self) -> Result<Sample> {
        // What an engine calls, timed whole: `copy_blocks` plans and submits (between pinned
        // and device memory it plans a large request's rest while its head's copies run).
        let b = self.blocks;
        let t = Instant::now();
        let cpu = point::thread_cpu_secs();
        let handle = self
            .engine
            .copy_blocks(&b.src, &b.src_ids, &b.dst, &b.dst_ids)?;
        let call_cpu_secs = point::thread_cpu_secs() - cpu;
        let stats = handle.wait()?;
        let secs = t.elapsed().as_secs_f64();
        // Planning the same request whole, timed apart (after the transfer, so that it warms
        // nothing the transfer uses). With `RUST_LOG=kvmem=debug`, also its page faults.
        let faults = tracing::enabled!(tracing::Level::DEBUG).then(point::thread_minor_faults);
        let p = Instant::now();
        let plan = TransferPlan::blocks(&b.src, &b.src_ids, &b.dst, &b.dst_ids)?;
        let plan_secs = p.elapsed().as_secs_f64();
        drop(plan);
        if let Some(Some(before)) = faults {
            let after = point::thread_minor_faults().unwrap_or(before);
            tracing::debug!(
                plan_us = plan_secs * 1e6,
                page_faults = after - before,
                "planned"
            );
        }
        Ok(Sample {
            secs,
            plan_secs,
            copies: stats.ops,
            // The call's CPU time less planning's: building and enqueueing the copies (the
            // GPU executor does that on this thread; staged and host transfers only hand off).
            submit_cpu_secs: Some((call_cpu_secs - plan_secs).max(0.0)),
        })
    }

    fn reference(&self) -> Result<f64> {
        let t = Instant::now();
        self.reference
            .copy_region(&self.blocks.src_ref, &self.blocks.dst_ref)?
            .wait()?;
        Ok(t.elapsed().as_secs_f64())
    }

    fn reference_method(&self) -> &'static str {
        self.reference_method
    }
}

impl Sweep<'_> {
    /// The source and destination regions of `path`.
    fn ends(&self, path: BenchPath) -> Result<(Buffer, Buffer)> {
        let b = &self.buffers;
        let disk = || {
            b.disk
                .as_ref()
                .map(|(d, _, _)| d.clone())
                .ok_or_else(|| CliError::Bench("disk path without a disk file".into()))
        };
        let gpu = || {
            b.gpu
                .as_ref()
                .ok_or_else(|| CliError::Bench("GPU path without GPU buffers".into()))
        };
        Ok(match path {
            BenchPath::Host => (b.host_src.clone(), b.host_dst.clone()),
            BenchPath::DiskWrite => (b.host_src.clone(), disk()?),
            BenchPath::DiskRead => (disk()?, b.host_dst.clone()),
            BenchPath::H2d | BenchPath::LayersH2d => {
                (gpu()?.pinned_src.clone(), gpu()?.dev_dst.clone())
            }
            BenchPath::D2h | BenchPath::LayersD2h => {
                (gpu()?.dev_src.clone(), gpu()?.pinned_dst.clone())
            }
            BenchPath::D2d => (gpu()?.dev_src.clone(), gpu()?.dev_dst.clone()),
            BenchPath::NixlWrite | BenchPath::NixlRead => {
                return Err(CliError::Bench(
                    "internal: NIXL path without NIXL agents".into(),
                ));
            }
        })
    }

    /// The layouts, ids and regions of a point of `path`.
    fn blocks(&self, path: BenchPath, spec: &PointSpec) -> Result<Blocks> {
        let (src, dst) = self.ends(path)?;
        let (layers, outer) = if path.is_layered() {
            (LAYERS, KV)
        } else {
            (1, 1)
        };
        let config = LayoutConfig {
            num_blocks: spec.blocks,
            num_layers: layers,
            outer_dim: outer,
            page_size: 1,
            inner_dim: spec.block_bytes,
            dtype_bytes: 1,
        };
        // The GPU side of a layered path: one region per layer, each `blocks * k/v * size`
        // bytes, in vLLM's block-second order; everything else fully contiguous.
        let layout = |base: &Buffer, layered: bool| -> Result<BlockLayout> {
            if !layered {
                return Ok(BlockLayout::new(
                    config,
                    LayoutKind::FullyContiguous,
                    vec![base.clone()],
                    4096,
                )?);
            }
            let kind = LayoutKind::LayerSeparate(BlockDim::Second);
            let (count, region) = config.regions(kind)?;
            let regions = (0..count)
                .map(|l| {
                    Ok(Buffer::new(OffsetBuffer::new(
                        base.clone(),
                        l * region,
                        region,
                    )?))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(BlockLayout::new(config, kind, regions, 4096)?)
        };
        let src_layout = layout(&src, path == BenchPath::LayersD2h)?;
        let dst_layout = layout(&dst, path == BenchPath::LayersH2d)?;
        let (src_ids, dst_ids) = spec.ids();
        Ok(Blocks {
            src: src_layout,
            src_ids,
            dst: dst_layout,
            dst_ids,
            src_ref: view(&src, spec.bytes)?,
            dst_ref: view(&dst, spec.bytes)?,
            poison: view(&self.buffers.poison, spec.bytes)?,
            src_base: src,
            dst_base: dst,
        })
    }

    /// One local point of `path`: the block transfer on the sweep's engine and, at
    /// `--compare-disk-backend` sizes, on the other disk backend; fio beside disk points and a
    /// single-threaded memcpy beside host points.
    fn point(
        &mut self,
        path: BenchPath,
        spec: &PointSpec,
        bar: &ProgressBar,
    ) -> Result<Vec<Point>> {
        let blocks = self.blocks(path, spec)?;
        let (reference, reference_method) = match (path.needs_gpu(), &self.gpu_reference) {
            (true, Some(r)) => (r, GPU_REFERENCE_METHOD),
            (true, None) => {
                return Err(CliError::Bench(
                    "internal: GPU path without a reference engine".into(),
                ));
            }
            (false, _) if path.touches_disk() => {
                (&self.engine, disk_reference_method(&self.engine))
            }
            (false, _) => (&self.engine, HOST_REFERENCE_METHOD),
        };
        let own = Local {
            label: spec.label,
            blocks: &blocks,
            engine: &self.engine,
            reference,
            reference_method,
        };
        let other = self
            .other_disk
            .as_ref()
            .filter(|_| {
                path.touches_disk()
                    && self
                        .args
                        .compare_disk_backend
                        .contains(&Some(spec.block_bytes))
            })
            .map(|e| Local {
                label: compared_path_name(path, e.config().disk_backend),
                blocks: &blocks,
                engine: e,
                reference: e,
                reference_method: disk_reference_method(e),
            });
        let mut candidates: Vec<&dyn Candidate> = vec![&own];
        if let Some(o) = &other {
            candidates.push(o);
        }

        // Yardsticks: fio (disk), one memcpy on one thread (host).
        let fio_job = match (&self.fio_file, path) {
            (Some(f), BenchPath::DiskWrite | BenchPath::DiskRead) => Some(FioJob {
                file: f.clone(),
                size: spec.bytes,
                block: spec.block_bytes,
                write: path == BenchPath::DiskWrite,
                // fio drives the disk side: random where the disk's blocks are scattered.
                random: if path == BenchPath::DiskWrite {
                    spec.pattern.dst_scattered()
                } else {
                    spec.pattern.src_scattered()
                },
                queue_depth: self.engine.config().queue_depth,
            }),
            _ => None,
        };
        let mut fio_runs: Vec<FioRun> = Vec::new();
        let mut fio_error = None;
        let mut memcpy_times = Vec::new();
        let bytes = spec.bytes;
        let measured = {
            let mut fio_run = || {
                if let Some(job) = &fio_job
                    && fio_error.is_none()
                {
                    match fio::run(job) {
                        Ok(r) => fio_runs.push(r),
                        Err(e) => fio_error = Some(e),
                    }
                }
                Ok(())
            };
            let memcpy = match path {
                BenchPath::Host => self.memcpy.as_mut(),
                _ => None,
            };
            let has_memcpy = memcpy.is_some();
            let mut memcpy_run = {
                let mut memcpy = memcpy;
                let times = &mut memcpy_times;
                move || {
                    if let Some((a, b)) = memcpy.as_mut() {
                        let t = Instant::now();
                        b.as_mut_slice()[..bytes].copy_from_slice(&a.as_slice()[..bytes]);
                        times.push(t.elapsed().as_secs_f64());
                    }
                    Ok(())
                }
            };
            let mut yardsticks: Vec<Yardstick<'_>> = Vec::new();
            if has_memcpy {
                yardsticks.push(&mut memcpy_run);
            }
            if fio_job.is_some() {
                yardsticks.push(&mut fio_run);
            }
            point::run(spec, &candidates, &mut yardsticks, bar)?
        };

        let mut points = Vec::with_capacity(measured.len());
        for (m, c) in measured.iter().zip(&candidates) {
            let mut p = m.point(spec, c.reference_method());
            let gib = m.gib_s(bytes);
            p.fio = match (&fio_job, &fio_error) {
                (None, _) => None,
                (Some(_), Some(e)) => Some(FioPoint::failed(e.clone())),
                (Some(_), None) => Some(FioPoint::from_runs(&fio_runs, gib)),
            };
            p.memcpy = (!memcpy_times.is_empty()).then(|| {
                let g = point::gib_s(bytes, Percentiles::of(&memcpy_times).p50);
                MemcpyPoint {
                    gib_s: g,
                    ratio: gib / g,
                }
            });
            points.push(p);
        }
        if let (Some(probe), true) = (&self.compute, path.needs_gpu()) {
            let transfer_s = Percentiles::of(&measured[0].times).p50;
            let reference = points[0].reference_gib_s;
            points[0].compute = Some(probe.measure(&own, spec, transfer_s, reference)?);
        }
        if path.touches_disk() {
            points[0].disk_backend = Some(self.engine.config().disk_backend.name());
            if let (Some(p), Some(o)) = (points.get_mut(1), &other) {
                p.path = o.label;
                p.disk_backend = Some(o.engine.config().disk_backend.name());
            }
        }
        Ok(points)
    }
}

/// How the reference of a disk point on `engine` moves its bytes.
fn disk_reference_method(engine: &TransferEngine) -> &'static str {
    match engine.config().disk_backend {
        DiskBackend::NixlPosix => "one region on nixl-posix",
        _ => "one region on io_uring",
    }
}

/// When a sweep started, and the machine's load average then.
pub struct Started {
    at: Instant,
    load_average: Option<f64>,
}

impl Started {
    /// Now, and the load average now.
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            load_average: super::report::load_average(),
        }
    }
}

/// The report of a sweep that started at `started` (no disk or fio settings).
pub fn report_of(
    config: &EngineConfig,
    args: &BenchArgs,
    started: Started,
    points: Vec<Point>,
    skipped: Vec<String>,
) -> Report {
    let mut machine = Machine::detect();
    machine.load_average_after = super::report::load_average();
    machine.load_average_before = started.load_average;
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
            gpu_method: args.gpu_method,
            iterations: args.iterations,
            disk_dir: None,
            direct_io: None,
            small_pages: args.small_pages,
            seed: args.seed,
        },
        fio: "no disk paths in this sweep".to_string(),
        two_node: None,
        duration_s: started.at.elapsed().as_secs_f64(),
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
        BenchPath::LayersH2d => "contiguous(pinned)->layers(device)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::GpuMethod;

    /// The reference of GPU points is one plain DMA copy whatever method the points use, so
    /// that a forced method is never measured against itself.
    #[test]
    fn gpu_references_use_one_dma_copy_whatever_the_method() {
        for method in GpuMethod::ALL {
            let config = EngineConfig {
                gpu_method: method.into(),
                ..EngineConfig::default()
            };
            let reference = gpu_reference_config(&config);
            assert_eq!(reference.gpu_method, CopyMethod::PerCopy, "{method:?}");
            assert_eq!(
                (reference.bounce_bytes, reference.queue_depth),
                (config.bounce_bytes, config.queue_depth)
            );
        }
    }
}
