//! The low-level NIXL transfer layer: block lists, prepared lists and raw READ/WRITE requests.
//!
//! To move KV blocks to or from a peer, use
//! [`TransferEngine::write_remote`](crate::transfer::TransferEngine::write_remote),
//! [`read_remote`](crate::transfer::TransferEngine::read_remote) or
//! [`transfer`](crate::transfer::TransferEngine::transfer): they check block ids and shapes,
//! prepare each layout once and report through a
//! [`TransferHandle`](crate::transfer::TransferHandle). This module is what they are built on,
//! for what they do not describe: arbitrary address lists ([`LocalBlocks`], [`RemoteBlocks`]),
//! file transfers through an agent's own backends, and agents that interoperate with one written
//! with NIXL's own API. Its methods are on [`RawTransfers`], implemented by
//! [`Agent`](super::Agent); bring the trait into scope to call them.
//!
//! In detail: READ and WRITE of block lists between this agent's registered memory and a
//! peer's, or a file registered with this agent.
//!
//! * Local blocks ([`LocalBlocks`]) are registered memory: a [`Buffer`](crate::Buffer) holding a
//!   [`Registered`](super::Registered) storage, or an [`OffsetBuffer`](crate::OffsetBuffer) view of one. A transfer
//!   keeps the buffers alive until NIXL has released it, so the memory cannot be freed under a
//!   running transfer.
//! * Remote blocks ([`RemoteBlocks`]) are addresses in a [`Peer`](super::Peer)'s registered memory; they are
//!   validated against what the peer registered (see [`peer`](super::peer)).
//! * Files: a [`DiskStorage`](crate::DiskStorage) registered with this agent is a local block of
//!   `File` memory; [`RawTransfers::write_to_file`] and [`RawTransfers::read_from_file`] move data between
//!   memory and it through a file backend such as POSIX.
//!
//! A posted transfer is a [`Transfer`]: poll it, wait for it or cancel it through
//! [`Completion`](crate::Completion). Dropping a
//! transfer that is still running cancels it (NIXL releases the request, so nothing leaks
//! inside NIXL); its local buffers are then deliberately leaked, because a backend may still
//! touch them after cancellation and a leak is safe where a use-after-free is not. The same
//! holds for a transfer whose peer was invalidated while it ran (NIXL then stops tracking it).
//! Wait for transfers to finish before dropping them or invalidating their peer to avoid that.
//!
//! For blocks transferred again and again, prepare them once ([`RawTransfers::prepare_local`],
//! [`RawTransfers::prepare_remote`], [`RawTransfers::prepare_file`]) and post with
//! [`RawTransfers::post_prepared`]: NIXL then skips resolving every descriptor against its registration
//! tables on each post.
//!
//! A transfer may carry a notification: NIXL delivers it to the peer once the data has landed
//! there, and the peer receives it through [`Agent::wait_notification`](super::Agent::wait_notification) and friends.
//!
//! ```no_run
//! use kvmem::Completion;
//! use kvmem::nixl::raw::{LocalBlocks, RawTransfers, RemoteBlocks};
//! use kvmem::nixl::{Agent, AgentConfig};
//! use kvmem::{Buffer, SystemStorage};
//! use std::time::Duration;
//!
//! let a = Agent::new(AgentConfig::new("a"))?;
//! let b = Agent::new(AgentConfig::new("b"))?;
//! let src = Buffer::new(a.register(SystemStorage::new(1 << 20)?)?);
//! let dst = Buffer::new(b.register(SystemStorage::new(1 << 20)?)?);
//! let peer = a.load_peer(&b.local_metadata()?)?; // carries b's registered regions
//! let mut remote = RemoteBlocks::new(&peer);
//! remote.push_region(0, 0, 1 << 20)?;
//! let transfer = a.write(&LocalBlocks::whole(&src)?, &remote, Some(b"done"))?;
//! assert!(transfer.wait_timeout(Duration::from_secs(5)), "the write is still running");
//! transfer.wait()?;
//! b.wait_for_message("a", b"done", Duration::from_secs(5))?;
//! # drop(dst);
//! # Ok::<(), kvmem::Error>(())
//! ```

pub use super::transfer::{
    LocalBlocks, PreparedLocal, PreparedRemote, RawTransfers, RemoteBlocks, Transfer,
    TransferMemory, TransferOp,
};

#[cfg(test)]
pub(crate) use super::transfer::stall;
