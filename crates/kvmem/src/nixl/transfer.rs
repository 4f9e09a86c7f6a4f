//! The implementation of [`raw`](super::raw): block lists, prepared lists, requests.

// This module owns NIXL transfer requests over raw memory: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::agent::{Agent, lock};
use super::peer::Peer;
use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{BoundsError, Error, NixlError, NixlStatus, PeerError, Result, TransferError};
use crate::region::{MemType, NixlDescriptor};
use crate::view::OffsetBuffer;
use nixl_sys::{NixlError as SysError, XferDescList, XferStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The direction of a transfer, seen from the initiating agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOp {
    /// Copy from the remote side (peer or file) into local memory.
    Read,
    /// Copy from local memory to the remote side (peer or file).
    Write,
}

impl TransferOp {
    fn to_nixl(self) -> nixl_sys::XferOp {
        match self {
            Self::Read => nixl_sys::XferOp::Read,
            Self::Write => nixl_sys::XferOp::Write,
        }
    }

    /// `READ` or `WRITE`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "READ",
            Self::Write => "WRITE",
        }
    }
}

/// Registered memory a transfer can use on the local side, and the shared buffer that owns it
/// (which the transfer keeps alive).
pub trait TransferMemory: MemoryDescriptor {
    /// The buffer that owns the memory.
    fn owner(&self) -> &Buffer;
}

impl TransferMemory for Buffer {
    fn owner(&self) -> &Buffer {
        self
    }
}

impl TransferMemory for OffsetBuffer {
    fn owner(&self) -> &Buffer {
        self.base()
    }
}

/// Adds `d` of type `mem_type` to a list, keeping the list to one memory type.
fn add(
    list: &mut Vec<NixlDescriptor>,
    list_type: &mut Option<MemType>,
    d: NixlDescriptor,
) -> Result<()> {
    let mem_type = d.mem_type;
    if d.size == 0 {
        return Err(Error::Bounds(BoundsError::ZeroSize {
            what: "transfer block",
        }));
    }
    d.addr
        .checked_add(d.size as u64)
        .ok_or(Error::Bounds(BoundsError::Overflow {
            what: "transfer block",
        }))?;
    match *list_type {
        Some(t) if t != mem_type => {
            return Err(Error::Transfer(TransferError::Mismatch {
                reason: format!(
                    "block {} is {mem_type:?} memory but the list holds {t:?} blocks; one list \
                     holds one memory type",
                    list.len()
                ),
            }));
        }
        _ => *list_type = Some(mem_type),
    }
    list.push(d);
    Ok(())
}

/// Blocks of this agent's registered memory (or registered files), in transfer order.
#[derive(Debug, Clone, Default)]
pub struct LocalBlocks {
    mem_type: Option<MemType>,
    descs: Vec<NixlDescriptor>,
    owners: Vec<Buffer>,
}

impl LocalBlocks {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `n` blocks.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            mem_type: None,
            descs: Vec::with_capacity(n),
            owners: Vec::new(),
        }
    }

    /// A list of one block: all of `mem`.
    ///
    /// # Errors
    /// As for [`push`](Self::push).
    pub fn whole(mem: &impl TransferMemory) -> Result<Self> {
        let mut list = Self::new();
        list.push(mem)?;
        Ok(list)
    }

    /// Appends all of `mem` as one block.
    ///
    /// # Errors
    /// As for [`push_range`](Self::push_range).
    pub fn push(&mut self, mem: &impl TransferMemory) -> Result<&mut Self> {
        self.push_range(mem, 0, mem.size())
    }

    /// Appends `len` bytes at `offset` in `mem` as one block.
    ///
    /// # Errors
    /// [`NixlError::NotRegistered`] when `mem` is not registered memory; [`BoundsError::OutOfBounds`]
    /// when the range leaves it; [`BoundsError::ZeroSize`] for `len == 0`;
    /// [`TransferError::Mismatch`] when its memory type differs from the list's.
    pub fn push_range(
        &mut self,
        mem: &impl TransferMemory,
        offset: usize,
        len: usize,
    ) -> Result<&mut Self> {
        let Some(d) = mem.nixl_descriptor() else {
            return Err(Error::Nixl(NixlError::NotRegistered {
                what: format!(
                    "{} memory at {:#x} ({} bytes)",
                    mem.storage_kind(),
                    mem.addr(),
                    mem.size()
                ),
            }));
        };
        let Some(d) = d.slice(offset, len) else {
            return Err(Error::Bounds(BoundsError::OutOfBounds {
                offset,
                len,
                size: d.size,
            }));
        };
        add(&mut self.descs, &mut self.mem_type, d)?;
        let owner = mem.owner();
        if !self.owners.last().is_some_and(|o| o.ptr_eq(owner)) {
            self.owners.push(owner.clone());
        }
        Ok(self)
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// True when the list holds no block.
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.descs.iter().map(|d| d.size as u64).sum()
    }

    /// The memory type of the blocks (`None` while empty).
    pub fn mem_type(&self) -> Option<MemType> {
        self.mem_type
    }
}

