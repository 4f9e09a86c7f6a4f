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

use super::Pattern;
use super::report::{Percentiles, Point};
use crate::error::{CliError, Result};
use indicatif::ProgressBar;
use kvmem::Completion;
use kvmem::layout::{BlockLayout, LayoutConfig, LayoutKind};
use kvmem::nixl::raw::{LocalBlocks, RawTransfers, RemoteBlock, RemoteBlocks, TransferOp};
use kvmem::nixl::{Agent, AgentConfig, MemType, NixlDescriptor, Peer, Registered};
use kvmem::transfer::{
    LAYOUT_DESCRIPTOR_FORMAT, LayoutDescriptor, RegisteredLayout, RemoteLayout, TransferEngine,
};
use kvmem::{Buffer, HostMemory, SystemStorage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use std::time::{Duration, Instant};

/// How long one NIXL transfer may take before the bench gives up on it.
const WAIT: Duration = Duration::from_secs(120);
/// Destination bytes are set to this before a checked transfer.
const POISON: u8 = 0xA5;

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
        r.push(RemoteBlock::dram(self.remote_addr + offset as u64, len))?;
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

fn host_bytes(b: &Buffer) -> Result<&[u8]> {
    b.downcast_ref::<Registered<SystemStorage>>()
        .map(|r| r.as_slice())
        .ok_or_else(|| {
            CliError::Bench("internal: NIXL buffer is not registered host memory".into())
        })
}

/// The block ids of a point: pair `k` moves local block `local[k]` and remote block `remote[k]`.
pub fn block_ids(pattern: Pattern, blocks: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    match pattern {
        Pattern::Sequential => ((0..blocks).collect(), (0..blocks).collect()),
        Pattern::Scattered => {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut l: Vec<usize> = (0..blocks).collect();
            let mut r = l.clone();
            l.shuffle(&mut rng);
            r.shuffle(&mut rng);
            (l, r)
        }
    }
}

/// One point: `blocks` blocks of `size` bytes, `op` from this agent's view.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    ends: &NixlEnds,
    engine: &TransferEngine,
    label: &'static str,
    op: TransferOp,
    pattern: Pattern,
    size: usize,
    blocks: usize,
    iterations: usize,
    seed: u64,
    bar: &ProgressBar,
) -> Result<Point> {
    let bytes = size
        .checked_mul(blocks)
        .filter(|b| *b <= ends.len && *b > 0)
        .ok_or_else(|| {
            CliError::Bench(format!(
                "{blocks} blocks of {size} bytes do not fit the {} bytes of the NIXL region",
                ends.len
            ))
        })?;
    let (local_ids, remote_ids) = block_ids(pattern, blocks, seed ^ size as u64);
    let local_buf = match op {
        TransferOp::Write => &ends.src,
        TransferOp::Read => &ends.dst,
    };
    // Layouts, prepared once per point: `blocks` blocks of `size` bytes on each side, and the
    // reference's one block of the same bytes. Both go through the engine's remote path.
    let config = |block: usize, n: usize| LayoutConfig {
        num_blocks: n,
        num_layers: 1,
        outer_dim: 1,
        page_size: 1,
        inner_dim: block,
        dtype_bytes: 1,
    };
    let agent = &ends.agent;
    let prepare = |block: usize, n: usize| -> Result<(RegisteredLayout, RemoteLayout)> {
        let c = config(block, n);
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
    let (blocks_local, blocks_remote) = prepare(size, blocks)?;
    let (whole_local, whole_remote) = prepare(bytes, 1)?;
    let run = |l: &RegisteredLayout, li: &[usize], r: &RemoteLayout, ri: &[usize]| {
        let t = Instant::now();
        let handle = match op {
            TransferOp::Write => engine.write_remote(l, li, r, ri, None)?,
            TransferOp::Read => engine.read_remote(r, ri, l, li)?,
        };
        if !handle.wait_timeout(WAIT) {
            return Err(CliError::Bench(format!(
                "{label}: a NIXL transfer did not finish within {WAIT:?}"
            )));
        }
        handle.wait()?;
        Ok::<f64, CliError>(t.elapsed().as_secs_f64())
    };
    let transfer = || run(&blocks_local, &local_ids, &blocks_remote, &remote_ids);
    let reference = || run(&whole_local, &[0], &whole_remote, &[0]);

    // Check every byte once, through the same prepared lists the timed runs use.
    match op {
        TransferOp::Write => {
            ends.whole(TransferOp::Write, &ends.poison, bytes)?;
            transfer()?;
            engine
                .copy_region(&ends.poison, &ends.dst)?
                .wait()
                .map_err(CliError::from)?;
            ends.whole(TransferOp::Read, &ends.dst, bytes)?;
            // Remote block r[k] now holds source block l[k].
            check(
                host_bytes(&ends.dst)?,
                host_bytes(&ends.src)?,
                size,
                &remote_ids,
                &local_ids,
                label,
            )?;
        }
        TransferOp::Read => {
            ends.whole(TransferOp::Write, &ends.src, bytes)?;
            engine
                .copy_region(&ends.poison, &ends.dst)?
                .wait()
                .map_err(CliError::from)?;
            transfer()?;
            // Local block l[k] now holds remote block r[k], which holds source block r[k].
            check(
                host_bytes(&ends.dst)?,
                host_bytes(&ends.src)?,
                size,
                &local_ids,
                &remote_ids,
                label,
            )?;
        }
    }
    reference()?;
    bar.inc(1);

    let mut times = Vec::with_capacity(iterations);
    let mut ref_times = Vec::with_capacity(iterations);
    for i in 0..iterations {
        // Alternate which one goes first.
        if i % 2 == 0 {
            times.push(transfer()?);
            ref_times.push(reference()?);
        } else {
            ref_times.push(reference()?);
            times.push(transfer()?);
        }
        bar.inc(1);
    }
    let gib = |secs: f64| bytes as f64 / secs / f64::from(1u32 << 30);
    let (median, median_ref) = (Percentiles::of(&times).p50, Percentiles::of(&ref_times).p50);
    Ok(Point {
        path: label,
        disk_backend: None,
        pattern,
        block_bytes: size,
        blocks,
        bytes,
        copies: blocks,
        iterations,
        gib_s: gib(median),
        reference_gib_s: gib(median_ref),
        ratio: median_ref / median,
        plan_ms: 0.0,
        exec_ratio: median_ref / median,
        latency_ms: Percentiles::of(&times).scaled(1e3),
        reference_latency_ms: Percentiles::of(&ref_times).scaled(1e3),
        fio: None,
        memcpy: None,
        verified_bytes: Some(bytes as u64),
    })
}

/// Checks that block `dst_ids[k]` of `dst` equals block `src_ids[k]` of `src`, for every `k`.
fn check(
    d: &[u8],
    s: &[u8],
    size: usize,
    dst_ids: &[usize],
    src_ids: &[usize],
    label: &str,
) -> Result<()> {
    for (k, (&di, &si)) in dst_ids.iter().zip(src_ids).enumerate() {
        let got = &d[di * size..(di + 1) * size];
        let want = &s[si * size..(si + 1) * size];
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            return Err(CliError::Bench(format!(
                "{label}: pair {k} (block {di} <- block {si}, {size} bytes) differs at byte {i}: \
                 got {:#04x}, expected {:#04x}",
                got[i], want[i]
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_ids_are_two_permutations_and_sequential_is_identity() {
        let (l, r) = block_ids(Pattern::Scattered, 100, 7);
        let mut ls = l.clone();
        ls.sort_unstable();
        let mut rs = r.clone();
        rs.sort_unstable();
        let all: Vec<usize> = (0..100).collect();
        assert_eq!((ls, rs), (all.clone(), all.clone()));
        assert_ne!(l, r, "independent orders on each side");
        assert_ne!(l, all, "scattered");
        assert_eq!(block_ids(Pattern::Sequential, 100, 7), (all.clone(), all));
    }

    #[test]
    fn check_compares_the_paired_blocks() {
        let src: Vec<u8> = (0..16u8).collect();
        // dst block 0 holds src block 3, dst block 3 holds src block 0, 1 and 2 in place.
        let mut dst = src.clone();
        dst[..4].copy_from_slice(&src[12..]);
        dst[12..].copy_from_slice(&src[..4]);
        check(&dst, &src, 4, &[0, 1, 2, 3], &[3, 1, 2, 0], "t").unwrap();
        let err = check(&dst, &src, 4, &[0, 1, 2, 3], &[0, 1, 2, 3], "t").unwrap_err();
        assert!(err.to_string().contains("pair 0"), "{err}");
        dst[6] ^= 1;
        let err = check(&dst, &src, 4, &[0, 1, 2, 3], &[3, 1, 2, 0], "t").unwrap_err();
        assert!(err.to_string().contains("byte 2"), "{err}");
    }
}
