//! Ordering kvmem's copies with an engine's CUDA stream (`stream=` and `Handle.wait_on`).

use crate::errors::invalid;
use kvmem::StorageKind;
use kvmem::cuda::CudaDevice;
use kvmem::cuda::interop::{Event, RawStream};
use kvmem::descriptor::MemoryDescriptor;
use kvmem::layout::BlockLayout;
use kvmem::transfer::{TransferEngine, TransferHandle};
use pyo3::prelude::*;

/// The raw `CUstream` of a `torch.cuda.Stream` (`.cuda_stream`), a CuPy stream (`.ptr`) or an
/// int (0 is the legacy default stream).
pub(crate) fn raw_stream(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(n) = obj.extract::<u64>() {
        return Ok(n);
    }
    for attr in ["cuda_stream", "ptr"] {
        if let Ok(v) = obj.getattr(attr)
            && let Ok(n) = v.extract::<u64>()
        {
            return Ok(n);
        }
    }
    Err(invalid(format!(
        "stream: a {} is not a CUDA stream; pass a torch.cuda.Stream, a CuPy stream or a raw \
         CUstream int",
        obj.get_type().name()?
    )))
}

/// The device an ordered copy between `src` and `dst` runs on: the GPU end's, else device 0.
fn ordering_device(src: &BlockLayout, dst: &BlockLayout) -> u32 {
    [src, dst]
        .into_iter()
        .find_map(|l| match l.regions()[0].storage_kind() {
            StorageKind::Device(n) => Some(n),
            _ => None,
        })
        .unwrap_or(0)
}

/// Submits the copy; with `stream`, after an event recorded on it now.
pub(crate) fn copy(
    engine: &TransferEngine,
    src: &BlockLayout,
    src_ids: &[usize],
    dst: &BlockLayout,
    dst_ids: &[usize],
    stream: Option<u64>,
) -> kvmem::Result<(TransferHandle, Option<Event>)> {
    let gpu_end = [src, dst]
        .iter()
        .any(|l| matches!(l.storage_kind(), StorageKind::Device(_)));
    let after = match stream {
        None => None,
        Some(raw) => {
            let device = CudaDevice::new(ordering_device(src, dst) as usize)?;
            let event = Event::new(&device)?;
            // SAFETY: the caller passed the engine's live stream of this device (torch and
            // CuPy use the primary context kvmem binds); the driver rejects a handle of another
            // context with an error.
            unsafe { event.record(raw as RawStream) }?;
            Some(event)
        }
    };
    if !gpu_end && after.is_none() {
        return engine
            .copy_blocks(src, src_ids, dst, dst_ids)
            .map(|h| (h, None));
    }
    engine.copy_blocks_ordered(src, src_ids, dst, dst_ids, after.as_ref())
}

/// Makes the engine's stream `raw` wait for the transfer's end event.
pub(crate) fn wait_on(end: &Event, raw: u64) -> kvmem::Result<()> {
    // SAFETY: as in `copy`: the caller's live stream of the event's device.
    unsafe { end.wait_in(raw as RawStream) }
}
