//! The fault soak: rounds of random transfers over host memory, disk (`io_uring`), NIXL over
//! loopback UCX (a peer process) and the block cache, with faults injected among them — a peer
//! process killed mid-stream, a disk that fills mid-write (`RLIMIT_FSIZE` in a subprocess: a
//! tmpfs mount needs root privileges a CI runner may lack), a file removed under the disk tier,
//! an unwritable directory, malformed notifications — and, where a CUDA GPU is present, host ↔
//! device transfers.
//!
//! It asserts that every operation completes or fails within its deadline (zero hangs), that
//! every block reported stored or moved has the right checksum (zero corruptions), that
//! `accounting::snapshot()` returns to its baseline after every round (nothing quarantined),
//! and that RSS and open file descriptors do not grow from the end of warm-up to the last round
//! (< 1%). The report goes to stdout as a table and one `SOAK-JSON {…}` line (and to the file
//! `KVMEM_SOAK_REPORT` names, if set).
//!
//! Duration: `KVMEM_SOAK_SECS` (default 75 s; the GPU machine runs it longer); seed:
//! `KVMEM_SOAK_SEED`.

mod cache_common;
#[path = "nixl_common/mod.rs"]
mod nixl_common;

use kvmem::cache::{BlockCache, BlockKey, CacheConfig, Capacity, HostMemoryKind, WritePolicy};
use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
use kvmem::nixl::Agent;
use kvmem::nixl::raw::{LocalBlocks, RawTransfers, RemoteBlocks};
use kvmem::transfer::{EngineConfig, LayoutDescriptor, TransferEngine};
use kvmem::{Buffer, Completion, DiskStorage, Error, HostMemory, SystemStorage, accounting};
use libtest_mimic::{Arguments, Failed, Trial};
use nixl_common::{
    Publish, TargetProcess, WaitFor, free_port, listening_agent, loopback, random_bytes, unique,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

/// Every transfer's deadline in the engine.
const DEADLINE: Duration = Duration::from_secs(10);
/// The longest any operation may take before it counts as a hang (its deadline and slack).
const HANG: Duration = Duration::from_secs(20);
/// Bytes of the peer's buffer (and of each NIXL write).
const PEER_LEN: usize = 1 << 20;
const FSIZE_ROLE: &str = "soak-fsize";
const DIR_ENV: &str = "KVMEM_SOAK_DIR";

fn geometry() -> LayoutConfig {
    // Blocks of 2 layers x 2 x 4 KiB chunks = 16 KiB; every chunk O_DIRECT-aligned.
    LayoutConfig {
        num_blocks: 64,
        num_layers: 2,
        outer_dim: 2,
        page_size: 16,
        inner_dim: 128,
        dtype_bytes: 2,
    }
}

fn main() {
    nixl_common::run_target_if_requested();
    if std::env::var(nixl_common::ROLE_ENV).as_deref() == Ok(FSIZE_ROLE) {
        fsize_child();
    }
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = vec![Trial::test("fault_soak", soak)];
    libtest_mimic::run(&args, trials).exit();
}

/// The bytes of block `b` written with `seed`.
fn block_bytes(seed: u64, b: usize, len: usize) -> Vec<u8> {
    random_bytes(seed.wrapping_mul(1_000_003).wrapping_add(b as u64), len)
}

/// A fully contiguous host layout of `geometry()` whose blocks hold `block_bytes(seed, b)`.
fn host_source(seed: u64) -> BlockLayout {
    let c = geometry();
    let bb = c.block_bytes().unwrap();
    let mut s = SystemStorage::new(bb * c.num_blocks).unwrap();
    for b in 0..c.num_blocks {
        s.copy_from(b * bb, &block_bytes(seed, b, bb)).unwrap();
    }
    BlockLayout::new(c, LayoutKind::FullyContiguous, vec![Buffer::new(s)], 4096).unwrap()
}

fn host_layout() -> BlockLayout {
    BlockLayout::allocate(geometry(), LayoutKind::FullyContiguous, 4096, |n| {
        Ok(Buffer::new(SystemStorage::new(n)?))
    })
    .unwrap()
}

fn disk_layout(dir: &Path) -> kvmem::Result<BlockLayout> {
    BlockLayout::allocate(geometry(), LayoutKind::FullyContiguous, 4096, |n| {
        Ok(Buffer::new(DiskStorage::new_in(dir, n)?))
    })
}

/// Block `b` of a fully contiguous host layout.
fn read_host_block(layout: &BlockLayout, b: usize) -> Vec<u8> {
    let bb = layout.config().block_bytes().unwrap();
    let s = layout.regions()[0]
        .downcast_ref::<SystemStorage>()
        .unwrap()
        .as_slice();
    s[b * bb..(b + 1) * bb].to_vec()
}

/// `n` distinct block ids out of `geometry().num_blocks`.
fn ids(rng: &mut fastrand::Rng, n: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..geometry().num_blocks).collect();
    rng.shuffle(&mut all);
    all.truncate(n);
    all
}

