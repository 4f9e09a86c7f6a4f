//! Posting a transfer on fresh block lists: checking both sides, building and posting the request.

use super::blocks::LocalBlocks;
use super::request::Transfer;
use super::request::{Live, State};
use super::{Owners, Side, TransferOp};
use crate::error::{Error, NixlError, NixlStatus, PeerError, Result, TransferError};
use crate::nixl::agent::{Agent, lock};
use crate::region::{MemType, NixlDescriptor};
use nixl_sys::{NixlError as SysError, XferDescList};
use std::sync::{Arc, Mutex};
use std::time::Instant;

impl Agent {
    fn target_of<'a>(&'a self, side: &'a Side<'_>) -> &'a str {
        match side {
            Side::Peer(r) => r.peer.name(),
            Side::Own(_) => self.name(),
        }
    }

    pub(super) fn post_fresh(
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
    pub(super) fn fill_lists(
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

    pub(super) fn post(
        &self,
        op: TransferOp,
        request: nixl_sys::XferRequest,
        target: String,
        owners: Owners,
        file_owners: Option<Owners>,
        bytes: usize,
    ) -> Result<Transfer> {
        let now = Instant::now();
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
            posted: now,
            deadline: Transfer::deadline_for(now, bytes),
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
    pub(super) fn diagnose(
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

pub(super) fn mismatch(reason: impl Into<String>) -> Error {
    Error::Transfer(TransferError::Mismatch {
        reason: reason.into(),
    })
}

pub(super) fn check_pairs(local: &[NixlDescriptor], remote: &[NixlDescriptor]) -> Result<()> {
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

pub(super) fn notification_args(notification: Option<&[u8]>) -> Result<Option<nixl_sys::OptArgs>> {
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
