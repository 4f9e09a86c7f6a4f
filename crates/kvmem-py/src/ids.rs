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
