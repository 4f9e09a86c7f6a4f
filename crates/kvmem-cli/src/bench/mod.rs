//! `kvmem bench`: sweep the transfer paths this machine has over block sizes, patterns and
//! directions, each point against a same-run reference, and report a table, JSON and a plot.
//!
//! Every point times a block transfer (`copy_blocks`, planning included) and, interleaved with
//! it, its *reference*: one copy of the same number of bytes over the same path as a single
//! region. Interleaving keeps slow drifts of a shared machine (a VM's disk, a busy neighbour) out
//! of the ratio. Disk points are also compared with `fio` (`O_DIRECT`, `io_uring`, the same
//! queue depth, block size and pattern, on a file in the same directory), run in the same
//! interleaved loop when `fio` is on `PATH`.

mod compute;
mod fio;
mod memory;
mod nixl;
pub(crate) mod plot;
mod point;
mod report;
mod sweep;
mod two_node;
mod verify;

use crate::error::Result;
use clap::{Args, ValueEnum};
use kvmem::transfer::CopyMethod;
use std::path::PathBuf;

/// A transfer path the bench can sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchPath {
    /// Host memory to host memory.
    Host,
    /// Host memory to a file (`O_DIRECT` writes).
    DiskWrite,
    /// A file to host memory (`O_DIRECT` reads).
    DiskRead,
    /// Pinned host memory to GPU memory.
    H2d,
    /// GPU memory to pinned host memory.
    D2h,
    /// GPU memory to GPU memory.
    D2d,
    /// A layer-separate GPU layout (32 layers, k/v, vLLM's block-second order) to a fully
    /// contiguous pinned layout; the block size is the chunk size.
    LayersD2h,
    /// The reverse of `layers-d2h`: a fully contiguous pinned layout to a layer-separate GPU
    /// layout (an engine's onboard).
    LayersH2d,
    /// NIXL WRITE of host blocks to a second agent in this process over UCX (loopback peer).
    NixlWrite,
    /// NIXL READ of host blocks from a second agent in this process over UCX (loopback peer).
    NixlRead,
}

impl BenchPath {
    fn touches_disk(self) -> bool {
        matches!(self, Self::DiskWrite | Self::DiskRead)
    }

    fn uses_nixl(self) -> bool {
        matches!(self, Self::NixlWrite | Self::NixlRead)
    }

    fn needs_gpu(self) -> bool {
        matches!(
            self,
            Self::H2d | Self::D2h | Self::D2d | Self::LayersD2h | Self::LayersH2d
        )
    }

    /// True for the layer-separate GPU paths (32 layers × k/v chunks per block).
    fn is_layered(self) -> bool {
        matches!(self, Self::LayersD2h | Self::LayersH2d)
    }

    /// The paths swept by default: the host and disk paths, plus the GPU paths where a CUDA
    /// device is present.
    fn defaults() -> Vec<Self> {
        let mut paths = vec![Self::Host, Self::DiskWrite, Self::DiskRead];
        if kvmem::nixl::ensure_loaded().is_ok() {
            paths.extend([Self::NixlWrite, Self::NixlRead]);
        }
        if kvmem::cuda::device_count().is_ok_and(|n| n > 0) {
            paths.extend([Self::H2d, Self::D2h, Self::D2d, Self::LayersD2h]);
        }
        paths
    }
}

/// How GPU copy lists are executed: one of the library's [`CopyMethod`]s, under the name that
/// `--gpu-method` takes and the reports print (see `kvmem::cuda::batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMethod {
    method: CopyMethod,
    name: &'static str,
    help: &'static str,
}

impl GpuMethod {
    /// The methods `--gpu-method` offers, the library's default first: the one table of their
    /// names.
    pub const ALL: [Self; 6] = [
        Self::of(CopyMethod::Auto, "auto", "Chosen by copy size"),
        Self::of(CopyMethod::Batched, "batched", "`cuMemcpyBatchAsync`"),
        Self::of(CopyMethod::Kernel, "kernel", "kvmem's PTX copy kernel"),
        Self::of(
            CopyMethod::PerCopy,
            "per-copy",
            "One `cuMemcpyAsync` per copy",
        ),
        Self::of(
            CopyMethod::Staged,
            "staged",
            "Gather/scatter on the device through a staging ring with the copy kernel, one DMA \
             per staging slot, pipelined",
        ),
        Self::of(
            CopyMethod::AutoBesideCompute,
            "auto-beside-compute",
            "Auto for an engine that computes meanwhile: the staged method where auto would use \
             the copy kernel between device and pinned host memory",
        ),
    ];

