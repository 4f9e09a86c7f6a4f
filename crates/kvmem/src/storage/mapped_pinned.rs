// This module owns a mapping page-locked with the driver: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]
use super::host_mapping::{HostMapping, MappingOptions, PageTier};
use crate::cuda::page_lock::HostRegistration;
use crate::cuda::{CudaDevice, MAX_HOST_REGISTRATION};
use crate::descriptor::MemoryDescriptor;
use crate::error::{BoundsError, Error, Result};
use crate::kind::StorageKind;
use serde::Serialize;
use std::fmt;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

/// How [`MappedPinnedStorage`] gets its memory. The defaults suit large KV-cache pools; set
/// single fields with struct-update syntax:
///
/// ```
/// let options = kvmem::MappedPinnedOptions {
///     numa_node: Some(0),
///     ..Default::default()
/// };
/// assert!(options.hugetlb);
/// ```
#[derive(Debug, Clone)]
pub struct MappedPinnedOptions {
    /// Places the pages on this NUMA node (the GPU's, ideally) when `Some`; by default (`None`)
    /// the kernel decides. The policy is "preferred": a full node spills to others rather than
    /// failing.
    pub numa_node: Option<u32>,
    /// Threads that first-touch the pages (at least 1). Default (`None`): one per available CPU,
    /// at most one per 64 MiB.
    pub threads: Option<usize>,
    /// Whether to use reserved hugetlb pages when a pool has room (default: yes).
    pub hugetlb: bool,
    /// Whether to ask for transparent huge pages (`MADV_HUGEPAGE`) when hugetlb pages are not
    /// used (default: yes).
    pub transparent_huge_pages: bool,
    /// Bytes per `cuMemHostRegister` call; clamped to 4 KiB..=[`MAX_HOST_REGISTRATION`] and
    /// rounded down to whole pages. Default: [`MAX_HOST_REGISTRATION`].
    pub registration_chunk: usize,
}

impl Default for MappedPinnedOptions {
    fn default() -> Self {
        Self {
            numa_node: None,
            threads: None,
            hugetlb: true,
            transparent_huge_pages: true,
            registration_chunk: MAX_HOST_REGISTRATION,
        }
    }
}

impl MappedPinnedOptions {
    /// The mapping these options ask for (first-touched by `threads`).
    pub(super) fn mapping(&self) -> MappingOptions {
        MappingOptions {
            hugetlb: self.hugetlb,
            transparent: self.transparent_huge_pages,
            numa_node: self.numa_node,
            threads: self.threads.map(|t| t.max(1)),
            touch: true,
        }
    }
}

/// What [`MappedPinnedStorage`] got, and where the time went.
#[derive(Debug, Clone, Serialize)]
pub struct PinnedAllocationReport {
    /// The pages backing the memory.
    pub tier: PageTier,
    /// The NUMA node the pages were placed on, when one was asked for.
    pub numa_node: Option<u32>,
    /// Threads that first-touched the pages.
    pub touch_threads: usize,
    /// `cuMemHostRegister` calls made.
    pub registration_chunks: usize,
    /// Time to map and first-touch the memory.
    pub map_and_touch: Duration,
    /// Time to page-lock it with the driver.
    pub register: Duration,
}

/// Page-locked host memory, allocated fast: an anonymous mapping backed by huge pages, touched by
/// several threads at once, then registered with the driver (`cuMemHostRegister`, portable and
/// device-mapped, in chunks of at most [`MAX_HOST_REGISTRATION`]).
///
/// Allocating large pools this way takes a fraction of the time `cuMemHostAlloc` takes (see
/// `docs/PERFORMANCE.md`), and the memory is as fast for DMA. The memory starts zeroed. On drop
/// the memory is unregistered and then unmapped; if the driver refuses to unregister it, the
/// mapping is leaked rather than unmapped under the driver's feet.
pub struct MappedPinnedStorage {
    // Field order matters only for the explicit Drop below, which releases them in order.
    registration: ManuallyDrop<HostRegistration>,
    mapping: ManuallyDrop<HostMapping>,
    device: CudaDevice,
    report: PinnedAllocationReport,
}

