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
//! | [`raw`] | the low-level layer: READ/WRITE of block lists with peers and files, [`raw::Transfer`], prepared lists |
//! | [`notification`] | notifications, queued per peer |
//!
//! Moving blocks to and from a peer is the job of
//! [`TransferEngine`](crate::transfer::TransferEngine) (`write_remote`, `read_remote`,
//! `transfer`); the requests it posts are the [`raw`] layer.
//!
//! Every entry point loads the runtime first and returns [`NixlError::Unavailable`] when it is
//! missing, instead of letting `nixl-sys` abort the process.
//!
//! [`NixlError::Unavailable`]: crate::error::NixlError::Unavailable

pub mod agent;
pub mod config;
pub mod metadata;
pub mod notification;
pub mod peer;
pub mod raw;
pub mod registration;
mod registry;
pub mod runtime;
mod transfer;

pub use crate::region::{AddressSpace, MemType, NixlCompatible, NixlDescriptor};
pub use agent::Agent;
pub use config::{AgentConfig, ThreadSync};
pub use metadata::{Peer, PeerManifest, PeerMetadata, PeerSource};
pub use notification::Notification;
pub use registration::{RegisterError, Registered};
pub use runtime::{NixlRuntime, ensure_loaded};