/// Blocks of one peer's registered memory, in transfer order.
#[derive(Debug, Clone)]
pub struct RemoteBlocks {
    peer: Peer,
    mem_type: Option<MemType>,
    descs: Vec<NixlDescriptor>,
}

impl RemoteBlocks {
    /// An empty list for `peer`.
    pub fn new(peer: &Peer) -> Self {
        Self {
            peer: peer.clone(),
            mem_type: None,
            descs: Vec::new(),
        }
    }

    /// An empty list for `peer` with room for `n` blocks.
    pub fn with_capacity(peer: &Peer, n: usize) -> Self {
        Self {
            descs: Vec::with_capacity(n),
            ..Self::new(peer)
        }
    }

    /// Appends a block. When the peer shipped a manifest, the block is checked against it now.
    ///
    /// # Errors
    /// [`PeerError::OutOfBounds`] for a block outside the peer's registered regions;
    /// [`BoundsError::ZeroSize`]; [`TransferError::Mismatch`] for a memory type different from the
    /// list's.
    pub fn push(&mut self, block: NixlDescriptor) -> Result<&mut Self> {
        if let Some(m) = &self.peer.manifest
            && block.size > 0
            && !m.contains(&block)
        {
            return Err(Error::Peer(PeerError::OutOfBounds {
                peer: self.peer.name().to_owned(),
                index: self.descs.len(),
                addr: block.addr,
                len: block.size,
                mem_type: block.mem_type,
                device_id: block.device_id,
            }));
        }
        add(&mut self.descs, &mut self.mem_type, block)?;
        Ok(self)
    }

    /// Appends `len` bytes at `offset` in region `region` of the peer's manifest.
    ///
    /// # Errors
    /// [`BoundsError::OutOfBounds`] for a region index or range the manifest does not have (or when
    /// the peer sent no manifest); as for [`push`](Self::push).
    pub fn push_region(&mut self, region: usize, offset: u64, len: usize) -> Result<&mut Self> {
        let regions = self.peer.regions();
        let Some(r) = regions.get(region) else {
            return Err(Error::Bounds(BoundsError::OutOfBounds {
                offset: region,
                len: 1,
                size: regions.len(),
            }));
        };
        let Some(addr) = r.addr.checked_add(offset) else {
            return Err(Error::Bounds(BoundsError::Overflow {
                what: "remote block address",
            }));
        };
        self.push(NixlDescriptor::new(r.space(), addr, len))
    }

    /// The peer.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.descs.len()
    }

    /// True when the list holds no block.
    pub fn is_empty(&self) -> bool {
        self.descs.is_empty()
    }
}

/// The other side of a transfer.
enum Side<'a> {
    Peer(&'a RemoteBlocks),
    Own(&'a LocalBlocks),
}

impl Side<'_> {
    fn descs(&self) -> &[NixlDescriptor] {
        match self {
            Side::Peer(r) => &r.descs,
            Side::Own(l) => &l.descs,
        }
    }

    fn mem_type(&self) -> Option<MemType> {
        match self {
            Side::Peer(r) => r.mem_type,
            Side::Own(l) => l.mem_type,
        }
    }
}

/// What keeps a transfer's local memory alive.
type Owners = Arc<Vec<Buffer>>;

/// The raw NIXL transfers of an [`Agent`]: posting READ/WRITE requests on block lists and on
/// prepared lists, each returning a [`Transfer`].
///
/// This is the low-level layer under [`TransferEngine`](crate::transfer::TransferEngine)'s
/// `write_remote` / `read_remote` / `transfer`, which is the way to move KV blocks to and from a
/// peer. Use these directly only for what the engine does not describe: arbitrary address lists,
/// file transfers through an agent's own backends, or interoperating with an agent written with
/// NIXL's own API. Implemented by [`Agent`] only.
pub trait RawTransfers: sealed::Sealed {
    /// Writes `local` to `remote` (block `i` to block `i`); `notification` is delivered to the
    /// peer once the data has landed.
    ///
    /// # Errors
    /// Before anything moves: [`TransferError::Mismatch`] (empty lists, different block counts
    /// or lengths), [`PeerError::Unknown`] / [`PeerError::Invalidated`] /
    /// [`PeerError::Unavailable`], [`NixlError::NotRegistered`], [`PeerError::OutOfBounds`],
    /// [`NixlError::Call`]. Later failures come from [`Completion::wait`](crate::Completion::wait).
    fn write(
        &self,
        local: &LocalBlocks,
        remote: &RemoteBlocks,
        notification: Option<&[u8]>,
    ) -> Result<Transfer>;

