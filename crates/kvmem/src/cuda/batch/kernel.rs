//! [`CopyMethod::Kernel`](super::CopyMethod::Kernel): kvmem's copy kernel over a list of copy
//! descriptors, written to pinned memory, uploaded and launched on the copy stream; the long
//! copies split first so that they spread over the thread blocks.

use super::shape::Shape;
use super::{
    CopyStream, DeviceCopy, KERNEL_BLOCKS_PER_SM, KERNEL_HEAD_MIN, KERNEL_MIN_PIECE, KERNEL_PIECE,
    KERNEL_THREADS,
};
use crate::cuda::driver;
use crate::error::{BoundsError, Error, Result, UnsupportedError};
use cudarc::driver::{CudaFunction, result};
use std::borrow::Cow;
use std::ffi::c_void;

/// A reusable pair of descriptor buffers (pinned staging + device copy) for the kernel.
pub(super) struct DescBuffers {
    pub(super) host: *mut DeviceCopy,
    pub(super) dev: u64,
    pub(super) capacity: usize,
}

// SAFETY: the buffers are plain driver allocations; whoever holds a `DescBuffers` is the only user.
unsafe impl Send for DescBuffers {}

impl CopyStream {
    pub(super) fn enqueue_kernel(
        &self,
        copies: &[DeviceCopy],
        shape: &Shape,
        slot: &mut Option<DescBuffers>,
    ) -> Result<()> {
        let inner = &self.inner;
        let Some(kernel) = &inner.kernel else {
            return Err(Error::Unsupported(UnsupportedError::Feature {
                what: "the copy kernel did not load".into(),
            }));
        };
        let pieces = split_for_kernel(copies, shape, inner.sm_count);
        let copies = &pieces[..];
        let descs = self.take_descs(copies.len())?;
        let (dev, host) = (descs.dev, descs.host);
        *slot = Some(descs);
        // A long list starts with a launch over its first eighth, so that the GPU copies while
        // the CPU writes the rest of the descriptors (on the H200 machine, writing 16,384 of them
        // and launching took 0.14-0.18 ms, a tenth of the transfer, with the GPU idle).
        let head = if copies.len() >= KERNEL_HEAD_MIN {
            copies.len() / 8
        } else {
            copies.len()
        };
        for (start, part) in [(0, &copies[..head]), (head, &copies[head..])] {
            if part.is_empty() {
                continue;
            }
            // SAFETY: `host` is a pinned allocation of `capacity >= copies.len()` entries that no
            // in-flight work uses (it came from the free list or was just allocated), of which
            // this writes the entries `start..start + part.len()`, not handed to the GPU before.
            let staged = unsafe {
                let at = host.add(start);
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                std::slice::from_raw_parts(at.cast_const(), part.len())
            };
            let at = dev + (start * std::mem::size_of::<DeviceCopy>()) as u64;
            // SAFETY: the device buffer holds `capacity` entries, these among them; the pinned
            // entries stay allocated, and untouched, until the completion (which owns them now)
            // has finished, after the upload, which is ordered before the launch on the stream.
            unsafe { result::memcpy_htod_async(at, staged, inner.stream.cu_stream()) }
                .map_err(|e| driver::error("upload copy descriptors", e))?;
            // SAFETY: the descriptors were uploaded on the same stream, before the launch; the
            // ranges they name are valid per `copy_async`'s contract.
            unsafe { self.launch_copy_kernel(kernel, at, part.len(), inner.stream.cu_stream()) }?;
        }
        Ok(())
    }

