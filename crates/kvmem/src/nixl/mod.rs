//! NIXL's view of memory: the memory types, the parameters a region is registered with, and the
//! descriptor a registered region carries. [`runtime`] finds and loads the NIXL library itself.

pub mod runtime;

pub use nixl_sys::MemType;
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
