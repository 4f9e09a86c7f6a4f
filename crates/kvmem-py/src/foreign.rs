//! Taking memory that another Python library owns: torch tensors, CuPy and numpy arrays, any
//! object that speaks `__cuda_array_interface__`, `__array_interface__`, DLPack or the buffer
//! protocol. Nothing here imports torch.
//!
//! Every [`Foreign`] keeps Python references to the objects that own its memory (the array, and
//! for DLPack the capsule, whose destructor releases the producer's tensor). Those references
//! travel into kvmem inside [`Owned`], the storage a layout region is made of, so the memory
//! stays allocated for as long as any layout or running transfer uses it — also after the caller
//! has dropped its last reference.

use crate::errors::{IntoPy, invalid};
use kvmem::{Buffer, ExternalDeviceMemory, ExternalHostMemory};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyString, PyTuple};
use std::fmt;

/// Where a foreign array's memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Device {
    /// Host memory; `pinned` as the owner claims it (DLPack's `kDLCUDAHost`) or the driver said.
    Host { pinned: bool },
    /// Memory of CUDA device `n`.
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Host { pinned: false } => f.write_str("cpu"),
            Device::Host { pinned: true } => f.write_str("cpu (pinned)"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A dtype by kind and width: what the layouts and id readers need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DType {
    /// `f` float, `b` bfloat, `i` signed, `u` unsigned, `c` complex, `B` bool, `V` raw bytes.
    pub kind: char,
    /// Bytes per element.
    pub bytes: usize,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bytes * 8;
        match self.kind {
            'f' => write!(f, "float{bits}"),
            'b' => write!(f, "bfloat{bits}"),
            'i' => write!(f, "int{bits}"),
            'u' => write!(f, "uint{bits}"),
            'c' => write!(f, "complex{bits}"),
            'B' => f.write_str("bool"),
            _ => write!(f, "void{bits}"),
        }
    }
}

impl DType {
    /// Parses a NumPy type string (`"<f2"`, `"|u1"`); big-endian types are refused.
    fn from_typestr(what: &str, s: &str) -> PyResult<Self> {
        let b = s.as_bytes();
        if b.len() < 3 {
            return Err(invalid(format!("{what}: unknown type string {s:?}")));
        }
        if b[0] == b'>' && s != ">u1" && s != ">i1" {
            return Err(invalid(format!(
                "{what}: big-endian dtype {s:?}; convert the array to little-endian first"
            )));
        }
        let bytes: usize = s[2..]
            .parse()
            .map_err(|_| invalid(format!("{what}: unknown type string {s:?}")))?;
        let kind = match b[1] {
            b'f' => 'f',
            b'i' => 'i',
            b'u' => 'u',
            b'c' => 'c',
            b'b' => 'B',
            b'V' => 'V',
            other => {
                return Err(invalid(format!(
                    "{what}: dtype kind {:?} (type string {s:?}) cannot hold KV data or ids",
                    other as char
                )));
            }
        };
        Ok(Self { kind, bytes })
    }

    /// A DLPack dtype (`code`, `bits`, `lanes`).
    fn from_dlpack(what: &str, code: u8, bits: u8, lanes: u16) -> PyResult<Self> {
        if lanes != 1 || bits % 8 != 0 || bits == 0 {
            return Err(invalid(format!(
                "{what}: DLPack dtype with {bits} bits and {lanes} lanes; only whole-byte scalar \
                 types are supported"
            )));
        }
        let kind = match code {
            0 => 'i',
            1 => 'u',
            2 => 'f',
            4 => 'b',
            5 => 'c',
            6 => 'B',
            other => {
                return Err(invalid(format!(
                    "{what}: unknown DLPack dtype code {other}"
                )));
            }
        };
        Ok(Self {
            kind,
            bytes: usize::from(bits / 8),
        })
    }
}

/// A foreign array: its address, shape, dtype and device, and the Python objects that own it.
pub(crate) struct Foreign {
    pub addr: usize,
    pub shape: Vec<usize>,
    /// Byte strides, when the producer gave them (`None` means C-contiguous).
    pub strides: Option<Vec<i64>>,
    pub dtype: DType,
    pub device: Device,
    pub readonly: bool,
    pub owners: Vec<Py<PyAny>>,
}

