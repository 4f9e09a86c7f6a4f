//! [`CopyMethod::Staged`](super::CopyMethod::Staged): copies between scattered device memory
//! and pinned host memory through a ring of device staging slots.
//!
//! Gather (device → host): the copy kernel packs a slot's worth of device chunks into the slot
//! (device to device: short, so the SMs are busy for microseconds, not for the whole transfer),
//! then the copy engines move the slot to the host with one DMA per contiguous host run; the
//! kernel packs the next slot meanwhile. Scatter (host → device) is the reverse: DMA into a slot,
//! then the kernel spreads it over the device chunks. The kernel runs on a stream of its own, the
//! DMAs on the copy stream; events order each slot's kernel and DMA, and a slot is reused only
//! after its previous DMA (gather) or kernel (scatter) is done.

use super::DescBuffers;
use super::{CopyStream, DeviceCopy, KERNEL_MIN_PIECE, Location, split_for_kernel};
use crate::cuda::driver;
use crate::error::{BoundsError, Error, Result, UnsupportedError};
use cudarc::driver::{CudaEvent, CudaFunction, CudaStream, result};
use std::borrow::Cow;

/// The default size of a copy stream's staging ring (device memory, allocated on the first
/// staged transfer): eight slots of 32 MiB. On the H200 (docs/PERFORMANCE.md) it moved 1 GiB
/// offloads of 32 KiB chunks at 0.97x of one large copy where a 64 MiB ring of 8 MiB slots
/// moved them at 0.95-0.96x: larger slots mean fewer DMAs, and a ring that holds more of the
/// transfer rides out longer waits of the packing kernel for a multiprocessor beside an
/// engine's kernels.
pub const DEFAULT_STAGING_BYTES: usize = 256 << 20;
/// Slots per ring: one moves while the others are packed.
const RING_SLOTS: usize = 8;
/// Slots are whole MiB, at least one.
const SLOT_UNIT: u64 = 1 << 20;

/// The slot size of a ring of `bytes`: an eighth of it, in whole MiB, at least 1 MiB.
pub(super) fn slot_bytes_for(bytes: usize) -> u64 {
    ((bytes as u64 / RING_SLOTS as u64) / SLOT_UNIT).max(1) * SLOT_UNIT
}

/// The smallest transfer [`suits`] sends to the staged method.
const SUITS_MIN_BYTES: u64 = 16 << 20;
/// Transfers of at least this many bytes are staged whatever their copy size; smaller ones only
/// when their copies average [`SUITS_MIN_AVG`] or more. On the H200 (docs/PERFORMANCE.md) the
/// staged method beat the copy kernel on 1 GiB offloads and onboards of 4-32 KiB chunks and on
/// 64 MiB transfers of 64 KiB-1 MiB chunks, and lost to it on 64 MiB of scattered 4 and 16 KiB
/// chunks, where its fixed costs (host ordering, filling and draining the pipeline) weigh more.
const SUITS_ANY_AVG_BYTES: u64 = 256 << 20;
/// See [`SUITS_ANY_AVG_BYTES`].
const SUITS_MIN_AVG: u64 = 64 << 10;

/// True when `Auto` should stage `copies` (of `total` bytes) rather than run them on the copy
/// kernel: one side on the device and the other on the host, at least [`SUITS_MIN_BYTES`] (and
/// [`SUITS_ANY_AVG_BYTES`] unless the copies average [`SUITS_MIN_AVG`]), and the host ranges
/// tiling one run (their bytes add up to the run from the lowest to the highest address), so
/// that every slot moves as one DMA.
pub(super) fn suits(copies: &[DeviceCopy], src: Location, dst: Location, total: u64) -> bool {
    let host_is_dst = match (src, dst) {
        (Location::Device(_), Location::Host) => true,
        (Location::Host, Location::Device(_)) => false,
        _ => return false,
    };
    let avg = total / copies.len().max(1) as u64;
    if total < SUITS_MIN_BYTES || (total < SUITS_ANY_AVG_BYTES && avg < SUITS_MIN_AVG) {
        return false;
    }
    let (lo, hi) = copies.iter().fold((u64::MAX, 0u64), |(lo, hi), c| {
        let at = if host_is_dst { c.dst } else { c.src };
        (lo.min(at), hi.max(at.saturating_add(c.len)))
    });
    hi.saturating_sub(lo) == total
}

