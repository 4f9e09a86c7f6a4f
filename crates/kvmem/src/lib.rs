//! # kvmem
//!
//! One memory model for the KV caches of LLM inference engines: GPU memory, pinned and plain host
//! memory, local disk and remote nodes described by one trait, [`MemoryDescriptor`], registered
//! once with NVIDIA's NIXL transfer library and moved between tiers as fast as the links allow.
//!
//! The crate is organised by concept:
//!
//! | module | owns |
//! |---|---|
//! | [`kind`] | [`StorageKind`], the tier a region lives in |
//! | [`region`] | NIXL's vocabulary for memory: [`nixl::MemType`], the one region type [`nixl::NixlDescriptor`], [`nixl::AddressSpace`], [`nixl::NixlCompatible`] (re-exported by [`nixl`]) |
//! | [`descriptor`] | the [`MemoryDescriptor`] trait and the type-erased [`Buffer`] handle |
//! | [`nixl`] | kvmem's NIXL agent: loading the runtime, registration, peers, transfers, notifications |
//! | [`storage`] | storages that own or wrap memory: [`SystemStorage`], [`DiskStorage`], external memory, and on CUDA [`DeviceStorage`], [`PinnedStorage`], [`MappedPinnedStorage`], [`DevicePool`] |
//! | [`cuda`] | the CUDA driver: loading it, devices and their contexts, page-locking, copy helpers |
//! | [`host`] | safe byte access to host-accessible storage ([`HostMemory`]) |
//! | [`view`] | checked sub-ranges of a buffer ([`OffsetBuffer`]) |
//! | [`arena`] | sub-allocation of one storage into many buffers ([`ArenaAllocator`]) |
//! | [`cache`] | the KV block cache: content keys to blocks in pinned host memory and on disk ([`cache::BlockCache`]) |
//! | [`layout`] | KV-cache block layouts over any storage ([`layout::BlockLayout`]) |
//! | [`transfer`] | planning and executing block copies between layouts and tiers ([`transfer::TransferEngine`]) |
//! | [`tensor`] | shape/stride descriptions of tensors laid over a buffer ([`TensorDescriptor`]) |
//! | [`topology`] | GPUs, NUMA nodes, hugepages, THP and cgroup limits read from sysfs ([`topology::Topology`]) |
//! | [`completion`] | [`Completion`], the verbs of everything that finishes in the background |
//! | [`error`] | the crate's error type, [`Error`], over one error enum per domain |
//!
//! ```
//! use kvmem::{Buffer, MemoryDescriptor, OffsetBuffer, StorageKind, SystemStorage};
//!
//! let storage = SystemStorage::new(1 << 20)?;
//! assert_eq!(storage.storage_kind(), StorageKind::System);
//! let buffer = Buffer::new(storage);
//! let view = OffsetBuffer::new(buffer.clone(), 4096, 8192)?;
//! assert_eq!(view.addr(), buffer.addr() + 4096);
//! # Ok::<(), kvmem::Error>(())
//! ```
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// Unsafe code is denied here and allowed, with `#![allow(unsafe_code)]` at the top of the file,
// only in the modules that own a raw resource (the CUDA driver, pinned and mapped memory, NIXL
// registrations, io_uring and raw copies); every unsafe block there says why it is sound.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod accounting;
pub mod arena;
mod backoff;
pub mod cache;
pub mod completion;
pub mod cuda;
pub mod descriptor;
pub mod error;
pub mod host;
mod key;
pub mod kind;
pub mod layout;
pub mod nixl;
pub mod region;
pub mod storage;
pub mod tensor;
pub mod topology;
pub mod transfer;
pub mod view;

pub use arena::{ArenaAllocator, ArenaBuffer};
pub use completion::Completion;
pub use descriptor::{Buffer, MemoryDescriptor, Storage};
pub use error::{Error, Result};
pub use host::HostMemory;
pub use kind::StorageKind;
pub use storage::{
    BackgroundPinnedOptions, BackgroundPinnedStorage, DevicePool, DeviceStorage, DiskStorage,
    ExternalDeviceMemory, ExternalHostMemory, ExternalPinnedMemory, MappedPinnedOptions,
    MappedPinnedStorage, PageTier, PinnedStorage, PooledDeviceStorage, SystemStorage,
};
pub use tensor::TensorDescriptor;
pub use view::OffsetBuffer;

/// The page size kvmem aligns host allocations, arena slots and `O_DIRECT` I/O to.
pub const PAGE_SIZE: usize = 4096;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
