//! What a sweep found: the JSON report and its table.

use super::Pattern;
use super::fio::FioRun;
use super::sweep::human;
use serde::Serialize;
use std::fmt::Write as _;

/// The whole sweep.
#[derive(Debug, Serialize)]
pub struct Report {
    pub kvmem_version: &'static str,
    pub unix_time: u64,
    pub machine: Machine,
    pub settings: Settings,
    /// fio's version and settings, or why there is no fio comparison.
    pub fio: String,
    /// Two-node mode: the initiator, the target, its address and blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub two_node: Option<String>,
    pub duration_s: f64,
    pub points: Vec<Point>,
    pub skipped: Vec<String>,
}

/// The machine the sweep ran on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    /// 1-minute load average when the sweep started and ended: other work on the machine.
    pub load_average_before: Option<f64>,
    pub load_average_after: Option<f64>,
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            load_average_before: None,
            load_average_after: None,
        }
    }
}

/// The engine settings the sweep used.
#[derive(Debug, Serialize)]
pub struct Settings {
    pub host_threads: usize,
    pub queue_depth: u32,
    pub max_io_bytes: usize,
    pub disk_backend: &'static str,
    /// How GPU copy lists were executed (`--gpu-method`).
    pub gpu_method: super::GpuMethod,
    pub iterations: usize,
    pub disk_dir: Option<String>,
    /// Whether the disk file is open with O_DIRECT (false: the file system refused it).
    pub direct_io: Option<bool>,
    /// Host buffers in 4 KiB pages (`--small-pages`) rather than kvmem's huge-page-backed ones.
    pub small_pages: bool,
    pub seed: u64,
}

/// Order statistics of a set of timings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (all zero for none).
    pub fn of(samples: &[f64]) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                min: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            min: v[0],
            p50: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }

    pub fn scaled(self, k: f64) -> Self {
        Self {
            min: self.min * k,
            p50: self.p50 * k,
            p90: self.p90 * k,
            p99: self.p99 * k,
            max: self.max * k,
        }
    }
}

/// One point of the sweep.
#[derive(Debug, Serialize)]
pub struct Point {
    pub path: &'static str,
    /// Disk points: the disk backend that executed the block transfer and its reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_backend: Option<&'static str>,
    pub pattern: Pattern,
    pub block_bytes: usize,
    pub blocks: usize,
    pub bytes: usize,
    /// Copies after the planner merged adjacent blocks.
    pub copies: usize,
    pub iterations: usize,
    /// Median bandwidth of the block transfer (planning included).
    pub gib_s: f64,
    /// Median bandwidth of the reference: one copy of the same bytes over the same path.
    pub reference_gib_s: f64,
    /// How the reference moved its bytes: the fastest plain way over the path, whatever
    /// method the block transfer used (GPU paths: one `cuMemcpyAsync`).
    pub reference_method: &'static str,
    /// Block transfer over reference (medians).
    pub ratio: f64,
    /// Median time planning the request takes (validating, building and merging the copy list),
    /// timed apart from the transfer, in ms.
    pub plan_ms: f64,
    /// Reference over the block transfer's time less its planning time, medians (an upper bound
    /// where the transfer plans while its first copies run).
    pub exec_ratio: f64,
    /// Per-transfer latency of the block transfer.
    pub latency_ms: Percentiles,
    pub reference_latency_ms: Percentiles,
    pub fio: Option<FioPoint>,
    /// Host path only: one `memcpy` of the same bytes on one thread.
    pub memcpy: Option<MemcpyPoint>,
    /// Bytes of the destination compared with their source after one block transfer into a
    /// poisoned destination, before timing (every block pair; the run fails on a difference).
    pub verified_bytes: u64,
    /// Chunk pairs per transfer before merging (blocks times the chunks of each block).
    pub chunks: usize,
    /// CPU time of the thread that submits the transfer (building and enqueueing its copies;
    /// planning excluded), median over the timed runs, divided by [`chunks`](Self::chunks), in
    /// microseconds. `None` where the path does not measure it.
    pub submit_cpu_us_per_chunk: Option<f64>,
    /// `--with-compute`, GPU points: the block transfer beside an SM-saturating kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputePoint>,
}

