//! kvmem's NIXL path against raw `nixl-sys` calls, on the real runtime, two agents in one
//! process over UCX loopback:
//!
//! * `write_64MiB`: one 64 MiB WRITE, posted and waited for;
//! * `small_10k_*`: 10 000 blocks of 256 bytes (with gaps, so NIXL cannot merge them) built and
//!   posted as fresh lists, or posted from prepared lists reused every time; between two agents
//!   (UCX moves each block with a `process_vm_writev` call, which dominates), and within one
//!   agent (UCX's self transport, a memcpy, so that descriptor handling dominates).
//!
//! Both sides use identical agent settings (UCX, progress thread, RW thread sync) and the same
//! kind of memory. Each path's data is verified once before it is measured.
//!
//! Run: `cargo bench -p kvmem --bench nixl`

use criterion::{Criterion, criterion_group, criterion_main};
use kvmem::Completion;
use kvmem::nixl::raw::{
    LocalBlocks, PreparedLocal, PreparedRemote, RawTransfers, RemoteBlocks, TransferOp,
};
use kvmem::nixl::{Agent, AgentConfig, NixlDescriptor};
use kvmem::{Buffer, HostMemory, MemoryDescriptor, SystemStorage};
use nixl_sys::{MemType, XferDescList, XferOp, XferStatus};
use std::hint::black_box;
use std::time::Duration;

const BIG: usize = 64 << 20;
const SMALL_N: usize = 10_000;
const SMALL_LEN: usize = 256;
const SMALL_STRIDE: usize = 512;

// ------------------------------------------------------------------------------------------
// Raw nixl-sys.

#[derive(Debug)]
struct RawRegion {
    addr: usize,
    len: usize,
}

impl nixl_sys::MemoryRegion for RawRegion {
    unsafe fn as_ptr(&self) -> *const u8 {
        self.addr as *const u8
    }
    fn size(&self) -> usize {
        self.len
    }
}

impl nixl_sys::NixlDescriptor for RawRegion {
    fn mem_type(&self) -> MemType {
        MemType::Dram
    }
    fn device_id(&self) -> u64 {
        0
    }
}

/// The configuration both paths use: kvmem's defaults (UCX, progress thread with a 100 µs delay,
/// RW thread sync).
fn bench_config(name: &str) -> AgentConfig {
    AgentConfig::new(name)
}

fn raw_agent(name: &str) -> nixl_sys::Agent {
    let cfg = bench_config(name);
    // The same settings kvmem's default configuration gives its agents.
    assert_eq!(cfg.thread_sync, kvmem::nixl::ThreadSync::Rw);
    let raw_cfg = nixl_sys::AgentConfig {
        enable_prog_thread: cfg.progress_thread,
        pthr_delay_us: cfg.progress_delay_us,
        enable_listen_thread: cfg.listen,
        lthr_delay_us: cfg.listener_delay_us,
        thread_sync: nixl_sys::ThreadSync::Rw,
        ..nixl_sys::AgentConfig::default()
    };
    let agent = nixl_sys::Agent::new_configured(name, &raw_cfg).unwrap();
    let (_mems, params) = agent.get_plugin_params("UCX").unwrap();
    agent.create_backend("UCX", &params).unwrap();
    agent
}

/// A source filled with a pattern that depends on `seed`, and a destination poisoned with 0xA5.
fn buffers(len: usize, seed: u8) -> (SystemStorage, SystemStorage) {
    let mut src = SystemStorage::new(len).unwrap();
    for (i, x) in src.as_mut_slice().iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    let mut dst = SystemStorage::new(len).unwrap();
    dst.memset(0xA5);
    (src, dst)
}

fn raw_register(agent: &nixl_sys::Agent, s: &SystemStorage) -> nixl_sys::RegistrationHandle {
    let region = RawRegion {
        addr: s.addr(),
        len: s.size(),
    };
    agent.register_memory(&region, None).unwrap()
}

/// Raw agent `a` holding `src`, `b` holding `dst` (the same agent for one-agent transfers), and
/// the registrations.
struct Raw {
    a: nixl_sys::Agent,
    b_name: String,
    src: SystemStorage,
    dst: SystemStorage,
    _regs: Vec<nixl_sys::RegistrationHandle>,
    _b: nixl_sys::Agent,
}

impl Raw {
    fn new(tag: &str, len: usize, seed: u8) -> Raw {
        let a = raw_agent(&format!("raw-a-{tag}"));
        let b = raw_agent(&format!("raw-b-{tag}"));
        let b_name = a.load_remote_md(&b.get_local_md().unwrap()).unwrap();
        Raw::build(a, b, b_name, len, seed)
    }

