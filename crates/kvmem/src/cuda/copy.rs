//! Whole-region copies between host and device memory, for verification and set-up.
//!
//! Each helper copies one whole region into another of the same size and returns when the copy
//! is complete. Host regions page-locked in several registrations are copied one registration at
//! a time (see [`MAX_HOST_REGISTRATION`](super::MAX_HOST_REGISTRATION)). Device regions are checked with the driver before anything moves: the range
//! must lie inside one device allocation of the device its [`StorageKind`] names. The block
//! transfer engine, not these helpers, is how KV blocks move in production.

// This module copies between raw host and device addresses through the driver: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::{CudaDevice, driver};
use crate::descriptor::MemoryDescriptor;
use crate::error::{BoundsError, CudaError, Error, Result, SizeRule, UnsupportedError};
use crate::host::HostMemory;
use crate::kind::StorageKind;
use cudarc::driver::result;
use std::ops::Range;

/// Copies all of host region `src` into device region `dst`.
///
/// # Errors
/// [`UnsupportedError::WrongStorageKind`] when `dst` is not device memory, [`BoundsError::SizeMismatch`] when the
/// sizes differ, [`CudaError::NotDeviceMemory`] when the driver does not know `dst`'s range,
/// [`CudaError::Unavailable`]/[`CudaError::Driver`] from the driver.
pub fn copy_host_to_device<S, D>(src: &S, dst: &D) -> Result<()>
where
    S: HostMemory + ?Sized,
    D: MemoryDescriptor + ?Sized,
{
    const OP: &str = "copy host to device";
    let device = device_of(OP, dst)?;
    let bytes = src.as_slice();
    same_size(OP, bytes.len(), dst.size())?;
    check_device_range(OP, &device, dst.addr(), dst.size())?;
    for piece in pieces(src) {
        let dst_ptr = (dst.addr() + piece.start) as u64;
        // SAFETY: `dst` was checked to lie inside one allocation of this device and `piece` lies
        // inside it; `bytes` is a live borrow of the source for the whole (synchronous) copy.
        unsafe { result::memcpy_htod_sync(dst_ptr, &bytes[piece]) }
            .map_err(|e| driver::error(OP, e))?;
    }
    finish(OP)
}

/// Copies all of device region `src` into host region `dst`.
///
/// # Errors
/// As for [`copy_host_to_device`], with the roles swapped.
pub fn copy_device_to_host<S, D>(src: &S, dst: &mut D) -> Result<()>
where
    S: MemoryDescriptor + ?Sized,
    D: HostMemory + ?Sized,
{
    const OP: &str = "copy device to host";
    let device = device_of(OP, src)?;
    let (addr, size) = (src.addr(), src.size());
    same_size(OP, size, dst.size())?;
    check_device_range(OP, &device, addr, size)?;
    let pieces = pieces(dst);
    let bytes = dst.as_mut_slice();
    for piece in pieces {
        let src_ptr = (addr + piece.start) as u64;
        // SAFETY: `src` was checked to lie inside one allocation of this device and `piece` lies
        // inside it; `bytes` is an exclusive borrow of the destination for the whole
        // (synchronous) copy.
        unsafe { result::memcpy_dtoh_sync(&mut bytes[piece], src_ptr) }
            .map_err(|e| driver::error(OP, e))?;
    }
    finish(OP)
}

/// Copies all of device region `src` into device region `dst` (same or different devices).
///
/// # Errors
/// As for [`copy_host_to_device`], for both regions.
pub fn copy_device_to_device<S, D>(src: &S, dst: &D) -> Result<()>
where
    S: MemoryDescriptor + ?Sized,
    D: MemoryDescriptor + ?Sized,
{
    const OP: &str = "copy device to device";
    let src_device = device_of(OP, src)?;
    let dst_device = device_of(OP, dst)?;
    same_size(OP, src.size(), dst.size())?;
    check_device_range(OP, &src_device, src.addr(), src.size())?;
    check_device_range(OP, &dst_device, dst.addr(), dst.size())?;
    dst_device.bind()?;
    // SAFETY: both ranges were checked to lie inside device allocations the driver knows.
    unsafe { result::memcpy_dtod_sync(dst.addr() as u64, src.addr() as u64, src.size()) }
        .map_err(|e| driver::error(OP, e))?;
    finish(OP)
}

/// The offset ranges of `host` that one CUDA copy each may cover: one per page-lock registration
/// for memory page-locked in several ([`HostMemory::page_locked_ranges`]: a copy must not cross
/// from one registration into the next),
/// the whole region otherwise.
fn pieces<H: HostMemory + ?Sized>(host: &H) -> Vec<Range<usize>> {
    let base = host.addr();
    match host.page_locked_ranges() {
        Some(ranges) if ranges.len() > 1 => ranges
            .into_iter()
            .map(|r| r.start - base..r.end - base)
            .collect(),
        _ => std::iter::once(0..host.size()).collect(),
    }
}

/// The device a region names, opened (and bound to this thread).
fn device_of<R: MemoryDescriptor + ?Sized>(op: &'static str, region: &R) -> Result<CudaDevice> {
    match region.storage_kind() {
        StorageKind::Device(id) => CudaDevice::new(id as usize),
        actual => Err(Error::Unsupported(UnsupportedError::WrongStorageKind {
            op,
            expected: "device",
            actual,
        })),
    }
}

fn same_size(op: &'static str, src: usize, dst: usize) -> Result<()> {
    if src == dst {
        Ok(())
    } else {
        Err(Error::Bounds(BoundsError::SizeMismatch {
            op,
            src,
            dst,
            rule: SizeRule::Equal,
        }))
    }
}

/// Checks with the driver that `addr..addr + size` is device memory of `device`, inside one
/// allocation.
pub(crate) fn check_device_range(
    op: &'static str,
    device: &CudaDevice,
    addr: usize,
    size: usize,
) -> Result<()> {
    let not_device = |reason: String| {
        Error::Cuda(CudaError::NotDeviceMemory {
            op,
            addr,
            size,
            reason,
        })
    };
    let found = driver::pointer_range(addr as u64).map_err(|e| {
        let (name, _) = driver::names(e);
        not_device(format!("the driver does not know the address: {name}"))
    })?;
    let (ordinal, start, range) = (found.ordinal, found.start, found.size);
    if !found.is_device {
        return Err(not_device(format!(
            "memory type {} is not device memory",
            found.memory_type
        )));
    }
    if usize::try_from(ordinal).ok() != Some(device.ordinal()) {
        return Err(not_device(format!(
            "it belongs to device {ordinal}, not device {}",
            device.ordinal()
        )));
    }
    let end = addr.checked_add(size);
    let alloc_end = (start as usize).checked_add(range);
    match (end, alloc_end) {
        (Some(end), Some(alloc_end)) if addr >= start as usize && end <= alloc_end => Ok(()),
        _ => Err(not_device(format!(
            "the allocation there spans {range} bytes from {start:#x}"
        ))),
    }
}

/// Waits for the copy to land: synchronous driver copies may return before the DMA completes
/// (pageable host to device, device to device).
fn finish(op: &'static str) -> Result<()> {
    // SAFETY: the null stream of the current context always exists.
    unsafe { result::stream::synchronize(result::stream::null()) }.map_err(|e| driver::error(op, e))
}