/// A GPU point's block transfer beside the compute kernel (`--with-compute`), same run.
#[derive(Debug, Serialize)]
pub struct ComputePoint {
    /// The kernel's window alone (`launches` back-to-back launches), median, ms.
    pub kernel_alone_ms: f64,
    /// The same window with the point's transfers running back to back beside it, median, ms.
    pub kernel_with_copy_ms: f64,
    /// `kernel_with_copy_ms / kernel_alone_ms - 1` (0.03 = 3% slower).
    pub slowdown: f64,
    /// Kernel launches per window (each about 1 ms alone).
    pub launches: usize,
    /// FMA iterations per chain per launch (calibrated once per sweep).
    pub iterations_per_launch: u32,
    /// Median bandwidth of the block transfers beside the kernel, GiB/s.
    pub copy_gib_s: f64,
    /// `copy_gib_s` over the point's reference alone (one DMA copy, no kernel).
    pub copy_ratio: f64,
    /// Block transfers timed beside the kernel.
    pub transfers: usize,
}

/// One single-threaded `memcpy` of the same bytes (host path).
#[derive(Debug, Serialize)]
pub struct MemcpyPoint {
    pub gib_s: f64,
    /// kvmem's block transfer over the memcpy (medians).
    pub ratio: f64,
}

/// fio at the same block size, pattern and queue depth.
#[derive(Debug, Serialize)]
pub struct FioPoint {
    pub gib_s: Option<f64>,
    /// kvmem's block transfer over fio (medians).
    pub ratio: Option<f64>,
    /// fio's per-request completion latency, median over runs, in microseconds.
    pub clat_us: Option<Percentiles>,
    pub runs: usize,
    pub error: Option<String>,
}

impl FioPoint {
    pub fn failed(e: String) -> Self {
        Self {
            gib_s: None,
            ratio: None,
            clat_us: None,
            runs: 0,
            error: Some(e),
        }
    }

    pub fn from_runs(runs: &[FioRun], kvmem_gib_s: f64) -> Self {
        let bw: Vec<f64> = runs.iter().map(|r| r.bytes_per_s).collect();
        let gib = Percentiles::of(&bw).p50 / f64::from(1u32 << 30);
        let med =
            |f: fn(&FioRun) -> f64| Percentiles::of(&runs.iter().map(f).collect::<Vec<_>>()).p50;
        Self {
            gib_s: Some(gib),
            ratio: (gib > 0.0).then(|| kvmem_gib_s / gib),
            clat_us: Some(Percentiles {
                min: med(|r| r.clat_us.min),
                p50: med(|r| r.clat_us.p50),
                p90: med(|r| r.clat_us.p90),
                p99: med(|r| r.clat_us.p99),
                max: med(|r| r.clat_us.max),
            }),
            runs: runs.len(),
            error: None,
        }
    }
}