    /// One agent holding both buffers: NIXL copies within the agent (UCX's self transport), so
    /// the per-descriptor cost of the transport is small and the descriptor handling shows.
    fn one_agent(tag: &str, len: usize, seed: u8) -> Raw {
        let a = raw_agent(&format!("raw-one-{tag}"));
        let b_name = a.name();
        Raw::build(a.clone(), a, b_name, len, seed)
    }

    fn build(a: nixl_sys::Agent, b: nixl_sys::Agent, b_name: String, len: usize, seed: u8) -> Raw {
        let (src, dst) = buffers(len, seed);
        let regs = vec![raw_register(&a, &src), raw_register(&b, &dst)];
        Raw {
            a,
            b_name,
            src,
            dst,
            _regs: regs,
            _b: b,
        }
    }

    /// NIXL's lists for (offset, len) pairs of `src` and `dst`.
    fn lists(&self, blocks: &[(usize, usize)]) -> (XferDescList<'_>, XferDescList<'_>) {
        let mut l = XferDescList::new(MemType::Dram).unwrap();
        let mut r = XferDescList::new(MemType::Dram).unwrap();
        for &(off, len) in blocks {
            l.add_desc(self.src.addr() + off, len, 0);
            r.add_desc(self.dst.addr() + off, len, 0);
        }
        (l, r)
    }