/// One slot's worth of a staged transfer, as [`pack`] hands it out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slab<'a> {
    /// The staging slot it uses.
    pub(super) slot: usize,
    /// Its device-side copies (into the slot for a gather, out of it for a scatter), not yet
    /// split for the kernel.
    pub(super) device_side: &'a [DeviceCopy],
    /// Its DMA copies between the slot and the host (adjacent host ranges merged).
    pub(super) dma: &'a [DeviceCopy],
}

/// `copies` in the order of their host addresses (`host` tells which side is the host's).
/// Free when they come in that order; when every copy has the same length and their host
/// ranges tile one run (an engine's offload or onboard of whole chunks, listed in device
/// order), each is placed at its index in one pass; otherwise sorted.
fn in_host_order(
    copies: &[DeviceCopy],
    host: impl Fn(&DeviceCopy) -> u64,
) -> Cow<'_, [DeviceCopy]> {
    if copies.windows(2).all(|w| host(&w[0]) <= host(&w[1])) {
        return Cow::Borrowed(copies);
    }
    if let Some(placed) = tiled(copies, &host) {
        return Cow::Owned(placed);
    }
    let mut v = copies.to_vec();
    v.sort_unstable_by_key(host);
    Cow::Owned(v)
}

/// `copies` ordered by host address when they have one length and their host ranges tile
/// `[min, min + n * len)` exactly (each position taken once); `None` otherwise.
fn tiled(copies: &[DeviceCopy], host: &impl Fn(&DeviceCopy) -> u64) -> Option<Vec<DeviceCopy>> {
    let len = copies.first()?.len;
    if len == 0 || copies.len() >= u32::MAX as usize || copies.iter().any(|c| c.len != len) {
        return None;
    }
    let min = copies.iter().map(host).min()?;
    let mut at = vec![u32::MAX; copies.len()];
    for (i, c) in copies.iter().enumerate() {
        let off = host(c) - min;
        let k = usize::try_from(off / len).ok()?;
        match at.get_mut(k) {
            Some(slot) if off % len == 0 && *slot == u32::MAX => *slot = i as u32,
            _ => return None,
        }
    }
    // Every position taken once by `n` copies: a permutation, in host order.
    Some(at.iter().map(|&i| copies[i as usize]).collect())
}

