//! The implementation of [`raw`](super::raw): block lists, prepared lists, requests.

mod blocks;
mod post;
mod prepared;
mod request;

pub use blocks::{LocalBlocks, RemoteBlocks};
pub use prepared::{PreparedLocal, PreparedRemote};
pub use request::Transfer;
#[cfg(test)]
pub(crate) use request::stall;

use super::agent::Agent;
use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::error::{Error, Result};
use crate::region::{MemType, NixlDescriptor};
use crate::view::OffsetBuffer;
use post::mismatch;
use prepared::all_indices;
use std::sync::Arc;

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
    /// Before anything moves: [`TransferError::Mismatch`](crate::error::TransferError::Mismatch) (empty lists, different block counts
    /// or lengths), [`PeerError::Unknown`](crate::error::PeerError::Unknown) / [`PeerError::Invalidated`](crate::error::PeerError::Invalidated) /
    /// [`PeerError::Unavailable`](crate::error::PeerError::Unavailable), [`NixlError::NotRegistered`](crate::error::NixlError::NotRegistered), [`PeerError::OutOfBounds`](crate::error::PeerError::OutOfBounds),
    /// [`NixlError::Call`](crate::error::NixlError::Call). Later failures come from [`Completion::wait`](crate::Completion::wait).
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
    /// As for [`write`](Self::write); [`NixlError::Call`](crate::error::NixlError::Call) when no running backend handles files
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
    /// [`TransferError::Mismatch`](crate::error::TransferError::Mismatch) for an empty list or a block that crosses a chunk boundary;
    /// [`NixlError::NotRegistered`](crate::error::NixlError::NotRegistered) when NIXL does not have a block registered; [`NixlError::Call`](crate::error::NixlError::Call).
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
    /// [`TransferError::Mismatch`](crate::error::TransferError::Mismatch) for lists prepared on another agent, index lists of
    /// different lengths, indices out of range or blocks of different lengths;
    /// [`PeerError::Invalidated`](crate::error::PeerError::Invalidated) / [`PeerError::Unknown`](crate::error::PeerError::Unknown) when the peer's connection changed
    /// since the list was prepared; [`PeerError::Unavailable`](crate::error::PeerError::Unavailable); [`NixlError::Call`](crate::error::NixlError::Call).
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
