//! NIXL's vocabulary for memory, at the bottom of the crate: [`MemType`], the one region type
//! [`NixlDescriptor`] ("address, length, memory type, device"), the address-space key
//! [`AddressSpace`], and [`NixlCompatible`], what a region is registered with.
//!
//! Everything that names a range of memory — a registration and its chunks, a peer's manifest,
//! a remote block, a transfer list entry, a span the POSIX executor registers — is a
//! [`NixlDescriptor`]. The spec imports these types from `kvmem::nixl`, which re-exports them.

use crate::kind::StorageKind;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use nixl_sys::MemType;

/// A region that can be registered with NIXL.
pub trait NixlCompatible {
    /// `(pointer, length, memory type, device id)` as NIXL's registration expects them.
    ///
    /// For host memory the device id is 0; for device memory it is the CUDA ordinal; for a file
    /// the pointer is the offset in the file and the device id is the file descriptor.
    fn nixl_params(&self) -> (*const u8, usize, MemType, u64);

    /// The same parameters as one [`NixlDescriptor`]: what kvmem itself works with.
    fn nixl_region(&self) -> NixlDescriptor {
        let (ptr, size, mem_type, device_id) = self.nixl_params();
        NixlDescriptor {
            addr: ptr.addr() as u64,
            size,
            mem_type,
            device_id,
        }
    }
}

/// A region as NIXL names it: start address (or file offset), length, memory type and device.
///
/// The NIXL descriptor of a registered region is what a transfer names it by; the same type
/// describes a peer's registered regions, remote blocks and every descriptor-list entry.
///
/// ```
/// use kvmem::nixl::{MemType, NixlDescriptor};
/// let region = NixlDescriptor::dram(4096, 8192);
/// let block = region.slice(1024, 512).unwrap();
/// assert_eq!((block.addr, block.end()), (5120, Some(5632)));
/// assert!(region.contains(&block));
/// assert_eq!(block.space(), region.space());
/// ```
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
    /// `size` bytes at `addr` in address space `space`.
    pub fn new(space: AddressSpace, addr: u64, size: usize) -> Self {
        Self {
            addr,
            size,
            mem_type: space.mem_type(),
            device_id: space.device_id(),
        }
    }

    /// `size` bytes of host memory (`DRAM`, device 0) at `addr`.
    pub fn dram(addr: u64, size: usize) -> Self {
        Self::new(AddressSpace::HOST, addr, size)
    }

    /// The address space the region's addresses live in.
    pub fn space(&self) -> AddressSpace {
        AddressSpace::new(self.mem_type, self.device_id)
    }

    /// One past the last address, or `None` when that overflows `u64`.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(u64::try_from(self.size).ok()?)
    }

    /// True when all of `other` lies inside this region, in the same address space.
    pub fn contains(&self, other: &NixlDescriptor) -> bool {
        match (self.end(), other.end()) {
            (Some(end), Some(other_end)) => {
                self.space() == other.space() && other.addr >= self.addr && other_end <= end
            }
            _ => false,
        }
    }

    /// True when the two regions share at least one byte of one address space.
    pub fn overlaps(&self, other: &NixlDescriptor) -> bool {
        let (a_end, b_end) = (
            self.end().unwrap_or(u64::MAX),
            other.end().unwrap_or(u64::MAX),
        );
        self.space() == other.space()
            && self.size > 0
            && other.size > 0
            && self.addr < b_end
            && other.addr < a_end
    }

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
            ..*self
        })
    }
}

/// An address space: a NIXL memory type and device (CUDA ordinal, file descriptor, or 0).
///
/// Addresses compare only within one space; all host memory, pinned or not, is one space
/// (`DRAM`, device 0). Ordered, so that ranges can be kept sorted per space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressSpace {
    // The memory type's rank, so that the key is `Ord` and `Hash` (NIXL's enum is neither).
    rank: u8,
    device_id: u64,
}

impl AddressSpace {
    /// Host memory: `DRAM`, device 0.
    pub const HOST: AddressSpace = AddressSpace {
        rank: 0,
        device_id: 0,
    };

    /// The space of memory type `mem_type` on device `device_id`.
    pub fn new(mem_type: MemType, device_id: u64) -> Self {
        let rank = match mem_type {
            MemType::Dram => 0,
            MemType::Vram => 1,
            MemType::Block => 2,
            MemType::Object => 3,
            MemType::File => 4,
            MemType::Unknown => 5,
        };
        Self { rank, device_id }
    }

    /// The space a storage kind's addresses live in: host memory (pinned or not), one per CUDA
    /// device, one per file descriptor.
    pub(crate) fn of_kind(kind: StorageKind) -> Self {
        match kind {
            StorageKind::System | StorageKind::Pinned => Self::HOST,
            StorageKind::Device(d) => Self::new(MemType::Vram, u64::from(d)),
            StorageKind::Disk(fd) => Self::new(MemType::File, fd),
        }
    }

    /// The NIXL memory type.
    pub fn mem_type(&self) -> MemType {
        match self.rank {
            0 => MemType::Dram,
            1 => MemType::Vram,
            2 => MemType::Block,
            3 => MemType::Object,
            4 => MemType::File,
            _ => MemType::Unknown,
        }
    }

    /// The device id: CUDA ordinal, file descriptor, or 0.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }
}

impl fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:{}", self.mem_type(), self.device_id)
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

    #[test]
    fn contains_and_overlaps_stay_in_one_space() {
        let host = NixlDescriptor::dram(1000, 100);
        let vram = NixlDescriptor::new(AddressSpace::new(MemType::Vram, 0), 1000, 100);
        assert!(host.contains(&NixlDescriptor::dram(1000, 100)));
        assert!(host.contains(&NixlDescriptor::dram(1050, 50)));
        assert!(!host.contains(&NixlDescriptor::dram(1050, 51)));
        assert!(!host.contains(&NixlDescriptor::dram(999, 10)));
        assert!(!host.contains(&vram), "same range, other space");
        assert!(!host.contains(&NixlDescriptor::dram(u64::MAX, 2)));
        assert!(host.overlaps(&NixlDescriptor::dram(1099, 10)));
        assert!(!host.overlaps(&NixlDescriptor::dram(1100, 10)), "touching");
        assert!(!host.overlaps(&vram));
        assert!(!host.overlaps(&NixlDescriptor::dram(1010, 0)), "empty");
    }

    #[test]
    fn spaces_of_kinds() {
        assert_eq!(
            AddressSpace::of_kind(StorageKind::System),
            AddressSpace::HOST
        );
        assert_eq!(
            AddressSpace::of_kind(StorageKind::Pinned),
            AddressSpace::HOST
        );
        let dev = AddressSpace::of_kind(StorageKind::Device(3));
        assert_eq!((dev.mem_type(), dev.device_id()), (MemType::Vram, 3));
        let file = AddressSpace::of_kind(StorageKind::Disk(9));
        assert_eq!((file.mem_type(), file.device_id()), (MemType::File, 9));
        for m in [
            MemType::Dram,
            MemType::Vram,
            MemType::Block,
            MemType::Object,
            MemType::File,
            MemType::Unknown,
        ] {
            assert_eq!(AddressSpace::new(m, 1).mem_type(), m);
        }
        assert!(AddressSpace::HOST < dev && dev < file);
    }
}