/// The report as a fixed-width table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let s = &r.settings;
    let _ = writeln!(
        out,
        "kvmem bench {} on {} ({} cpus, Linux {}); {} host threads, disk: {} queue depth {}{}, GPU method {}, {} runs per point, host buffers in {} pages",
        r.kvmem_version,
        r.machine.cpu,
        r.machine.cpus,
        r.machine.kernel,
        s.host_threads,
        s.disk_backend,
        s.queue_depth,
        match s.direct_io {
            Some(true) => ", O_DIRECT".to_string(),
            Some(false) => ", BUFFERED (file system refused O_DIRECT)".to_string(),
            None => String::new(),
        },
        s.gpu_method.name(),
        s.iterations,
        if s.small_pages {
            "4 KiB"
        } else {
            "huge (THP, where allowed)"
        }
    );
    let _ = writeln!(out, "fio: {}", r.fio);
    if let Some(t) = &r.two_node {
        let _ = writeln!(out, "two-node: {t}");
    }
    let _ = writeln!(
        out,
        "{:<23} {:<10} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {:>8} {:>6} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7} {:>11} {:>10} {:>9}",
        "path",
        "pattern",
        "block",
        "blocks",
        "copies",
        "GiB/s",
        "ref GiB/s",
        "ratio",
        "plan ms",
        "exec",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "baseline",
        "GiB/s",
        "vs it",
        "sub us/chk",
        "GiB/s+comp",
        "comp slow"
    );
    for p in &r.points {
        let (base, base_bw, base_ratio) = match (&p.fio, &p.memcpy) {
            (Some(f), _) => match (f.gib_s, f.ratio) {
                (Some(g), Some(x)) => ("fio", format!("{g:.3}"), format!("{x:.2}x")),
                _ => ("fio", "failed".to_string(), "-".to_string()),
            },
            (None, Some(m)) => (
                "memcpy",
                format!("{:.3}", m.gib_s),
                format!("{:.2}x", m.ratio),
            ),
            (None, None) => ("-", "-".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            out,
            "{:<23} {:<10} {:>6} {:>6} {:>6} {:>8.3} {:>9.3} {:>5.2}x {:>8.3} {:>5.2}x {:>9.3} {:>9.3} {:>9.3} {:>8} {:>9} {:>7} {:>11} {:>10} {:>9}",
            p.path,
            format!("{:?}", p.pattern).to_lowercase(),
            human(p.block_bytes),
            p.blocks,
            p.copies,
            p.gib_s,
            p.reference_gib_s,
            p.ratio,
            p.plan_ms,
            p.exec_ratio,
            p.latency_ms.p50,
            p.latency_ms.p90,
            p.latency_ms.p99,
            base,
            base_bw,
            base_ratio,
            p.submit_cpu_us_per_chunk
                .map_or("-".to_string(), |us| format!("{us:.4}")),
            p.compute
                .as_ref()
                .map_or("-".to_string(), |c| format!("{:.3}", c.copy_gib_s)),
            p.compute
                .as_ref()
                .map_or("-".to_string(), |c| format!("{:+.1}%", c.slowdown * 100.0))
        );
    }
    for p in r
        .points
        .iter()
        .filter_map(|p| p.fio.as_ref()?.error.as_ref())
        .take(1)
    {
        let _ = writeln!(out, "fio failed: {p}");
    }
    for s in &r.skipped {
        let _ = writeln!(out, "skipped: {s}");
    }
    let _ = writeln!(
        out,
        "ratio: block transfer (planning included) / reference (one copy of the same bytes over the same path), medians; \
         plan ms: planning the request, timed apart; exec: the ratio with that time taken out (an \
         upper bound where the transfer plans its rest while its first copies run: pinned and \
         device memory at both ends, 4,096 chunks or more); \
         baseline: fio (disk, same block size, pattern and queue depth) or one single-threaded memcpy \
         (host); latency per transfer; sub us/chk: CPU time of the submitting thread per chunk \
         (building and enqueueing the copies: the call's less planning's), median; GiB/s+comp, comp slow \
         (--with-compute): the block transfer's bandwidth beside an SM-saturating FMA kernel, and \
         that kernel's slowdown against its time alone (medians, same run); {:.0} s in all; load average {} -> {}",
        r.duration_s,
        r.machine
            .load_average_before
            .map_or("?".into(), |l| format!("{l:.2}")),
        r.machine
            .load_average_after
            .map_or("?".into(), |l| format!("{l:.2}"))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(
            (p.min, p.p50, p.p90, p.p99, p.max),
            (1.0, 3.0, 5.0, 5.0, 5.0)
        );
        let p = Percentiles::of(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        assert_eq!(Percentiles::of(&[]).p50, 0.0);
    }
}
