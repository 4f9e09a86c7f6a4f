//! Host memory for the bench: kvmem's [`SystemStorage`] (transparent huge pages where the
//! system allows them), or, with `--small-pages`, a mapping that refuses huge pages — the kind of
//! memory `fio` and most programs get from `malloc`, for an apples-to-apples comparison.

use crate::error::Result;
use kvmem::storage::HostPages;
use kvmem::{Buffer, HostMemory, SystemStorage};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// `len` bytes of host memory full of random bytes from `seed`: every page is touched (no page
/// faults are timed), and the data is incompressible, like a KV cache's. (A virtual disk can be
/// much faster with constant data than with random data.)
pub fn random_host(len: usize, seed: u64, small_pages: bool) -> Result<Buffer> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pages = if small_pages {
        HostPages::Small
    } else {
        HostPages::Huge
    };
    let mut s = SystemStorage::with_pages(len, pages)?;
    rng.fill_bytes(s.as_mut_slice());
    Ok(Buffer::new(s))
}