    /// Reads `remote` into `local` (block `i` into block `i`); `notification` is delivered to
    /// the peer once the data has been read.
    ///
    /// # Errors
    /// As for [`write`](Self::write).
    fn read(
        &self,
        local: &LocalBlocks,
        remote: &RemoteBlocks,
        notification: Option<&[u8]>,
    ) -> Result<Transfer>;

    /// Writes memory blocks `src` into blocks of registered files `file`.
    ///
    /// # Errors
    /// As for [`write`](Self::write); [`NixlError::Call`] when no running backend handles files
    /// (start POSIX, GDS or GDS_MT).
    fn write_to_file(&self, src: &LocalBlocks, file: &LocalBlocks) -> Result<Transfer>;

    /// Reads blocks of registered files `file` into memory blocks `dst`.
    ///
    /// # Errors
    /// As for [`write_to_file`](Self::write_to_file).
    fn read_from_file(&self, dst: &LocalBlocks, file: &LocalBlocks) -> Result<Transfer>;

    /// Prepares local blocks for repeated transfers. Each block must lie in one registration
    /// chunk (prepared lists keep one NIXL descriptor per block).
    ///
    /// # Errors
    /// [`TransferError::Mismatch`] for an empty list or a block that crosses a chunk boundary;
    /// [`NixlError::NotRegistered`] when NIXL does not have a block registered; [`NixlError::Call`].
    fn prepare_local(&self, blocks: &LocalBlocks) -> Result<PreparedLocal>;

    /// Prepares a peer's blocks for repeated transfers. The list belongs to the peer's current
    /// connection: after [`invalidate_peer`](Agent::invalidate_peer) or
    /// [`reconnect`](Agent::reconnect) it is refused.
    ///
    /// # Errors
    /// As for [`write`](Self::write).
    fn prepare_remote(&self, blocks: &RemoteBlocks) -> Result<PreparedRemote>;

    /// Prepares blocks of files registered with this agent as the remote side of repeated
    /// file transfers.
    ///
    /// # Errors
    /// As for [`prepare_local`](Self::prepare_local).
    fn prepare_file(&self, blocks: &LocalBlocks) -> Result<PreparedRemote>;

    /// Posts a transfer of every prepared block: local block `i` with remote block `i`.
    ///
    /// # Errors
    /// As for [`post_prepared_selected`](Self::post_prepared_selected).
    fn post_prepared(
        &self,
        op: TransferOp,
        local: &PreparedLocal,
        remote: &PreparedRemote,
        notification: Option<&[u8]>,
    ) -> Result<Transfer>;

    /// Posts a transfer of selected prepared blocks: `local[local_indices[k]]` with
    /// `remote[remote_indices[k]]`.
    ///
    /// # Errors
    /// [`TransferError::Mismatch`] for lists prepared on another agent, index lists of
    /// different lengths, indices out of range or blocks of different lengths;
    /// [`PeerError::Invalidated`] / [`PeerError::Unknown`] when the peer's connection changed
    /// since the list was prepared; [`PeerError::Unavailable`]; [`NixlError::Call`].
    fn post_prepared_selected(
        &self,
        op: TransferOp,
        local: &PreparedLocal,
        local_indices: &[usize],
        remote: &PreparedRemote,
        remote_indices: &[usize],
        notification: Option<&[u8]>,
    ) -> Result<Transfer>;
}

mod sealed {
    /// Keeps [`RawTransfers`](super::RawTransfers) implemented by kvmem's [`Agent`](super::Agent) only.
    pub trait Sealed {}
    impl Sealed for super::Agent {}
}

impl RawTransfers for Agent {
    fn write(
        &self,
        local: &LocalBlocks,
        remote: &RemoteBlocks,
        notification: Option<&[u8]>,
    ) -> Result<Transfer> {
        self.post_fresh(TransferOp::Write, local, Side::Peer(remote), notification)
    }

    fn read(
        &self,
        local: &LocalBlocks,
        remote: &RemoteBlocks,
        notification: Option<&[u8]>,
    ) -> Result<Transfer> {
        self.post_fresh(TransferOp::Read, local, Side::Peer(remote), notification)
    }

    fn write_to_file(&self, src: &LocalBlocks, file: &LocalBlocks) -> Result<Transfer> {
        self.post_fresh(TransferOp::Write, src, Side::Own(file), None)
    }

    fn read_from_file(&self, dst: &LocalBlocks, file: &LocalBlocks) -> Result<Transfer> {
        self.post_fresh(TransferOp::Read, dst, Side::Own(file), None)
    }

    fn prepare_local(&self, blocks: &LocalBlocks) -> Result<PreparedLocal> {
        let (handle, lens) = self.prepare(blocks.mem_type, &blocks.descs, "", true, |source| {
            self.diagnose_local(blocks, source)
        })?;
        Ok(PreparedLocal {
            handle,
            owners: Arc::new(blocks.owners.clone()),
            all: all_indices(lens.len())?,
            lens,
            agent: self.clone(),
        })
    }