/// What the soak counted.
#[derive(Default, Debug)]
struct Report {
    rounds: u64,
    ops: BTreeMap<&'static str, u64>,
    failed_as_expected: BTreeMap<&'static str, u64>,
    faults: BTreeMap<&'static str, u64>,
    hangs: u64,
    corruptions: u64,
    unexpected: Vec<String>,
    leaks: Vec<String>,
    longest_op: Duration,
    rss: Vec<u64>,
    fds: Vec<u64>,
}

impl Report {
    fn op(&mut self, kind: &'static str, elapsed: Duration) {
        *self.ops.entry(kind).or_default() += 1;
        self.longest_op = self.longest_op.max(elapsed);
        if elapsed > HANG {
            self.hangs += 1;
        }
    }

    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    fn expected_failure(&mut self, kind: &'static str) {
        *self.failed_as_expected.entry(kind).or_default() += 1;
    }

    /// A wait that ran out: a hang.
    /// Runs one operation of `kind`, counted and timed as [`op`](Self::op) does, and returns
    /// its [`outcome`](Self::outcome) as `what`.
    fn timed<T>(
        &mut self,
        kind: &'static str,
        what: &str,
        run: impl FnOnce() -> kvmem::Result<T>,
    ) -> Option<T> {
        let t = Instant::now();
        let result = run();
        self.op(kind, t.elapsed());
        self.outcome(what, result)
    }

    fn outcome<T>(&mut self, what: &str, r: kvmem::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(Error::Timeout { .. }) => {
                self.hangs += 1;
                self.unexpected.push(format!("{what}: no outcome in time"));
                None
            }
            Err(e) => {
                self.unexpected.push(format!("{what}: {e}"));
                None
            }
        }
    }

    fn check_block(&mut self, what: &str, actual: &[u8], expected: &[u8]) {
        if xxh3_64(actual) != xxh3_64(expected) {
            self.corruptions += 1;
            self.unexpected.push(format!("{what}: wrong checksum"));
        }
    }
}

/// Resident set size in bytes and open file descriptors of this process.
fn rss_and_fds() -> (u64, u64) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (pages * 4096, fds)
}

/// Everything a round uses, built once.
struct Rig {
    engine: TransferEngine,
    dir: tempfile::TempDir,
    host_dst: BlockLayout,
    host_back: BlockLayout,
    disk: BlockLayout,
    agent: Agent,
    sources: Vec<(u64, Buffer)>,
    peer: TargetProcess,
    peer_remote: RemoteBlocks,
    cache: BlockCache,
    cache_dir: std::path::PathBuf,
    gpu: Option<BlockLayout>,
}

fn cache_config(dir: &Path) -> CacheConfig {
    let mut c = CacheConfig::new(cache_common::block(), Capacity::Blocks(16))
        .with_disk(dir, Capacity::Blocks(64));
    c.host_memory = HostMemoryKind::System;
    c.fingerprint = "soak".into();
    if let Some(d) = c.disk.as_mut() {
        d.write = WritePolicy::WriteThrough;
    }
    c
}

fn remote_of(agent: &Agent, target: &TargetProcess, port: u16) -> kvmem::Result<RemoteBlocks> {
    let peer = agent.connect_listener(&target.name, loopback(port), Duration::from_secs(20))?;
    let mut remote = RemoteBlocks::new(&peer);
    remote.push(kvmem::nixl::NixlDescriptor::dram(target.addr, target.len))?;
    Ok(remote)
}