impl Foreign {
    /// Reads `obj`'s memory description. `what` names it in error messages (`"tensor 3"`).
    pub fn from_object(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let claimed = dlpack_device(what, obj)?;
        if let Some(cai) = get_interface(obj, intern!(obj.py(), "__cuda_array_interface__")) {
            let mut f = from_array_interface(what, obj, &cai)?;
            // The array interface has no name for some dtypes (torch exports bfloat16 as the
            // opaque "<V2"); DLPack names them, so ask it when the producer offers it.
            if f.dtype.kind == 'V' && obj.hasattr("__dlpack__")? {
                return from_dlpack(what, obj);
            }
            f.device = match claimed {
                Some(d @ Device::Cuda(_)) => d,
                Some(other) => {
                    return Err(invalid(format!(
                        "{what}: exposes __cuda_array_interface__ but its __dlpack_device__ says {other}"
                    )));
                }
                None => Device::Cuda(pointer_device(what, f.addr)?),
            };
            return Ok(f);
        }
        if let Some(ai) = get_interface(obj, intern!(obj.py(), "__array_interface__")) {
            let mut f = from_array_interface(what, obj, &ai)?;
            f.device = Device::Host { pinned: false };
            return Ok(f);
        }
        if obj.hasattr("__dlpack__")? {
            return from_dlpack(what, obj);
        }
        // The buffer protocol (bytearray, memoryview, mmap, array.array): through numpy's view
        // of it, which keeps the exporter alive. The limited C API of Python 3.10 has no
        // Py_buffer, so numpy is the one reader that works on every supported version.
        let py = obj.py();
        let view = match py.import("builtins")?.getattr("memoryview")?.call1((obj,)) {
            Ok(v) => v,
            Err(_) => {
                return Err(invalid(format!(
                    "{what}: a {} exposes none of __cuda_array_interface__, __array_interface__, \
                     __dlpack__ or the buffer protocol; pass a torch tensor, a numpy or CuPy \
                     array",
                    obj.get_type().name()?
                )));
            }
        };
        let np = py.import("numpy").map_err(|_| {
            invalid(format!(
                "{what}: reading a buffer-protocol object needs numpy; pass a numpy array instead"
            ))
        })?;
        let arr = np.getattr("asarray")?.call1((&view,))?;
        let ai = get_interface(&arr, intern!(py, "__array_interface__"))
            .ok_or_else(|| invalid(format!("{what}: numpy gave no __array_interface__")))?;
        let mut f = from_array_interface(what, &arr, &ai)?;
        f.owners.push(obj.clone().unbind());
        f.device = Device::Host { pinned: false };
        Ok(f)
    }

    /// The host array `obj` read through its `__array_interface__` alone (numpy's own), or
    /// `None` when it has none: the quick way for small host arrays such as block ids, which
    /// skips the device probes of [`from_object`](Self::from_object).
    pub fn from_host_array_interface(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Option<Self>> {
        match get_interface(obj, intern!(obj.py(), "__array_interface__")) {
            Some(ai) => from_array_interface(what, obj, &ai).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes the array spans (its elements times their size).
    pub fn nbytes(&self) -> PyResult<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.bytes, |a, &d| a.checked_mul(d))
            .ok_or_else(|| invalid("array size overflows"))
    }

    /// Checks that the array is C-contiguous (dimensions of extent 1 may have any stride).
    pub fn check_contiguous(&self, what: &str) -> PyResult<()> {
        let Some(strides) = &self.strides else {
            return Ok(());
        };
        let mut expect = self.dtype.bytes as i64;
        for (i, (&d, &s)) in self.shape.iter().zip(strides).enumerate().rev() {
            if d != 1 && s != expect {
                return Err(invalid(format!(
                    "{what}: not contiguous: dimension {i} (extent {d}) has byte stride {s}, a \
                     C-contiguous array has {expect}; pass .contiguous() / np.ascontiguousarray(...)"
                )));
            }
            expect = expect.saturating_mul(d as i64);
        }
        Ok(())
    }

    /// The memory as a kvmem storage that keeps its Python owners alive.
    pub fn into_buffer(self, what: &str) -> PyResult<Buffer> {
        let size = self.nbytes()?;
        if size == 0 {
            return Err(invalid(format!("{what}: the array is empty")));
        }
        match self.device {
            Device::Cuda(ordinal) => {
                kvmem::cuda::interop::check_device_pointer(ordinal, self.addr, size).py()?;
                // SAFETY: the driver just confirmed that addr..addr+size lies inside one live
                // allocation of device `ordinal`; the owners held by `Owned` keep it allocated
                // for as long as the storage exists.
                let storage = unsafe {
                    ExternalDeviceMemory::new(self.addr as *const u8, size, ordinal.into())
                }
                .py()?;
                Ok(Buffer::new(Owned::new(storage, self.owners)))
            }
            Device::Host { pinned } => {
                let pinned = pinned || kvmem::cuda::interop::host_is_pinned(self.addr, size);
                let ptr = self.addr as *mut u8;
                // SAFETY: the producer reported addr..addr+size as the array's memory; the owners
                // held by `Owned` keep it mapped for as long as the storage exists. For pinned
                // memory, the driver reported the whole range page-locked by its owner, which
                // keeps it so while it lives.
                let storage = unsafe {
                    if pinned {
                        ExternalHostMemory::new_pinned(ptr, size)
                    } else {
                        ExternalHostMemory::new(ptr, size)
                    }
                }
                .py()?;
                Ok(Buffer::new(Owned::new(storage, self.owners)))
            }
        }
    }
}

/// `obj.<name>` as a dict, or `None` when the attribute is missing or raises (torch raises for
/// dtypes the interface cannot express, such as bfloat16; DLPack then takes over).
/// `obj.<name>` when it is a dict. `name` is interned (`intern!`): a copy of 4096 blocks reads
/// two id arrays through here, right after the previous copy has left the caches cold, and a
/// name built afresh on each call is an allocation and a hash more each time.
fn get_interface<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
) -> Option<Bound<'py, PyDict>> {
    obj.getattr(name).ok()?.cast_into::<PyDict>().ok()
}

