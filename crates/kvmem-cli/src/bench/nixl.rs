//! NIXL points: READ and WRITE of host blocks between this process's agent and a peer's
//! registered region — a second agent in this process over UCX (the loopback peer), or a
//! `kvmem bench --role target` on another machine (see `docs/TWO_NODE.md`).
//!
//! Each point goes through the transfer engine's remote path
//! ([`TransferEngine::write_remote`]/[`read_remote`](TransferEngine::read_remote)): it prepares
//! a [`RegisteredLayout`] and a [`RemoteLayout`] once (blocks on each side, and the reference's
//! single block of the same bytes), checks every byte once (random source, poisoned
//! destination), then times the block transfer interleaved with its reference: one READ/WRITE
//! of the same bytes as a single descriptor.

use super::point::{self, Candidate, PointSpec, Sample};
use super::report::Point;
use super::verify::{self, Image, POISON};
use crate::error::{CliError, Result};
use indicatif::ProgressBar;
use kvmem::Completion;
use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
use kvmem::nixl::raw::{LocalBlocks, RawTransfers, RemoteBlocks, TransferOp};
use kvmem::nixl::{Agent, AgentConfig, MemType, NixlDescriptor, Peer};
use kvmem::transfer::{
    LAYOUT_DESCRIPTOR_FORMAT, LayoutDescriptor, RegisteredLayout, RemoteLayout, TransferEngine,
};
use kvmem::{Buffer, HostMemory, SystemStorage};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::time::{Duration, Instant};

/// How long one NIXL transfer may take before the bench gives up on it.
const WAIT: Duration = Duration::from_secs(120);
/// How the reference of a NIXL point moves its bytes.
const REFERENCE_METHOD: &str = "one NIXL descriptor";

/// This process's agent, its buffers, and the peer region the points move data to and from.
pub struct NixlEnds {
    agent: Agent,
    peer: Peer,
    remote_addr: u64,
    len: usize,
    /// Random bytes, the source of WRITEs and the reference data of READs.
    src: Buffer,
    /// The destination of READs.
    dst: Buffer,
    /// Poison, to reset the peer region and `dst` before checked transfers.
    poison: Buffer,
    /// The loopback peer, kept alive as long as the points use its region.
    _loopback: Option<(Agent, Buffer)>,
}

impl NixlEnds {
    /// Two agents in this process over UCX: the peer registers `len` bytes of host memory.
    pub fn loopback(len: usize, seed: u64) -> Result<Self> {
        let tag = std::process::id();
        let agent = Agent::new(AgentConfig::new(format!("kvmem-bench-{tag}-initiator")))?;
        let target = Agent::new(AgentConfig::new(format!("kvmem-bench-{tag}-loopback")))?;
        let region = Buffer::new(target.register(poisoned(len)?).map_err(|e| e.error)?);
        let peer = agent.load_peer(&target.local_metadata()?)?;
        let remote_addr = kvmem::MemoryDescriptor::addr(&region) as u64;
        let mut ends = Self::new(agent, peer, remote_addr, len, seed)?;
        ends._loopback = Some((target, region));
        Ok(ends)
    }

    /// `agent` moving data to and from `len` bytes at `remote_addr` in `peer`'s host memory.
    pub fn new(agent: Agent, peer: Peer, remote_addr: u64, len: usize, seed: u64) -> Result<Self> {
        let mut data = SystemStorage::new(len)?;
        StdRng::seed_from_u64(seed).fill_bytes(data.as_mut_slice());
        Ok(Self {
            src: Buffer::new(agent.register(data).map_err(|e| e.error)?),
            dst: Buffer::new(agent.register(poisoned(len)?).map_err(|e| e.error)?),
            poison: Buffer::new(agent.register(poisoned(len)?).map_err(|e| e.error)?),
            agent,
            peer,
            remote_addr,
            len,
            _loopback: None,
        })
    }

    fn remote_range(&self, offset: usize, len: usize) -> Result<RemoteBlocks> {
        let mut r = RemoteBlocks::new(&self.peer);
        r.push(NixlDescriptor::dram(self.remote_addr + offset as u64, len))?;
        Ok(r)
    }

    /// One unprepared transfer of `len` bytes between the start of `local` and of the peer region.
    fn whole(&self, op: TransferOp, local: &Buffer, len: usize) -> Result<()> {
        let l = {
            let mut l = LocalBlocks::new();
            l.push_range(local, 0, len)?;
            l
        };
        let r = self.remote_range(0, len)?;
        let t = match op {
            TransferOp::Write => self.agent.write(&l, &r, None)?,
            TransferOp::Read => self.agent.read(&l, &r, None)?,
        };
        if !t.wait_timeout(WAIT) {
            return Err(CliError::Bench(format!(
                "a {} of {len} bytes with '{}' did not finish within {WAIT:?}",
                op.name(),
                t.target()
            )));
        }
        t.wait()?;
        Ok(())
    }
}

fn poisoned(len: usize) -> Result<SystemStorage> {
    let mut s = SystemStorage::new(len)?;
    s.memset(POISON);
    Ok(s)
}

/// The host bytes of one of the ends' registered buffers.
fn host_bytes(b: &Buffer) -> Result<Image<'_>> {
    verify::host_slice(b).map(Image::Borrowed).ok_or_else(|| {
        CliError::Bench("internal: NIXL buffer is not registered host memory".into())
    })
}

/// A NIXL point's block transfer and reference, over lists prepared once.
struct Nixl<'a> {
    ends: &'a NixlEnds,
    engine: &'a TransferEngine,
    op: TransferOp,
    label: &'static str,
    block_bytes: usize,
    /// Block ids on this side and on the peer's.
    local_ids: Vec<usize>,
    remote_ids: Vec<usize>,
    blocks: (RegisteredLayout, RemoteLayout),
    whole: (RegisteredLayout, RemoteLayout),
    bytes: usize,
}

