//! Host memory for the bench: kvmem's [`SystemStorage`] (transparent huge pages where the
//! system allows them), or, with `--small-pages`, a mapping that refuses huge pages — the kind of
//! memory `fio` and most programs get from `malloc`, for an apples-to-apples comparison.

use crate::error::Result;
use kvmem::nixl::{MemType, NixlCompatible, NixlDescriptor};
use kvmem::{Buffer, HostMemory, MemoryDescriptor, StorageKind, SystemStorage};
use memmap2::MmapMut;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::any::Any;

/// Anonymous host memory in 4 KiB pages (`MADV_NOHUGEPAGE`).
#[derive(Debug)]
struct SmallPages {
    map: MmapMut,
}

impl MemoryDescriptor for SmallPages {
    fn addr(&self) -> usize {
        self.map.as_ptr() as usize
    }
    fn size(&self) -> usize {
        self.map.len()
    }
    fn storage_kind(&self) -> StorageKind {
        StorageKind::System
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn nixl_descriptor(&self) -> Option<NixlDescriptor> {
        None
    }
}

impl NixlCompatible for SmallPages {
    fn nixl_params(&self) -> (*const u8, usize, MemType, u64) {
        (self.map.as_ptr(), self.map.len(), MemType::Dram, 0)
    }
}

/// `len` bytes of host memory full of random bytes from `seed`: every page is touched (no page
/// faults are timed), and the data is incompressible, like a KV cache's. (A virtual disk can be
/// much faster with constant data than with random data.)
pub fn random_host(len: usize, seed: u64, small_pages: bool) -> Result<Buffer> {
    let mut rng = StdRng::seed_from_u64(seed);
    if small_pages {
        let mut map = MmapMut::map_anon(len)?;
        #[cfg(target_os = "linux")]
        map.advise(memmap2::Advice::NoHugePage)?;
        rng.fill_bytes(&mut map);
        return Ok(Buffer::new(SmallPages { map }));
    }
    let mut s = SystemStorage::new(len)?;
    rng.fill_bytes(s.as_mut_slice());
    Ok(Buffer::new(s))
}