    fn prepare_remote(&self, blocks: &RemoteBlocks) -> Result<PreparedRemote> {
        let peer = blocks.peer.name();
        self.check_peer(peer, blocks.peer.generation)?;
        let (handle, lens) =
            self.prepare(blocks.mem_type, &blocks.descs, peer, false, |source| {
                let empty = LocalBlocks::new();
                match blocks.mem_type {
                    Some(t) => self.diagnose(
                        t,
                        &empty.descs,
                        &Side::Peer(blocks),
                        source,
                        "prepare remote blocks",
                    ),
                    None => Error::nixl("prepare remote blocks", source),
                }
            })?;
        Ok(PreparedRemote {
            handle,
            owners: None,
            all: all_indices(lens.len())?,
            lens,
            target: peer.to_owned(),
            generation: Some(blocks.peer.generation),
            agent: self.clone(),
        })
    }

    fn prepare_file(&self, blocks: &LocalBlocks) -> Result<PreparedRemote> {
        let name = self.name().to_owned();
        let (handle, lens) =
            self.prepare(blocks.mem_type, &blocks.descs, &name, true, |source| {
                self.diagnose_local(blocks, source)
            })?;
        Ok(PreparedRemote {
            handle,
            owners: Some(Arc::new(blocks.owners.clone())),
            all: all_indices(lens.len())?,
            lens,
            target: name,
            generation: None,
            agent: self.clone(),
        })
    }

    fn post_prepared(
        &self,
        op: TransferOp,
        local: &PreparedLocal,
        remote: &PreparedRemote,
        notification: Option<&[u8]>,
    ) -> Result<Transfer> {
        if local.lens != remote.lens {
            return Err(mismatch(format!(
                "the prepared lists hold {} and {} blocks, or blocks of different lengths; \
                 select matching blocks with post_prepared_selected",
                local.len(),
                remote.len()
            )));
        }
        self.post_made(op, local, &local.all, remote, &remote.all, notification)
    }

    fn post_prepared_selected(
        &self,
        op: TransferOp,
        local: &PreparedLocal,
        local_indices: &[usize],
        remote: &PreparedRemote,
        remote_indices: &[usize],
        notification: Option<&[u8]>,
    ) -> Result<Transfer> {
        if local_indices.len() != remote_indices.len() || local_indices.is_empty() {
            return Err(mismatch(format!(
                "{} local and {} remote indices; give the same, positive number",
                local_indices.len(),
                remote_indices.len()
            )));
        }
        let mut li = Vec::with_capacity(local_indices.len());
        let mut ri = Vec::with_capacity(remote_indices.len());
        for (k, (&l, &r)) in local_indices.iter().zip(remote_indices).enumerate() {
            let (Some(ll), Some(rl)) = (local.lens.get(l), remote.lens.get(r)) else {
                return Err(mismatch(format!(
                    "pair {k} selects local block {l} of {} / remote block {r} of {}",
                    local.len(),
                    remote.len()
                )));
            };
            if ll != rl {
                return Err(mismatch(format!(
                    "pair {k}: local block {l} is {ll} bytes but remote block {r} is {rl} bytes"
                )));
            }
            // In range of the lists' lengths, which fit in i32 (checked when prepared).
            li.push(l as i32);
            ri.push(r as i32);
        }
        self.post_made(op, local, &li, remote, &ri, notification)
    }
}

