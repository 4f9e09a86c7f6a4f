//! Block ids from Python: a list or tuple of ints, or a 1-D integer array in host memory (numpy,
//! torch CPU, anything `foreign` reads), converted in Rust with no per-element Python work.
//! Arrays that export the buffer protocol (numpy, `array.array`, memoryview) are read through it
//! on Python 3.11+, the rest through `foreign`: this runs twice per `Engine.copy`, right after
//! the previous copy has left the caches cold, so what it touches is on the caller's critical
//! path (docs/PERFORMANCE.md, "The Python path against the Rust path").

use crate::errors::invalid;
use crate::foreign::{Device, Foreign};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

/// Reads `obj` as block ids; `what` names it in errors (`"src_ids"`).
pub(crate) fn block_ids(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let ints: Vec<i64> = obj
            .extract()
            .map_err(|_| invalid(format!("{what}: every id must be an int")))?;
        return ints
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                usize::try_from(v).map_err(|_| invalid(format!("{what}[{i}] = {v} is negative")))
            })
            .collect();
    }
    if let Some(ids) = from_buffer(what, obj)? {
        return Ok(ids);
    }
    let f = match Foreign::from_host_array_interface(what, obj)? {
        Some(f) => f,
        None => Foreign::from_object(what, obj)?,
    };
    if !matches!(f.device, Device::Host { .. }) {
        return Err(invalid(format!(
            "{what}: ids on {} ; pass them in host memory (a list, numpy array or CPU tensor)",
            f.device
        )));
    }
    if f.shape.len() != 1 {
        return Err(invalid(format!(
            "{what}: ids must be 1-D, got shape {:?}",
            f.shape
        )));
    }
    f.check_contiguous(what)?;
    let n = f.shape[0];
    if n == 0 {
        return Ok(Vec::new());
    }
    macro_rules! read {
        ($t:ty) => {{
            // SAFETY: the producer reported n contiguous elements of this type at f.addr, kept
            // alive by `f.owners` (held until this function returns); the slice is only read.
            let s = unsafe { std::slice::from_raw_parts(f.addr as *const $t, n) };
            convert(what, s)
        }};
    }
    if f.addr % f.dtype.bytes != 0 {
        return Err(invalid(format!(
            "{what}: ids are not aligned to their element size"
        )));
    }
    match (f.dtype.kind, f.dtype.bytes) {
        ('i', 8) => read!(i64),
        ('i', 4) => read!(i32),
        ('i', 2) => read!(i16),
        ('i', 1) => read!(i8),
        ('u', 8) => read!(u64),
        ('u', 4) => read!(u32),
        ('u', 2) => read!(u16),
        ('u', 1) => read!(u8),
        _ => Err(invalid(format!(
            "{what}: dtype {} is not an integer type",
            f.dtype
        ))),
    }
}

/// The ids of `s` as `usize`s. One tight pass (no per-element `Result`), then the first bad id
/// is looked up only when there is one: the copy of a 4096-block request is on the caller's
/// critical path.
fn convert<T>(what: &str, s: &[T]) -> PyResult<Vec<usize>>
where
    T: Copy + TryInto<usize> + std::fmt::Display,
{
    let mut out = Vec::with_capacity(s.len());
    let mut bad = false;
    out.extend(s.iter().map(|&v| {
        let u: Option<usize> = v.try_into().ok();
        bad |= u.is_none();
        u.unwrap_or(0)
    }));
    if bad {
        if let Some((i, v)) = s
            .iter()
            .enumerate()
            .find(|(_, v)| TryInto::<usize>::try_into(**v).is_err())
        {
            return Err(invalid(format!(
                "{what}[{i}] = {v} is not a valid block id"
            )));
        }
    }
    Ok(out)
}

/// CPython's `Py_buffer`, as laid out since Python 3.3 (part of the stable ABI from 3.11; the
/// limited API of 3.10 that the wheel is built against does not declare it).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: isize,
    itemsize: isize,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut isize,
    strides: *mut isize,
    suboffsets: *mut isize,
    internal: *mut c_void,
}

unsafe extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

/// `PyBUF_C_CONTIGUOUS | PyBUF_FORMAT`: a C-contiguous buffer with its shape, strides and
/// struct-module format.
const C_CONTIGUOUS_WITH_FORMAT: c_int = 0x0038 | 0x0004;
/// `Py_bf_getbuffer` (typeslots.h): the type's buffer-protocol export.
const BF_GETBUFFER: c_int = 1;