    /// Polls like `kvmem::nixl::raw::Transfer`'s waits do (yield for 2 ms, then 50 µs sleeps), so that
    /// the comparison measures kvmem's code, not a different waiting strategy.
    fn wait(&self, req: &nixl_sys::XferRequest) {
        let start = std::time::Instant::now();
        while self.a.get_xfer_status(req).unwrap() == XferStatus::InProgress {
            if start.elapsed() < Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Builds both lists from (offset, len) pairs, creates, posts and waits.
    fn post_fresh(&self, blocks: &[(usize, usize)]) {
        let (l, r) = self.lists(blocks);
        let req = self
            .a
            .create_xfer_req(XferOp::Write, &l, &r, &self.b_name, None)
            .unwrap();
        self.a.post_xfer_req(&req, None).unwrap();
        self.wait(&req);
    }

    fn prepare(
        &self,
        blocks: &[(usize, usize)],
    ) -> (
        nixl_sys::XferDlistHandle,
        nixl_sys::XferDlistHandle,
        Vec<i32>,
    ) {
        let (l, r) = self.lists(blocks);
        let lh = self.a.prepare_xfer_dlist("", &l, None).unwrap();
        let rh = self.a.prepare_xfer_dlist(&self.b_name, &r, None).unwrap();
        (lh, rh, (0..blocks.len() as i32).collect())
    }

    fn post_prepared(
        &self,
        lh: &nixl_sys::XferDlistHandle,
        rh: &nixl_sys::XferDlistHandle,
        idx: &[i32],
    ) {
        let req = self
            .a
            .make_xfer_req(XferOp::Write, lh, idx, rh, idx, None)
            .unwrap();
        self.a.post_xfer_req(&req, None).unwrap();
        self.wait(&req);
    }

    fn reset_dst(&mut self) {
        self.dst.memset(0xA5);
    }
}

// ------------------------------------------------------------------------------------------
// kvmem.

struct Kv {
    a: Agent,
    b: Agent,
    src: Buffer,
    dst: Buffer,
    /// None: one agent holds both buffers.
    peer: Option<kvmem::nixl::Peer>,
}

impl Kv {
    fn new(tag: &str, len: usize, seed: u8) -> Kv {
        let a = Agent::new(bench_config(&format!("kv-a-{tag}"))).unwrap();
        let b = Agent::new(bench_config(&format!("kv-b-{tag}"))).unwrap();
        let peer = Some(a.load_peer(&b.local_metadata().unwrap()).unwrap());
        Kv::build(a, b, peer, len, seed)
    }

    fn one_agent(tag: &str, len: usize, seed: u8) -> Kv {
        let a = Agent::new(bench_config(&format!("kv-one-{tag}"))).unwrap();
        Kv::build(a.clone(), a, None, len, seed)
    }

    fn build(a: Agent, b: Agent, peer: Option<kvmem::nixl::Peer>, len: usize, seed: u8) -> Kv {
        let (s, d) = buffers(len, seed);
        let src = Buffer::new(a.register(s).unwrap());
        let dst = Buffer::new(b.register(d).unwrap());
        Kv {
            a,
            b,
            src,
            dst,
            peer,
        }
    }

    fn blocks(&self, blocks: &[(usize, usize)]) -> (LocalBlocks, RemoteBlocks) {
        let peer = self.peer.as_ref().unwrap();
        let mut l = LocalBlocks::new();
        let mut r = RemoteBlocks::new(peer);
        for &(off, len) in blocks {
            l.push_range(&self.src, off, len).unwrap();
            r.push(NixlDescriptor::dram((self.dst.addr() + off) as u64, len))
                .unwrap();
        }
        (l, r)
    }

    /// Both sides as local blocks, for one-agent transfers.
    fn local_blocks(&self, blocks: &[(usize, usize)]) -> (LocalBlocks, LocalBlocks) {
        let mut l = LocalBlocks::new();
        let mut r = LocalBlocks::new();
        for &(off, len) in blocks {
            l.push_range(&self.src, off, len).unwrap();
            r.push_range(&self.dst, off, len).unwrap();
        }
        (l, r)
    }

    /// Builds the lists and writes them: to the peer, or within the one agent.
    fn write_fresh(&self, blocks: &[(usize, usize)]) {
        let transfer = if self.peer.is_some() {
            let (l, r) = self.blocks(blocks);
            self.a.write(&l, &r, None)
        } else {
            let (l, r) = self.local_blocks(blocks);
            self.a.write_to_file(&l, &r)
        };
        transfer.unwrap().wait().unwrap();
    }

    /// Both sides' lists, prepared for repeated transfers.
    fn prepare(&self, blocks: &[(usize, usize)]) -> (PreparedLocal, PreparedRemote) {
        if self.peer.is_some() {
            let (l, r) = self.blocks(blocks);
            let pl = self.a.prepare_local(&l).unwrap();
            (pl, self.a.prepare_remote(&r).unwrap())
        } else {
            let (l, r) = self.local_blocks(blocks);
            let pl = self.a.prepare_local(&l).unwrap();
            (pl, self.a.prepare_file(&r).unwrap())
        }
    }

    fn post_prepared(&self, (pl, pr): &(PreparedLocal, PreparedRemote)) {
        self.a
            .post_prepared(TransferOp::Write, pl, pr, None)
            .unwrap()
            .wait()
            .unwrap();
    }

    fn dst_bytes(&self) -> &[u8] {
        self.dst
            .downcast_ref::<kvmem::nixl::Registered<SystemStorage>>()
            .unwrap()
            .as_slice()
    }

    fn src_bytes(&self) -> &[u8] {
        self.src
            .downcast_ref::<kvmem::nixl::Registered<SystemStorage>>()
            .unwrap()
            .as_slice()
    }
}

/// Registers the raw and the kvmem variant of one operation, measured one after the other.
///
/// (Measuring them in alternation was tried: the previous call's UCX completion work then lands
/// in the next one's time, and the results flipped between runs.)
fn pair(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    prefix: &str,
    raw: &dyn Fn(),
    kv: &dyn Fn(),
) {
    g.bench_function(format!("{prefix}raw_nixl_sys"), |b| b.iter(raw));
    g.bench_function(format!("{prefix}kvmem"), |b| b.iter(kv));
}

fn small_blocks() -> Vec<(usize, usize)> {
    blocks_with_stride(SMALL_STRIDE)
}

fn blocks_with_stride(stride: usize) -> Vec<(usize, usize)> {
    (0..SMALL_N).map(|i| (i * stride, SMALL_LEN)).collect()
}

fn check_blocks(dst: &[u8], src: &[u8], blocks: &[(usize, usize)]) {
    for &(off, len) in blocks {
        assert_eq!(&dst[off..off + len], &src[off..off + len], "block at {off}");
    }
    // Gaps, where there are any, stay poisoned: only the blocks moved.
    if blocks.len() > 1 && blocks[1].0 > SMALL_LEN {
        assert_eq!(dst[SMALL_LEN], 0xA5);
    }
}

fn bench_write_64m(c: &mut Criterion) {
    kvmem::nixl::ensure_loaded().unwrap();
    let mut raw = Raw::new("big", BIG, 1);
    let kv = Kv::new("big", BIG, 1);
    let whole = [(0usize, BIG)];
    raw.post_fresh(&whole);
    assert_eq!(
        raw.dst.as_slice(),
        raw.src.as_slice(),
        "raw WRITE moved the data"
    );
    raw.reset_dst();
    let (l, r) = kv.blocks(&whole);
    kv.a.write(&l, &r, None).unwrap().wait().unwrap();
    assert_eq!(kv.dst_bytes(), kv.src_bytes(), "kvmem WRITE moved the data");

    let mut g = c.benchmark_group("write_64MiB");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.throughput(criterion::Throughput::Bytes(BIG as u64));
    pair(&mut g, "", &|| raw.post_fresh(black_box(&whole)), &|| {
        kv.a.write(black_box(&l), black_box(&r), None)
            .unwrap()
            .wait()
            .unwrap()
    });
    g.finish();
    drop(kv.b);
}

fn bench_small_two_agents(c: &mut Criterion) {
    kvmem::nixl::ensure_loaded().unwrap();
    let len = SMALL_N * SMALL_STRIDE;
    let mut raw = Raw::new("small", len, 2);
    let kv = Kv::new("small", len, 2);
    small(c, "small_10k_two_agents", &mut raw, &kv, &small_blocks());
}

fn small_one_agent(c: &mut Criterion, group: &str, stride: usize) {
    kvmem::nixl::ensure_loaded().unwrap();
    let len = SMALL_N * stride;
    let mut raw = Raw::one_agent(group, len, 3);
    let kv = Kv::one_agent(group, len, 3);
    small(c, group, &mut raw, &kv, &blocks_with_stride(stride));
}

/// Verifies every path once (raw fresh and prepared lists, kvmem's fresh and prepared lists),
/// then measures the fresh and the prepared paths of both.
fn small(c: &mut Criterion, group: &str, raw: &mut Raw, kv: &Kv, blocks: &[(usize, usize)]) {
    raw.post_fresh(blocks);
    check_blocks(raw.dst.as_slice(), raw.src.as_slice(), blocks);
    raw.reset_dst();
    let (rlh, rrh, ridx) = raw.prepare(blocks);
    raw.post_prepared(&rlh, &rrh, &ridx);
    check_blocks(raw.dst.as_slice(), raw.src.as_slice(), blocks);
    kv.write_fresh(blocks);
    check_blocks(kv.dst_bytes(), kv.src_bytes(), blocks);
    let prepared = kv.prepare(blocks);
    kv.post_prepared(&prepared);

    let mut g = small_group(c, group, 20);
    g.measurement_time(Duration::from_secs(8));
    // Building the lists is part of the fresh path, as for the raw calls.
    pair(
        &mut g,
        "fresh/",
        &|| raw.post_fresh(black_box(blocks)),
        &|| kv.write_fresh(black_box(blocks)),
    );
    pair(
        &mut g,
        "prepared/",
        &|| raw.post_prepared(&rlh, &rrh, black_box(&ridx)),
        &|| kv.post_prepared(black_box(&prepared)),
    );
    g.finish();
}

fn bench_small_one_agent(c: &mut Criterion) {
    small_one_agent(c, "small_10k_one_agent", SMALL_STRIDE);
}

/// A group of `samples` samples whose throughput is counted in the `SMALL_N` blocks of one
/// transfer.
fn small_group<'a>(
    c: &'a mut Criterion,
    name: &str,
    samples: usize,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(samples);
    g.throughput(criterion::Throughput::Elements(SMALL_N as u64));
    g
}

/// Dense blocks (no gaps): NIXL merges runs of prepared blocks into one descriptor.
fn bench_small_one_agent_dense(c: &mut Criterion) {
    small_one_agent(c, "small_10k_one_agent_dense", SMALL_LEN);
}

/// NIXL's request building alone (no post): what a prepared list saves per transfer.
fn bench_request_only(c: &mut Criterion) {
    kvmem::nixl::ensure_loaded().unwrap();
    let len = SMALL_N * SMALL_STRIDE;
    let blocks = small_blocks();
    let raw = Raw::new("req", len, 5);
    let (lh, rh, idx) = raw.prepare(&blocks);
    let mut g = small_group(c, "request_10k_no_post", 50);
    g.bench_function("create_from_fresh_lists/raw_nixl_sys", |bench| {
        bench.iter(|| {
            let (l, r) = raw.lists(black_box(&blocks));
            raw.a
                .create_xfer_req(XferOp::Write, &l, &r, &raw.b_name, None)
                .unwrap()
        })
    });
    g.bench_function("make_from_prepared_lists/raw_nixl_sys", |bench| {
        bench.iter(|| {
            raw.a
                .make_xfer_req(XferOp::Write, &lh, black_box(&idx), &rh, &idx, None)
                .unwrap()
        })
    });
    g.finish();
}

/// Only the list building: what kvmem's fresh path does on top of the raw calls (it then fills
/// NIXL's lists itself, exactly like the raw path).
fn bench_build(c: &mut Criterion) {
    kvmem::nixl::ensure_loaded().unwrap();
    let len = SMALL_N * SMALL_STRIDE;
    let blocks = small_blocks();
    let raw = Raw::one_agent("build", len, 4);
    let kv = Kv::new("build", len, 4);
    let mut g = small_group(c, "build_10k", 100);
    g.bench_function("nixl_lists/raw_nixl_sys", |bench| {
        bench.iter(|| {
            let (l, r) = raw.lists(black_box(&blocks));
            (l, r)
        })
    });
    g.bench_function("blocks/kvmem", |bench| {
        bench.iter(|| kv.blocks(black_box(&blocks)))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_write_64m,
    bench_small_two_agents,
    bench_small_one_agent,
    bench_small_one_agent_dense,
    bench_request_only,
    bench_build
);
criterion_main!(benches);
