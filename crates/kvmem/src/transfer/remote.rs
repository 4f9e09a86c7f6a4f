//! Block transfers between this process and a NIXL peer: READ and WRITE over prepared
//! descriptor lists.
//!
//! Both sides of a remote transfer are prepared once, when the layout is set up, with one NIXL
//! descriptor per (block, layer, outer) chunk in a fixed order — chunk `(b, l, o)` is entry
//! `(b × layers + l) × outer + o` on both sides:
//!
//! * [`RegisteredLayout`]: a local [`BlockLayout`] whose regions are registered with an
//!   [`Agent`] (each a [`Buffer`] holding a [`Registered`](crate::nixl::Registered) storage);
//! * [`RemoteLayout`]: a peer's layout, rebuilt from the [`LayoutDescriptor`] the peer sends (as
//!   JSON, over any channel: a NIXL notification, the peer's own control plane).
//!
//! A transfer then only selects entries: validating the request and building two index lists
//! is all the per-transfer work kvmem does before NIXL's `makeXferReq`/`postXferReq`. Chunks
//! are not merged on this path (a prepared list's entries are fixed); for whole-layout copies of
//! sequential blocks a fresh list of merged ranges would hand NIXL fewer, larger descriptors.

use super::handle::Completion;
use super::plan::{by_destination, check_shapes};
use super::worker::{Backend, Health, Worker};
use crate::backoff::Backoff;
use crate::descriptor::MemoryDescriptor;
use crate::error::{BoundsError, Error, NixlError, Result, TransferError};
use crate::layout::{BlockLayout, LayoutConfig, LayoutKind, strides};
use crate::nixl::raw::{
    LocalBlocks, PreparedLocal, PreparedRemote, RawTransfers, RemoteBlocks, Transfer, TransferOp,
};
use crate::nixl::{Agent, NixlDescriptor, Peer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The wire format version of [`LayoutDescriptor`].
pub const LAYOUT_DESCRIPTOR_FORMAT: u32 = 1;

/// What a peer needs to address the blocks of a [`RegisteredLayout`]: its shape and the NIXL
/// descriptors of its regions. Serialize it (JSON) and send it to the peer, which rebuilds the
/// layout with [`RemoteLayout::new`].
///
/// Chunk `(block, layer, outer)` lives in region `layer` for a layer-separate layout and region
/// 0 for a fully contiguous one, at offset `block × B + layer × L + outer × O` from the region's
/// `addr`, where for chunk size `C`, `layers` layers, `outer_dim` outer parts and `num_blocks`
/// blocks: fully contiguous `B = C × layers × outer_dim, L = C × outer_dim, O = C`; block-first
/// `B = C × outer_dim, L = 0, O = C`; block-second `B = C, L = 0, O = C × num_blocks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutDescriptor {
    /// [`LAYOUT_DESCRIPTOR_FORMAT`].
    pub format: u32,
    /// Name of the NIXL agent whose memory the regions are.
    pub agent: String,
    /// The layout's dimensions.
    pub config: LayoutConfig,
    /// The layout's arrangement.
    pub kind: LayoutKind,
    /// One descriptor per region, in region order.
    pub regions: Vec<NixlDescriptor>,
}

/// The most chunks a [`RemoteLayout`] may have: a peer's descriptor claiming more is refused
/// before anything is allocated for it (each chunk costs one NIXL descriptor, 32 bytes, here).
pub const MAX_REMOTE_CHUNKS: usize = 1 << 25;