    const fn of(method: CopyMethod, name: &'static str, help: &'static str) -> Self {
        Self { method, name, help }
    }

    /// The method's command-line name.
    pub fn name(self) -> &'static str {
        self.name
    }
}

impl Default for GpuMethod {
    fn default() -> Self {
        Self::ALL[0]
    }
}

impl ValueEnum for GpuMethod {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name).help(self.help))
    }
}

impl serde::Serialize for GpuMethod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl From<GpuMethod> for CopyMethod {
    fn from(m: GpuMethod) -> Self {
        m.method
    }
}

/// How host ↔ disk transfers are executed (see `kvmem::transfer::DiskBackend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum DiskBackendArg {
    /// Linux `io_uring`, `O_DIRECT`.
    #[value(name = "io_uring", alias = "io-uring")]
    IoUring,
    /// NIXL's POSIX backend (Linux AIO), `O_DIRECT`.
    #[value(name = "nixl-posix")]
    NixlPosix,
}

impl From<DiskBackendArg> for kvmem::transfer::DiskBackend {
    fn from(b: DiskBackendArg) -> Self {
        match b {
            DiskBackendArg::IoUring => Self::IoUring,
            DiskBackendArg::NixlPosix => Self::NixlPosix,
        }
    }
}

/// Which blocks a point copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Blocks 0..n to blocks 0..n: the planner merges them into a few large copies.
    Sequential,
    /// A random permutation of the blocks on each side: nothing merges.
    Scattered,
    /// Blocks in a random order into blocks 0..n: scattered blocks gathered into one contiguous
    /// run (an engine's offload, with a device source and a host destination).
    Gather,
    /// Blocks 0..n into blocks in a random order: one contiguous run scattered into blocks
    /// (an engine's onboard, with a host source and a device destination).
    Scatter,
}

impl Pattern {
    /// True when the source blocks are taken in a random order.
    pub fn src_scattered(self) -> bool {
        matches!(self, Self::Scattered | Self::Gather)
    }

    /// True when the destination blocks are taken in a random order.
    pub fn dst_scattered(self) -> bool {
        matches!(self, Self::Scattered | Self::Scatter)
    }
}

/// A fixed set of points that models one engine's transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// vLLM's KV offload: 32 layers × k/v, each chunk one 16-token block of one layer's K or V
    /// (8 heads × 128 × bf16 = 32 KiB; 16 KiB with 4 heads), layer-separate on the GPU and
    /// contiguous per block on the host: `layers-d2h` gather (the offload) and `layers-h2d`
    /// scatter (the onboard), at 16 and 32 KiB chunks unless `--sizes` says otherwise.
    Vllm,
}

impl Preset {
    /// The (path, pattern) pairs of the preset.
    fn points(self) -> Vec<(BenchPath, Pattern)> {
        match self {
            Self::Vllm => vec![
                (BenchPath::LayersD2h, Pattern::Gather),
                (BenchPath::LayersH2d, Pattern::Scatter),
            ],
        }
    }

    /// The chunk sizes of the preset.
    fn sizes(self) -> Vec<usize> {
        match self {
            Self::Vllm => vec![16 << 10, 32 << 10],
        }
    }
}

/// Block sizes swept without `--sizes` or `--preset`.
const DEFAULT_SIZES: [usize; 8] = [
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
    16 << 20,
];

/// The side a process plays in the two-node mode (see `docs/TWO_NODE.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Registers `--blocks` blocks of `--block-size` bytes, serves its metadata on NIXL's
    /// listener socket (`--listen-port`) and waits until an initiator is done.
    Target,
    /// Fetches the target's metadata from `--peer`, sweeps WRITE/READ points against its
    /// blocks (every byte checked) and tells it to exit.
    Initiator,
}