    /// Launches the copy kernel on `stream` over `count` descriptors at device address `descs`.
    ///
    /// # Safety
    /// The descriptors must be in device memory written by work ordered before the launch on
    /// `stream`, or in pinned host memory the device reads in place (written by the CPU before
    /// the launch), and stay there, unchanged, until the launch has finished; the ranges they name must be
    /// valid for the device until then, destinations disjoint from each other and the sources;
    /// `stream` must be a live stream of this device's context.
    pub(super) unsafe fn launch_copy_kernel(
        &self,
        kernel: &CudaFunction,
        descs: u64,
        count: usize,
        stream: driver::RawStream,
    ) -> Result<()> {
        let per_launch = u32::MAX as usize;
        for i in 0..count.div_ceil(per_launch) {
            let mut descs_ptr: u64 =
                descs + (i * per_launch * std::mem::size_of::<DeviceCopy>()) as u64;
            let mut count: u32 = (count - i * per_launch).min(per_launch) as u32;
            let grid = count
                .min(self.inner.sm_count.saturating_mul(KERNEL_BLOCKS_PER_SM))
                .max(1);
            let mut params = [
                (&mut descs_ptr as *mut u64).cast::<c_void>(),
                (&mut count as *mut u32).cast::<c_void>(),
            ];
            // SAFETY: the kernel takes (const CopyDesc*, u32); `params` points at values of
            // exactly those types that outlive the call; the rest is this function's contract.
            unsafe {
                result::launch_kernel(
                    kernel.cu_function(),
                    (grid, 1, 1),
                    (KERNEL_THREADS, 1, 1),
                    0,
                    stream,
                    &mut params,
                )
            }
            .map_err(|e| driver::error("launch the copy kernel", e))?;
        }
        Ok(())
    }

    pub(super) fn take_descs(&self, count: usize) -> Result<DescBuffers> {
        let mut free = self
            .inner
            .free_descs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(i) = free.iter().position(|d| d.capacity >= count) {
            return Ok(free.swap_remove(i));
        }
        drop(free);
        let capacity = count
            .checked_next_power_of_two()
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "descriptor buffer",
            }))?
            .max(1024);
        let bytes = capacity
            .checked_mul(std::mem::size_of::<DeviceCopy>())
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "descriptor buffer",
            }))?;
        // SAFETY: the context is current (bound in `copy_async`); the memory is only written
        // (by `enqueue_kernel`) before it is read.
        let host = unsafe { result::malloc_host(bytes, driver::HOST_ALLOC_PORTABLE) }
            .map_err(|e| driver::error("allocate pinned copy descriptors", e))?;
        // SAFETY: as above; the device buffer is only read after an upload fills it.
        let dev = match unsafe { result::malloc_sync(bytes) } {
            Ok(dev) => dev,
            Err(e) => {
                // SAFETY: `host` was just allocated by `malloc_host` and is not used.
                driver::log_failure("free pinned copy descriptors", unsafe {
                    result::free_host(host)
                });
                return Err(driver::error("allocate device copy descriptors", e));
            }
        };
        Ok(DescBuffers {
            host: host.cast(),
            dev,
            capacity,
        })
    }

    pub(super) fn give_back(&self, descs: DescBuffers) {
        let mut free = self
            .inner
            .free_descs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        free.push(descs);
    }
}

/// `copies` (of shape `shape`) with the long ones split so that they spread over thread blocks:
/// into pieces small enough that the list fills every block resident at once on `sm_count`
/// multiprocessors (a power of two between [`KERNEL_MIN_PIECE`] and [`KERNEL_PIECE`], hence a
/// multiple of 16 bytes, which keeps the vector path's alignment).
pub(super) fn split_for_kernel<'a>(
    copies: &'a [DeviceCopy],
    shape: &Shape,
    sm_count: u32,
) -> Cow<'a, [DeviceCopy]> {
    let resident = u64::from(sm_count.saturating_mul(KERNEL_BLOCKS_PER_SM).max(1));
    let piece = (shape.total / resident)
        .checked_next_power_of_two()
        .map_or(KERNEL_PIECE, |p| p.clamp(KERNEL_MIN_PIECE, KERNEL_PIECE));
    if shape.longest <= piece {
        return Cow::Borrowed(copies);
    }
    copies
        .iter()
        .flat_map(|c| {
            (0..c.len.div_ceil(piece)).map(move |i| {
                let off = i * piece;
                DeviceCopy {
                    src: c.src + off,
                    dst: c.dst + off,
                    len: (c.len - off).min(piece),
                }
            })
        })
        .collect::<Vec<_>>()
        .into()
}