/// Splits `copies` into slabs of `slot_bytes` staged in `slots` slots at `base` (slot `k` at
/// `base + k * slot_bytes`) and hands each to `emit` as soon as it is full, so the caller can
/// start moving it while the rest is packed: for a gather, the kernel copies device sources into
/// the slot and the DMAs copy the slot to the host destinations; for a scatter, the DMAs copy
/// host sources into the slot and the kernel copies the slot to the device destinations. Copies
/// are packed in order of their host addresses, split where a slot fills, so that adjacent host
/// ranges become one DMA whatever order the list came in (an onboard's list follows the device
/// side: one DMA per chunk otherwise, about 1 µs of CPU each). Destinations never overlap, so
/// the order of the copies does not change the result. Host ranges are never joined at one of
/// `host_cuts` (sorted: where one page-lock registration ends and the next begins). Stops at
/// `emit`'s first error.
pub(super) fn pack<E>(
    copies: &[DeviceCopy],
    gather: bool,
    (base, slot_bytes, slots): (u64, u64, usize),
    host_cuts: &[u64],
    mut emit: impl FnMut(Slab<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let slots = slots.max(1) as u64;
    let slot_bytes = slot_bytes.max(1);
    let copies = in_host_order(copies, |c| if gather { c.dst } else { c.src });
    let mut device_side: Vec<DeviceCopy> = Vec::new();
    let mut dma: Vec<DeviceCopy> = Vec::new();
    let mut used = 0u64;
    let mut slab = 0u64;
    let mut close =
        |device_side: &mut Vec<DeviceCopy>, dma: &mut Vec<DeviceCopy>, slab: &mut u64| {
            let out = emit(Slab {
                slot: (*slab % slots) as usize,
                device_side,
                dma,
            });
            device_side.clear();
            dma.clear();
            *slab += 1;
            out
        };
    for c in copies.iter() {
        let mut done = 0;
        while done < c.len {
            let n = (c.len - done).min(slot_bytes - used);
            let staged = base + (slab % slots) * slot_bytes + used;
            let (device, host) = if gather {
                (c.src + done, c.dst + done)
            } else {
                (c.dst + done, c.src + done)
            };
            let (on_device, on_host) = if gather {
                (copy(device, staged, n), copy(staged, host, n))
            } else {
                (copy(staged, device, n), copy(host, staged, n))
            };
            device_side.push(on_device);
            match dma.last_mut() {
                Some(last)
                    if last.src + last.len == on_host.src
                        && last.dst + last.len == on_host.dst
                        && (host_cuts.is_empty() || host_cuts.binary_search(&host).is_err()) =>
                {
                    last.len += n;
                }
                _ => dma.push(on_host),
            }
            used += n;
            done += n;
            if used == slot_bytes {
                close(&mut device_side, &mut dma, &mut slab)?;
                used = 0;
            }
        }
    }
    if used > 0 {
        close(&mut device_side, &mut dma, &mut slab)?;
    }
    Ok(())
}

fn copy(src: u64, dst: u64, len: u64) -> DeviceCopy {
    DeviceCopy { src, dst, len }
}

/// The most kernel descriptors [`pack`] with `split_for_kernel` can make of `copies` in slots of
/// `slot_bytes`: a copy splits into pieces of at least `KERNEL_MIN_PIECE`, and once more where a
/// slot fills.
fn descriptor_bound(copies: &[DeviceCopy], slot_bytes: u64) -> usize {
    let total = copies.iter().fold(0u64, |t, c| t.saturating_add(c.len));
    let pieces = copies.iter().fold(0u64, |t, c| {
        t.saturating_add(c.len.div_ceil(KERNEL_MIN_PIECE))
    });
    usize::try_from(pieces.saturating_add(total.div_ceil(slot_bytes.max(1)))).unwrap_or(usize::MAX)
}

/// The device staging ring of a copy stream (`slots * slot_bytes` from `cuMemAlloc`, freed on
/// drop), with the stream its kernels run on: created with the device's greatest priority, so
/// that its short packing kernels get multiprocessors ahead of an engine's queued kernels as
/// soon as one frees up.
pub(super) struct Ring {
    memory: u64,
    slot_bytes: u64,
    slots: usize,
    kernel_stream: std::sync::Arc<CudaStream>,
}

impl Ring {
    /// Allocates a ring of [`RING_SLOTS`] slots of `slot_bytes` and creates its kernel stream in
    /// `ctx` (bound by the caller).
    fn new(ctx: &std::sync::Arc<cudarc::driver::CudaContext>, slot_bytes: u64) -> Result<Self> {
        let slots = RING_SLOTS;
        let bytes = usize::try_from(slot_bytes)
            .ok()
            .and_then(|b| b.checked_mul(slots))
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "staging ring size",
            }))?;
        let (_, greatest) = result::stream::get_priority_range()
            .map_err(|e| driver::error("query the stream priorities", e))?;
        let kernel_stream = ctx
            .new_stream_with_priority(greatest)
            .map_err(|e| driver::error("create the staging kernel's stream", e))?;
        // SAFETY: a plain allocation in the bound context, owned by the value built below and
        // freed in its Drop.
        let memory = unsafe { result::malloc_sync(bytes) }
            .map_err(|e| driver::error("allocate the staging ring (cuMemAlloc)", e))?;
        Ok(Self {
            memory,
            slot_bytes,
            slots,
            kernel_stream,
        })
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Dropped with its copy stream (whose context the stream's drop binds first); the slots
        // are freed only once no kernel or DMA can still use them.
        let idle = self.kernel_stream.synchronize();
        match idle {
            // SAFETY: `memory` came from `malloc_sync` in `new` and is freed once, here; the
            // kernel stream is idle, and every DMA on the copy stream that used a slot was
            // waited for by the copy stream's drop (which runs first) or its completions.
            Ok(()) => driver::log_failure("free the staging ring", unsafe {
                result::free_sync(self.memory)
            }),
            Err(e) => driver::log_failure("wait for the staging kernels (ring leaked)", Err(e)),
        }
    }
}