impl Agent {
    fn target_of<'a>(&'a self, side: &'a Side<'_>) -> &'a str {
        match side {
            Side::Peer(r) => r.peer.name(),
            Side::Own(_) => self.name(),
        }
    }

    fn post_fresh(
        &self,
        op: TransferOp,
        local: &LocalBlocks,
        side: Side<'_>,
        notification: Option<&[u8]>,
    ) -> Result<Transfer> {
        check_pairs(&local.descs, side.descs())?;
        if let Side::Peer(r) = &side {
            self.check_peer(r.peer.name(), r.peer.generation)?;
        }
        let (Some(local_type), Some(remote_type)) = (local.mem_type, side.mem_type()) else {
            return Err(mismatch("a transfer needs at least one block on each side"));
        };
        let mut l = XferDescList::new(local_type)
            .map_err(|e| Error::nixl("create a descriptor list", e))?;
        let mut r = XferDescList::new(remote_type)
            .map_err(|e| Error::nixl("create a descriptor list", e))?;
        self.fill_lists(local, &side, &mut l, &mut r);
        let args = notification_args(notification)?;
        let target = self.target_of(&side);
        let request = match self
            .nixl()
            .create_xfer_req(op.to_nixl(), &l, &r, target, args.as_ref())
        {
            Ok(req) => req,
            Err(source) => {
                return Err(self.diagnose(
                    local_type,
                    &local.descs,
                    &side,
                    source,
                    "create a transfer request",
                ));
            }
        };
        let owners = Arc::new(local.owners.clone());
        let file_owners = match &side {
            Side::Own(f) => Some(Arc::new(f.owners.clone())),
            Side::Peer(_) => None,
        };
        let bytes = usize::try_from(local.bytes()).unwrap_or(usize::MAX);
        self.post(op, request, target.to_owned(), owners, file_owners, bytes)
    }

    /// Adds the blocks to NIXL's lists, splitting pairs where a local (or file) block crosses a
    /// registration chunk boundary.
    fn fill_lists(
        &self,
        local: &LocalBlocks,
        side: &Side<'_>,
        l: &mut XferDescList<'_>,
        r: &mut XferDescList<'_>,
    ) {
        let registry = lock(&self.shared.registry);
        let split = registry.has_chunked();
        let own_type = match side {
            Side::Own(f) => f.mem_type,
            Side::Peer(_) => None,
        };
        for (ld, rd) in local.descs.iter().zip(side.descs()) {
            if !split {
                l.add_desc(ld.addr as usize, ld.size, ld.device_id);
                r.add_desc(rd.addr as usize, rd.size, rd.device_id);
                continue;
            }
            // Offsets (from the block start) at which either side changes registration.
            let mut cuts: Vec<u64> = registry
                .chunk_cuts(ld.space(), ld.addr, ld.size as u64)
                .into_iter()
                .map(|c| c - ld.addr)
                .collect();
            if own_type.is_some() {
                cuts.extend(
                    registry
                        .chunk_cuts(rd.space(), rd.addr, rd.size as u64)
                        .into_iter()
                        .map(|c| c - rd.addr),
                );
            }
            cuts.sort_unstable();
            cuts.dedup();
            let mut from = 0u64;
            for to in cuts.into_iter().chain(std::iter::once(ld.size as u64)) {
                let n = (to - from) as usize;
                l.add_desc((ld.addr + from) as usize, n, ld.device_id);
                r.add_desc((rd.addr + from) as usize, n, rd.device_id);
                from = to;
            }
        }
    }

    fn post(
        &self,
        op: TransferOp,
        request: nixl_sys::XferRequest,
        target: String,
        owners: Owners,
        file_owners: Option<Owners>,
        bytes: usize,
    ) -> Result<Transfer> {
        let posted = self.nixl().post_xfer_req(&request, None);
        let transfer = Transfer {
            live: Mutex::new(Live {
                request: Some(request),
                state: State::InFlight,
                unsettled: false,
                counted: {
                    crate::accounting::transfer_started();
                    true
                },
            }),
            owners: Some((owners, file_owners)),
            agent: self.clone(),
            op,
            target,
            bytes,
        };
        match posted {
            Ok(true) => {}
            Ok(false) => transfer.lock().settle(State::Done),
            Err(source) => {
                // Not running: release normally.
                transfer
                    .lock()
                    .settle(State::Failed(NixlStatus::of(&source)));
                if matches!(source, SysError::NotFound) && transfer.target != self.name() {
                    return Err(Error::Peer(PeerError::Unavailable {
                        agent: self.name().to_owned(),
                        peer: transfer.target.clone(),
                    }));
                }
                return Err(Error::Transfer(TransferError::Failed {
                    op: op.name(),
                    peer: transfer.target.clone(),
                    source: NixlStatus::of(&source),
                }));
            }
        }
        Ok(transfer)
    }

    /// Turns a NIXL refusal to build a request into the most specific error.
    fn diagnose(
        &self,
        local_type: MemType,
        local: &[NixlDescriptor],
        side: &Side<'_>,
        source: SysError,
        op: &'static str,
    ) -> Error {
        if let Side::Peer(r) = side
            && !self.nixl().check_remote_metadata(r.peer.name(), None)
        {
            return Error::Peer(PeerError::Unavailable {
                agent: self.name().to_owned(),
                peer: r.peer.name().to_owned(),
            });
        }
        {
            let registry = lock(&self.shared.registry);
            let unregistered = |t: MemType, descs: &[NixlDescriptor], what: &str| {
                descs.iter().enumerate().find_map(|(i, d)| {
                    registry
                        .covering(d.space(), d.addr, d.size as u64)
                        .is_none()
                        .then(|| {
                            Error::Nixl(NixlError::NotRegistered {
                                what: format!(
                                    "{what} {i} ({t:?} {:#x}+{}, device {})",
                                    d.addr, d.size, d.device_id
                                ),
                            })
                        })
                })
            };
            if let Some(e) = unregistered(local_type, local, "local block") {
                return e;
            }
            if let Side::Own(f) = side
                && let Some(t) = f.mem_type
                && let Some(e) = unregistered(t, &f.descs, "file block")
            {
                return e;
            }
        }
        if let Side::Peer(r) = side
            && let Some(t) = r.mem_type
        {
            for (i, d) in r.descs.iter().enumerate() {
                let Ok(mut one) = XferDescList::new(t) else {
                    break;
                };
                one.add_desc(d.addr as usize, d.size, d.device_id);
                if !self.nixl().check_remote_metadata(r.peer.name(), Some(&one)) {
                    // Inside what the peer said it registered, yet NIXL no longer knows it:
                    // NIXL dropped the peer's memory (it disconnected); the block is not wrong.
                    if r.peer.manifest().is_some_and(|m| m.contains(d)) {
                        return Error::Peer(PeerError::Unavailable {
                            agent: self.name().to_owned(),
                            peer: r.peer.name().to_owned(),
                        });
                    }
                    return Error::Peer(PeerError::OutOfBounds {
                        peer: r.peer.name().to_owned(),
                        index: i,
                        addr: d.addr,
                        len: d.size,
                        mem_type: t,
                        device_id: d.device_id,
                    });
                }
            }
        }
        Error::nixl(op, source)
    }
}