impl Nixl<'_> {
    fn run(
        &self,
        (l, r): &(RegisteredLayout, RemoteLayout),
        li: &[usize],
        ri: &[usize],
    ) -> Result<f64> {
        let t = Instant::now();
        let handle = match self.op {
            TransferOp::Write => self.engine.write_remote(l, li, r, ri, None)?,
            TransferOp::Read => self.engine.read_remote(r, ri, l, li)?,
        };
        if !handle.wait_timeout(WAIT) {
            return Err(CliError::Bench(format!(
                "{}: a NIXL transfer did not finish within {WAIT:?}",
                self.label
            )));
        }
        handle.wait()?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Sets the first `bytes` of this side's destination buffer to poison, and checks it.
    fn poison_dst(&self, spec: &PointSpec) -> Result<()> {
        let ends = self.ends;
        self.engine.copy_region(&ends.poison, &ends.dst)?.wait()?;
        verify::check_poisoned(spec, &ends.dst, self.bytes)
    }
}

impl Candidate for Nixl<'_> {
    /// Every byte checked once, through the same prepared lists the timed runs use.
    fn verify(&self, spec: &PointSpec) -> Result<u64> {
        let (ends, bytes, size) = (self.ends, self.bytes, self.block_bytes);
        let pairs = match self.op {
            TransferOp::Write => {
                // Poison the peer's region, and see that it took (read back over `dst`,
                // itself filled with source bytes first).
                ends.whole(TransferOp::Write, &ends.poison, bytes)?;
                self.engine.copy_region(&ends.src, &ends.dst)?.wait()?;
                ends.whole(TransferOp::Read, &ends.dst, bytes)?;
                verify::check_poisoned(spec, &ends.dst, bytes)?;
                self.transfer()?;
                self.poison_dst(spec)?;
                ends.whole(TransferOp::Read, &ends.dst, bytes)?;
                // Remote block r[k] now holds source block l[k].
                verify::contiguous_pairs(size, &self.local_ids, &self.remote_ids)
            }
            TransferOp::Read => {
                ends.whole(TransferOp::Write, &ends.src, bytes)?;
                self.poison_dst(spec)?;
                self.transfer()?;
                // Local block l[k] now holds remote block r[k], which holds source block r[k].
                verify::contiguous_pairs(size, &self.remote_ids, &self.local_ids)
            }
        };
        verify::compare(
            spec,
            host_bytes(&ends.dst)?,
            &host_bytes(&ends.src)?,
            &pairs,
        )
    }

    fn transfer(&self) -> Result<Sample> {
        Ok(Sample {
            secs: self.run(&self.blocks, &self.local_ids, &self.remote_ids)?,
            plan_secs: 0.0,
            copies: self.local_ids.len(),
            submit_cpu_secs: None,
        })
    }

    fn reference(&self) -> Result<f64> {
        self.run(&self.whole, &[0], &[0])
    }

    fn reference_method(&self) -> &'static str {
        REFERENCE_METHOD
    }
}

/// One point: `spec`'s blocks, `op` from this agent's view (pair `k` moves local block
/// `ids.0[k]` to or from the peer's block `ids.1[k]`).
pub fn measure(
    ends: &NixlEnds,
    engine: &TransferEngine,
    op: TransferOp,
    spec: &PointSpec,
    bar: &ProgressBar,
) -> Result<Point> {
    let (size, blocks) = (spec.block_bytes, spec.blocks);
    let bytes = size
        .checked_mul(blocks)
        .filter(|b| *b <= ends.len && *b > 0 && *b == spec.bytes)
        .ok_or_else(|| {
            CliError::Bench(format!(
                "{blocks} blocks of {size} bytes do not fit the {} bytes of the NIXL region",
                ends.len
            ))
        })?;
    let (local_ids, remote_ids) = spec.ids();
    let local_buf = match op {
        TransferOp::Write => &ends.src,
        TransferOp::Read => &ends.dst,
    };
    // Layouts, prepared once per point: `blocks` blocks of `size` bytes on each side, and the
    // reference's one block of the same bytes. Both go through the engine's remote path.
    let agent = &ends.agent;
    let prepare = |block: usize, n: usize| -> Result<(RegisteredLayout, RemoteLayout)> {
        let c = LayoutConfig {
            num_blocks: n,
            num_layers: 1,
            outer_dim: 1,
            page_size: 1,
            inner_dim: block,
            dtype_bytes: 1,
        };
        let local = BlockLayout::new(c, LayoutKind::FullyContiguous, vec![local_buf.clone()], 1)?;
        let remote = LayoutDescriptor {
            format: LAYOUT_DESCRIPTOR_FORMAT,
            agent: ends.peer.name().to_owned(),
            config: c,
            kind: LayoutKind::FullyContiguous,
            regions: vec![NixlDescriptor {
                addr: ends.remote_addr,
                size: ends.len,
                mem_type: MemType::Dram,
                device_id: 0,
            }],
        };
        Ok((
            RegisteredLayout::new(agent, local)?,
            RemoteLayout::new(agent, &ends.peer, remote)?,
        ))
    };
    let candidate = Nixl {
        ends,
        engine,
        op,
        label: spec.label,
        block_bytes: size,
        local_ids,
        remote_ids,
        blocks: prepare(size, blocks)?,
        whole: prepare(bytes, 1)?,
        bytes,
    };
    let measured = point::run(spec, &[&candidate], &mut [], bar)?;
    let mut p = measured[0].point(spec, REFERENCE_METHOD);
    // The lists are prepared: the timed runs include no planning.
    p.exec_ratio = p.ratio;
    Ok(p)
}
