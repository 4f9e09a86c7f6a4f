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
//! | [`peer`] | metadata exchange (blobs, listener socket, etcd), [`Peer`], the peer manifest |
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
pub mod notification;
pub mod peer;
pub mod raw;
pub mod registration;
pub mod runtime;
mod transfer;

pub use agent::Agent;
pub use config::{AgentConfig, ThreadSync};
pub use nixl_sys::MemType;
pub use notification::Notification;
pub use peer::{ManifestRegion, Peer, PeerManifest, PeerMetadata, PeerSource};
pub use registration::{RegisterError, Registered, register};
pub use runtime::{NixlRuntime, ensure_loaded};
use serde::{Deserialize, Serialize};

/// A region that can be registered with NIXL.
pub trait NixlCompatible {
    /// `(pointer, length, memory type, device id)` as NIXL's registration expects them.
    ///
    /// For host memory the device id is 0; for device memory it is the CUDA ordinal; for a file
    /// the pointer is the offset in the file and the device id is the file descriptor.
    fn nixl_params(&self) -> (*const u8, usize, MemType, u64);
}

/// The NIXL descriptor of a registered region: what a transfer names it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NixlDescriptor {
    /// Start address (or file offset).
    pub addr: u64,
    /// Length in bytes.
    pub size: usize,
    /// NIXL memory type.
    pub mem_type: MemType,
    /// Device id: CUDA ordinal, or file descriptor for files, 0 for host memory.
    pub device_id: u64,
}

impl NixlDescriptor {
    /// The descriptor of `size` bytes starting `offset` bytes into this one, or `None` when that
    /// range does not lie inside it.
    pub fn slice(&self, offset: usize, size: usize) -> Option<NixlDescriptor> {
        let end = offset.checked_add(size)?;
        if end > self.size {
            return None;
        }
        Some(NixlDescriptor {
            addr: self.addr.checked_add(u64::try_from(offset).ok()?)?,
            size,
            mem_type: self.mem_type,
            device_id: self.device_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_checks_bounds() {
        let d = NixlDescriptor {
            addr: 100,
            size: 50,
            mem_type: MemType::Dram,
            device_id: 0,
        };
        assert_eq!(d.slice(10, 40).unwrap().addr, 110);
        assert!(d.slice(10, 41).is_none());
        assert!(d.slice(usize::MAX, 2).is_none());
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<NixlDescriptor>(&j).unwrap(), d);
    }
}