/// Arguments of `kvmem bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Paths to sweep (comma-separated). Default: host and disk, the NIXL loopback paths when the
    /// NIXL runtime loads, and the GPU paths when a CUDA device is present.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub paths: Option<Vec<BenchPath>>,
    /// Bytes moved per GPU transfer (pinned/device paths).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub gpu_bytes: usize,
    /// Bytes moved per layer-separate transfer at most; the block count is capped at 1024.
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub layers_bytes: usize,
    /// How GPU copy lists are executed.
    #[arg(long, value_enum, default_value_t = GpuMethod::default())]
    pub gpu_method: GpuMethod,
    /// Device memory per GPU for the staged method's ring (K/M/G suffixes; default 256M, eight
    /// slots).
    #[arg(long, value_parser = parse_size)]
    pub staging: Option<usize>,
    /// Block sizes (comma-separated; K/M/G suffixes are powers of 1024). Default:
    /// 4K,16K,64K,256K,1M,2M,4M,16M, or the preset's.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<usize>>,
    /// Block-id patterns (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Pattern::Sequential, Pattern::Scattered])]
    pub patterns: Vec<Pattern>,
    /// Sweep a preset's paths and patterns instead of `--paths` × `--patterns`.
    #[arg(long, value_enum, conflicts_with_all = ["paths", "patterns", "role"])]
    pub preset: Option<Preset>,
    /// Bytes moved per host transfer; the block count is this divided by the block size.
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub host_bytes: usize,
    /// Bytes moved per disk transfer (and the size of the disk and fio files).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub disk_bytes: usize,
    /// Bytes moved per NIXL transfer (and the size of the peer's region).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub nixl_bytes: usize,
    /// Fixed number of blocks per transfer, overriding --host-bytes/--disk-bytes/--nixl-bytes;
    /// with `--role target`, the number of blocks the target registers (default 64).
    #[arg(long)]
    pub blocks: Option<usize>,
    /// Timed runs per point (each of the transfer, its reference and fio).
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// Disk requests in flight, for kvmem and fio alike.
    #[arg(long, default_value_t = 32)]
    pub queue_depth: u32,
    /// The disk backend of the disk points (default: the engine's default).
    #[arg(long, value_enum)]
    pub disk_backend: Option<DiskBackendArg>,
    /// Block sizes at which each disk point also times the other disk backend, interleaved with
    /// the point's own runs, as a point of its own (`host->disk (nixl-posix)` and so on).
    /// Comma-separated; `none` for no comparison.
    #[arg(long, value_delimiter = ',', value_parser = parse_size_or_none, default_value = "1M")]
    pub compare_disk_backend: Vec<Option<usize>>,
    /// Largest single disk request; longer runs of merged blocks are split (default: the
    /// engine's).
    #[arg(long, value_parser = parse_size)]
    pub max_io: Option<usize>,
    /// Host copy threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Directory for the disk-path files (default: `$KVMEM_DISK_DIR`, else the temp dir).
    #[arg(long)]
    pub disk_dir: Option<PathBuf>,
    /// Where to write bench.json, bench.svg and table.txt.
    #[arg(long, default_value = "bench-out")]
    pub out_dir: PathBuf,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Skip the fio comparison even when fio is installed.
    #[arg(long)]
    pub no_fio: bool,
    /// Host buffers in 4 KiB pages (`MADV_NOHUGEPAGE`), as `fio` and `malloc` get them, instead
    /// of kvmem's `SystemStorage` with transparent huge pages.
    #[arg(long)]
    pub small_pages: bool,
    /// Two-node mode: play this role instead of sweeping this machine's paths.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Two-node mode: the port of the target's NIXL listener socket.
    #[arg(long, default_value_t = 8888)]
    pub listen_port: u16,
    /// Two-node mode: the port of the initiator's own NIXL listener (default: a free port).
    #[arg(long)]
    pub initiator_port: Option<u16>,
    /// Two-node mode (initiator): the target's listener, `HOST:PORT` (IPv4).
    #[arg(long)]
    pub peer: Option<String>,
    /// Two-node mode: the target agent's NIXL name (the initiator fetches metadata by name).
    #[arg(long, default_value = "kvmem-bench-target")]
    pub name: String,
    /// Two-node mode (target): bytes per registered block.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub block_size: usize,
    /// Two-node mode (target): seconds to wait for an initiator to finish before giving up.
    #[arg(long, default_value_t = 600)]
    pub target_wait: u64,
    /// Seed of the scattered block orders.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// GPU points: also run each block transfer beside an SM-saturating compute kernel on its
    /// own stream (an engine's matmuls), and report the copy bandwidth beside it and the
    /// kernel's slowdown (its time alone vs beside the copies, same run).
    #[arg(long)]
    pub with_compute: bool,
}

