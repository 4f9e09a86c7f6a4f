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

/// How often the agents' NIXL listener thread wakes up, in microseconds.
const LISTENER_DELAY_US: u64 = 10_000;

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

/// A notification of the two-node protocol, decoded from the bytes a peer sent.
#[derive(Debug)]
pub enum Message {
    /// [`HELLO`].
    Hello,
    /// [`DONE`].
    Done,
    /// [`BYE`].
    Bye,
    /// [`BLOCKS_PREFIX`] and the target's block list, checked.
    Blocks(TargetBlocks),
}

impl Message {
    /// Decodes one notification.
    ///
    /// # Errors
    /// [`CliError::Bench`] for bytes that are none of the protocol's messages, and for a block
    /// list that is not valid JSON or not what `docs/TWO_NODE.md` allows (see
    /// [`TargetBlocks::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes {
            HELLO => Ok(Self::Hello),
            DONE => Ok(Self::Done),
            BYE => Ok(Self::Bye),
            _ => match bytes.strip_prefix(BLOCKS_PREFIX) {
                Some(json) => {
                    let blocks: TargetBlocks = serde_json::from_slice(json).map_err(|e| {
                        CliError::Bench(format!("the target's block list is not valid JSON: {e}"))
                    })?;
                    blocks.check()?;
                    Ok(Self::Blocks(blocks))
                }
                None => Err(CliError::Bench(format!(
                    "not a message of the two-node protocol ({} bytes starting {:?})",
                    bytes.len(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(32)])
                ))),
            },
        }
    }
}

impl TargetBlocks {
    /// Checks a block list as the initiator uses it: manifest format 1, exactly one host
    /// (`Dram`, device 0) region, at least one block, and the blocks inside that region.
    ///
    /// # Errors
    /// [`CliError::Bench`] naming what is wrong.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(CliError::Bench(format!("the target's block list: {what}")));
        if self.manifest.format != kvmem::nixl::peer::MANIFEST_FORMAT {
            return bad(format!("manifest format {} is not 1", self.manifest.format));
        }
        let [region] = self.manifest.regions.as_slice() else {
            return bad(format!(
                "{} regions; the target registers exactly one",
                self.manifest.regions.len()
            ));
        };
        if region.mem_type != MemType::Dram || region.device_id != 0 {
            return bad(format!(
                "the region is {:?} memory on device {}; it must be host memory (Dram, device 0)",
                region.mem_type, region.device_id
            ));
        }
        if self.block_size == 0 || self.blocks == 0 {
            return bad("no blocks (block_size or blocks is 0)".into());
        }
        match self.blocks.checked_mul(self.block_size) {
            Some(n) if n <= region.size as u64 && region.addr.checked_add(n).is_some() => Ok(()),
            _ => bad(format!(
                "{} blocks of {} bytes do not fit the {}-byte region",
                self.blocks, self.block_size, region.size
            )),
        }
    }
}

