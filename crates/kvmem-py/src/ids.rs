//! Block ids from Python: a list or tuple of ints, or a 1-D integer array in host memory (numpy,
//! torch CPU, anything `foreign` reads), converted in Rust with no per-element Python work.

use crate::errors::invalid;
use crate::foreign::{Device, Foreign};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

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
    let f = Foreign::from_object(what, obj)?;
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
            s.iter()
                .enumerate()
                .map(|(i, &v)| {
                    usize::try_from(v)
                        .map_err(|_| invalid(format!("{what}[{i}] = {v} is not a valid block id")))
                })
                .collect()
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
