//! `kvmem replay`: the block cache against a request trace (Mooncake's FAST'25 format).
//!
//! Semantics, exactly, so that results compare across tools: for each request in file order,
//! its `hash_ids` are looked up as a prefix (hits stop at the first miss; a block counts for the
//! fastest tier that holds it: GPU, host, disk); the blocks found below the GPU tier are loaded
//! into the request's GPU working buffer; then every block of the request is stored in order
//! (present ones are touched). The GPU tier stands for the engine's own prefix cache: its hits
//! move nothing. The prefix hit rate is the sum over requests of the leading blocks found,
//! divided by the sum of all blocks. From the same pass come two references: the hit rate with
//! unlimited capacity, and that of one plain LRU over the total capacity (GPU + host + disk
//! blocks).

use crate::error::{CliError, Result};
use kvmem::Completion;
use kvmem::cache::{
    Admission, BlockCache, BlockKey, CacheConfig, Capacity, PolicyKind, WritePolicy,
};
use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
use kvmem::{Buffer, SystemStorage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `kvmem replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The trace: one JSON object per line with `timestamp` (ms), `input_length`,
    /// `output_length` and `hash_ids` (one id per block-sized prefix).
    pub trace: PathBuf,
    /// Model whose KV geometry sizes the blocks.
    #[arg(long, value_parser = ["llama3-8b", "llama3-70b", "qwen2.5-7b"], default_value = "llama3-8b")]
    pub model: String,
    /// Layers (overrides the model's).
    #[arg(long)]
    pub layers: Option<usize>,
    /// KV heads (overrides the model's).
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Head size (overrides the model's).
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// Bytes per element (overrides the model's: 2 for bf16/fp16, 1 for fp8).
    #[arg(long)]
    pub dtype_bytes: Option<usize>,
    /// Tokens per block (the trace's ids are per 512 tokens).
    #[arg(long, default_value_t = 512)]
    pub block_tokens: usize,
    /// Override the block size in bytes (flat blocks), so a small machine can replay with
    /// small blocks; a multiple of 4096 with a disk tier.
    #[arg(long)]
    pub block_bytes: Option<usize>,
    /// Blocks in the GPU tier (the engine's prefix cache; 0 turns it off).
    #[arg(long, default_value_t = 0)]
    pub gpu_blocks: usize,
    /// Blocks in the host tier.
    #[arg(long, default_value_t = 1024)]
    pub host_blocks: usize,
    /// Blocks in the disk tier (0 turns it off).
    #[arg(long, default_value_t = 0)]
    pub disk_blocks: usize,
    /// GPU tier in GB instead of blocks.
    #[arg(long)]
    pub gpu_gb: Option<f64>,
    /// Host tier in GB instead of blocks.
    #[arg(long)]
    pub host_gb: Option<f64>,
    /// Disk tier in GB instead of blocks.
    #[arg(long)]
    pub disk_gb: Option<f64>,
    /// Directory of the disk tier (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub disk_dir: Option<PathBuf>,
    /// Eviction policy: lru or s3fifo.
    #[arg(long, default_value = "lru")]
    pub policy: PolicyKind,
    /// Evict the later blocks of prefix chains first.
    #[arg(long)]
    pub chain_aware: bool,
    /// Disk write policy: write-back, write-through or host-only.
    #[arg(long, default_value = "write-back", value_parser = ["write-back", "write-through", "host-only"])]
    pub write_policy: String,
    /// Admit blocks to disk only on their second use.
    #[arg(long)]
    pub admit_second_use: bool,
    /// Pace requests at F times real time (by their timestamps); as fast as possible without.
    #[arg(long)]
    pub speed: Option<f64>,
    /// Replay only the first N requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Serve the cache's metrics in Prometheus text format on HOST:PORT (`/metrics`) while
    /// the replay runs.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// With `--metrics-addr`: keep serving this many seconds after the report is printed, so
    /// that a scraper reads the final values.
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub metrics_hold: f64,
    /// Sweep the host tier over these capacities in blocks (comma-separated), replaying the
    /// trace once per capacity and policy, and report hit rate against capacity.
    #[arg(long, value_delimiter = ',', value_name = "BLOCKS,...")]
    pub capacities: Vec<usize>,
    /// The policies of the sweep (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lru,s3fifo",
        value_name = "POLICY,..."
    )]
    pub policies: Vec<PolicyKind>,
    /// Where the sweep's plot goes: this SVG and a PNG beside it.
    #[arg(long, default_value = "replay-hit-rate.svg")]
    pub plot: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    timestamp: f64,
    hash_ids: Vec<u64>,
}

/// A plain LRU set of ids (the GPU tier's bookkeeping and the LRU reference).
struct LruSet {
    cap: usize,
    tick: u64,
    at: HashMap<u64, u64>,
    order: BTreeMap<u64, u64>,
}

impl LruSet {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            tick: 0,
            at: HashMap::new(),
            order: BTreeMap::new(),
        }
    }
    fn contains(&self, id: u64) -> bool {
        self.at.contains_key(&id)
    }
    /// Uses `id`: moves it to the front, inserting it (and evicting the oldest) if absent.
    fn access(&mut self, id: u64) {
        if self.cap == 0 {
            return;
        }
        self.tick += 1;
        if let Some(old) = self.at.insert(id, self.tick) {
            self.order.remove(&old);
        } else if self.at.len() > self.cap
            && let Some((_, victim)) = self.order.pop_first()
        {
            self.at.remove(&victim);
        }
        self.order.insert(self.tick, id);
    }
}

/// Per-tier results.
#[derive(Debug, Default, Serialize)]
pub struct TierReport {
    /// Blocks in the tier.
    pub blocks: usize,
    /// Prefix blocks found in this tier, over all blocks.
    pub hit_rate: f64,
    /// Prefix blocks found in this tier.
    pub hits: u64,
    /// Bytes copied into the tier.
    pub bytes_in: u64,
    /// Bytes copied out of the tier.
    pub bytes_out: u64,
    /// Blocks evicted from the tier.
    pub evictions: u64,
}

/// The references from the same pass.
#[derive(Debug, Default, Serialize)]
pub struct References {
    /// Hit rate with unlimited capacity.
    pub infinite_hit_rate: f64,
    /// Hit rate of one plain LRU over the total capacity.
    pub lru_hit_rate: f64,
    /// Its capacity in blocks.
    pub lru_blocks: usize,
}

/// The report of a replay.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Requests replayed.
    pub requests: usize,
    /// Blocks in them.
    pub blocks: u64,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Prefix hit rate over all tiers.
    pub hit_rate: f64,
    /// Per tier: `gpu`, `host`, `disk`.
    pub tiers: BTreeMap<String, TierReport>,
    /// The references.
    pub reference: References,
    /// What memory the GPU tier's working buffer is.
    pub gpu_memory: String,
    /// What memory the host tier is.
    pub host_memory: String,
    /// Eviction policy.
    pub policy: String,
    /// Bytes moved between tiers (host in + host out + disk in + disk out, GPU ↔ host counted once).
    pub bytes_moved: u64,
    /// Bytes moved over the time spent in cache operations, GB/s.
    pub achieved_gb_s: f64,
    /// Per request with blocks below the GPU tier: time to bring its prefix back, ms.
    pub prefix_load_ms: Percentiles,
    /// Wall time of the replay, s.
    pub wall_s: f64,
    /// Blocks the disk admission filter refused.
    pub admissions_refused: u64,
    /// Disk blocks that failed their checksum (dropped).
    pub corrupt: u64,
}

/// p50 / p90 / p99 of a sample.
#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Samples.
    pub n: usize,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            n: v.len(),
        }
    }
}

fn model_geometry(args: &ReplayArgs) -> Result<LayoutConfig> {
    if let Some(bytes) = args.block_bytes {
        if bytes == 0 {
            return Err(CliError::Replay("--block-bytes must be positive".into()));
        }
        return Ok(LayoutConfig {
            num_blocks: 1,
            num_layers: 1,
            outer_dim: 1,
            page_size: 1,
            inner_dim: bytes,
            dtype_bytes: 1,
        });
    }
    // (layers, KV heads, head size, bytes per element), from the models' published configs.
    let (layers, heads, dim, dtype) = match args.model.as_str() {
        "llama3-70b" => (80, 8, 128, 2),
        "qwen2.5-7b" => (28, 4, 128, 2),
        _ => (32, 8, 128, 2),
    };
    Ok(LayoutConfig {
        num_blocks: 1,
        num_layers: args.layers.unwrap_or(layers),
        outer_dim: 2,
        page_size: args.block_tokens,
        inner_dim: args.kv_heads.unwrap_or(heads) * args.head_dim.unwrap_or(dim),
        dtype_bytes: args.dtype_bytes.unwrap_or(dtype),
    })
}

fn blocks_of(gb: Option<f64>, blocks: usize, block_bytes: usize) -> usize {
    match gb {
        Some(g) => (g * 1e9 / block_bytes as f64) as usize,
        None => blocks,
    }
}

/// Runs `kvmem replay`.
pub fn run(args: &ReplayArgs) -> Result<()> {
    if let Some(addr) = args.metrics_addr {
        crate::metrics::serve(addr)?;
    }
    if args.capacities.is_empty() {
        let report = replay(args)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_table(&report);
        }
    } else {
        let report = sweep(args)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_sweep(&report);
        }
    }
    if args.metrics_addr.is_some() && args.metrics_hold > 0.0 {
        use std::io::Write;
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs_f64(args.metrics_hold));
    }
    Ok(())
}

/// One point of a capacity sweep.
#[derive(Debug, Serialize)]
pub struct SweepPoint {
    /// Host tier capacity in blocks.
    pub host_blocks: usize,
    /// Eviction policy.
    pub policy: String,
    /// Prefix hit rate over all tiers.
    pub hit_rate: f64,
    /// Plain LRU over the same total capacity, from the same pass.
    pub lru_hit_rate: f64,
    /// That LRU's capacity in blocks (GPU + host + disk).
    pub lru_blocks: usize,
    /// Unlimited capacity, from the same pass.
    pub infinite_hit_rate: f64,
}

/// The report of a capacity sweep.
#[derive(Debug, Serialize)]
pub struct SweepReport {
    /// Requests replayed per point.
    pub requests: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// One point per capacity and policy, by policy then capacity.
    pub points: Vec<SweepPoint>,
    /// The plot's files (SVG, PNG).
    pub plot: Vec<PathBuf>,
}

/// Replays the trace once per capacity of `--capacities` and policy of `--policies`.
pub fn sweep(args: &ReplayArgs) -> Result<SweepReport> {
    let requests = read_trace(args)?;
    let mut caps = args.capacities.clone();
    caps.sort_unstable();
    caps.dedup();
    let mut points = Vec::new();
    let mut block_bytes = 0;
    for policy in &args.policies {
        for &host_blocks in &caps {
            let r = replay_trace(args, &requests, host_blocks, *policy)?;
            block_bytes = r.block_bytes;
            points.push(SweepPoint {
                host_blocks,
                policy: r.policy,
                hit_rate: r.hit_rate,
                lru_hit_rate: r.reference.lru_hit_rate,
                lru_blocks: r.reference.lru_blocks,
                infinite_hit_rate: r.reference.infinite_hit_rate,
            });
        }
    }
    let mut report = SweepReport {
        requests: requests.len(),
        block_bytes,
        points,
        plot: Vec::new(),
    };
    report.plot = crate::replay_plot::draw(&report, &args.plot)?.to_vec();
    Ok(report)
}

fn print_sweep(r: &SweepReport) {
    println!(
        "hit rate against host capacity: {} requests, blocks of {} bytes",
        r.requests, r.block_bytes
    );
    println!(
        "{:<12} {:>11} {:>9} {:>11} {:>11}",
        "policy", "host blocks", "hit rate", "plain LRU", "unlimited"
    );
    for p in &r.points {
        println!(
            "{:<12} {:>11} {:>8.2}% {:>10.2}% {:>10.2}%",
            p.policy,
            p.host_blocks,
            p.hit_rate * 100.0,
            p.lru_hit_rate * 100.0,
            p.infinite_hit_rate * 100.0
        );
    }
    let files: Vec<String> = r.plot.iter().map(|p| p.display().to_string()).collect();
    println!("plot: {}", files.join(", "));
}

fn read_trace(args: &ReplayArgs) -> Result<Vec<Request>> {
    let file = std::fs::File::open(&args.trace).map_err(|e| {
        CliError::Replay(format!(
            "cannot open the trace {}: {e}",
            args.trace.display()
        ))
    })?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        if args.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Request = serde_json::from_str(&line).map_err(|e| {
            CliError::Replay(format!(
                "{} line {}: {e}; expected {{\"timestamp\", \"hash_ids\", ...}}",
                args.trace.display(),
                n + 1
            ))
        })?;
        out.push(r);
    }
    Ok(out)
}

/// The GPU working buffer: device memory when a CUDA device is present, host memory otherwise.
fn working_buffer(config: LayoutConfig) -> Result<(BlockLayout, String)> {
    let chunk = config.chunk_bytes()?;
    let align = 1usize << chunk.trailing_zeros().min(12);
    if let Ok(device) = kvmem::cuda::CudaDevice::new(0) {
        let layout = BlockLayout::allocate(
            config,
            LayoutKind::LayerSeparate(kvmem::layout::BlockDim::Second),
            align,
            |n| Ok(Buffer::new(kvmem::DeviceStorage::new(&device, n)?)),
        )?;
        return Ok((layout, "device memory of GPU 0".into()));
    }
    let layout = BlockLayout::allocate(
        config,
        LayoutKind::LayerSeparate(kvmem::layout::BlockDim::Second),
        align,
        |n| Ok(Buffer::new(SystemStorage::new(n)?)),
    )?;
    Ok((
        layout,
        "host memory standing in for the GPU (no CUDA device here)".into(),
    ))
}

/// Replays the trace and returns the report.
pub fn replay(args: &ReplayArgs) -> Result<ReplayReport> {
    let requests = read_trace(args)?;
    let block_bytes = model_geometry(args)?.block_bytes()?;
    let host_blocks = blocks_of(args.host_gb, args.host_blocks, block_bytes);
    replay_trace(args, &requests, host_blocks, args.policy)
}

/// Replays `requests` with a host tier of `host_blocks` and eviction `policy` (the rest of the
/// configuration from `args`).
fn replay_trace(
    args: &ReplayArgs,
    requests: &[Request],
    host_blocks: usize,
    policy: PolicyKind,
) -> Result<ReplayReport> {
    let block = model_geometry(args)?;
    let block_bytes = block.block_bytes()?;
    let gpu_blocks = blocks_of(args.gpu_gb, args.gpu_blocks, block_bytes);
    let disk_blocks = blocks_of(args.disk_gb, args.disk_blocks, block_bytes);
    let longest = requests
        .iter()
        .map(|r| r.hash_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);

    let temp;
    let mut config = CacheConfig::new(block, Capacity::Blocks(host_blocks));
    config.policy = policy;
    config.chain_aware = args.chain_aware;
    config.fingerprint = format!("replay:{}", args.model);
    if disk_blocks > 0 {
        let dir = match &args.disk_dir {
            Some(d) => d.clone(),
            None => {
                temp = tempfile::tempdir()?;
                temp.path().to_path_buf()
            }
        };
        config = config.with_disk(dir, Capacity::Blocks(disk_blocks));
        if let Some(d) = config.disk.as_mut() {
            d.write = match args.write_policy.as_str() {
                "write-through" => WritePolicy::WriteThrough,
                "host-only" => WritePolicy::HostOnly,
                _ => WritePolicy::WriteBack,
            };
            if args.admit_second_use {
                d.admission = Admission::SecondUse;
            }
        }
    }
    let cache = BlockCache::open(config)?;
    let (work, gpu_memory) = working_buffer(LayoutConfig {
        num_blocks: longest,
        ..block
    })?;

    let mut gpu = LruSet::new(gpu_blocks);
    let mut lru = LruSet::new(gpu_blocks + host_blocks + disk_blocks);
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut hits, mut gpu_hits, mut host_hits, mut disk_hits, mut total) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut inf_hits, mut lru_hits) = (0u64, 0u64);
    let mut load_ms = Vec::new();
    let mut busy = Duration::ZERO;
    let timeout = Duration::from_secs(120);
    let start = Instant::now();
    let t0 = requests.first().map_or(0.0, |r| r.timestamp);
    // Stores go in runs of at most this many new blocks (a store cannot evict its own blocks
    // while it writes them).
    let run_max = host_blocks.max(1);
    for r in requests {
        if let Some(speed) = args.speed.filter(|s| *s > 0.0) {
            let due = Duration::from_secs_f64(((r.timestamp - t0) / 1e3 / speed).max(0.0));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let ids = &r.hash_ids;
        let keys: Vec<BlockKey> = ids.iter().map(|i| BlockKey::from_u64(*i)).collect();
        total += ids.len() as u64;
        inf_hits += ids.iter().take_while(|i| seen.contains(i)).count() as u64;
        lru_hits += ids.iter().take_while(|i| lru.contains(**i)).count() as u64;

        // The prefix, tier by tier.
        let mut below = Vec::new();
        for (i, (id, key)) in ids.iter().zip(&keys).enumerate() {
            if gpu.contains(*id) {
                gpu_hits += 1;
            } else {
                let res = cache.residency(*key);
                if res.host {
                    host_hits += 1;
                } else if res.disk {
                    disk_hits += 1;
                } else {
                    break;
                }
                below.push(i);
            }
            hits += 1;
        }
        let op = Instant::now();
        if !below.is_empty() {
            let ks: Vec<BlockKey> = below.iter().map(|i| keys[*i]).collect();
            let report = cache.load(&ks, &work, &below, timeout)?.wait()?;
            if !report.complete() {
                tracing::warn!(
                    failed = report.failed().count(),
                    "replay: some prefix blocks could not be loaded"
                );
            }
            load_ms.push(op.elapsed().as_secs_f64() * 1e3);
        }
        // Store in order: runs of present blocks are touched, runs of new ones stored.
        let mut i = 0;
        while i < keys.len() {
            let present = cache.residency(keys[i]).present();
            let mut j = i + 1;
            while j < keys.len()
                && cache.residency(keys[j]).present() == present
                && (present || j - i < run_max)
            {
                j += 1;
            }
            if present {
                cache.touch(&keys[i..j]);
            } else if host_blocks > 0 {
                let ids: Vec<usize> = (i..j).collect();
                cache.store(&keys[i..j], &work, &ids, timeout)?.wait()?;
            }
            i = j;
        }
        busy += op.elapsed();
        for id in ids {
            gpu.access(*id);
            lru.access(*id);
            seen.insert(*id);
        }
    }
    let wall = start.elapsed();
    let s = cache.stats();
    let rate = |h: u64| {
        if total == 0 {
            0.0
        } else {
            h as f64 / total as f64
        }
    };
    let mut tiers = BTreeMap::new();
    tiers.insert(
        "gpu".into(),
        TierReport {
            blocks: gpu_blocks,
            hit_rate: rate(gpu_hits),
            hits: gpu_hits,
            ..Default::default()
        },
    );
    tiers.insert(
        "host".into(),
        TierReport {
            blocks: host_blocks,
            hit_rate: rate(host_hits),
            hits: host_hits,
            bytes_in: s.host_bytes_in,
            bytes_out: s.host_bytes_out,
            evictions: s.evictions_host,
        },
    );
    tiers.insert(
        "disk".into(),
        TierReport {
            blocks: disk_blocks,
            hit_rate: rate(disk_hits),
            hits: disk_hits,
            bytes_in: s.disk_bytes_in,
            bytes_out: s.disk_bytes_out,
            evictions: s.evictions_disk,
        },
    );
    let moved = s.host_bytes_in + s.host_bytes_out + s.disk_bytes_in + s.disk_bytes_out;
    Ok(ReplayReport {
        requests: requests.len(),
        blocks: total,
        block_bytes,
        hit_rate: rate(hits),
        tiers,
        reference: References {
            infinite_hit_rate: rate(inf_hits),
            lru_hit_rate: rate(lru_hits),
            lru_blocks: gpu_blocks + host_blocks + disk_blocks,
        },
        gpu_memory,
        host_memory: cache.host_pool_kind().name().into(),
        policy: format!(
            "{}{}",
            policy.name(),
            if args.chain_aware { "+chain" } else { "" }
        ),
        bytes_moved: moved,
        achieved_gb_s: if busy.is_zero() {
            0.0
        } else {
            moved as f64 / busy.as_secs_f64() / 1e9
        },
        prefix_load_ms: Percentiles::of(load_ms),
        wall_s: wall.as_secs_f64(),
        admissions_refused: s.admissions_refused,
        corrupt: s.corrupt,
    })
}

fn print_table(r: &ReplayReport) {
    println!(
        "replayed {} requests, {} blocks of {} bytes in {:.1} s (policy {}; GPU tier: {}; host tier: {})",
        r.requests, r.blocks, r.block_bytes, r.wall_s, r.policy, r.gpu_memory, r.host_memory
    );
    println!(
        "{:<6} {:>10} {:>9} {:>14} {:>14} {:>10}",
        "tier", "blocks", "hit rate", "bytes in", "bytes out", "evictions"
    );
    for (name, t) in &r.tiers {
        println!(
            "{:<6} {:>10} {:>8.2}% {:>14} {:>14} {:>10}",
            name,
            t.blocks,
            t.hit_rate * 100.0,
            t.bytes_in,
            t.bytes_out,
            t.evictions
        );
    }
    println!(
        "prefix hit rate {:.2}%  (unlimited capacity {:.2}%, plain LRU of {} blocks {:.2}%)",
        r.hit_rate * 100.0,
        r.reference.infinite_hit_rate * 100.0,
        r.reference.lru_blocks,
        r.reference.lru_hit_rate * 100.0
    );
    println!(
        "moved {:.3} GB at {:.2} GB/s; prefix back in p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms ({} requests)",
        r.bytes_moved as f64 / 1e9,
        r.achieved_gb_s,
        r.prefix_load_ms.p50,
        r.prefix_load_ms.p90,
        r.prefix_load_ms.p99,
        r.prefix_load_ms.n
    );
}