impl Rig {
    fn new() -> Rig {
        let engine = TransferEngine::new(EngineConfig {
            deadline: DEADLINE,
            host_threads: 2,
            ..EngineConfig::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_layout(dir.path()).unwrap();
        let agent = listening_agent("soak-init");
        let sources = (0..4u64)
            .map(|s| {
                (
                    s + 100,
                    nixl_common::filled(&agent, &random_bytes(s + 100, PEER_LEN)),
                )
            })
            .collect();
        let port = free_port();
        let peer = TargetProcess::spawn(&unique("soak-peer"), PEER_LEN, Publish::Listener(port));
        let peer_remote = remote_of(&agent, &peer, port).unwrap();
        let cache_dir = dir.path().join("cache");
        let cache = BlockCache::open(cache_config(&cache_dir)).unwrap();
        let gpu = kvmem::cuda::CudaDevice::new(0).ok().map(|device| {
            BlockLayout::allocate(geometry(), LayoutKind::FullyContiguous, 4096, |n| {
                Ok(Buffer::new(kvmem::DeviceStorage::new(&device, n)?))
            })
            .unwrap()
        });
        Rig {
            engine,
            dir,
            host_dst: host_layout(),
            host_back: host_layout(),
            disk,
            agent,
            sources,
            peer,
            peer_remote,
            cache,
            cache_dir,
            gpu,
        }
    }
}

/// Random blocks of a fresh host source to random blocks of `dst` — straight there, or through
/// `via` (disk or GPU) and back into `dst` — each block then checked against the source's.
fn copy_checked(
    engine: &TransferEngine,
    via: Option<&BlockLayout>,
    dst: &BlockLayout,
    what: &'static str,
    rng: &mut fastrand::Rng,
    r: &mut Report,
) {
    let seed = rng.u64(..);
    let src = host_source(seed);
    let n = rng.usize(1..=16);
    let (s, d) = (ids(rng, n), ids(rng, n));
    let copy = |a: &BlockLayout, ai: &[usize], b: &BlockLayout, bi: &[usize]| {
        engine
            .copy_blocks(a, ai, b, bi)
            .and_then(|h| h.wait_for(HANG))
    };
    let result = r.timed(what, what, || match via {
        None => copy(&src, &s, dst, &d),
        Some(v) => copy(&src, &s, v, &d).and_then(|_| copy(v, &d, dst, &d)),
    });
    if result.is_some() {
        let bb = geometry().block_bytes().unwrap();
        for (&sb, &db) in s.iter().zip(&d) {
            r.check_block(what, &read_host_block(dst, db), &block_bytes(seed, sb, bb));
        }
    }
}

/// A NIXL WRITE of one of the registered sources to the peer, checked byte by byte there.
fn peer_write(rig: &mut Rig, rng: &mut fastrand::Rng, r: &mut Report) {
    let (seed, src) = &rig.sources[rng.usize(..rig.sources.len())];
    let note = format!("soak-{}", rng.u64(..));
    rig.peer
        .send(&format!("VERIFY {} {note} {seed}", rig.agent.name()));
    let t = Instant::now();
    let local = LocalBlocks::whole(src).unwrap();
    let ok = r.outcome(
        "NIXL write",
        rig.agent
            .write(&local, &rig.peer_remote, Some(note.as_bytes()))
            .and_then(|x| x.wait_for(HANG)),
    );
    if ok.is_some() {
        let answer = rig.peer.expect_line(HANG);
        if answer != "VERIFIED" {
            r.corruptions += 1;
            r.unexpected
                .push(format!("NIXL write: the peer said {answer}"));
        }
    }
    r.op("nixl", t.elapsed());
}

/// Stores random keys in the cache and loads them back, checking every block it serves.
fn cache_op(rig: &Rig, rng: &mut fastrand::Rng, r: &mut Report) {
    let n = rng.usize(1..=8);
    let keys: Vec<BlockKey> = (0..n).map(|_| cache_common::key(rng.u64(..1000))).collect();
    let mut keys_dedup = keys.clone();
    keys_dedup.sort_by_key(|k| k.0);
    keys_dedup.dedup();
    let ids: Vec<usize> = (0..keys_dedup.len()).collect();
    let gpu = cache_common::gpu_with(&keys_dedup, keys_dedup.len());
    let stored = r.timed("cache", "cache store", || {
        rig.cache
            .store(&keys_dedup, &gpu, &ids, DEADLINE)
            .and_then(|h| h.wait_for(HANG))
    });
    if stored.is_none() {
        return;
    }
    let out = cache_common::gpu_with(&[], keys_dedup.len());
    let loaded = r.timed("cache", "cache load", || {
        rig.cache
            .load(&keys_dedup, &out, &ids, DEADLINE)
            .and_then(|h| h.wait_for(HANG))
    });
    if let Some(report) = loaded {
        let missing: Vec<BlockKey> = report.failed().copied().collect();
        for (b, k) in keys_dedup.iter().enumerate() {
            if !missing.contains(k) {
                r.check_block(
                    "cache load",
                    &cache_common::read_block(&out, b),
                    &cache_common::pattern(*k),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.

/// A peer process killed while a stream of writes to it runs: the stream fails, promptly.
fn fault_killed_peer(rig: &Rig, rng: &mut fastrand::Rng, r: &mut Report) {
    r.fault("peer killed mid-stream");
    // The victim's metadata comes as a blob: a socket NIXL's listener thread opened to fetch
    // it stays open (CLOSE_WAIT) after the peer dies — one descriptor per dead peer (see
    // docs/SOAK.md) — which would hide any descriptor leak of kvmem's own behind it.
    let mut victim = TargetProcess::spawn(&unique("soak-victim"), PEER_LEN, Publish::Blob);
    let victim_name = victim.name.clone();
    let line = victim.expect_line(HANG);
    let blob: Vec<u8> = line
        .strip_prefix("METADATA ")
        .unwrap_or_default()
        .as_bytes()
        .chunks(2)
        .filter_map(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
        .collect();
    let Some(peer) = r.outcome("load the victim's metadata", rig.agent.load_peer(&blob)) else {
        return;
    };
    let mut remote = RemoteBlocks::new(&peer);
    if let Err(e) = remote.push(kvmem::nixl::NixlDescriptor::dram(victim.addr, victim.len)) {
        r.unexpected.push(format!("the victim's blocks: {e}"));
        return;
    }
    let killed = Arc::new(Mutex::new(None::<Instant>));
    let delay = Duration::from_millis(rng.u64(5..80));
    let killer = {
        let killed = killed.clone();
        std::thread::spawn(move || {
            let mut victim = victim;
            std::thread::sleep(delay);
            victim.kill();
            *killed.lock().unwrap() = Some(Instant::now());
            victim.wait(Duration::from_secs(10));
        })
    };
    let local = LocalBlocks::whole(&rig.sources[0].1).unwrap();
    let started = Instant::now();
    let failed_at = loop {
        let t = Instant::now();
        let outcome = rig
            .agent
            .write(&local, &remote, None)
            .and_then(|x| x.wait_for(HANG));
        r.op("nixl (victim)", t.elapsed());
        match outcome {
            Ok(()) => {}
            Err(Error::Timeout { .. }) => {
                r.hangs += 1;
                r.unexpected
                    .push("a write to a killed peer never ended".into());
                break None;
            }
            Err(_) => break Some(Instant::now()),
        }
        if started.elapsed() > HANG {
            r.hangs += 1;
            r.unexpected
                .push("writes to a killed peer kept succeeding".into());
            break None;
        }
    };
    killer.join().unwrap();
    if let (Some(failed), Some(killed)) = (failed_at, *killed.lock().unwrap()) {
        r.expected_failure("peer killed mid-stream");
        if failed.saturating_duration_since(killed) > DEADLINE {
            r.hangs += 1;
            r.unexpected
                .push("a killed peer was noticed only after the deadline".into());
        }
    }
    // Forget the dead peer, so nothing of it stays in the agent.
    drop(remote);
    let _ = rig.agent.invalidate_peer(&victim_name);
}

/// A disk that fills mid-write: a subprocess under `RLIMIT_FSIZE` writes past the limit.
fn fault_disk_full(rig: &Rig, r: &mut Report) {
    r.fault("disk full mid-write");
    let file = rig.dir.path().join("fsize.kvd");
    let bytes = geometry().block_bytes().unwrap() * geometry().num_blocks;
    std::fs::File::create(&file)
        .unwrap()
        .set_len(bytes as u64)
        .unwrap();
    let t = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(nixl_common::ROLE_ENV, FSIZE_ROLE)
        .env(DIR_ENV, rig.dir.path())
        .output();
    r.op("disk (full)", t.elapsed());
    let _ = std::fs::remove_file(&file);
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.contains("FAILED-TYPED") {
                r.expected_failure("disk full mid-write");
            } else {
                r.unexpected.push(format!(
                    "disk-full child: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Err(e) => r.unexpected.push(format!("disk-full child: {e}")),
    }
}

/// The child of [`fault_disk_full`]: a write of 64 blocks with room for 8 must fail with an I/O
/// error, within the deadline.
fn fsize_child() -> ! {
    let dir = std::path::PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let limit = 8 * geometry().block_bytes().unwrap() as u64;
    cache_common::limit_file_size(limit);
    let disk = Buffer::new(DiskStorage::open_existing(dir.join("fsize.kvd")).unwrap());
    let disk = BlockLayout::new(geometry(), LayoutKind::FullyContiguous, vec![disk], 4096).unwrap();
    let engine = TransferEngine::new(EngineConfig {
        deadline: DEADLINE,
        ..EngineConfig::default()
    })
    .unwrap();
    let all: Vec<usize> = (0..geometry().num_blocks).collect();
    let src = host_source(7);
    let t = Instant::now();
    let outcome = engine
        .copy_blocks(&src, &all, &disk, &all)
        .and_then(|h| h.wait());
    match outcome {
        Err(Error::Io(e)) if t.elapsed() < HANG => println!("FAILED-TYPED {e}"),
        Err(e) => println!("FAILED-OTHER {e}"),
        Ok(_) => println!("SUCCEEDED past the file-size limit"),
    }
    std::process::exit(0);
}

/// The disk tier's file removed while it is in use: transfers through the open file go on and
/// stay correct; dropping it cleans up.
fn fault_removed_file(rig: &Rig, rng: &mut fastrand::Rng, r: &mut Report) {
    r.fault("file removed under the disk tier");
    let sub = rig.dir.path().join(format!("removed-{}", rng.u32(..)));
    std::fs::create_dir(&sub).unwrap();
    let Some(disk) = r.outcome("disk layout", disk_layout(&sub)) else {
        return;
    };
    for entry in std::fs::read_dir(&sub).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let problems = r.unexpected.len();
    copy_checked(&rig.engine, Some(&disk), &rig.host_back, "disk", rng, r);
    drop(disk);
    if r.unexpected.len() == problems {
        r.expected_failure("file removed under the disk tier");
    }
    // Also under the cache: its block file and journal vanish; what it serves stays right.
    let _ = std::fs::remove_file(rig.cache_dir.join("journal"));
    cache_op(rig, rng, r);
    let _ = std::fs::remove_dir(&sub);
}

/// Disk storage and a cache in a directory that cannot be written: typed errors, nothing left.
fn fault_unwritable_dir(rig: &Rig, r: &mut Report) {
    r.fault("unwritable directory");
    // A regular file where the directory should be: refused even for root.
    let file = rig.dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let t = Instant::now();
    let before = accounting::snapshot();
    let storage = match disk_layout(&file.join("sub")) {
        Err(Error::Io(_)) => true,
        Err(e) => {
            r.unexpected.push(format!("unwritable dir: {e}"));
            false
        }
        Ok(_) => {
            r.unexpected
                .push("a disk layout in an unwritable directory".into());
            false
        }
    };
    let cache = match BlockCache::open(cache_config(&file.join("cache"))) {
        Err(_) => true,
        Ok(_) => {
            r.unexpected
                .push("a cache in an unwritable directory".into());
            false
        }
    };
    if storage && cache && accounting::snapshot() == before {
        r.expected_failure("unwritable directory");
    }
    r.op("disk (unwritable)", t.elapsed());
    let _ = std::fs::remove_file(&file);
}

/// Random bytes sent to the peer as notifications before a real write: the peer ignores them
/// and still checks the write; a layout descriptor decoded from random bytes is a typed error.
fn fault_malformed_notifications(rig: &mut Rig, rng: &mut fastrand::Rng, r: &mut Report) {
    r.fault("malformed notifications");
    for _ in 0..rng.usize(1..8) {
        let len = rng.usize(0..512);
        let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if let Err(e) = rig.agent.notify(&rig.peer.name, &junk) {
            r.unexpected.push(format!("sending a notification: {e}"));
        }
        if LayoutDescriptor::decode(&junk).is_ok() && !junk.is_empty() {
            r.unexpected
                .push("random bytes decoded as a layout descriptor".into());
        }
    }
    peer_write(rig, rng, r);
    r.expected_failure("malformed notifications");
}

// ---------------------------------------------------------------------------------------------

/// Operation `kind` of the five: host, disk, NIXL, cache, GPU (a no-op without one).
fn operation(kind: usize, rig: &mut Rig, rng: &mut fastrand::Rng, r: &mut Report) {
    match kind {
        0 => copy_checked(&rig.engine, None, &rig.host_dst, "host", rng, r),
        1 => copy_checked(&rig.engine, Some(&rig.disk), &rig.host_back, "disk", rng, r),
        2 => peer_write(rig, rng, r),
        3 => cache_op(rig, rng, r),
        _ => {
            if let Some(gpu) = &rig.gpu {
                copy_checked(&rig.engine, Some(gpu), &rig.host_back, "gpu", rng, r);
            }
        }
    }
}

fn soak() -> Result<(), Failed> {
    let secs: u64 = std::env::var("KVMEM_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75);
    let seed: u64 = std::env::var("KVMEM_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rig = Rig::new();
    let mut r = Report::default();
    // Warm up every path once, then take the baseline.
    for kind in 0..5 {
        operation(kind, &mut rig, &mut rng, &mut r);
    }
    let baseline = accounting::snapshot();
    let started = Instant::now();
    let limit = Duration::from_secs(secs);
    while started.elapsed() < limit || r.rounds < 10 {
        for _ in 0..rng.usize(4..12) {
            operation(rng.usize(..5), &mut rig, &mut rng, &mut r);
        }
        // One fault a round, every kind in turn.
        let fds_before = rss_and_fds().1;
        let links = || -> std::collections::BTreeSet<String> {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .map(|e| {
                    format!(
                        "{} {:?}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_link(e.path())
                    )
                })
                .collect()
        };
        let set_before = links();
        match r.rounds % 5 {
            0 => fault_killed_peer(&rig, &mut rng, &mut r),
            1 => fault_disk_full(&rig, &mut r),
            2 => fault_removed_file(&rig, &mut rng, &mut r),
            3 => fault_unwritable_dir(&rig, &mut r),
            _ => fault_malformed_notifications(&mut rig, &mut rng, &mut r),
        }
        if std::env::var("KVMEM_SOAK_DEBUG_FDS").is_ok() {
            let after = rss_and_fds().1;
            println!(
                "round {} fault {} fds {fds_before} -> {after}",
                r.rounds,
                r.rounds % 5
            );
            if after > fds_before {
                for e in links().difference(&set_before) {
                    println!("  new {e}");
                }
            }
        }
        r.rounds += 1;
        let now = accounting::snapshot();
        if now != baseline {
            r.leaks.push(format!(
                "round {}: {now:?} (baseline {baseline:?})",
                r.rounds
            ));
        }
        let (rss, fds) = rss_and_fds();
        r.rss.push(rss);
        r.fds.push(fds);
    }
    let (rss_growth, fd_growth) = (growth(&r.rss), growth(&r.fds));
    print_report(
        &r,
        secs,
        seed,
        started.elapsed(),
        rss_growth,
        fd_growth,
        rig.gpu.is_some(),
    );
    let mut problems = Vec::new();
    if r.hangs > 0 {
        problems.push(format!("{} hangs", r.hangs));
    }
    if r.corruptions > 0 {
        problems.push(format!("{} corruptions", r.corruptions));
    }
    if !r.unexpected.is_empty() {
        problems.push(format!("unexpected outcomes: {:#?}", r.unexpected));
    }
    if !r.leaks.is_empty() {
        problems.push(format!("leaks: {:#?}", r.leaks));
    }
    if rss_growth >= 1.0 || fd_growth >= 1.0 {
        problems.push(format!(
            "growth after warm-up: RSS {rss_growth:.2}%, fds {fd_growth:.2}%"
        ));
    }
    rig.peer.send("EXIT");
    rig.peer.wait(Duration::from_secs(10));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; ").into())
    }
}

/// After a warm-up of the first third of the rounds: the medians of the middle and of the last
/// third (medians, because RSS moves with the allocator's free lists from one round to the
/// next, and a descriptor may be open for a moment while a round's last thread winds down).
fn windows(v: &[u64]) -> (u64, u64) {
    let third = (v.len() / 3).max(1);
    let median = |w: &[u64]| {
        let mut w = w.to_vec();
        w.sort_unstable();
        w.get(w.len() / 2).copied().unwrap_or(0)
    };
    let middle = &v[third.min(v.len() - 1)..(2 * third).clamp(third + 1, v.len())];
    let last = &v[(2 * third).min(v.len() - 1)..];
    (median(middle), median(last))
}

fn growth(v: &[u64]) -> f64 {
    let (a, b) = windows(v);
    (b as f64 - a as f64) / (a.max(1) as f64) * 100.0
}

fn print_report(
    r: &Report,
    secs: u64,
    seed: u64,
    elapsed: Duration,
    rss_growth: f64,
    fd_growth: f64,
    gpu: bool,
) {
    println!(
        "fault soak: {} rounds in {:.1} s (KVMEM_SOAK_SECS={secs}, seed {seed}, GPU {gpu})",
        r.rounds,
        elapsed.as_secs_f64()
    );
    println!("| what | count |");
    println!("|---|---|");
    for (k, v) in &r.ops {
        println!("| operations: {k} | {v} |");
    }
    for (k, v) in &r.faults {
        let f = r.failed_as_expected.get(k).copied().unwrap_or(0);
        println!("| fault injected: {k} | {v} (handled as expected: {f}) |");
    }
    println!("| hangs | {} |", r.hangs);
    println!("| corruptions | {} |", r.corruptions);
    println!(
        "| leaks (rounds whose snapshot differs from the baseline) | {} |",
        r.leaks.len()
    );
    println!("| unexpected outcomes | {} |", r.unexpected.len());
    println!(
        "| longest operation | {:.3} s |",
        r.longest_op.as_secs_f64()
    );
    let (rss_a, rss_b) = windows(&r.rss);
    let (fd_a, fd_b) = windows(&r.fds);
    println!(
        "| RSS (median, middle → last third of the rounds) | {:.1} → {:.1} MiB ({rss_growth:+.2}%) |",
        rss_a as f64 / 1048576.0,
        rss_b as f64 / 1048576.0
    );
    println!("| open fds (median, middle → last third) | {fd_a} → {fd_b} ({fd_growth:+.2}%) |");
    let map = |m: &BTreeMap<&str, u64>| {
        m.iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let json = format!(
        "{{\"rounds\":{},\"seconds\":{:.1},\"seed\":{seed},\"gpu\":{gpu},\"ops\":{{{}}},\"faults\":{{{}}},\"handled\":{{{}}},\"hangs\":{},\"corruptions\":{},\"leaks\":{},\"unexpected\":{},\"longest_op_s\":{:.3},\"rss_growth_pct\":{rss_growth:.3},\"fd_growth_pct\":{fd_growth:.3}}}",
        r.rounds,
        elapsed.as_secs_f64(),
        map(&r.ops),
        map(&r.faults),
        map(&r.failed_as_expected),
        r.hangs,
        r.corruptions,
        r.leaks.len(),
        r.unexpected.len(),
        r.longest_op.as_secs_f64(),
    );
    println!("SOAK-JSON {json}");
    if let Ok(path) = std::env::var("KVMEM_SOAK_REPORT") {
        let _ = std::fs::write(path, format!("{json}\n"));
    }
}