impl LayoutDescriptor {
    /// Decodes a descriptor a peer sent (JSON) and checks it as far as that is possible
    /// without the peer's metadata (see [`check`](Self::check)).
    ///
    /// # Errors
    /// [`TransferError::Mismatch`] for bytes that are not a layout descriptor's JSON, and the
    /// errors of [`check`](Self::check).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let d: Self = serde_json::from_slice(bytes).map_err(|e| {
            Error::Transfer(TransferError::Mismatch {
                reason: format!("not a layout descriptor (JSON of format 1): {e}"),
            })
        })?;
        d.check()?;
        Ok(d)
    }

    /// Checks what the descriptor says about itself: its format, that its regions are as many
    /// as its layout has, of one memory type and device, large enough for the layout and not
    /// wrapping the address space, and that it has at most [`MAX_REMOTE_CHUNKS`] chunks.
    /// Returns the chunk count.
    ///
    /// # Errors
    /// [`TransferError::Mismatch`] for another format, the wrong region count, mixed or too
    /// small regions; [`BoundsError::Overflow`] for more chunks than allowed or a region
    /// wrapping the address space; layout dimension errors as for [`LayoutConfig::regions`].
    pub fn check(&self) -> Result<usize> {
        let bad = |reason: String| Error::Transfer(TransferError::Mismatch { reason });
        if self.format != LAYOUT_DESCRIPTOR_FORMAT {
            return Err(bad(format!(
                "layout descriptor format {} (this kvmem reads format {LAYOUT_DESCRIPTOR_FORMAT})",
                self.format
            )));
        }
        let c = self.config;
        let (count, region_bytes) = c.regions(self.kind)?;
        if self.regions.len() != count {
            return Err(bad(format!(
                "a {} layout of {} layers has {count} region(s), the descriptor lists {}",
                self.kind,
                c.num_layers,
                self.regions.len()
            )));
        }
        let Some(&first) = self.regions.first() else {
            return Err(bad("the layout descriptor lists no region".into()));
        };
        for (i, r) in self.regions.iter().enumerate() {
            if (r.mem_type, r.device_id) != (first.mem_type, first.device_id) {
                return Err(bad(format!(
                    "region {i} is {:?} memory on device {}, region 0 {:?} on device {}; a \
                     layout's regions are of one memory type and device",
                    r.mem_type, r.device_id, first.mem_type, first.device_id
                )));
            }
            if r.size < region_bytes {
                return Err(bad(format!(
                    "region {i} is {} bytes; the layout needs {region_bytes}",
                    r.size
                )));
            }
            r.addr
                .checked_add(region_bytes as u64)
                .ok_or(Error::Bounds(BoundsError::Overflow {
                    what: "remote layout region end address",
                }))?;
        }
        let entries = entry_count(&c)?;
        if entries > MAX_REMOTE_CHUNKS {
            return Err(Error::Bounds(BoundsError::Overflow {
                what: "chunk count of a peer's layout (at most MAX_REMOTE_CHUNKS = 2^25)",
            }));
        }
        Ok(entries)
    }
}

/// Index of chunk `(block, layer, outer)` in a layout's prepared list.
fn entry(c: &LayoutConfig, block: usize, layer: usize, outer: usize) -> usize {
    (block * c.num_layers + layer) * c.outer_dim + outer
}

/// Entries of a layout of `c` in a prepared list: checks that NIXL's 32-bit indices reach them.
fn entry_count(c: &LayoutConfig) -> Result<usize> {
    let chunks = c.chunks_per_block()?;
    c.num_blocks
        .checked_mul(chunks)
        .filter(|&n| i32::try_from(n).is_ok())
        .ok_or(Error::Bounds(BoundsError::Overflow {
            what: "chunk count of a NIXL descriptor list (at most 2^31 - 1 chunks)",
        }))
}

/// Calls `f(region, offset)` for every chunk of a `kind` layout of `c`, in entry order.
fn for_each_chunk(
    c: &LayoutConfig,
    kind: LayoutKind,
    mut f: impl FnMut(usize, usize) -> Result<()>,
) -> Result<()> {
    let chunk = c.chunk_bytes()?;
    let (bs, ls, os) = strides(c, kind, chunk);
    for block in 0..c.num_blocks {
        for layer in 0..c.num_layers {
            let region = kind.region_of_layer(layer);
            for outer in 0..c.outer_dim {
                f(region, block * bs + layer * ls + outer * os)?;
            }
        }
    }
    Ok(())
}