impl MappedPinnedStorage {
    /// Allocates `size` bytes with the default options.
    ///
    /// # Errors
    /// As for [`with_options`](Self::with_options).
    pub fn new(device: &CudaDevice, size: usize) -> Result<Self> {
        Self::with_options(device, size, &MappedPinnedOptions::default())
    }

    /// Allocates `size` bytes pinned for (and from the context of) `device`.
    ///
    /// # Errors
    /// [`BoundsError::ZeroSize`] for `size == 0`; [`MemoryError::HostAlloc`](crate::error::MemoryError::HostAlloc) when the OS refuses the mapping;
    /// [`MemoryError::NumaPlacement`](crate::error::MemoryError::NumaPlacement) for a NUMA node that does not exist; [`MemoryError::PinnedOutOfMemory`](crate::error::MemoryError::PinnedOutOfMemory)
    /// or [`CudaError::Driver`](crate::error::CudaError::Driver) when the driver cannot page-lock it. Nothing is left mapped or
    /// registered on error.
    pub fn with_options(
        device: &CudaDevice,
        size: usize,
        options: &MappedPinnedOptions,
    ) -> Result<Self> {
        if size == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "mapped pinned storage",
            }));
        }
        let started = Instant::now();
        let mut mapping = HostMapping::new(size, &options.mapping())?;
        let map_and_touch = started.elapsed();
        // SAFETY: the range is the mapping's, which this value keeps mapped until the
        // registration is gone (see Drop); on error it is unmapped only if nothing of it is
        // still registered.
        let registration = match unsafe {
            HostRegistration::new(
                device,
                mapping.as_mut_ptr(),
                mapping.len(),
                options.registration_chunk,
            )
        } {
            Ok(registration) => registration,
            Err(failure) => {
                if failure.still_registered {
                    mapping.leak();
                }
                return Err(failure.error);
            }
        };
        let report = PinnedAllocationReport {
            tier: mapping.tier(),
            numa_node: options.numa_node,
            touch_threads: mapping.threads(),
            registration_chunks: registration.chunk_count(),
            map_and_touch,
            register: registration.elapsed(),
        };
        tracing::debug!(size, ?report, "mapped pinned storage allocated");
        Ok(Self {
            registration: ManuallyDrop::new(registration),
            mapping: ManuallyDrop::new(mapping),
            device: device.clone(),
            report,
        })
    }

    /// What the allocation got (page tier, NUMA node) and how long its steps took.
    pub fn report(&self) -> &PinnedAllocationReport {
        &self.report
    }

    /// The ranges (absolute addresses) page-locked by one `cuMemHostRegister` call each, in
    /// address order. A single CUDA copy must stay inside one of them (see
    /// [`MAX_HOST_REGISTRATION`]).
    pub fn registered_ranges(&self) -> Vec<std::ops::Range<usize>> {
        self.registration.ranges()
    }
}

impl Drop for MappedPinnedStorage {
    fn drop(&mut self) {
        // SAFETY: both fields are taken exactly once, here, and never used again.
        let (registration, mapping) = unsafe {
            (
                ManuallyDrop::take(&mut self.registration),
                ManuallyDrop::take(&mut self.mapping),
            )
        };
        match registration.unregister() {
            Ok(()) => drop(mapping),
            Err(e) => {
                tracing::error!(error = %e, "could not unregister pinned memory; leaking its mapping");
                mapping.leak();
            }
        }
    }
}

impl fmt::Debug for MappedPinnedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedPinnedStorage")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("size", &self.size())
            .field("device", &self.device.ordinal())
            .field("tier", &self.report.tier)
            .finish()
    }
}

storage_region!(
    MappedPinnedStorage,
    |s| s.mapping.as_ptr() as usize,
    s.mapping.len(),
    StorageKind::Pinned,
    host: s.mapping.as_slice(), s.mapping.as_mut_slice(),
    page_locked: s.registered_ranges()
);
