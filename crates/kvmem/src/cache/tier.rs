// This module owns the host pool's slots, which transfers write concurrently: a slot's bytes are
// borrowed by raw range (one slot at a time), so unsafe code is allowed here (denied at the root).
#![allow(unsafe_code)]
//! The cache's own tiers: the host pool of block slots and the disk directory.

use super::error::{CacheError, CacheResult};
use super::journal::{Entry, Journal};
use crate::descriptor::{Buffer, MemoryDescriptor};
use crate::layout::{BlockLayout, LayoutConfig, LayoutKind};
use crate::storage::{DiskStorage, MappedPinnedStorage, SystemStorage};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;

/// Which host memory backs the cache's host tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostMemoryKind {
    /// Page-locked memory ([`MappedPinnedStorage`]) when a CUDA device is present, plain
    /// host memory otherwise (the default).
    #[default]
    Auto,
    /// Page-locked memory on CUDA device 0; an error without one.
    Pinned,
    /// Plain host memory ([`SystemStorage`]): no CUDA needed, but GPU copies go through
    /// bounce buffers.
    System,
}

/// What the host pool was actually built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPoolKind {
    /// Page-locked (pinned) memory: the fast GPU path.
    Pinned,
    /// Plain host memory (no CUDA device here, or [`HostMemoryKind::System`] asked for it).
    System,
}

impl HostPoolKind {
    /// `pinned` or `system`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::System => "system",
        }
    }
}

/// The blocks' shape as the cache sees it: what a layout must match to exchange blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Geometry {
    pub(crate) layers: usize,
    pub(crate) outer: usize,
    pub(crate) chunk_bytes: usize,
}

impl Geometry {
    pub(crate) fn of(config: &LayoutConfig) -> crate::Result<Self> {
        Ok(Self {
            layers: config.num_layers,
            outer: config.outer_dim,
            chunk_bytes: config.chunk_bytes()?,
        })
    }

    /// Checks that `layout` holds blocks of this shape.
    pub(crate) fn check(&self, layout: &BlockLayout) -> CacheResult<()> {
        let c = layout.config();
        if c.num_layers != self.layers
            || c.outer_dim != self.outer
            || layout.chunk_bytes() != self.chunk_bytes
        {
            return Err(CacheError::Geometry {
                layers: c.num_layers,
                outer: c.outer_dim,
                chunk: layout.chunk_bytes(),
                want_layers: self.layers,
                want_outer: self.outer,
                want_chunk: self.chunk_bytes,
            }
            .into());
        }
        Ok(())
    }
}

/// The host tier: one fully contiguous layout of `slots` blocks, so each block is one
/// contiguous range of bytes.
#[derive(Debug)]
pub(crate) struct HostPool {
    /// The pool in the engine's block shape, for copies with the GPU layout.
    pub(crate) layout: BlockLayout,
    /// The same memory with each block as one chunk, for copies with the disk tier.
    pub(crate) flat: BlockLayout,
    pub(crate) kind: HostPoolKind,
    base: usize,
    block_bytes: usize,
    slots: usize,
}

impl HostPool {
    pub(crate) fn new(
        config: LayoutConfig,
        slots: usize,
        memory: HostMemoryKind,
    ) -> CacheResult<Self> {
        let config = LayoutConfig {
            // A pool of no slots still needs a valid layout; it is never addressed.
            num_blocks: slots.max(1),
            ..config
        };
        let (_, bytes) = config.regions(LayoutKind::FullyContiguous)?;
        let pinned = match memory {
            HostMemoryKind::System => None,
            HostMemoryKind::Pinned => Some(pinned(bytes)?),
            HostMemoryKind::Auto => match pinned(bytes) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::info!(error = %e, "cache host pool: no pinned memory, using plain host memory");
                    None
                }
            },
        };
        let (buffer, kind) = match pinned {
            Some(b) => (b, HostPoolKind::Pinned),
            None => (
                Buffer::new(SystemStorage::new(bytes)?),
                HostPoolKind::System,
            ),
        };
        let base = buffer.addr();
        let chunk = config.chunk_bytes()?;
        let align = 1usize
            << chunk
                .trailing_zeros()
                .min(crate::PAGE_SIZE.trailing_zeros());
        let layout = BlockLayout::new(
            config,
            LayoutKind::FullyContiguous,
            vec![buffer.clone()],
            align,
        )?;
        let flat = BlockLayout::new(
            flat(config)?,
            LayoutKind::FullyContiguous,
            vec![buffer],
            align,
        )?;
        Ok(Self {
            flat,
            block_bytes: config.block_bytes()?,
            layout,
            kind,
            base,
            slots,
        })
    }

    /// The bytes of `slot`.
    ///
    /// The caller must hold the slot (claimed, or in a state no copy writes: being written back,
    /// just loaded from disk and not yet published), so that no transfer writes it while the
    /// slice lives.
    pub(crate) fn block(&self, slot: u32) -> &[u8] {
        let slot = (slot as usize).min(self.slots.saturating_sub(1));
        // SAFETY: the pool's one region is host memory (SystemStorage or MappedPinnedStorage)
        // of at least `slots * block_bytes` bytes, kept alive by `self.layout`; in a fully
        // contiguous layout block `slot` is the `block_bytes` bytes at `slot * block_bytes`,
        // which lie inside it (slot is clamped to the pool). By the caller's contract no copy
        // writes these bytes while the slice is alive; other slots may be written concurrently,
        // but they are disjoint from this range.
        unsafe {
            std::slice::from_raw_parts(
                (self.base + slot * self.block_bytes) as *const u8,
                self.block_bytes,
            )
        }
    }
}