/// A local [`BlockLayout`] over memory registered with a NIXL agent, prepared for transfers
/// with that agent's peers.
///
/// ```no_run
/// use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
/// use kvmem::nixl::{Agent, AgentConfig};
/// use kvmem::transfer::RegisteredLayout;
/// use kvmem::{Buffer, SystemStorage};
///
/// let agent = Agent::new(AgentConfig::new("prefill-0"))?;
/// let config = LayoutConfig {
///     num_blocks: 256, num_layers: 32, outer_dim: 2, page_size: 16, inner_dim: 1024, dtype_bytes: 2,
/// };
/// let layout = BlockLayout::allocate(config, LayoutKind::LayerSeparate(BlockDim::Second), 4096,
///     |bytes| Ok(Buffer::new(agent.register(SystemStorage::new(bytes)?).map_err(|e| e.error)?)))?;
/// let kv = RegisteredLayout::new(&agent, layout)?;
/// let for_the_peer = serde_json::to_vec(&kv.descriptor())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RegisteredLayout {
    // Declared first: NIXL's prepared list is released before the layout's memory can go.
    // Shared with running transfers, which keep it until they end.
    prepared: Arc<PreparedLocal>,
    layout: BlockLayout,
    regions: Vec<NixlDescriptor>,
    agent: Agent,
}

impl RegisteredLayout {
    /// Prepares `layout` for transfers through `agent`: one descriptor per chunk.
    ///
    /// # Errors
    /// [`NixlError::NotRegistered`] when a region is not registered memory (wrap each region's
    /// storage with [`Agent::register`] before building the layout); NIXL's errors when the
    /// regions are registered with another agent; [`BoundsError::Overflow`] for layouts of more than
    /// 2^31 − 1 chunks.
    pub fn new(agent: &Agent, layout: BlockLayout) -> Result<Self> {
        let c = *layout.config();
        let regions = layout
            .regions()
            .iter()
            .map(|r| {
                r.nixl_descriptor().ok_or_else(|| {
                    Error::Nixl(NixlError::NotRegistered {
                        what: format!(
                            "layout region of {} memory at {:#x} ({} bytes)",
                            r.storage_kind(),
                            r.addr(),
                            r.size()
                        ),
                    })
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut blocks = LocalBlocks::with_capacity(entry_count(&c)?);
        for_each_chunk(&c, layout.kind(), |region, offset| {
            blocks
                .push_range(&layout.regions()[region], offset, layout.chunk_bytes())
                .map(|_| ())
        })?;
        Ok(Self {
            prepared: Arc::new(agent.prepare_local(&blocks)?),
            layout,
            regions,
            agent: agent.clone(),
        })
    }

    /// The layout.
    pub fn layout(&self) -> &BlockLayout {
        &self.layout
    }

    /// The agent the layout is prepared with.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// What a peer needs to address this layout's blocks.
    pub fn descriptor(&self) -> LayoutDescriptor {
        LayoutDescriptor {
            format: LAYOUT_DESCRIPTOR_FORMAT,
            agent: self.agent.name().to_owned(),
            config: *self.layout.config(),
            kind: self.layout.kind(),
            regions: self.regions.clone(),
        }
    }
}

impl std::fmt::Debug for RegisteredLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredLayout")
            .field("agent", &self.agent.name())
            .field("layout", &self.layout)
            .finish()
    }
}

/// A peer's block layout, prepared for transfers from this process's agent.
pub struct RemoteLayout {
    // Shared with running transfers, which keep it until they end.
    prepared: Arc<PreparedRemote>,
    descriptor: LayoutDescriptor,
    peer: Peer,
}

impl RemoteLayout {
    /// Rebuilds the layout `descriptor` describes in `peer`'s memory and prepares it with
    /// `agent` (the agent that loaded `peer`).
    ///
    /// # Errors
    /// [`TransferError::Mismatch`] when the descriptor is of another format, names another
    /// agent than `peer`, has the wrong region count, regions too small for the layout, or
    /// regions of different memory types; [`PeerError::OutOfBounds`](crate::error::PeerError::OutOfBounds) when a region lies
    /// outside what the peer registered (checked when the peer sent a manifest); layout
    /// dimension errors as for [`BlockLayout::new`]; NIXL's errors from preparing the list.
    pub fn new(agent: &Agent, peer: &Peer, descriptor: LayoutDescriptor) -> Result<Self> {
        let entries = descriptor.check()?;
        if descriptor.agent != peer.name() {
            return Err(Error::Transfer(TransferError::Mismatch {
                reason: format!(
                    "the layout descriptor is of agent '{}' but the peer is '{}'",
                    descriptor.agent,
                    peer.name()
                ),
            }));
        }
        let c = descriptor.config;
        let chunk = c.chunk_bytes()?;
        let mut blocks = RemoteBlocks::with_capacity(peer, entries);
        for_each_chunk(&c, descriptor.kind, |region, offset| {
            let r = &descriptor.regions[region];
            blocks
                .push(NixlDescriptor::new(
                    r.space(),
                    r.addr + offset as u64,
                    chunk,
                ))
                .map(|_| ())
        })?;
        Ok(Self {
            prepared: Arc::new(agent.prepare_remote(&blocks)?),
            descriptor,
            peer: peer.clone(),
        })
    }

    /// The peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The layout's dimensions.
    pub fn config(&self) -> &LayoutConfig {
        &self.descriptor.config
    }

    /// The descriptor the layout was built from.
    pub fn descriptor(&self) -> &LayoutDescriptor {
        &self.descriptor
    }
}

impl std::fmt::Debug for RemoteLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLayout")
            .field("peer", &self.peer.name())
            .field("config", &self.descriptor.config)
            .field("kind", &self.descriptor.kind)
            .finish()
    }
}

