//! How a [`BlockCache`](super::BlockCache) is built.

use super::policy::PolicyKind;
use super::tier::HostMemoryKind;
use crate::layout::LayoutConfig;
use crate::transfer::EngineConfig;
use std::path::PathBuf;

/// A tier's size, in blocks or in bytes (rounded down to whole blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// This many blocks.
    Blocks(usize),
    /// As many whole blocks as fit in this many bytes.
    Bytes(u64),
}

impl Capacity {
    /// The capacity in blocks of `block_bytes` bytes.
    pub fn blocks(self, block_bytes: usize) -> usize {
        match self {
            Self::Blocks(n) => n,
            Self::Bytes(b) => usize::try_from(b / block_bytes.max(1) as u64).unwrap_or(usize::MAX),
        }
    }
}

/// When blocks are written to the disk tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Every stored block is also written to disk once its host copy is complete.
    WriteThrough,
    /// A block is written to disk when it is evicted from host memory (the default).
    #[default]
    WriteBack,
    /// Nothing is written to disk (blocks already there stay loadable).
    HostOnly,
}

/// Which blocks the disk tier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Admission {
    /// Every block (the default).
    #[default]
    All,
    /// A block used at least twice (stored again or loaded), or one refused recently before:
    /// blocks seen once do not push useful ones off the disk.
    SecondUse,
}

/// The disk tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The directory (created if missing). It keeps the blocks across restarts.
    pub dir: PathBuf,
    /// Its size.
    pub capacity: Capacity,
    /// When blocks are written to it.
    pub write: WritePolicy,
    /// Which blocks it accepts.
    pub admission: Admission,
}

/// Everything a [`BlockCache`](super::BlockCache) is built from.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The blocks' shape: layers, parts, tokens per block, elements and bytes per element, as in
    /// the engine's KV-cache layout (`num_blocks` is ignored).
    pub block: LayoutConfig,
    /// The host tier's size. At least one block when there is a disk tier: disk blocks pass
    /// through host memory.
    pub host: Capacity,
    /// Which memory backs the host tier.
    pub host_memory: HostMemoryKind,
    /// The disk tier, if any.
    pub disk: Option<DiskConfig>,
    /// The eviction policy of both tiers.
    pub policy: PolicyKind,
    /// Prefer evicting the later blocks of a prefix chain (their earlier blocks stay useful
    /// without them, not the other way round).
    pub chain_aware: bool,
    /// Identifies the model (name, revision, dtype…): a disk directory written for another
    /// fingerprint is refused.
    pub fingerprint: String,
    /// Worker threads that drive the cache's copies (default 2).
    pub workers: usize,
    /// The transfer engine's tuning.
    pub engine: EngineConfig,
}

impl CacheConfig {
    /// A host-only cache of `host` for blocks shaped like `block`, LRU, no disk.
    pub fn new(block: LayoutConfig, host: Capacity) -> Self {
        Self {
            block,
            host,
            host_memory: HostMemoryKind::Auto,
            disk: None,
            policy: PolicyKind::Lru,
            chain_aware: false,
            fingerprint: String::new(),
            workers: 2,
            engine: EngineConfig::default(),
        }
    }

    /// The same with a disk tier of `capacity` in `dir`, written back on eviction, admitting all.
    pub fn with_disk(mut self, dir: impl Into<PathBuf>, capacity: Capacity) -> Self {
        self.disk = Some(DiskConfig {
            dir: dir.into(),
            capacity,
            write: WritePolicy::default(),
            admission: Admission::default(),
        });
        self
    }
}