/// `obj.__dlpack_device__()`, when it has one.
fn dlpack_device(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Option<Device>> {
    let Ok(method) = obj.getattr("__dlpack_device__") else {
        return Ok(None);
    };
    let (kind, id): (i64, i64) = method.call0()?.extract().map_err(|_| {
        invalid(format!(
            "{what}: __dlpack_device__() did not return (device_type, device_id)"
        ))
    })?;
    device_of(what, kind, id).map(Some)
}

fn device_of(what: &str, kind: i64, id: i64) -> PyResult<Device> {
    match kind {
        1 => Ok(Device::Host { pinned: false }),
        3 => Ok(Device::Host { pinned: true }),
        2 => u32::try_from(id)
            .map(Device::Cuda)
            .map_err(|_| invalid(format!("{what}: CUDA device id {id} is invalid"))),
        other => Err(invalid(format!(
            "{what}: on DLPack device type {other}; kvmem takes CPU, CUDA-host and CUDA memory"
        ))),
    }
}

/// The CUDA device a `__cuda_array_interface__` pointer belongs to, asked of the driver.
fn pointer_device(what: &str, addr: usize) -> PyResult<u32> {
    kvmem::cuda::interop::device_of_pointer(addr)
        .py()
        .map_err(|e| {
            Python::attach(|py| {
                invalid(format!(
                    "{what}: cannot tell the CUDA device: {}",
                    e.value(py)
                ))
            })
        })
}

/// Reads a `__array_interface__` / `__cuda_array_interface__` dict.
fn from_array_interface<'py>(
    what: &str,
    obj: &Bound<'py, PyAny>,
    d: &Bound<'py, PyDict>,
) -> PyResult<Foreign> {
    // The keys are interned (see `get_interface`).
    let py = d.py();
    let item = |k: &Bound<'py, PyString>| -> PyResult<Bound<'py, PyAny>> {
        d.get_item(k)?
            .ok_or_else(|| invalid(format!("{what}: the array interface has no '{k}'")))
    };
    if d.get_item(intern!(py, "mask"))?
        .is_some_and(|m| !m.is_none())
    {
        return Err(invalid(format!("{what}: masked arrays are not supported")));
    }
    let (addr, readonly): (usize, bool) = item(intern!(py, "data"))?.extract().map_err(|_| {
        invalid(format!(
            "{what}: the array interface's data is not (pointer, read_only); arrays that export \
             a buffer object instead are not supported"
        ))
    })?;
    let shape: Vec<usize> = item(intern!(py, "shape"))?
        .extract()
        .map_err(|_| invalid(format!("{what}: bad shape in the array interface")))?;
    let typestr: String = item(intern!(py, "typestr"))?.extract()?;
    let dtype = DType::from_typestr(what, &typestr)?;
    let strides = match d.get_item(intern!(py, "strides"))? {
        Some(s) if !s.is_none() => Some(
            s.extract::<Vec<i64>>()
                .map_err(|_| invalid(format!("{what}: bad strides in the array interface")))?,
        ),
        _ => None,
    };
    let offset: usize = match d.get_item(intern!(py, "offset"))? {
        Some(o) if !o.is_none() => o.extract()?,
        _ => 0,
    };
    Ok(Foreign {
        addr: addr
            .checked_add(offset)
            .ok_or_else(|| invalid(format!("{what}: data pointer overflows")))?,
        shape,
        strides,
        dtype,
        device: Device::Host { pinned: false },
        readonly,
        owners: vec![obj.clone().unbind()],
    })
}

