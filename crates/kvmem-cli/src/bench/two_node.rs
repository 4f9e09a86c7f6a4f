//! The two-node mode: `--role target` registers host blocks and serves its metadata on NIXL's
//! listener socket; `--role initiator --peer HOST:PORT` fetches it, learns the target's blocks,
//! sweeps WRITE/READ points against them (every byte checked), and tells the target to exit.
//! The protocol, byte for byte, is in `docs/TWO_NODE.md`.

use super::nixl::{self, NixlEnds};
use super::point::PointSpec;
use super::report::Report;
use super::{BenchArgs, Pattern};
use crate::error::{CliError, Result};
use kvmem::nixl::raw::TransferOp;
use kvmem::nixl::{Agent, AgentConfig, MemType, NixlDescriptor, PeerManifest};
use kvmem::transfer::{EngineConfig, TransferEngine};
use kvmem::{HostMemory, MemoryDescriptor, SystemStorage};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The initiator's first notification to the target.
pub const HELLO: &[u8] = b"kvmem-bench-hello";
/// Prefix of the target's answer; the rest is the [`TargetBlocks`] JSON.
pub const BLOCKS_PREFIX: &[u8] = b"kvmem-bench-blocks ";
/// The initiator is done: the target answers [`BYE`] and exits.
pub const DONE: &[u8] = b"kvmem-bench-done";
/// The target's last message before it exits.
pub const BYE: &[u8] = b"kvmem-bench-bye";

/// How long the protocol's steps may take (metadata fetch, answers).
const STEP: Duration = Duration::from_secs(30);
/// How long the initiator waits for the target's goodbye after a failed sweep (the target may be
/// the part that failed).
const AFTER_FAILURE: Duration = Duration::from_secs(5);

/// The first error wins: `failure` (what went wrong first) when there is one, with the
/// `cleanup`'s own error only logged; otherwise the cleanup's result. `cleanup` names the step
/// for the log.
fn first_error(failure: Option<CliError>, later: Result<()>, cleanup: &str) -> Result<()> {
    match (failure, later) {
        (Some(first), Err(second)) => {
            tracing::warn!(error = %second, "could not {cleanup} after an earlier failure");
            Err(first)
        }
        (Some(first), Ok(())) => Err(first),
        (None, later) => later,
    }
}

/// What the target tells the initiator about its blocks: its manifest (the `PeerManifest` kvmem
/// ships in metadata envelopes) plus the block geometry. Block `i` is `block_size` bytes at
/// `regions[0].addr + i * block_size`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetBlocks {
    /// The target's registered regions (format 1).
    #[serde(flatten)]
    pub manifest: PeerManifest,
    /// Bytes per block.
    pub block_size: u64,
    /// Number of blocks.
    pub blocks: u64,
}

