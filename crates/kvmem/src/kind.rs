//! The storage tier a memory region lives in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a memory region lives.
///
/// The variants follow the tiers of a KV cache: pageable host memory, page-locked (pinned) host
/// memory, the memory of one CUDA device, and a file on local disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageKind {
    /// Ordinary pageable host memory.
    System,
    /// Page-locked host memory that a GPU can reach by DMA.
    Pinned,
    /// Memory of the CUDA device with this ordinal.
    Device(u32),
    /// A file on disk; the value is the file descriptor that backs the region.
    Disk(u64),
}

impl StorageKind {
    /// True for host memory, pinned or not: the CPU can load and store it directly.
    pub fn is_host(&self) -> bool {
        matches!(self, Self::System | Self::Pinned)
    }

    /// True for pageable host memory.
    pub fn is_system(&self) -> bool {
        matches!(self, Self::System)
    }

    /// True for page-locked host memory.
    pub fn is_pinned(&self) -> bool {
        matches!(self, Self::Pinned)
    }

    /// True for device memory on any GPU.
    pub fn is_device(&self) -> bool {
        matches!(self, Self::Device(_))
    }

    /// True for a file on disk.
    pub fn is_disk(&self) -> bool {
        matches!(self, Self::Disk(_))
    }

    /// The CUDA device ordinal for device memory, `None` otherwise.
    pub fn device_id(&self) -> Option<u32> {
        match self {
            Self::Device(id) => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::Pinned => f.write_str("pinned"),
            Self::Device(id) => write!(f, "device:{id}"),
            Self::Disk(fd) => write!(f, "disk(fd {fd})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_partition_the_kinds() {
        let kinds = [
            StorageKind::System,
            StorageKind::Pinned,
            StorageKind::Device(3),
            StorageKind::Disk(7),
        ];
        for k in kinds {
            let flags = [k.is_system(), k.is_pinned(), k.is_device(), k.is_disk()];
            assert_eq!(flags.iter().filter(|f| **f).count(), 1, "{k:?}");
            assert_eq!(k.is_host(), k.is_system() || k.is_pinned());
        }
        assert_eq!(StorageKind::Device(3).device_id(), Some(3));
        assert_eq!(StorageKind::Disk(3).device_id(), None);
    }

    #[test]
    fn serde_round_trip() {
        for k in [
            StorageKind::Pinned,
            StorageKind::Device(1),
            StorageKind::Disk(9),
        ] {
            let s = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<StorageKind>(&s).unwrap(), k);
        }
    }
}
