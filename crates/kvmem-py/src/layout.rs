//! `kvmem.Layout` (a KV cache's blocks over memory of one tier) and `kvmem.Tier` (where
//! `Layout.allocate` puts new ones).

use crate::errors::{IntoPy, invalid};
use crate::foreign::{DType, Device, Foreign};
use kvmem::descriptor::MemoryDescriptor;
use kvmem::layout::{BlockDim, BlockLayout, LayoutConfig, LayoutKind};
use kvmem::{Buffer, DiskStorage, StorageKind, SystemStorage};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::path::PathBuf;

/// The engine formats `Layout.from_tensors` reads, and the library layout each maps onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// vLLM FlashAttention: per layer `[2, num_blocks, block_size, heads, head_dim]`.
    FlashAttn,
    /// FlashInfer: per layer `[num_blocks, 2, block_size, heads, head_dim]`.
    FlashInfer,
    /// One tensor `[num_blocks, num_layers, 2, block_size, heads, head_dim]`.
    CrossLayer,
    /// MLA: per layer `[num_blocks, block_size, latent_dim]` (no k/v split).
    Mla,
}

impl Format {
    fn parse(s: &str) -> PyResult<Self> {
        match s {
            "flash_attn" | "vllm" => Ok(Self::FlashAttn),
            "flashinfer" => Ok(Self::FlashInfer),
            "cross_layer" => Ok(Self::CrossLayer),
            "mla" => Ok(Self::Mla),
            other => Err(invalid(format!(
                "unknown format {other:?}; use 'flash_attn' (vLLM), 'flashinfer', 'cross_layer' \
                 or 'mla'"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::FlashAttn => "flash_attn",
            Self::FlashInfer => "flashinfer",
            Self::CrossLayer => "cross_layer",
            Self::Mla => "mla",
        }
    }

    fn kind(self) -> LayoutKind {
        match self {
            Self::FlashAttn => LayoutKind::LayerSeparate(BlockDim::Second),
            Self::FlashInfer | Self::Mla => LayoutKind::LayerSeparate(BlockDim::First),
            Self::CrossLayer => LayoutKind::FullyContiguous,
        }
    }

    /// The shape of one tensor of this format for `c` (one per layer, or one in all).
    fn shape(self, c: &LayoutConfig) -> Vec<usize> {
        match self {
            Self::FlashAttn => vec![c.outer_dim, c.num_blocks, c.page_size, c.inner_dim],
            Self::FlashInfer => vec![c.num_blocks, c.outer_dim, c.page_size, c.inner_dim],
            Self::CrossLayer => vec![
                c.num_blocks,
                c.num_layers,
                c.outer_dim,
                c.page_size,
                c.inner_dim,
            ],
            Self::Mla => vec![c.num_blocks, c.page_size, c.inner_dim],
        }
    }

    /// Reads the geometry from one tensor's shape (`layers` tensors given).
    fn config(
        self,
        what: &str,
        shape: &[usize],
        layers: usize,
        dtype_bytes: usize,
    ) -> PyResult<LayoutConfig> {
        let bad = |need: &str| {
            invalid(format!(
                "{what}: shape {shape:?} is not a {} tensor, which is {need}",
                self.name()
            ))
        };
        let inner = |rest: &[usize]| rest.iter().product::<usize>();
        let c = match self {
            Self::FlashAttn => {
                if shape.len() < 4 || shape[0] != 2 {
                    return Err(bad(
                        "[2, num_blocks, block_size, heads, head_dim] per layer",
                    ));
                }
                (shape[1], layers, 2, shape[2], inner(&shape[3..]))
            }
            Self::FlashInfer => {
                if shape.len() < 4 || shape[1] != 2 {
                    return Err(bad(
                        "[num_blocks, 2, block_size, heads, head_dim] per layer",
                    ));
                }
                (shape[0], layers, 2, shape[2], inner(&shape[3..]))
            }
            Self::CrossLayer => {
                if layers != 1 {
                    return Err(invalid(format!(
                        "the cross_layer format is one tensor for all layers; got {layers} tensors"
                    )));
                }
                if shape.len() < 5 || shape[2] != 2 {
                    return Err(bad(
                        "[num_blocks, num_layers, 2, block_size, heads, head_dim]",
                    ));
                }
                (shape[0], shape[1], 2, shape[3], inner(&shape[4..]))
            }
            Self::Mla => {
                if shape.len() < 3 {
                    return Err(bad("[num_blocks, block_size, latent_dim] per layer"));
                }
                (shape[0], layers, 1, shape[1], inner(&shape[2..]))
            }
        };
        Ok(LayoutConfig {
            num_blocks: c.0,
            num_layers: c.1,
            outer_dim: c.2,
            page_size: c.3,
            inner_dim: c.4,
            dtype_bytes,
        })
    }
}

/// Where [`Layout.allocate`] puts a new layout.
#[derive(Debug, Clone)]
pub(crate) enum TierKind {
    Host,
    Pinned { device: u32, numa_node: Option<u32> },
    Disk { directory: PathBuf },
    Device { device: u32 },
}

/// A memory tier new layouts can be allocated in: plain host memory, pinned host memory (the fast
/// pinned path, optionally on one NUMA node), files in a directory, or GPU memory.
#[pyclass(module = "kvmem", frozen)]
#[derive(Debug, Clone)]
pub struct Tier {
    pub(crate) kind: TierKind,
}

#[pymethods]
impl Tier {
    /// Plain (pageable) host memory, page-aligned and zeroed.
    #[staticmethod]
    fn host() -> Self {
        Self {
            kind: TierKind::Host,
        }
    }

    /// Pinned host memory on kvmem's fast pinned path (huge-page mapping, parallel first touch,
    /// page-locked for `device`), optionally placed on NUMA node `numa_node`.
    #[staticmethod]
    #[pyo3(signature = (device=0, numa_node=None))]
    fn pinned(device: u32, numa_node: Option<u32>) -> Self {
        Self {
            kind: TierKind::Pinned { device, numa_node },
        }
    }

    /// Files in `directory` (one private file per region, O_DIRECT where the file system allows
    /// it, removed when the layout is gone).
    #[staticmethod]
    fn disk(directory: PathBuf) -> Self {
        Self {
            kind: TierKind::Disk { directory },
        }
    }

    /// Memory of CUDA device `device`.
    #[staticmethod]
    #[pyo3(signature = (device=0))]
    fn device(device: u32) -> Self {
        Self {
            kind: TierKind::Device { device },
        }
    }

    fn __repr__(&self) -> String {
        match &self.kind {
            TierKind::Host => "Tier.host()".into(),
            TierKind::Pinned { device, numa_node } => {
                format!("Tier.pinned(device={device}, numa_node={numa_node:?})")
            }
            TierKind::Disk { directory } => format!("Tier.disk({:?})", directory.display()),
            TierKind::Device { device } => format!("Tier.device({device})"),
        }
    }
}

impl Tier {
    fn alloc(&self, bytes: usize) -> kvmem::Result<Buffer> {
        Ok(match &self.kind {
            TierKind::Host => Buffer::new(SystemStorage::new(bytes)?),
            TierKind::Disk { directory } => Buffer::new(DiskStorage::new_in(directory, bytes)?),
            TierKind::Pinned { device, numa_node } => {
                let gpu = kvmem::cuda::CudaDevice::new(*device as usize)?;
                let options = kvmem::MappedPinnedOptions {
                    numa_node: *numa_node,
                    ..Default::default()
                };
                Buffer::new(kvmem::MappedPinnedStorage::with_options(
                    &gpu, bytes, &options,
                )?)
            }
            TierKind::Device { device } => {
                let gpu = kvmem::cuda::CudaDevice::new(*device as usize)?;
                Buffer::new(kvmem::DeviceStorage::new(&gpu, bytes)?)
            }
        })
    }
}

/// KV-cache blocks over memory of one tier: the engine's own tensors (`Layout.from_tensors`) or
/// memory kvmem allocated (`Layout.allocate`). A layout keeps its memory (and the tensors it was
/// made from) alive for as long as it, or any transfer using it, exists.
#[pyclass(module = "kvmem", frozen)]
pub struct Layout {
    pub(crate) inner: BlockLayout,
    pub(crate) format: Format,
    pub(crate) dtype: DType,
    pub(crate) readonly: bool,
}

impl Layout {
    /// Geometry checks for `Layout.allocate` arguments.
    fn config_of(
        num_blocks: usize,
        num_layers: usize,
        block_size: usize,
        inner: usize,
        dtype_bytes: usize,
        format: Format,
    ) -> LayoutConfig {
        LayoutConfig {
            num_blocks,
            num_layers,
            outer_dim: if format == Format::Mla { 1 } else { 2 },
            page_size: block_size,
            inner_dim: inner,
            dtype_bytes,
        }
    }
}

/// Parses a dtype name (`"bfloat16"`, `"float16"`, `"uint8"`, …), or an object with a
/// `.itemsize` (numpy dtypes) or torch's `.itemsize`.
fn dtype_arg(obj: &Bound<'_, PyAny>) -> PyResult<DType> {
    if let Ok(s) = obj.extract::<String>() {
        let s = s.trim_start_matches("torch.");
        let (kind, bits) = match s {
            "bfloat16" | "bf16" => ('b', 16),
            "float16" | "half" | "f16" => ('f', 16),
            "float32" | "float" | "f32" => ('f', 32),
            "float64" | "double" => ('f', 64),
            "float8_e4m3fn" | "float8_e5m2" | "fp8" => ('f', 8),
            "int8" => ('i', 8),
            "uint8" => ('u', 8),
            "int16" => ('i', 16),
            "int32" => ('i', 32),
            "int64" => ('i', 64),
            other => return Err(invalid(format!("unknown dtype {other:?}"))),
        };
        return Ok(DType {
            kind,
            bytes: bits / 8,
        });
    }
    if let Ok(size) = obj.getattr("itemsize").and_then(|s| s.extract::<usize>()) {
        let name = obj.str()?.to_string();
        return dtype_arg(name.as_str().into_pyobject(obj.py())?.as_any()).or(Ok(DType {
            kind: 'V',
            bytes: size,
        }));
    }
    Err(invalid(
        "dtype must be a name such as 'bfloat16' or a numpy/torch dtype",
    ))
}

#[pymethods]
impl Layout {
    /// A layout over the engine's own KV-cache tensors, which it keeps alive.
    ///
    /// `tensors` is one tensor per layer (formats `flash_attn` — vLLM's
    /// `[2, num_blocks, block_size, heads, head_dim]` —, `flashinfer`
    /// `[num_blocks, 2, block_size, heads, head_dim]`, `mla` `[num_blocks, block_size, latent]`)
    /// or one tensor (`cross_layer` `[num_blocks, num_layers, 2, block_size, heads, head_dim]`).
    /// Any object with `__cuda_array_interface__`, `__array_interface__`, `__dlpack__` or the
    /// buffer protocol works. All tensors must be C-contiguous, of one shape, dtype and device;
    /// `device` (a CUDA ordinal, or `"cpu"`) and `dtype` are checked when given.
    ///
    /// Raises `kvmem.InvalidArgumentError` (a `ValueError`) naming the tensor and what is wrong.
    #[staticmethod]
    #[pyo3(signature = (tensors, format="flash_attn", *, device=None, dtype=None))]
    fn from_tensors(
        tensors: &Bound<'_, PyAny>,
        format: &str,
        device: Option<&Bound<'_, PyAny>>,
        dtype: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let format = Format::parse(format)?;
        let list: Vec<Bound<'_, PyAny>> = if format == Format::CrossLayer
            && !tensors.is_instance_of::<pyo3::types::PyList>()
            && !tensors.is_instance_of::<PyTuple>()
        {
            vec![tensors.clone()]
        } else {
            tensors
                .try_iter()
                .map_err(|_| invalid("tensors must be a list of per-layer tensors"))?
                .collect::<PyResult<_>>()?
        };
        if list.is_empty() {
            return Err(invalid("tensors is empty; pass one tensor per layer"));
        }
        let want_device = match device {
            None => None,
            Some(d) => Some(device_arg(d)?),
        };
        let want_dtype = dtype.map(dtype_arg).transpose()?;
        let mut foreign = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let what = format!("tensor {i}");
            let f = Foreign::from_object(&what, t)?;
            f.check_contiguous(&what)?;
            if let Some(first) = foreign.first() {
                let first: &Foreign = first;
                if f.shape != first.shape {
                    return Err(invalid(format!(
                        "{what}: shape {:?} differs from tensor 0's {:?}; every layer must have one shape",
                        f.shape, first.shape
                    )));
                }
                if f.dtype != first.dtype {
                    return Err(invalid(format!(
                        "{what}: dtype {} differs from tensor 0's {}",
                        f.dtype, first.dtype
                    )));
                }
                if !same_device(f.device, first.device) {
                    return Err(invalid(format!(
                        "{what}: on {} but tensor 0 is on {}; a layout lives on one device",
                        f.device, first.device
                    )));
                }
            }
            if let Some(d) = want_device
                && !same_device(d, f.device)
            {
                return Err(invalid(format!(
                    "{what}: on {} but device={d} was asked for",
                    f.device
                )));
            }
            if want_dtype.is_some_and(|d| {
                d.bytes != f.dtype.bytes || (d.kind != 'V' && d.kind != f.dtype.kind)
            }) {
                return Err(invalid(format!(
                    "{what}: dtype {} but dtype={} was asked for",
                    f.dtype,
                    want_dtype.map(|d| d.to_string()).unwrap_or_default()
                )));
            }
            foreign.push(f);
        }
        let first = &foreign[0];
        let config = format.config("tensor 0", &first.shape, foreign.len(), first.dtype.bytes)?;
        let dtype = first.dtype;
        let readonly = foreign.iter().any(|f| f.readonly);
        let regions = foreign
            .into_iter()
            .enumerate()
            .map(|(i, f)| f.into_buffer(&format!("tensor {i}")))
            .collect::<PyResult<Vec<_>>>()?;
        let inner = BlockLayout::new(config, format.kind(), regions, 1).py()?;
        Ok(Self {
            inner,
            format,
            dtype,
            readonly,
        })
    }

    /// A new layout of the given geometry in `tier`, laid out as `format` (so that it matches
    /// the engine's tensors region for region). `block_size` is tokens per block; `heads` and
    /// `head_dim` (or `latent_dim` for `mla`) give the bytes per token with `dtype`.
    #[staticmethod]
    #[pyo3(signature = (tier, *, num_blocks, num_layers, block_size, dtype, format="flash_attn", heads=1, head_dim=None, latent_dim=None))]
    #[allow(clippy::too_many_arguments)]
    fn allocate(
        py: Python<'_>,
        tier: &Tier,
        num_blocks: usize,
        num_layers: usize,
        block_size: usize,
        dtype: &Bound<'_, PyAny>,
        format: &str,
        heads: usize,
        head_dim: Option<usize>,
        latent_dim: Option<usize>,
    ) -> PyResult<Self> {
        let format = Format::parse(format)?;
        let dtype = dtype_arg(dtype)?;
        let inner = match (format, head_dim, latent_dim) {
            (Format::Mla, None, Some(l)) => l,
            (Format::Mla, _, _) => {
                return Err(invalid("format 'mla' needs latent_dim (and no head_dim)"));
            }
            (_, Some(d), None) => heads
                .checked_mul(d)
                .ok_or_else(|| invalid("heads * head_dim overflows"))?,
            _ => {
                return Err(invalid(format!(
                    "format {:?} needs head_dim (and no latent_dim)",
                    format.name()
                )));
            }
        };
        let config = Self::config_of(
            num_blocks,
            num_layers,
            block_size,
            inner,
            dtype.bytes,
            format,
        );
        let tier = tier.clone();
        let inner = py
            .detach(|| {
                BlockLayout::allocate(
                    config,
                    format.kind(),
                    kvmem::PAGE_SIZE.min(align_for(&config)),
                    |b| tier.alloc(b),
                )
            })
            .py()?;
        Ok(Self {
            inner,
            format,
            dtype,
            readonly: false,
        })
    }

    /// A new layout in `tier` with this layout's geometry and format (and `num_blocks` blocks,
    /// when given).
    #[pyo3(signature = (tier, *, num_blocks=None))]
    fn allocate_like(
        &self,
        py: Python<'_>,
        tier: &Tier,
        num_blocks: Option<usize>,
    ) -> PyResult<Self> {
        let mut config = *self.inner.config();
        if let Some(n) = num_blocks {
            config.num_blocks = n;
        }
        let tier = tier.clone();
        let kind = self.format.kind();
        let inner = py
            .detach(|| {
                BlockLayout::allocate(
                    config,
                    kind,
                    kvmem::PAGE_SIZE.min(align_for(&config)),
                    |b| tier.alloc(b),
                )
            })
            .py()?;
        Ok(Self {
            inner,
            format: self.format,
            dtype: self.dtype,
            readonly: false,
        })
    }

    /// Blocks in the layout.
    #[getter]
    fn num_blocks(&self) -> usize {
        self.inner.num_blocks()
    }

    /// Layers in the layout.
    #[getter]
    fn num_layers(&self) -> usize {
        self.inner.config().num_layers
    }

    /// Tokens per block.
    #[getter]
    fn block_size(&self) -> usize {
        self.inner.config().page_size
    }

    /// 2 (k and v) or 1 (MLA).
    #[getter]
    fn outer_dim(&self) -> usize {
        self.inner.config().outer_dim
    }

    /// Elements per token of one chunk (heads × head_dim, or the MLA latent size).
    #[getter]
    fn inner_dim(&self) -> usize {
        self.inner.config().inner_dim
    }

    /// Bytes of one chunk: one block's k (or v) of one layer, the unit kvmem copies.
    #[getter]
    fn chunk_bytes(&self) -> usize {
        self.inner.chunk_bytes()
    }

    /// Bytes of one block over all layers.
    #[getter]
    fn block_bytes(&self) -> PyResult<usize> {
        self.inner.config().block_bytes().py()
    }

    /// The element type's name (`"bfloat16"`, `"float16"`, …).
    #[getter]
    fn dtype(&self) -> String {
        self.dtype.to_string()
    }

    /// The engine format the layout is laid out as.
    #[getter]
    fn format(&self) -> &'static str {
        self.format.name()
    }

    /// The tier: `"system"`, `"pinned"`, `"device:N"` or `"disk"`.
    #[getter]
    fn tier(&self) -> String {
        match self.inner.storage_kind() {
            StorageKind::System => "system".into(),
            StorageKind::Pinned => "pinned".into(),
            StorageKind::Device(n) => format!("device:{n}"),
            StorageKind::Disk(_) => "disk".into(),
        }
    }

    /// The shape of each region as the format describes it (one per layer, or one in all).
    #[getter]
    fn region_shape(&self) -> Vec<usize> {
        self.format.shape(self.inner.config())
    }

    /// The regions: host and device memory as objects with `__array_interface__` /
    /// `__cuda_array_interface__` (of bytes, `uint8`), so `numpy.asarray(region)` or
    /// `cupy.asarray(region)` views them without a copy. Disk regions have neither.
    fn regions(&self) -> Vec<Region> {
        self.inner
            .regions()
            .iter()
            .map(|b| Region {
                buffer: b.clone(),
                bytes: self.inner.region_bytes(),
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Layout(format={:?}, tier={:?}, num_blocks={}, num_layers={}, block_size={}, outer_dim={}, inner_dim={}, dtype={:?})",
            self.format.name(),
            self.tier(),
            c.num_blocks,
            c.num_layers,
            c.page_size,
            c.outer_dim,
            c.inner_dim,
            self.dtype.to_string()
        )
    }
}

/// The largest power of two up to 4096 that divides the chunk size (file regions are aligned
/// further by the library).
fn align_for(c: &LayoutConfig) -> usize {
    let chunk = c
        .page_size
        .saturating_mul(c.inner_dim)
        .saturating_mul(c.dtype_bytes);
    if chunk == 0 {
        1
    } else {
        1usize << chunk.trailing_zeros().min(12)
    }
}

fn same_device(a: Device, b: Device) -> bool {
    match (a, b) {
        (Device::Host { .. }, Device::Host { .. }) => true,
        (a, b) => a == b,
    }
}

fn device_arg(d: &Bound<'_, PyAny>) -> PyResult<Device> {
    if let Ok(n) = d.extract::<u32>() {
        return Ok(Device::Cuda(n));
    }
    let s = d.str()?.to_string();
    match s.as_str() {
        "cpu" => Ok(Device::Host { pinned: false }),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| invalid(format!("device {s:?}: use 'cpu', 'cuda:N' or an ordinal"))),
    }
}

/// One region of a layout, viewable without a copy through the array interfaces.
#[pyclass(module = "kvmem", frozen)]
pub struct Region {
    buffer: Buffer,
    bytes: usize,
}

#[pymethods]
impl Region {
    /// Bytes the layout uses in this region.
    fn __len__(&self) -> usize {
        self.bytes
    }

    /// The NumPy array interface (host memory only): `numpy.asarray(region)` is a `uint8` view
    /// that keeps the region alive.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match self.buffer.storage_kind() {
            StorageKind::System | StorageKind::Pinned => self.interface(py, 3),
            other => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "a {other} region has no __array_interface__"
            ))),
        }
    }

    /// The CUDA array interface (device memory only).
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match self.buffer.storage_kind() {
            StorageKind::Device(_) => {
                let d = self.interface(py, 3)?;
                d.set_item("stream", py.None())?;
                Ok(d)
            }
            other => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "a {other} region has no __cuda_array_interface__"
            ))),
        }
    }
}

impl Region {
    fn interface<'py>(&self, py: Python<'py>, version: u32) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("data", (self.buffer.addr(), false))?;
        d.set_item("shape", (self.bytes,))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("strides", py.None())?;
        d.set_item("version", version)?;
        Ok(d)
    }
}
