//! NIXL, the transfer engine kvmem stands on: its view of memory (memory types, the parameters a
//! region is registered with, the descriptor a registered region carries) and kvmem's agent on
//! top of the real NIXL runtime.
//!
//! | module | owns |
//! |---|---|
//! | [`runtime`] | finding and loading `libnixl_capi.so` ([`ensure_loaded`]) |
//! | [`config`] | [`AgentConfig`]: from code, a TOML file or `KVMEM_NIXL_*` environment variables |
//! | [`agent`] | [`Agent`]: a NIXL agent and the backends that really started |
//! | [`registration`] | [`register`] / [`Registered`]: registrations that never outlive their memory |
//! | [`metadata`] | the metadata envelope, the [`PeerManifest`] of registered regions, [`Peer`] |
//! | [`peer`] | metadata exchange: blobs, listener socket, etcd |
//! | [`transfer`] | READ/WRITE of block lists with peers and files, [`Transfer`], prepared lists |
//! | [`notification`] | notifications, queued per peer |
//!
//! ```no_run
//! use kvmem::nixl::{Agent, AgentConfig, LocalBlocks, RemoteBlocks};
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
//! a.write(&LocalBlocks::whole(&src)?, &remote, Some(b"done"))?.wait(Duration::from_secs(5))?;
//! b.wait_for_message("a", b"done", Duration::from_secs(5))?;
//! # drop(dst);
//! # Ok::<(), kvmem::Error>(())
//! ```
//!
//! Every entry point loads the runtime first and returns [`Error::NixlUnavailable`] when it is
//! missing, instead of letting `nixl-sys` abort the process.
//!
//! [`Error::NixlUnavailable`]: crate::Error::NixlUnavailable

pub mod agent;
pub mod config;
pub mod metadata;
pub mod notification;
pub mod peer;
pub mod registration;
mod registry;
pub mod runtime;
pub mod transfer;

pub use crate::region::{AddressSpace, MemType, NixlCompatible, NixlDescriptor};
pub use agent::Agent;
pub use config::{AgentConfig, ThreadSync};
pub use metadata::{Peer, PeerManifest, PeerMetadata, PeerSource};
pub use notification::Notification;
pub use registration::{RegisterError, Registered, register};
pub use runtime::{NixlRuntime, ensure_loaded};
pub use transfer::{
    LocalBlocks, PreparedLocal, PreparedRemote, RemoteBlocks, Transfer, TransferMemory, TransferOp,
};