/// `--role target`: serve blocks until an initiator says it is done (or `--target-wait`).
pub fn target(args: &BenchArgs) -> Result<()> {
    let blocks = args.blocks.unwrap_or(64);
    let block_size = args.block_size;
    let len = blocks
        .checked_mul(block_size)
        .ok_or_else(|| CliError::Bench("--blocks times --block-size overflows".into()))?;
    let agent = Agent::new(
        AgentConfig::new(args.name.clone())
            .with_listener(args.listen_port)
            .with_listener_delay_us(10_000),
    )?;
    let mut storage = SystemStorage::new(len)?;
    storage.memset(0xA5);
    let region = agent.register(storage).map_err(|e| e.error)?;
    let answer = TargetBlocks {
        manifest: PeerManifest {
            format: kvmem::nixl::peer::MANIFEST_FORMAT,
            agent: agent.name().to_owned(),
            regions: vec![NixlDescriptor::dram(region.addr() as u64, len)],
        },
        block_size: block_size as u64,
        blocks: blocks as u64,
    };
    let mut message = BLOCKS_PREFIX.to_vec();
    message.extend(serde_json::to_vec(&answer)?);
    println!(
        "kvmem bench target '{}' listening on port {}: {blocks} blocks of {block_size} bytes at {:#x}",
        agent.name(),
        args.listen_port,
        region.addr()
    );
    std::io::stdout().flush()?;

    let deadline = Instant::now() + Duration::from_secs(args.target_wait);
    while Instant::now() < deadline {
        for note in agent.take_all_notifications()? {
            if note.message == HELLO {
                // The initiator pushed its metadata to our listener before saying hello.
                agent.accept_pushed_peer(&note.peer, STEP)?;
                agent.notify(&note.peer, &message)?;
                tracing::info!(initiator = %note.peer, "sent the block list");
            } else if note.message == DONE {
                agent.notify(&note.peer, BYE)?;
                // Give the backend a moment to send BYE before the agent goes.
                std::thread::sleep(Duration::from_millis(200));
                println!("initiator '{}' is done; exiting", note.peer);
                drop(region);
                drop(agent);
                tracing::info!("target agent dropped");
                return Ok(());
            } else {
                tracing::warn!(peer = %note.peer, message = %String::from_utf8_lossy(&note.message), "unexpected notification");
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(CliError::Bench(format!(
        "no initiator said it was done within {} s (--target-wait)",
        args.target_wait
    )))
}

/// `--role initiator`: the sweep against the target at `--peer`.
pub fn initiator(args: &BenchArgs) -> Result<Report> {
    let peer_arg = args
        .peer
        .as_deref()
        .ok_or_else(|| CliError::Bench("--role initiator needs --peer HOST:PORT".into()))?;
    let addr = peer_arg
        .to_socket_addrs()
        .map_err(|e| CliError::Bench(format!("--peer {peer_arg}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| CliError::Bench(format!("--peer {peer_arg}: no IPv4 address")))?;
    // NIXL exchanges socket metadata on the listener thread, so the initiator listens too.
    let port = match args.initiator_port {
        Some(p) => p,
        None => TcpListener::bind("0.0.0.0:0")?.local_addr()?.port(),
    };
    let agent = Agent::new(
        AgentConfig::new(format!("kvmem-bench-initiator-{}", std::process::id()))
            .with_listener(port)
            .with_listener_delay_us(10_000),
    )?;
    let peer = agent.connect_listener(&args.name, addr, STEP)?;
    agent.publish_to_listener(addr)?;
    agent.notify(peer.name(), HELLO)?;
    let answer = agent.wait_notification(peer.name(), STEP)?;
    let json = answer.strip_prefix(BLOCKS_PREFIX).ok_or_else(|| {
        CliError::Bench(format!(
            "the target answered {:?} instead of its block list",
            String::from_utf8_lossy(&answer)
        ))
    })?;
    let blocks: TargetBlocks = serde_json::from_slice(json)?;
    let region = blocks
        .manifest
        .regions
        .first()
        .filter(|r| r.mem_type == MemType::Dram)
        .ok_or_else(|| CliError::Bench("the target sent no host region".into()))?;
    // Parsing the manifest checked that the length fits this machine.
    let len = region.size.min(args.nixl_bytes);
    tracing::info!(target = %peer.name(), blocks = blocks.blocks, block_size = blocks.block_size, "got the target's blocks");

    let engine = TransferEngine::new(EngineConfig::default())?;
    let config = EngineConfig::default();
    let ends = NixlEnds::new(agent.clone(), peer.clone(), region.addr, len, args.seed)?;
    let mut sizes: Vec<usize> = args.sizes.iter().copied().filter(|s| *s <= len).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut skipped: Vec<String> = args
        .sizes
        .iter()
        .filter(|s| **s > len)
        .map(|s| format!("remote {s}: larger than the {len} bytes used of the target's region"))
        .collect();
    let mut plan: Vec<(TransferOp, Pattern, usize)> = Vec::new();
    for op in [TransferOp::Write, TransferOp::Read] {
        for &pattern in &args.patterns {
            for &size in &sizes {
                plan.push((op, pattern, size));
            }
        }
    }
    let bar = super::progress_bar((plan.len() * (args.iterations + 1)) as u64);
    let started = Instant::now();
    let load_before = super::report::load_average();
    let mut points = Vec::new();
    let mut failure = None;
    for (op, pattern, size) in plan {
        let label = match op {
            TransferOp::Write => "remote-write",
            TransferOp::Read => "remote-read",
        };
        let n = args.blocks.unwrap_or(len / size).min(len / size);
        if n == 0 {
            skipped.push(format!("{label} {size}: no block fits"));
            continue;
        }
        let spec = PointSpec {
            label,
            pattern,
            block_bytes: size,
            blocks: n,
            bytes: n * size,
            iterations: args.iterations,
            seed: args.seed,
        };
        match nixl::measure(&ends, &engine, op, &spec, &bar) {
            Ok(p) => points.push(p),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    bar.finish_and_clear();
    // Tell the target to exit whatever happened, and wait for its goodbye. After a failure the
    // target may be what failed (a killed process): the failure is the error reported, and the
    // goodbye's own failure is only logged.
    drop(ends);
    let bye_wait = if failure.is_some() {
        AFTER_FAILURE
    } else {
        STEP
    };
    let goodbye = agent
        .notify(peer.name(), DONE)
        .and_then(|()| agent.wait_for_message(peer.name(), BYE, bye_wait));
    first_error(
        failure,
        goodbye.map_err(CliError::from),
        "tell the target to exit",
    )?;
    let mut report = super::sweep::report_of(&config, args, started, load_before, points, skipped);
    report.two_node = Some(format!(
        "initiator '{}' -> target '{}' at {addr} ({} blocks of {} bytes; {len} bytes used)",
        agent.name(),
        peer.name(),
        blocks.blocks,
        blocks.block_size
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_wins_over_a_failed_cleanup() {
        let first = CliError::Bench("the transfer failed".into());
        let second = Err(CliError::Bench("the notification failed".into()));
        let e = first_error(Some(first), second, "notify").unwrap_err();
        assert_eq!(e.to_string(), "bench: the transfer failed");
        let e = first_error(None, Err(CliError::Bench("only".into())), "notify").unwrap_err();
        assert_eq!(e.to_string(), "bench: only");
        let e = first_error(Some(CliError::Bench("first".into())), Ok(()), "notify").unwrap_err();
        assert_eq!(e.to_string(), "bench: first");
        assert!(first_error(None, Ok(()), "notify").is_ok());
    }
}