/// `config` with each block as one chunk of one layer: the shape of the disk tier, whose
/// `O_DIRECT` I/O needs page-sized chunks even when the engine's are smaller.
pub(crate) fn flat(config: LayoutConfig) -> crate::Result<LayoutConfig> {
    Ok(LayoutConfig {
        num_blocks: config.num_blocks,
        num_layers: 1,
        outer_dim: 1,
        page_size: 1,
        inner_dim: config.block_bytes()?,
        dtype_bytes: 1,
    })
}

fn pinned(bytes: usize) -> crate::Result<Buffer> {
    let device = crate::cuda::CudaDevice::new(0)?;
    Ok(Buffer::new(MappedPinnedStorage::new(&device, bytes)?))
}

/// What a cache directory was written for (its `meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DirMeta {
    pub(crate) format: u32,
    pub(crate) geometry: Geometry,
    pub(crate) blocks: usize,
    pub(crate) fingerprint: String,
}

impl DirMeta {
    fn describe(&self) -> String {
        format!(
            "{} blocks of {} layers x {} parts x {} bytes, model '{}'",
            self.blocks,
            self.geometry.layers,
            self.geometry.outer,
            self.geometry.chunk_bytes,
            self.fingerprint
        )
    }
}

/// The disk tier: `blocks.kvd` (one fully contiguous layout, `O_DIRECT`), `journal.log`,
/// `meta.json` and a `lock` file held with `flock` while the cache is open.
#[derive(Debug)]
pub(crate) struct DiskTier {
    pub(crate) layout: BlockLayout,
    pub(crate) journal: std::sync::Mutex<Journal>,
    _lock: File,
}

impl DiskTier {
    /// Opens or creates the directory for `meta`; returns the tier and the journal's entries.
    pub(crate) fn open(
        dir: &Path,
        config: LayoutConfig,
        meta: DirMeta,
    ) -> CacheResult<(Self, Vec<Entry>)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::Error::io("create the cache directory", dir, e))?;
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| crate::Error::io("create the lock file in", dir, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| CacheError::DirectoryLocked {
                dir: dir.to_path_buf(),
            },
        )?;

        let meta_path = dir.join("meta.json");
        let blocks_path = dir.join("blocks.kvd");
        match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let found: DirMeta =
                    serde_json::from_slice(&bytes).map_err(|e| CacheError::DirectoryMismatch {
                        dir: dir.to_path_buf(),
                        expected: meta.describe(),
                        found: format!("an unreadable meta.json ({e})"),
                    })?;
                if found != meta {
                    return Err(CacheError::DirectoryMismatch {
                        dir: dir.to_path_buf(),
                        expected: meta.describe(),
                        found: found.describe(),
                    }
                    .into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A fresh directory: no blocks, no journal from an older geometry.
                for stale in [&blocks_path, &dir.join("journal.log")] {
                    match std::fs::remove_file(stale) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(crate::Error::io("remove", stale, e)),
                    }
                }
                let bytes = config.block_bytes()? as u64 * meta.blocks as u64;
                create_block_file(&blocks_path, bytes)?;
                let tmp = dir.join("meta.json.tmp");
                let text = serde_json::to_vec_pretty(&meta)
                    .map_err(|e| CacheError::Config(e.to_string()))?;
                std::fs::write(&tmp, text).map_err(|e| crate::Error::io("write", &tmp, e))?;
                std::fs::rename(&tmp, &meta_path)
                    .map_err(|e| crate::Error::io("rename", &tmp, e))?;
            }
            Err(e) => return Err(crate::Error::io("read", &meta_path, e)),
        }
        let storage = DiskStorage::open_existing(&blocks_path)?;
        let layout = BlockLayout::new(
            flat(LayoutConfig {
                num_blocks: meta.blocks,
                ..config
            })?,
            LayoutKind::FullyContiguous,
            vec![Buffer::new(storage)],
            crate::storage::DIRECT_IO_ALIGN,
        )?;
        let journal_path = dir.join("journal.log");
        let (journal, entries) = Journal::open(&journal_path)
            .map_err(|e| crate::Error::io("open the journal", &journal_path, e))?;
        Ok((
            Self {
                layout,
                journal: std::sync::Mutex::new(journal),
                _lock: lock,
            },
            entries,
        ))
    }
}

/// Creates the block file at its full length, space reserved; removed again on failure.
fn create_block_file(path: &Path, bytes: u64) -> CacheResult<()> {
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| crate::Error::io("create", path, e))?;
    if let Err(e) = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        // Some file systems cannot reserve; a plain length still works (sparse).
        let fallback = file.set_len(bytes);
        if e != rustix::io::Errno::OPNOTSUPP || fallback.is_err() {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(crate::Error::io(
                "reserve space (fallocate) for",
                path,
                std::io::Error::from_raw_os_error(e.raw_os_error()),
            ));
        }
    }
    Ok(())
}
