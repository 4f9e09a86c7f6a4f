//! `kvmem.BlockCache`: the block cache (a host tier of block slots and an optional disk
//! directory, indexed by 128-bit block keys) over the engine's own layouts.

use crate::errors::{IntoPy, invalid};
use crate::layout::Layout;
use kvmem::Completion;
use kvmem::cache::{self, BlockKey, CacheConfig, Capacity, PolicyKind};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::time::Duration;

/// A block cache whose blocks have the geometry of a layout.
#[pyclass(module = "kvmem", frozen)]
pub struct BlockCache {
    inner: cache::BlockCache,
}

fn keys_of(keys: Vec<u128>) -> Vec<BlockKey> {
    keys.into_iter().map(BlockKey::new).collect()
}

fn ints(keys: &[BlockKey]) -> Vec<u128> {
    keys.iter().map(|k| k.0).collect()
}

/// A store's or load's keys, block ids and timeout, read from Python's arguments.
fn request(
    keys: Vec<u128>,
    block_ids: &Bound<'_, PyAny>,
    timeout: f64,
) -> PyResult<(Vec<BlockKey>, Vec<usize>, Duration)> {
    Ok((
        keys_of(keys),
        crate::ids::block_ids("block_ids", block_ids)?,
        timeout_of(timeout)?,
    ))
}

fn timeout_of(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        invalid(format!(
            "timeout must be a number of seconds >= 0, not {seconds}"
        ))
    })
}

/// A `LoadReport` as the dict the stubs' `LoadReport` describes.
fn load_report<'py>(py: Python<'py>, r: &cache::LoadReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("from_host", r.from_host)?;
    d.set_item("from_disk", r.from_disk)?;
    d.set_item("missing", ints(&r.missing))?;
    d.set_item("corrupt", ints(&r.corrupt))?;
    d.set_item("no_space", ints(&r.no_space))?;
    Ok(d)
}

#[pymethods]
impl BlockCache {
    /// A cache for blocks shaped like `like`'s, with `host_blocks` slots in host memory
    /// (pinned when a CUDA device is present) and, with `disk_dir`, `disk_blocks` slots on
    /// disk there (recovered when reopened with the same geometry and `fingerprint`).
    /// `policy` is `"lru"` or `"s3fifo"`.
    #[new]
    #[pyo3(signature = (like, *, host_blocks, disk_dir=None, disk_blocks=0, policy="lru", fingerprint=""))]
    fn new(
        py: Python<'_>,
        like: &Layout,
        host_blocks: usize,
        disk_dir: Option<PathBuf>,
        disk_blocks: usize,
        policy: &str,
        fingerprint: &str,
    ) -> PyResult<Self> {
        let policy: PolicyKind = policy.parse().map_err(invalid)?;
        let mut config = CacheConfig::new(*like.inner.config(), Capacity::Blocks(host_blocks));
        config.policy = policy;
        config.fingerprint = fingerprint.to_string();
        if let Some(dir) = disk_dir {
            config = config.with_disk(dir, Capacity::Blocks(disk_blocks));
        }
        let inner = py.detach(|| cache::BlockCache::open(config)).py()?;
        Ok(Self { inner })
    }

    /// Bytes of one block.
    #[getter]
    fn block_bytes(&self) -> usize {
        self.inner.block_bytes()
    }

    /// Capacity of the host tier in blocks.
    #[getter]
    fn host_blocks(&self) -> usize {
        self.inner.host_blocks()
    }

    /// Capacity of the disk tier in blocks (0 without one).
    #[getter]
    fn disk_blocks(&self) -> usize {
        self.inner.disk_blocks()
    }

    /// Copies blocks `block_ids[i]` of `layout` into the cache under `keys[i]` and waits.
    /// Keys already present are skipped. Returns `{"stored", "present", "no_space",
    /// "written_to_disk"}` (`no_space`: the keys not stored). Raises `TimeoutError` when the
    /// copy does not finish within `timeout` seconds (the keys stay absent).
    #[pyo3(signature = (keys, layout, block_ids, timeout=60.0))]
    fn store<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<u128>,
        layout: &Layout,
        block_ids: &Bound<'py, PyAny>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (keys, ids, timeout) = request(keys, block_ids, timeout)?;
        let gpu = layout.inner.clone();
        let r = py
            .detach(|| self.inner.store(&keys, &gpu, &ids, timeout)?.wait())
            .py()?;
        let d = PyDict::new(py);
        d.set_item("stored", r.stored)?;
        d.set_item("present", r.present)?;
        d.set_item("no_space", ints(&r.no_space))?;
        d.set_item("written_to_disk", r.written_to_disk)?;
        Ok(d)
    }

    /// Copies the blocks of `keys` into blocks `block_ids[i]` of `layout` and waits. Returns
    /// `{"from_host", "from_disk", "missing", "corrupt", "no_space"}`; the GPU blocks of the
    /// keys listed are not written.
    #[pyo3(signature = (keys, layout, block_ids, timeout=60.0))]
    fn load<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<u128>,
        layout: &Layout,
        block_ids: &Bound<'py, PyAny>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        if layout.readonly {
            return Err(invalid("layout: the destination's memory is read-only"));
        }
        let (keys, ids, timeout) = request(keys, block_ids, timeout)?;
        let gpu = layout.inner.clone();
        let r = py
            .detach(|| self.inner.load(&keys, &gpu, &ids, timeout)?.wait())
            .py()?;
        load_report(py, &r)
    }

    /// Brings the blocks of `keys` that are only on disk into host memory (checked against
    /// their checksums) and waits; nothing reaches a GPU. Returns the same report as `load`
    /// (`from_disk` counts the blocks brought up).
    #[pyo3(signature = (keys, timeout=60.0))]
    fn prefetch<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<u128>,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let keys = keys_of(keys);
        let timeout = timeout_of(timeout)?;
        let r = py
            .detach(|| self.inner.prefetch(&keys, timeout)?.wait())
            .py()?;
        load_report(py, &r)
    }

    /// The longest present prefix of `keys`: `(hits, in_host, only_on_disk)`.
    fn lookup(&self, keys: Vec<u128>) -> (usize, usize, usize) {
        let l = self.inner.lookup(&keys_of(keys));
        (l.hits, l.host, l.disk)
    }

    /// True when `key` is loadable from some tier.
    fn contains(&self, key: u128) -> bool {
        self.inner.residency(BlockKey::new(key)).present()
    }

    /// Marks `keys` as used now, for eviction.
    fn touch(&self, keys: Vec<u128>) {
        self.inner.touch(&keys_of(keys));
    }

    /// Removes `keys` from every tier; returns how many were present.
    fn remove(&self, keys: Vec<u128>) -> usize {
        self.inner.remove(&keys_of(keys))
    }

    fn __repr__(&self) -> String {
        format!(
            "BlockCache(block_bytes={}, host_blocks={}, disk_blocks={})",
            self.inner.block_bytes(),
            self.inner.host_blocks(),
            self.inner.disk_blocks()
        )
    }
}