impl BenchArgs {
    /// The block sizes to sweep: `--sizes`, else the preset's, else [`DEFAULT_SIZES`].
    pub fn sizes(&self) -> Vec<usize> {
        match (&self.sizes, self.preset) {
            (Some(s), _) => s.clone(),
            (None, Some(p)) => p.sizes(),
            (None, None) => DEFAULT_SIZES.to_vec(),
        }
    }

    /// The (path, pattern) pairs to sweep: the preset's, else `--paths` × `--patterns`.
    fn path_patterns(&self) -> Vec<(BenchPath, Pattern)> {
        if let Some(p) = self.preset {
            return p.points();
        }
        let paths = self.paths.clone().unwrap_or_else(BenchPath::defaults);
        paths
            .iter()
            .flat_map(|&path| self.patterns.iter().map(move |&pattern| (path, pattern)))
            .collect()
    }
}

/// The sweep's progress bar over `points` points of `iterations` timed runs and a warm-up each.
fn progress_bar(points: usize, iterations: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new((points * (iterations + 1)) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// [`parse_size`], or `None` for `none`.
fn parse_size_or_none(s: &str) -> std::result::Result<Option<usize>, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    parse_size(s).map(Some)
}

/// Parses `4096`, `4K`, `4KiB`, `16M`, `1G` (powers of 1024).
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let lower = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower, 0),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size: use e.g. 4096, 4K, 64KiB, 16M"))?;
    let v = n
        .checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if v == 0 {
        return Err("sizes must be positive".into());
    }
    Ok(v)
}

/// Runs `kvmem bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let report = match args.role {
        Some(Role::Target) => return two_node::target(args),
        Some(Role::Initiator) => two_node::initiator(args)?,
        None => sweep::run(args)?,
    };
    std::fs::create_dir_all(&args.out_dir)?;
    let table = report::table(&report);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out_dir.join("table.txt"), &table)?;
    std::fs::write(args.out_dir.join("bench.json"), &json)?;
    let [svg, png] = plot::draw(&report, &args.out_dir.join("bench.svg"))?;
    if args.json {
        println!("{json}");
    } else {
        print!("{table}");
        println!(
            "wrote {}, {}, {} and {}",
            args.out_dir.join("table.txt").display(),
            args.out_dir.join("bench.json").display(),
            svg.display(),
            png.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{CopyMethod, GpuMethod, ValueEnum, parse_size};

    /// Each name parses to its own method, the default is the library's, and a method has one
    /// name only.
    #[test]
    fn gpu_methods_parse_to_the_library_methods() {
        assert_eq!(GpuMethod::default().method, CopyMethod::default());
        for m in GpuMethod::ALL {
            assert_eq!(
                GpuMethod::from_str(m.name(), false).map(CopyMethod::from),
                Ok(m.method)
            );
            let same = GpuMethod::ALL
                .iter()
                .filter(|o| o.method == m.method || o.name() == m.name());
            assert_eq!(same.count(), 1, "{m:?}");
        }
        assert_eq!(
            GpuMethod::from_str("auto-beside-compute", false).map(CopyMethod::from),
            Ok(CopyMethod::AutoBesideCompute)
        );
        assert!(GpuMethod::from_str("dma", false).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