/// `--role target`: serve blocks until an initiator says it is done (or `--target-wait`).
pub fn target(args: &BenchArgs) -> Result<()> {
    let blocks = args.blocks.unwrap_or(64);
    let block_size = args.block_size;
    let len = blocks
        .checked_mul(block_size)
        .ok_or_else(|| CliError::Bench("--blocks times --block-size overflows".into()))?;
    let agent = Agent::new(AgentConfig {
        listener_delay_us: LISTENER_DELAY_US,
        listen: true,
        listen_port: args.listen_port,
        ..AgentConfig::new(args.name.clone())
    })?;
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
            let received = Message::decode(&note.message);
            if matches!(received, Ok(Message::Hello)) {
                // The initiator pushed its metadata to our listener before saying hello.
                agent.accept_pushed_peer(&note.peer, STEP)?;
                agent.notify(&note.peer, &message)?;
                tracing::info!(initiator = %note.peer, "sent the block list");
            } else if matches!(received, Ok(Message::Done)) {
                agent.notify(&note.peer, BYE)?;
                // Give the backend a moment to send BYE before the agent goes.
                std::thread::sleep(Duration::from_millis(200));
                println!("initiator '{}' is done; exiting", note.peer);
                drop(region);
                drop(agent);
                tracing::info!("target agent dropped");
                return Ok(());
            } else {
                tracing::warn!(peer = %note.peer, message = ?received, "unexpected notification; ignored");
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
    let agent = Agent::new(AgentConfig {
        listener_delay_us: LISTENER_DELAY_US,
        listen: true,
        listen_port: port,
        ..AgentConfig::new(format!("kvmem-bench-initiator-{}", std::process::id()))
    })?;
    let peer = agent.connect_listener(&args.name, addr, STEP)?;
    agent.publish_to_listener(addr)?;
    agent.notify(peer.name(), HELLO)?;
    let answer = agent.wait_notification(peer.name(), STEP)?;
    let blocks = match Message::decode(&answer)? {
        Message::Blocks(b) => b,
        other => {
            return Err(CliError::Bench(format!(
                "the target answered {other:?} instead of its block list"
            )));
        }
    };
    // The metadata fetched above may predate the target's registration (its listener runs
    // from the agent's start): fetch it again, now that the block list says it is registered.
    agent.connect_listener(&args.name, addr, STEP)?;
    // With the block list's manifest, a block NIXL no longer knows (a target that died) is
    // reported as the target being unavailable, not as a wrong block.
    let peer = agent.attach_manifest(blocks.manifest.clone())?;
    // Checked: exactly one host region, holding the blocks.
    let region = blocks.manifest.regions[0];
    let len = region.size.min(args.nixl_bytes);
    tracing::info!(target = %peer.name(), blocks = blocks.blocks, block_size = blocks.block_size, "got the target's blocks");

    let engine = TransferEngine::new(EngineConfig::default())?;
    let config = EngineConfig::default();
    let ends = NixlEnds::new(agent.clone(), peer.clone(), region.addr, len, args.seed)?;
    let all_sizes = args.sizes();
    let mut sizes: Vec<usize> = all_sizes.iter().copied().filter(|s| *s <= len).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut skipped: Vec<String> = all_sizes
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
    let bar = super::progress_bar(plan.len(), args.iterations);
    let started = super::sweep::Started::now();
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
    let mut report = super::sweep::report_of(&config, args, started, points, skipped);
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
#[path = "../../../kvmem/tests/fuzz_support/mod.rs"]
mod fuzz_support;

#[cfg(test)]
mod tests {
    use super::fuzz_support::{assert_clean, inputs, run};
    use super::*;

    fn block_list(regions: Vec<NixlDescriptor>, block_size: u64, blocks: u64) -> Vec<u8> {
        let answer = TargetBlocks {
            manifest: PeerManifest {
                format: 1,
                agent: "kvmem-bench-target".into(),
                regions,
            },
            block_size,
            blocks,
        };
        let mut m = BLOCKS_PREFIX.to_vec();
        m.extend(serde_json::to_vec(&answer).unwrap());
        m
    }

    fn seeds() -> Vec<Vec<u8>> {
        let region = NixlDescriptor::dram(0x7f12_3456_0000, 64 << 20);
        vec![
            block_list(vec![region], 1 << 20, 64),
            block_list(vec![region], 4096, 3),
            block_list(vec![region, region], 4096, 3),
            HELLO.to_vec(),
            DONE.to_vec(),
            BYE.to_vec(),
        ]
    }

    /// The notifications a peer sends in the two-node protocol, the block list among them,
    /// over generated and mutated inputs: no panic, every refusal `CliError::Bench`, and an
    /// accepted block list always inside its one host region.
    fn fuzz(n: u64) {
        let t = run(
            "two-node notifications and block list",
            4,
            n,
            &seeds(),
            |b| match Message::decode(b) {
                Ok(Message::Blocks(blocks)) => {
                    let r = blocks.manifest.regions[0];
                    let end = blocks.blocks.checked_mul(blocks.block_size);
                    if r.mem_type == MemType::Dram && end.is_some_and(|e| e <= r.size as u64) {
                        Ok(true)
                    } else {
                        Err(format!(
                            "accepted a block list outside its region: {blocks:?}"
                        ))
                    }
                }
                Ok(_) => Ok(true),
                Err(CliError::Bench(_)) => Ok(false),
                Err(e) => Err(e.to_string()),
            },
        );
        assert_clean("two-node", &t);
    }

    #[test]
    fn two_node_messages_survive_mutated_input() {
        fuzz(inputs(100_000));
    }

    #[test]
    #[ignore = "1M inputs: run in release by the lead"]
    fn two_node_messages_survive_one_million_inputs() {
        fuzz(1_000_000);
    }

    #[test]
    fn block_lists_the_initiator_cannot_use_are_refused() {
        let region = NixlDescriptor::dram(0x1000, 1 << 20);
        let refused = |m: Vec<u8>| Message::decode(&m).unwrap_err().to_string();
        assert!(refused(block_list(vec![], 4096, 1)).contains("0 regions"));
        assert!(refused(block_list(vec![region, region], 4096, 1)).contains("2 regions"));
        assert!(refused(block_list(vec![region], 4096, 257)).contains("do not fit"));
        assert!(refused(block_list(vec![region], u64::MAX, 2)).contains("do not fit"));
        assert!(refused(block_list(vec![region], 0, 2)).contains("no blocks"));
        let mut vram = region;
        vram.mem_type = MemType::Vram;
        assert!(refused(block_list(vec![vram], 4096, 1)).contains("host memory"));
        assert!(refused(b"kvmem-bench-blocks {".to_vec()).contains("not valid JSON"));
        assert!(refused(b"hello".to_vec()).contains("not a message"));
        assert!(matches!(
            Message::decode(&block_list(vec![region], 4096, 256)),
            Ok(Message::Blocks(_))
        ));
    }

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