/// A posted transfer.
pub(super) struct Posted {
    /// The NIXL transfer.
    pub(super) transfer: Transfer,
    /// The prepared lists its request was made from, kept until it ends.
    pub(super) lists: (Arc<PreparedLocal>, Arc<PreparedRemote>),
    /// Bytes it moves.
    pub(super) bytes: usize,
    /// Chunks (NIXL descriptors) it moves.
    pub(super) chunks: usize,
    /// Whether its agent runs NIXL's progress thread (else polls are what move the data).
    pub(super) progress_thread: bool,
}

/// Posts a READ (`op` = Read: `remote` → `local`) or WRITE (`local` → `remote`) of the blocks
/// `local_ids[i]` ↔ `remote_ids[i]`.
pub(super) fn post(
    op: TransferOp,
    local: &RegisteredLayout,
    local_ids: &[usize],
    remote: &RemoteLayout,
    remote_ids: &[usize],
    notification: Option<&[u8]>,
) -> Result<Posted> {
    let (lc, rc) = (local.layout.config(), remote.config());
    // Destination ids are distinct; source ids may repeat.
    match op {
        TransferOp::Write => {
            check_shapes(lc, local_ids, rc, remote_ids)?;
            by_destination(rc.num_blocks, remote_ids, local_ids)?;
        }
        TransferOp::Read => {
            check_shapes(rc, remote_ids, lc, local_ids)?;
            by_destination(lc.num_blocks, local_ids, remote_ids)?;
        }
    }
    let n = lc
        .chunks_per_block()?
        .checked_mul(local_ids.len())
        .ok_or(Error::Bounds(BoundsError::Overflow {
            what: "chunk count of a remote transfer",
        }))?;
    let (mut li, mut ri) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (&l, &r) in local_ids.iter().zip(remote_ids) {
        for layer in 0..lc.num_layers {
            for outer in 0..lc.outer_dim {
                li.push(entry(lc, l, layer, outer));
                ri.push(entry(rc, r, layer, outer));
            }
        }
    }
    let transfer = local.agent.post_prepared_selected(
        op,
        &local.prepared,
        &li,
        &remote.prepared,
        &ri,
        notification,
    )?;
    Ok(Posted {
        transfer,
        lists: (Arc::clone(&local.prepared), Arc::clone(&remote.prepared)),
        bytes: n * local.layout.chunk_bytes(),
        chunks: n,
        progress_thread: local.agent.config().progress_thread,
    })
}

/// A posted transfer being watched, and where its outcome goes.
pub(super) struct Flight {
    /// The transfer.
    pub(super) posted: Posted,
    /// Where its outcome goes.
    pub(super) completion: Completion,
}

impl super::worker::Deadlined for Flight {
    fn deadline(&self) -> std::time::Instant {
        self.completion.deadline()
    }
}