fn mismatch(reason: impl Into<String>) -> Error {
    Error::Transfer(TransferError::Mismatch {
        reason: reason.into(),
    })
}

fn check_pairs(local: &[NixlDescriptor], remote: &[NixlDescriptor]) -> Result<()> {
    if local.is_empty() || remote.is_empty() {
        return Err(mismatch("a transfer needs at least one block on each side"));
    }
    if local.len() != remote.len() {
        return Err(mismatch(format!(
            "{} local blocks but {} remote blocks; block i moves to block i",
            local.len(),
            remote.len()
        )));
    }
    if let Some((i, (l, r))) = local
        .iter()
        .zip(remote)
        .enumerate()
        .find(|(_, (l, r))| l.size != r.size)
    {
        return Err(mismatch(format!(
            "block {i} is {} bytes locally but {} bytes remotely",
            l.size, r.size
        )));
    }
    Ok(())
}

fn notification_args(notification: Option<&[u8]>) -> Result<Option<nixl_sys::OptArgs>> {
    let Some(message) = notification else {
        return Ok(None);
    };
    let mut args = nixl_sys::OptArgs::new().map_err(|e| Error::nixl("create NIXL arguments", e))?;
    args.set_has_notification(true)
        .map_err(|e| Error::nixl("request a notification", e))?;
    args.set_notification_message(message)
        .map_err(|e| Error::nixl("set the notification message", e))?;
    Ok(Some(args))
}

#[derive(Debug, Clone, Copy)]
enum State {
    InFlight,
    Done,
    Failed(NixlStatus),
    Cancelled,
}

/// The part of a [`Transfer`] that polling and cancelling change.
struct Live {
    request: Option<nixl_sys::XferRequest>,
    state: State,
    /// Failed or cancelled in a way that leaves it unknown whether the backend still uses the
    /// memory.
    unsettled: bool,
    /// Counted in [`accounting`](crate::accounting)'s in-flight transfers.
    counted: bool,
}

impl Live {
    /// Moves to `state`; leaving [`State::InFlight`] ends the in-flight count.
    fn settle(&mut self, state: State) {
        if self.counted && !matches!(state, State::InFlight) {
            self.counted = false;
            crate::accounting::transfer_ended();
        }
        self.state = state;
    }
}

/// A posted transfer. Poll it, wait for it or cancel it through
/// [`Completion`](crate::Completion); dropping it while it runs cancels it (see the
/// [module docs](super::raw)).
///
/// [`cancel`](crate::Completion::cancel) releases the request, which makes NIXL cancel it; its
/// local buffers (and the files it names) are then kept alive for the rest of the process,
/// because the backend may still touch them, and [`wait`](crate::Completion::wait) reports
/// [`TransferError::Cancelled`].
#[must_use = "a transfer is cancelled when dropped; wait for it"]
pub struct Transfer {
    // Declared first: the request is released before the memory it uses can be freed.
    live: Mutex<Live>,
    owners: Option<(Owners, Option<Owners>)>,
    agent: Agent,
    op: TransferOp,
    target: String,
    bytes: usize,
}