/// True when this interpreter has the buffer protocol in its stable ABI (Python 3.11+).
fn buffer_abi(py: Python<'_>) -> bool {
    static AT_LEAST_3_11: OnceLock<bool> = OnceLock::new();
    *AT_LEAST_3_11.get_or_init(|| py.version_info() >= (3, 11))
}

/// The ids of a 1-D C-contiguous native-endian integer buffer (a numpy array, `array.array`,
/// a memoryview), read through the buffer protocol; `None` for anything else (lists, torch
/// tensors, other dtypes, shapes or strides, Python 3.10), which `block_ids` then reads the
/// general way and whose errors it reports.
///
/// This is the quick path of `Engine.copy`: numpy's `__array_interface__` builds a dict of
/// tuples and strings on every access, which right after a finished copy (caches cold) costs
/// several times what filling a `Py_buffer` does (docs/PERFORMANCE.md).
fn from_buffer(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Option<Vec<usize>>> {
    if !buffer_abi(obj.py()) {
        return Ok(None);
    }
    // SAFETY: `PyType_GetSlot` reads a slot of a live type object (the object's own type,
    // borrowed while `obj` lives); on Python 3.10+ it accepts static types too.
    let exports =
        !unsafe { ffi::PyType_GetSlot(ffi::Py_TYPE(obj.as_ptr()), BF_GETBUFFER) }.is_null();
    if !exports {
        return Ok(None);
    }
    let mut view = std::mem::MaybeUninit::<RawBuffer>::uninit();
    // SAFETY: `obj` is a live object and the GIL is held; on success `view` is filled in and
    // holds a reference to the exporter until `PyBuffer_Release` below, on failure it is left
    // untouched and an exception is set (cleared here: the general path reports the problem).
    if unsafe { PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), C_CONTIGUOUS_WITH_FORMAT) } != 0
    {
        drop(PyErr::take(obj.py()));
        return Ok(None);
    }
    // SAFETY: `PyObject_GetBuffer` succeeded, so `view` is initialised.
    let view = Released(unsafe { view.assume_init() });
    let v = &view.0;
    if v.ndim != 1 || v.format.is_null() || v.itemsize <= 0 {
        return Ok(None);
    }
    // SAFETY: a successful export with PyBUF_FORMAT sets `format` to a NUL-terminated string
    // that lives as long as the view.
    let format = unsafe { CStr::from_ptr(v.format) }.to_bytes();
    // Native byte order only ('@', '=' or no prefix; '<' is native on the little-endian
    // machines kvmem runs on, checked below); anything else goes the general way.
    let code = match format {
        [c] | [b'@' | b'=', c] => *c,
        [b'<', c] if cfg!(target_endian = "little") => *c,
        _ => return Ok(None),
    };
    let n = usize::try_from(v.len / v.itemsize).unwrap_or(0);
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let size = v.itemsize as usize;
    if v.buf as usize % size != 0 {
        return Ok(None);
    }
    macro_rules! read {
        ($t:ty) => {{
            if std::mem::size_of::<$t>() != size {
                return Ok(None);
            }
            // SAFETY: the exporter reported `len` bytes of C-contiguous, aligned (checked
            // above) elements of this size at `buf`, kept alive and unresized by the view
            // until it is released after this read; the slice is only read, under the GIL.
            let s = unsafe { std::slice::from_raw_parts(v.buf as *const $t, n) };
            convert(what, s).map(Some)
        }};
    }
    match code {
        b'q' | b'l' if size == 8 => read!(i64),
        b'i' | b'l' if size == 4 => read!(i32),
        b'h' => read!(i16),
        b'b' => read!(i8),
        b'Q' | b'L' if size == 8 => read!(u64),
        b'I' | b'L' if size == 4 => read!(u32),
        b'H' => read!(u16),
        b'B' => read!(u8),
        _ => Ok(None),
    }
}

/// A filled-in `Py_buffer`, released when dropped (with the GIL, which `from_buffer` holds).
struct Released(RawBuffer);

impl Drop for Released {
    fn drop(&mut self) {
        // SAFETY: the view was filled in by a successful `PyObject_GetBuffer` and is released
        // once, here, while the GIL is held.
        unsafe { PyBuffer_Release(&mut self.0) }
    }
}