/// The fields of DLPack's (unversioned) `DLManagedTensor` that kvmem reads; the layout is fixed
/// by the DLPack ABI.
#[repr(C)]
struct DLTensor {
    data: *mut std::ffi::c_void,
    device_type: i32,
    device_id: i32,
    ndim: i32,
    dtype_code: u8,
    dtype_bits: u8,
    dtype_lanes: u16,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

/// Reads a DLPack capsule without consuming it: kvmem keeps the capsule (still named
/// `"dltensor"`), whose destructor calls the producer's deleter once the last reference goes.
fn from_dlpack(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Foreign> {
    let py = obj.py();
    let claimed = dlpack_device(what, obj)?;
    // Ask for no synchronization (-1): kvmem orders itself against the engine's stream.
    let kwargs = PyDict::new(py);
    if matches!(claimed, Some(Device::Cuda(_))) {
        kwargs.set_item("stream", -1)?;
    }
    let capsule = obj
        .call_method("__dlpack__", PyTuple::empty(py), Some(&kwargs))
        .map_err(|e| invalid(format!("{what}: __dlpack__() failed: {}", e.value(py))))?;
    let capsule = capsule
        .cast_into::<PyCapsule>()
        .map_err(|_| invalid(format!("{what}: __dlpack__() did not return a capsule")))?;
    let name = capsule.name()?;
    // SAFETY: the name pointer (if any) is a NUL-terminated string owned by the live capsule.
    let name = name.map(|n| unsafe { n.as_cstr() }.to_string_lossy().into_owned());
    if name.as_deref() != Some("dltensor") {
        return Err(invalid(format!(
            "{what}: __dlpack__() returned a capsule named {name:?}, not \"dltensor\""
        )));
    }
    let ptr = capsule
        .pointer_checked(Some(c"dltensor"))
        .map(|p| p.as_ptr())?;
    // SAFETY: a "dltensor" capsule holds a DLManagedTensor*, whose first member is the DLTensor
    // described above (repr(C), DLPack ABI); it stays valid while the capsule lives, and we
    // hold the capsule.
    let t = unsafe { &*(ptr as *const DLTensor) };
    let ndim = usize::try_from(t.ndim)
        .map_err(|_| invalid(format!("{what}: DLPack ndim {} is negative", t.ndim)))?;
    let dims = |p: *const i64| -> Vec<i64> {
        if p.is_null() || ndim == 0 {
            Vec::new()
        } else {
            // SAFETY: DLPack's shape/strides arrays hold ndim int64 values while the tensor lives.
            unsafe { std::slice::from_raw_parts(p, ndim) }.to_vec()
        }
    };
    let shape = dims(t.shape)
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| invalid(format!("{what}: negative extent {d}"))))
        .collect::<PyResult<Vec<_>>>()?;
    let dtype = DType::from_dlpack(what, t.dtype_code, t.dtype_bits, t.dtype_lanes)?;
    let strides = if t.strides.is_null() {
        None
    } else {
        Some(
            dims(t.strides)
                .into_iter()
                .map(|s| s.saturating_mul(dtype.bytes as i64))
                .collect(),
        )
    };
    let device = device_of(what, i64::from(t.device_type), i64::from(t.device_id))?;
    if let Some(c) = claimed
        && c != device
        && !matches!((c, device), (Device::Host { .. }, Device::Host { .. }))
    {
        return Err(invalid(format!(
            "{what}: __dlpack_device__ says {c} but the DLPack tensor is on {device}"
        )));
    }
    let addr = (t.data as usize)
        .checked_add(t.byte_offset as usize)
        .ok_or_else(|| invalid(format!("{what}: data pointer overflows")))?;
    Ok(Foreign {
        addr,
        shape,
        strides,
        dtype,
        device,
        readonly: false,
        owners: vec![obj.clone().unbind(), capsule.into_any().unbind()],
    })
}

/// A kvmem storage over foreign memory that holds the memory's Python owners. Everything but
/// ownership is the wrapped storage's: `as_any` returns the inner storage, so kvmem's copy paths
/// recognise it as what it is.
pub(crate) struct Owned<S> {
    storage: S,
    // Dropped after `storage`; a drop without the GIL is deferred by PyO3 until it is held.
    _owners: Vec<Py<PyAny>>,
}

impl<S> Owned<S> {
    fn new(storage: S, owners: Vec<Py<PyAny>>) -> Self {
        Self {
            storage,
            _owners: owners,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Owned<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owned")
            .field("storage", &self.storage)
            .field("owners", &self._owners.len())
            .finish()
    }
}

kvmem::forward_memory_descriptor!(impl[S: kvmem::Storage] Owned<S> => storage);