impl Transfer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // Updated in single assignments: a poisoned lock holds a consistent value.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, source: NixlStatus) -> Error {
        Error::Transfer(TransferError::Failed {
            op: self.op.name(),
            peer: self.target.clone(),
            source,
        })
    }

    /// Checks progress once: `Ok(true)` when all data has moved, `Ok(false)` while it runs.
    ///
    /// Errors: [`TransferError::Failed`] when the transfer failed (the peer died, disconnected or
    /// was invalidated meanwhile), [`TransferError::Cancelled`] after a cancel; every later poll
    /// reports it again.
    pub(crate) fn poll(&self) -> Result<bool> {
        let mut live = self.lock();
        match live.state {
            State::Done => return Ok(true),
            State::Failed(e) => return Err(self.failed(e)),
            State::Cancelled => {
                return Err(Error::Transfer(TransferError::Cancelled {
                    done: 0,
                    total: self.bytes,
                }));
            }
            State::InFlight => {}
        }
        let Some(request) = live.request.as_ref() else {
            live.settle(State::Done);
            return Ok(true);
        };
        match self.agent.nixl().get_xfer_status(request) {
            Ok(XferStatus::Success) => {
                live.settle(State::Done);
                Ok(true)
            }
            Ok(XferStatus::InProgress) => Ok(false),
            Err(source) => {
                // NOT_FOUND: the peer was invalidated under the transfer; NIXL stopped tracking
                // it without saying whether the backend is done with the memory.
                live.unsettled = matches!(source, SysError::NotFound);
                let status = NixlStatus::of(&source);
                live.settle(State::Failed(status));
                Err(self.failed(status))
            }
        }
    }

    /// Polls until the transfer has finished (`Ok(true)`), failed, or `timeout` passed
    /// (`Ok(false)`).
    ///
    /// Yields the CPU between polls; after 2 ms it sleeps 50 µs between polls when the agent runs
    /// NIXL's progress thread (which then moves the data), and keeps polling when it does not (the
    /// polls themselves move the data).
    pub(crate) fn poll_for(&self, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        // Without NIXL's progress thread, each poll is what moves the data: keep polling. With
        // it, back off to short sleeps once the transfer turns out to be a long one.
        let mut backoff = if self.agent.config().progress_thread {
            crate::backoff::Backoff::new()
        } else {
            crate::backoff::Backoff::busy()
        };
        loop {
            if self.poll()? {
                return Ok(true);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Ok(false);
            }
            backoff.snooze();
        }
    }

    /// The direction.
    pub fn op(&self) -> TransferOp {
        self.op
    }

    /// The peer's name (this agent's own name for file transfers).
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl crate::Completion for Transfer {
    type Output = ();

    fn is_done(&self) -> bool {
        !matches!(self.poll(), Ok(false))
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        !matches!(self.poll_for(timeout), Ok(false))
    }

    /// Waits until the transfer has finished.
    ///
    /// # Errors
    /// [`TransferError::Failed`] when the transfer failed (the peer died, disconnected or was
    /// invalidated meanwhile); [`TransferError::Cancelled`] after a cancel.
    fn wait(self) -> Result<()> {
        while !self.poll_for(Duration::from_secs(1))? {}
        Ok(())
    }

    fn cancel(&self) {
        let mut live = self.lock();
        if !matches!(live.state, State::InFlight) {
            return;
        }
        let running = live.request.as_ref().is_some_and(|r| {
            matches!(
                self.agent.nixl().get_xfer_status(r),
                Ok(XferStatus::InProgress) | Err(SysError::NotFound)
            )
        });
        if !running {
            // It finished meanwhile; the next poll reports how.
            return;
        }
        // Releasing a running request cancels it.
        drop(live.request.take());
        live.settle(State::Cancelled);
        live.unsettled = true;
        tracing::warn!(
            agent = %self.agent.name(),
            op = self.op.name(),
            target = %self.target,
            "transfer cancelled: its local buffers are kept alive for the rest of the process \
             because the backend may still touch them"
        );
    }
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("op", &self.op)
            .field("target", &self.target)
            .field("state", &self.lock().state)
            .finish()
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let live = self.live.get_mut().unwrap_or_else(|p| p.into_inner());
        let running = live.unsettled
            || matches!(live.state, State::InFlight)
                && live.request.as_ref().is_some_and(|r| {
                    matches!(
                        self.agent.nixl().get_xfer_status(r),
                        Ok(XferStatus::InProgress) | Err(SysError::NotFound)
                    )
                });
        // Releasing a running request cancels it.
        drop(live.request.take());
        if live.counted {
            live.counted = false;
            crate::accounting::transfer_ended();
        }
        if running {
            tracing::warn!(
                agent = %self.agent.name(),
                op = self.op.name(),
                target = %self.target,
                "transfer dropped while running: cancelled; its local buffers are kept alive for \
                 the rest of the process because the backend may still touch them"
            );
            if let Some((owners, files)) = self.owners.take() {
                let n = owners.len() + files.as_ref().map_or(0, |f| f.len());
                crate::accounting::quarantined(n as u64, self.bytes as u64);
                std::mem::forget((owners, files));
            }
        }
    }
}

/// A NIXL prepared descriptor list handle.
struct DlistHandle(nixl_sys::XferDlistHandle);

// SAFETY: the handle is an immutable NIXL object once prepared: NIXL only reads it in
// makeXferReq (under the agent's shared lock in RW/strict mode; nixl-sys additionally serialises
// that call against every metadata change with its own lock) and deletes it in releasedDlistH
// under the exclusive lock. The agent pointer it holds stays valid because every prepared list
// also holds an `Agent` clone, declared after the handle so that it is dropped later.
unsafe impl Send for DlistHandle {}
// SAFETY: as above: shared use only reads it.
unsafe impl Sync for DlistHandle {}