impl CopyStream {
    /// Enqueues `copies` staged through the ring (gather for device → host, scatter for
    /// host → device; device ↔ device copies need no staging and go to the kernel directly).
    /// `descs` receives the descriptor buffers, to be kept until the transfer's completion.
    ///
    /// The caller (`copy_async`) upholds the ranges' contract.
    pub(super) fn enqueue_staged(
        &self,
        copies: &[DeviceCopy],
        src: Location,
        dst: Location,
        host_cuts: &[u64],
        descs: &mut Option<DescBuffers>,
    ) -> Result<()> {
        let gather = match (src, dst) {
            (Location::Device(_), Location::Host) => true,
            (Location::Host, Location::Device(_)) => false,
            _ => return self.enqueue_kernel(copies, descs),
        };
        let inner = &self.inner;
        let Some(kernel) = &inner.kernel else {
            return Err(Error::Unsupported(UnsupportedError::Feature {
                what: "the copy kernel did not load".into(),
            }));
        };
        // One staged transfer at a time uses the ring (the lock is held while enqueueing; the
        // GPU-side order between transfers comes from the events below).
        let mut ring = inner.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.is_none() {
            *ring = Some(Ring::new(
                inner.device.context(),
                slot_bytes_for(inner.staging_bytes),
            )?);
        }
        let Some(ring) = ring.as_ref() else {
            return Err(Error::Unsupported(UnsupportedError::Feature {
                what: "the staging ring could not be set up".into(),
            }));
        };
        let enqueued = self.enqueue_through(ring, kernel, (copies, host_cuts), gather, descs);
        if enqueued.is_err() {
            // The copy stream's completion does not cover kernels enqueued before the error:
            // let them finish before the caller may free the memory they use.
            driver::log_failure(
                "synchronize the staging kernel's stream",
                ring.kernel_stream.synchronize(),
            );
        }
        enqueued
    }

