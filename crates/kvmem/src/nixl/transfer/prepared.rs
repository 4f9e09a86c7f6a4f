//! Prepared lists: descriptor lists NIXL has prepared once, and posting on them.

// This module shares NIXL's prepared list handles between threads: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::blocks::LocalBlocks;
use super::post::{mismatch, notification_args};
use super::request::Transfer;
use super::{Owners, Side, TransferOp};
use crate::error::{BoundsError, Error, PeerError, Result};
use crate::nixl::agent::{Agent, lock};
use crate::region::{MemType, NixlDescriptor};
use nixl_sys::{NixlError as SysError, XferDescList};
use std::sync::Arc;

/// A NIXL prepared descriptor list handle.
pub(super) struct DlistHandle(nixl_sys::XferDlistHandle);

// SAFETY: the handle is an immutable NIXL object once prepared: NIXL only reads it in
// makeXferReq (under the agent's shared lock in RW/strict mode; nixl-sys additionally serialises
// that call against every metadata change with its own lock) and deletes it in releasedDlistH
// under the exclusive lock. The agent pointer it holds stays valid because every prepared list
// also holds an `Agent` clone, declared after the handle so that it is dropped later.
unsafe impl Send for DlistHandle {}
// SAFETY: as above: shared use only reads it.
unsafe impl Sync for DlistHandle {}

/// Local blocks prepared once for repeated transfers (see [`RawTransfers::prepare_local`](super::RawTransfers::prepare_local)).
pub struct PreparedLocal {
    // Declared first: released before the registrations it refers to and the agent.
    pub(super) handle: DlistHandle,
    pub(super) owners: Owners,
    pub(super) lens: Vec<usize>,
    pub(super) all: Vec<i32>,
    pub(super) agent: Agent,
}

/// The other side of prepared transfers: a peer's blocks or this agent's file blocks.
pub struct PreparedRemote {
    pub(super) handle: DlistHandle,
    pub(super) owners: Option<Owners>,
    pub(super) lens: Vec<usize>,
    pub(super) all: Vec<i32>,
    pub(super) target: String,
    pub(super) generation: Option<u64>,
    pub(super) agent: Agent,
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
    pub(super) fn diagnose_local(&self, blocks: &LocalBlocks, source: SysError) -> Error {
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

    pub(super) fn prepare(
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

    pub(super) fn post_made(
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

pub(super) fn all_indices(n: usize) -> Result<Vec<i32>> {
    let n = i32::try_from(n).map_err(|_| {
        Error::Bounds(BoundsError::Overflow {
            what: "prepared list length (NIXL indexes blocks with i32)",
        })
    })?;
    Ok((0..n).collect())
}