/// Local blocks prepared once for repeated transfers (see [`RawTransfers::prepare_local`]).
pub struct PreparedLocal {
    // Declared first: released before the registrations it refers to and the agent.
    handle: DlistHandle,
    owners: Owners,
    lens: Vec<usize>,
    all: Vec<i32>,
    agent: Agent,
}

/// The other side of prepared transfers: a peer's blocks or this agent's file blocks.
pub struct PreparedRemote {
    handle: DlistHandle,
    owners: Option<Owners>,
    lens: Vec<usize>,
    all: Vec<i32>,
    target: String,
    generation: Option<u64>,
    agent: Agent,
}

impl PreparedLocal {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// True when there are no blocks (never, for a list that was prepared).
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }
}

impl PreparedRemote {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// True when there are no blocks (never, for a list that was prepared).
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The peer (this agent's own name for files).
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl std::fmt::Debug for PreparedLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedLocal")
            .field("blocks", &self.lens.len())
            .finish()
    }
}

impl std::fmt::Debug for PreparedRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRemote")
            .field("target", &self.target)
            .field("blocks", &self.lens.len())
            .finish()
    }
}

impl Agent {
    fn diagnose_local(&self, blocks: &LocalBlocks, source: SysError) -> Error {
        let empty = LocalBlocks::new();
        match blocks.mem_type {
            Some(t) => self.diagnose(
                t,
                &blocks.descs,
                &Side::Own(&empty),
                source,
                "prepare local blocks",
            ),
            None => Error::nixl("prepare local blocks", source),
        }
    }

    fn prepare(
        &self,
        mem_type: Option<MemType>,
        descs: &[NixlDescriptor],
        agent_name: &str,
        local_memory: bool,
        diagnose: impl FnOnce(SysError) -> Error,
    ) -> Result<(DlistHandle, Vec<usize>)> {
        let Some(mem_type) = mem_type else {
            return Err(mismatch("cannot prepare an empty list"));
        };
        let mut list =
            XferDescList::new(mem_type).map_err(|e| Error::nixl("create a descriptor list", e))?;
        {
            let registry = lock(&self.shared.registry);
            let check_cuts = local_memory && registry.has_chunked();
            for (i, d) in descs.iter().enumerate() {
                if check_cuts
                    && let Some(&cut) = registry
                        .chunk_cuts(d.space(), d.addr, d.size as u64)
                        .first()
                {
                    return Err(mismatch(format!(
                        "block {i} ({:#x}+{}) crosses a registration chunk boundary at {cut:#x}; \
                         split it there (a prepared list keeps one NIXL descriptor per block)",
                        d.addr, d.size
                    )));
                }
                list.add_desc(d.addr as usize, d.size, d.device_id);
            }
        }
        let handle = self
            .nixl()
            .prepare_xfer_dlist(agent_name, &list, None)
            .map_err(diagnose)?;
        Ok((DlistHandle(handle), descs.iter().map(|d| d.size).collect()))
    }

    fn post_made(
        &self,
        op: TransferOp,
        local: &PreparedLocal,
        li: &[i32],
        remote: &PreparedRemote,
        ri: &[i32],
        notification: Option<&[u8]>,
    ) -> Result<Transfer> {
        if !Arc::ptr_eq(&local.agent.shared, &self.shared)
            || !Arc::ptr_eq(&remote.agent.shared, &self.shared)
        {
            return Err(mismatch(
                "the prepared lists were prepared on another agent",
            ));
        }
        if let Some(generation) = remote.generation {
            self.check_peer(&remote.target, generation)?;
        }
        let args = notification_args(notification)?;
        let request = self
            .nixl()
            .make_xfer_req(
                op.to_nixl(),
                &local.handle.0,
                li,
                &remote.handle.0,
                ri,
                args.as_ref(),
            )
            .map_err(|source| {
                if remote.generation.is_some()
                    && !self.nixl().check_remote_metadata(&remote.target, None)
                {
                    Error::Peer(PeerError::Unavailable {
                        agent: self.name().to_owned(),
                        peer: remote.target.clone(),
                    })
                } else {
                    Error::nixl("make a transfer request from prepared lists", source)
                }
            })?;
        let bytes = li.iter().filter_map(|&i| local.lens.get(i as usize)).sum();
        self.post(
            op,
            request,
            remote.target.clone(),
            local.owners.clone(),
            remote.owners.clone(),
            bytes,
        )
    }
}

fn all_indices(n: usize) -> Result<Vec<i32>> {
    let n = i32::try_from(n).map_err(|_| {
        Error::Bounds(BoundsError::Overflow {
            what: "prepared list length (NIXL indexes blocks with i32)",
        })
    })?;
    Ok((0..n).collect())
}