impl Flight {
    /// Waits for the transfer on this thread and reports the outcome: the fallback when no
    /// polling thread can take it.
    pub(super) fn finish_here(self) {
        let result = loop {
            match self.posted.transfer.poll_for(Duration::from_secs(1)) {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        };
        self.finish(result);
    }

    /// Releases the transfer (cancelling it if it still runs: NIXL's `Transfer` then keeps its
    /// memory alive, since the backend may still touch it), then the prepared lists it was made
    /// from, and reports `result`.
    fn finish(self, result: Result<()>) {
        let Posted {
            transfer, lists, ..
        } = self.posted;
        drop(transfer);
        drop(lists);
        self.completion.complete(result);
    }
}

/// Watches posted NIXL transfers on one thread and reports each through its handle. Dropping
/// it waits for the transfers in flight to finish (or fail).
pub(super) struct RemotePoller {
    worker: Worker<Flight>,
}

impl RemotePoller {
    /// Starts the thread.
    ///
    /// # Errors
    /// [`TransferError::WorkerSpawn`] when it cannot be started.
    pub(super) fn start() -> Result<Self> {
        let worker = Worker::start("kvmem-nixl-poll", || {
            Ok(Flights {
                flying: Vec::new(),
                backoff: Backoff::new(),
            })
        })?;
        Ok(Self { worker })
    }

    /// Hands a posted transfer to the thread. If the thread is gone, the transfer is waited
    /// for here.
    pub(super) fn watch(&self, flight: Flight) {
        if let Err(flight) = self.worker.submit(flight) {
            tracing::error!("the NIXL polling thread has stopped; waiting on the caller's thread");
            flight.finish_here();
        }
    }
}

/// The polling thread's backend: every transfer in flight, polled until it finishes, fails or
/// is cancelled.
struct Flights {
    flying: Vec<Flight>,
    backoff: Backoff,
}

impl Backend for Flights {
    type Job = Flight;

    fn run(&mut self, flight: Flight) -> Health {
        if self.flying.is_empty() {
            self.backoff.reset();
        }
        self.flying.push(flight);
        Health::Ok
    }

    fn busy(&self) -> bool {
        !self.flying.is_empty()
    }

    fn poll(&mut self) -> Health {
        let flying = &mut self.flying;
        let mut i = 0;
        while i < flying.len() {
            let f = &mut flying[i];
            let outcome = if f.completion.cancelled() {
                Some(Err(Error::Transfer(TransferError::Cancelled {
                    done: 0,
                    total: f.posted.bytes,
                })))
            } else {
                match f.posted.transfer.poll() {
                    Ok(true) => Some(Ok(())),
                    Ok(false) => None,
                    Err(e) => Some(Err(e)),
                }
            };
            match outcome {
                None => i += 1,
                Some(result) => flying.swap_remove(i).finish(result),
            }
        }
        if !flying.is_empty() {
            // Without NIXL's progress thread the polls move the data: keep polling. With it,
            // spin while transfers are short and sleep briefly once they turn out to be long.
            let all_progress = flying.iter().all(|f| f.posted.progress_thread);
            self.backoff.set_busy(!all_progress);
            self.backoff.snooze();
        }
        Health::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::BlockDim;
    use crate::nixl::MemType;

    /// A layout descriptor as kvmem 4ac4a08 wrote it: it still parses, and writes back the same.
    #[test]
    fn layout_descriptors_written_by_the_previous_version_still_parse() {
        let old = r#"{"format":1,"agent":"prefill-0","config":{"num_blocks":4,"num_layers":2,"outer_dim":2,"page_size":16,"inner_dim":64,"dtype_bytes":2},"kind":{"LayerSeparate":"Second"},"regions":[{"addr":139872004849664,"size":32768,"mem_type":"Vram","device_id":0},{"addr":139872004882432,"size":32768,"mem_type":"Vram","device_id":0}]}"#;
        let d: LayoutDescriptor = serde_json::from_str(old).unwrap();
        assert_eq!(d.kind, LayoutKind::LayerSeparate(BlockDim::Second));
        assert_eq!(d.config.num_blocks, 4);
        assert_eq!(d.regions.len(), 2);
        assert_eq!(
            (d.regions[1].addr, d.regions[1].size, d.regions[1].mem_type),
            (139872004882432, 32768, MemType::Vram)
        );
        assert_eq!(serde_json::to_string(&d).unwrap(), old);
    }
}