    /// Packs and enqueues slab by slab: the first slot moves while the rest of the list is
    /// still being packed, so the CPU's work overlaps the GPU's.
    fn enqueue_through(
        &self,
        ring: &Ring,
        kernel: &CudaFunction,
        (copies, host_cuts): (&[DeviceCopy], &[u64]),
        gather: bool,
        descs: &mut Option<DescBuffers>,
    ) -> Result<()> {
        let inner = &self.inner;
        let sm_count = inner.sm_count;
        let main = &inner.stream;
        let ks = &ring.kernel_stream;
        let event = |stream: &CudaStream| -> Result<CudaEvent> {
            stream
                .record_event(None)
                .map_err(|e| driver::error("record a staging event", e))
        };
        let wait = |stream: &CudaStream, e: &CudaEvent| -> Result<()> {
            stream
                .wait(e)
                .map_err(|e| driver::error("order the staging streams", e))
        };
        // Whatever the copy stream did before (an earlier staged transfer's DMAs from the
        // slots among it) is done before this transfer's kernels touch a slot.
        wait(ks, &event(main)?)?;
        let d = self.take_descs(descriptor_bound(copies, ring.slot_bytes))?;
        let (dev, host, capacity) = (d.dev, d.host, d.capacity);
        *descs = Some(d);
        let size = std::mem::size_of::<DeviceCopy>();
        // Per slot: the event after its last use by the other stream.
        let mut freed: Vec<Option<CudaEvent>> = (0..ring.slots).map(|_| None).collect();
        let mut written = 0usize;
        let in_place = inner.host_pointers_are_device_pointers;
        pack(
            copies,
            gather,
            (ring.memory, ring.slot_bytes, ring.slots),
            host_cuts,
            |slab| {
                let pieces = split_for_kernel(slab.device_side, sm_count);
                let n = pieces.len();
                if written + n > capacity {
                    return Err(Error::Bounds(BoundsError::Overflow {
                        what: "staged copy descriptors",
                    }));
                }
                // SAFETY: `host` is a pinned allocation of `capacity` entries (checked just above)
                // owned by the completion; entries from `written` on were never handed to the GPU,
                // and earlier ones are not touched again.
                let entries = unsafe {
                    let at = host.add(written);
                    std::ptr::copy_nonoverlapping(pieces.as_ptr(), at, n);
                    std::slice::from_raw_parts(at.cast_const(), n)
                };
                // Where the kernel reads them: in place, through the pinned buffer's device
                // mapping, when host pointers are device pointers here (no upload then: an
                // upload is a copy on the kernel's stream, which waits behind the slot's DMAs
                // on the copy engines in a scatter, and behind the engine's kernels with the
                // launch before it); else a copy in the device buffer, uploaded first.
                let (at, upload) = if in_place {
                    (entries.as_ptr() as u64, false)
                } else {
                    (dev + (written * size) as u64, n > 0)
                };
                written += n;
                if upload {
                    // SAFETY: the device buffer holds `capacity >= written` entries; the pinned
                    // entries stay untouched until the completion has finished, after the upload.
                    unsafe { result::memcpy_htod_async(at, entries, ks.cu_stream()) }
                        .map_err(|e| driver::error("upload copy descriptors", e))?;
                }
                let launch = |stream: &CudaStream| -> Result<()> {
                    if n == 0 {
                        return Ok(());
                    }
                    // SAFETY: the slab's descriptors are in pinned memory the device reads in
                    // place, or were uploaded on this stream before; either stays untouched until
                    // the completion has finished. They name device ranges of the transfer
                    // (valid per `copy_async`'s contract) and a range of the slot, which this
                    // transfer alone uses now (ring lock, and the events order its reuse).
                    unsafe { self.launch_copy_kernel(kernel, at, n, stream.cu_stream()) }
                };
                if gather {
                    if let Some(e) = freed[slab.slot].take() {
                        wait(ks, &e)?;
                    }
                    launch(ks)?;
                    wait(main, &event(ks)?)?;
                    self.enqueue_dma(slab.dma, gather)?;
                    freed[slab.slot] = Some(event(main)?);
                } else {
                    if let Some(e) = freed[slab.slot].take() {
                        wait(main, &e)?;
                    }
                    self.enqueue_dma(slab.dma, gather)?;
                    wait(ks, &event(main)?)?;
                    launch(ks)?;
                    freed[slab.slot] = Some(event(ks)?);
                }
                Ok(())
            },
        )?;
        // The transfer's completion is recorded on the copy stream: make it include the kernels.
        wait(main, &event(ks)?)?;
        Ok(())
    }
    /// The DMA copies of one slab on the copy stream: batched when the driver offers it and
    /// there are several, else one `cuMemcpyAsync` each.
    fn enqueue_dma(&self, dma: &[DeviceCopy], gather: bool) -> Result<()> {
        if dma.len() > 1 && self.inner.batch_supported {
            let device = Location::Device(self.inner.device.kind_id());
            let (src, dst) = if gather {
                (device, Location::Host)
            } else {
                (Location::Host, device)
            };
            self.enqueue_batched(dma, src, dst)
        } else {
            self.enqueue_per_copy(dma)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 1 << 40;

    /// One slab as [`pack`] handed it out, owned.
    #[derive(Debug)]
    struct Slab {
        slot: usize,
        kernel: Vec<DeviceCopy>,
        dma: Vec<DeviceCopy>,
    }

    struct Plan {
        slabs: Vec<Slab>,
    }

    fn plan_cut(
        copies: &[DeviceCopy],
        gather: bool,
        (base, slot, slots): (u64, u64, usize),
        cuts: &[u64],
    ) -> Plan {
        let mut slabs = Vec::new();
        pack::<()>(copies, gather, (base, slot, slots), cuts, |s| {
            slabs.push(Slab {
                slot: s.slot,
                kernel: s.device_side.to_vec(),
                dma: s.dma.to_vec(),
            });
            Ok(())
        })
        .unwrap();
        Plan { slabs }
    }

    fn plan(copies: &[DeviceCopy], gather: bool, base: u64, slot: u64, slots: usize) -> Plan {
        plan_cut(copies, gather, (base, slot, slots), &[])
    }

    /// Applies a plan to byte maps (address -> byte) of the device and host, in slab order:
    /// gather runs each slab's kernel copies then its DMAs, scatter the reverse.
    fn apply(plan: &Plan, gather: bool, mem: &mut std::collections::HashMap<u64, u8>) {
        let run = |mem: &mut std::collections::HashMap<u64, u8>, c: &DeviceCopy| {
            let bytes: Vec<u8> = (0..c.len).map(|i| mem[&(c.src + i)]).collect();
            for (i, b) in bytes.into_iter().enumerate() {
                mem.insert(c.dst + i as u64, b);
            }
        };
        for slab in &plan.slabs {
            let kernel = &slab.kernel;
            if gather {
                kernel.iter().for_each(|c| run(mem, c));
                slab.dma.iter().for_each(|c| run(mem, c));
            } else {
                slab.dma.iter().for_each(|c| run(mem, c));
                kernel.iter().for_each(|c| run(mem, c));
            }
        }
    }

    fn check(copies: &[DeviceCopy], gather: bool, slot: u64, slots: usize) -> Plan {
        let plan = plan(copies, gather, BASE, slot, slots);
        let mut mem = std::collections::HashMap::new();
        for c in copies {
            for i in 0..c.len {
                mem.insert(c.src + i, ((c.src + i) * 31 % 251) as u8);
            }
        }
        apply(&plan, gather, &mut mem);
        for c in copies {
            for i in 0..c.len {
                assert_eq!(
                    mem[&(c.dst + i)],
                    ((c.src + i) * 31 % 251) as u8,
                    "{c:?} byte {i}"
                );
            }
        }
        for (i, s) in plan.slabs.iter().enumerate() {
            assert_eq!(s.slot, i % slots);
            let bytes: u64 = s.kernel.iter().map(|c| c.len).sum();
            let dma: u64 = s.dma.iter().map(|c| c.len).sum();
            assert_eq!(bytes, dma);
            assert!(bytes <= slot);
            // Every staged byte lies in the slab's slot.
            let lo = BASE + s.slot as u64 * slot;
            for c in &s.dma {
                let staged = if gather { c.src } else { c.dst };
                assert!(staged >= lo && staged + c.len <= lo + slot);
            }
        }
        plan
    }

    fn copy(src: u64, dst: u64, len: u64) -> DeviceCopy {
        DeviceCopy { src, dst, len }
    }

    #[test]
    fn a_gather_into_a_contiguous_run_is_one_dma_per_slot() {
        // Eight 16-byte device chunks in a shuffled order into one host run; 32-byte slots.
        let order = [5u64, 2, 7, 0, 3, 6, 1, 4];
        let copies: Vec<DeviceCopy> = order
            .iter()
            .enumerate()
            .map(|(k, &b)| copy(1000 + b * 16, 50_000 + k as u64 * 16, 16))
            .collect();
        let plan = check(&copies, true, 32, 2);
        assert_eq!(plan.slabs.len(), 4);
        assert!(
            plan.slabs
                .iter()
                .all(|s| s.dma.len() == 1 && s.kernel.len() == 2)
        );
        assert_eq!(
            plan.slabs.iter().map(|s| s.slot).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
    }

    #[test]
    fn a_scatter_from_a_contiguous_run_and_copies_split_at_slot_ends() {
        // Three 24-byte chunks (not a divisor of the 32-byte slot) from one host run.
        let copies = [
            copy(90_000, 3000, 24),
            copy(90_024, 1000, 24),
            copy(90_048, 2000, 24),
        ];
        let plan = check(&copies, false, 32, 3);
        assert_eq!(plan.slabs.len(), 3); // 72 bytes: 32 + 32 + 8
        assert!(plan.slabs.iter().all(|s| s.dma.len() == 1));
        assert_eq!(plan.slabs.iter().map(|s| s.kernel.len()).sum::<usize>(), 5); // 24+8 | 16+16 | 8
    }

    #[test]
    fn an_onboard_listed_in_device_order_is_still_one_dma_per_slot() {
        // A contiguous host run whose chunks are listed in the order of their device
        // destinations (as a layer-separate onboard lists them), not of their host sources.
        let copies: Vec<DeviceCopy> = [3u64, 0, 2, 5, 1, 4, 7, 6]
            .iter()
            .enumerate()
            .map(|(i, &k)| copy(90_000 + k * 16, 5_000 + i as u64 * 100, 16))
            .collect();
        let plan = check(&copies, false, 64, 2);
        assert_eq!(plan.slabs.len(), 2); // 128 bytes in 64-byte slots
        assert!(
            plan.slabs.iter().all(|s| s.dma.len() == 1),
            "one DMA per slot, not one per chunk: {:?}",
            plan.slabs
        );
    }

    #[test]
    fn scattered_host_ranges_get_a_dma_each_and_random_lists_round_trip() {
        let copies = [
            copy(0, 10_000, 8),
            copy(100, 20_000, 8),
            copy(200, 10_016, 8),
        ];
        let plan = check(&copies, true, 64, 2);
        assert_eq!(plan.slabs.len(), 1);
        assert_eq!(
            plan.slabs[0].dma.len(),
            3,
            "non-adjacent host ranges stay apart"
        );
        let mut rng = fastrand::Rng::with_seed(12);
        for round in 0..50 {
            let n = rng.usize(1..40);
            let mut at = 0u64;
            let mut copies = Vec::new();
            for k in 0..n {
                let len = rng.u64(1..100);
                copies.push(copy(
                    at,
                    1_000_000 + (k as u64) * 1000 + rng.u64(0..2) * 7,
                    len,
                ));
                at += len + rng.u64(0..3);
            }
            let gather = round % 2 == 0;
            let copies: Vec<DeviceCopy> = if gather {
                copies
            } else {
                copies.iter().map(|c| copy(c.dst, c.src, c.len)).collect()
            };
            check(&copies, gather, rng.u64(1..130), rng.usize(1..5));
        }
    }

    #[test]
    fn host_order_places_tiled_chunks_and_sorts_the_rest() {
        let mut rng = fastrand::Rng::with_seed(7);
        let host = |c: &DeviceCopy| c.src;
        for round in 0..40 {
            let n = rng.usize(2..300);
            let len = [16u64, 48, 4096][round % 3];
            let mut order: Vec<u64> = (0..n as u64).collect();
            rng.shuffle(&mut order);
            let mut copies: Vec<DeviceCopy> = order
                .iter()
                .enumerate()
                .map(|(i, &k)| copy(5_000 + k * len, 1 << 30 | (i as u64) << 16, len))
                .collect();
            match round % 4 {
                // A source read twice: no tiling, sorted instead.
                1 => copies[n - 1].src = copies[0].src,
                // A hole in the host run.
                2 => copies[0].src += len * n as u64,
                // Lengths differ.
                3 => copies[0].len += 16,
                _ => {}
            }
            assert_eq!(
                tiled(&copies, &host).is_some(),
                round % 4 == 0,
                "round {round}"
            );
            let ordered = in_host_order(&copies, host);
            assert!(ordered.windows(2).all(|w| w[0].src <= w[1].src));
            let mut a = ordered.to_vec();
            let mut b = copies.clone();
            a.sort_unstable_by_key(|c| (c.src, c.dst));
            b.sort_unstable_by_key(|c| (c.src, c.dst));
            assert_eq!(a, b, "the same copies, reordered");
        }
    }

    #[test]
    fn the_descriptor_bound_holds_for_what_pack_and_split_make() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..30 {
            let n = rng.usize(1..60);
            let copies: Vec<DeviceCopy> = (0..n as u64)
                .map(|k| copy(k << 32, (1 << 50) + (k << 24), 16 * rng.u64(1..40_000)))
                .collect();
            let slot = 16 * rng.u64(1 << 10..1 << 16);
            let mut made = 0;
            pack::<()>(&copies, true, (BASE, slot, 3), &[], |s| {
                made += super::split_for_kernel(s.device_side, 132).len();
                Ok(())
            })
            .unwrap();
            assert!(made <= descriptor_bound(&copies, slot), "{made} > bound");
        }
    }

    #[test]
    fn a_ring_is_eight_slots_of_whole_mib() {
        assert_eq!(slot_bytes_for(DEFAULT_STAGING_BYTES), 32 << 20);
        assert_eq!(slot_bytes_for(64 << 20), 8 << 20);
        assert_eq!(slot_bytes_for(100 << 20), 12 << 20);
        assert_eq!(slot_bytes_for(0), 1 << 20);
    }

    #[test]
    fn auto_stages_transfers_whose_host_side_is_one_run() {
        let (dev, host) = (Location::Device(0), Location::Host);
        let mb = 1u64 << 20;
        // 32 chunks of 1 MiB, device side shuffled, host side one run.
        let copies: Vec<DeviceCopy> = (0..32u64)
            .map(|k| copy((1 << 40) + ((k * 7) % 32) * 3 * mb, (1 << 44) + k * mb, mb))
            .collect();
        let total = 32 * mb;
        assert!(suits(&copies, dev, host, total));
        let reversed: Vec<DeviceCopy> = copies.iter().map(|c| copy(c.dst, c.src, c.len)).collect();
        assert!(suits(&reversed, host, dev, total));
        // Device to device, or host on both sides: nothing to stage.
        assert!(!suits(&copies, dev, dev, total));
        assert!(!suits(&copies, host, host, total));
        // Too small, or a hole in the host run.
        assert!(!suits(&copies[..8], dev, host, 8 * mb));
        // Small copies: staged only from 256 MiB on.
        let chunks = |n: u64| -> Vec<DeviceCopy> {
            (0..n)
                .map(|k| {
                    copy(
                        (1 << 40) + ((k * 7) % n) * 32768,
                        (1 << 44) + k * 16384,
                        16384,
                    )
                })
                .collect()
        };
        assert!(!suits(&chunks(2048), dev, host, 32 * mb));
        assert!(suits(&chunks(16384), dev, host, 256 * mb));
        let mut holed = copies.clone();
        holed[5].dst += 64 * mb;
        assert!(!suits(&holed, dev, host, total));
    }

    #[test]
    fn host_ranges_are_never_joined_across_a_registration_cut() {
        // Eight 16-byte chunks of one host run, a registration boundary after the third; one
        // 128-byte slot: without the cut one DMA, with it two, split exactly there.
        let copies: Vec<DeviceCopy> = (0..8u64)
            .map(|k| copy(1000 + ((k * 3) % 8) * 64, 50_000 + k * 16, 16))
            .collect();
        let whole = plan_cut(&copies, true, (BASE, 128, 2), &[]);
        assert_eq!(whole.slabs[0].dma.len(), 1);
        let cut = plan_cut(&copies, true, (BASE, 128, 2), &[50_048]);
        let dma = &cut.slabs[0].dma;
        assert_eq!(dma.len(), 2, "{dma:?}");
        assert_eq!((dma[0].dst, dma[0].len, dma[1].dst), (50_000, 48, 50_048));
        // Scatter: the host side is the source.
        let back: Vec<DeviceCopy> = copies.iter().map(|c| copy(c.dst, c.src, c.len)).collect();
        let cut = plan_cut(&back, false, (BASE, 128, 2), &[50_048]);
        assert_eq!(cut.slabs[0].dma.len(), 2);
    }
}
