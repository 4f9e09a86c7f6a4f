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
use super::{CopyStream, DeviceCopy, Location, split_for_kernel};
use crate::cuda::driver;
use crate::error::{Error, Result, UnsupportedError};
use cudarc::driver::{CudaEvent, CudaFunction, CudaStream, result};
use std::ops::Range;

/// Bytes per staging slot.
pub(super) const SLOT_BYTES: u64 = 8 << 20;
/// Staging slots per copy stream.
pub(super) const SLOTS: usize = 4;

/// One slot's worth of a staged transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Slab {
    /// The staging slot it uses.
    pub(super) slot: usize,
    /// Its copies in the kernel's descriptor list.
    pub(super) kernel: Range<usize>,
    /// Its DMA copies between the slot and the host (adjacent host ranges merged).
    pub(super) dma: Vec<DeviceCopy>,
}

/// A staged transfer: the kernel's copies (all slabs, in order) and the slabs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) kernel: Vec<DeviceCopy>,
    pub(super) slabs: Vec<Slab>,
}

/// Splits `copies` into slabs of `slot_bytes` staged in `slots` slots at `base` (slot `k` at
/// `base + k * slot_bytes`): for a gather, the kernel copies device sources into the slot and the
/// DMAs copy the slot to the host destinations; for a scatter, the DMAs copy host sources into
/// the slot and the kernel copies the slot to the device destinations. Copies are packed in
/// order of their host addresses, split where a slot fills; the kernel's copies are split further
/// by `split` (so they spread over thread blocks).
pub(super) fn plan(
    copies: &[DeviceCopy],
    gather: bool,
    base: u64,
    slot_bytes: u64,
    slots: usize,
    split: impl Fn(&[DeviceCopy]) -> Vec<DeviceCopy>,
) -> Plan {
    let slots = slots.max(1) as u64;
    let slot_bytes = slot_bytes.max(1);
    // Packed in the order of their host addresses, so that adjacent host ranges become one DMA
    // whatever order the list came in (an onboard's list follows the device side: one DMA per
    // chunk otherwise, about 1 µs of CPU each). Destinations never overlap, so the order of the
    // copies does not change the result.
    let host = |c: &DeviceCopy| if gather { c.dst } else { c.src };
    let by_host: Vec<DeviceCopy>;
    let copies = if copies.windows(2).all(|w| host(&w[0]) <= host(&w[1])) {
        copies
    } else {
        by_host = {
            let mut v = copies.to_vec();
            v.sort_unstable_by_key(host);
            v
        };
        &by_host
    };
    let mut kernel: Vec<DeviceCopy> = Vec::new();
    let mut slabs: Vec<Slab> = Vec::new();
    let mut device_side: Vec<DeviceCopy> = Vec::new();
    let mut dma: Vec<DeviceCopy> = Vec::new();
    let mut used = 0u64;
    let close = |kernel: &mut Vec<DeviceCopy>,
                 slabs: &mut Vec<Slab>,
                 device_side: &mut Vec<DeviceCopy>,
                 dma: &mut Vec<DeviceCopy>| {
        let start = kernel.len();
        kernel.extend(split(device_side));
        device_side.clear();
        slabs.push(Slab {
            slot: (slabs.len() as u64 % slots) as usize,
            kernel: start..kernel.len(),
            dma: std::mem::take(dma),
        });
    };
    for c in copies {
        let mut done = 0;
        while done < c.len {
            let n = (c.len - done).min(slot_bytes - used);
            let staged = base + (slabs.len() as u64 % slots) * slot_bytes + used;
            let (on_device, on_host) = if gather {
                (
                    DeviceCopy {
                        src: c.src + done,
                        dst: staged,
                        len: n,
                    },
                    DeviceCopy {
                        src: staged,
                        dst: c.dst + done,
                        len: n,
                    },
                )
            } else {
                (
                    DeviceCopy {
                        src: staged,
                        dst: c.dst + done,
                        len: n,
                    },
                    DeviceCopy {
                        src: c.src + done,
                        dst: staged,
                        len: n,
                    },
                )
            };
            device_side.push(on_device);
            match dma.last_mut() {
                Some(last)
                    if last.src + last.len == on_host.src && last.dst + last.len == on_host.dst =>
                {
                    last.len += n;
                }
                _ => dma.push(on_host),
            }
            used += n;
            done += n;
            if used == slot_bytes {
                close(&mut kernel, &mut slabs, &mut device_side, &mut dma);
                used = 0;
            }
        }
    }
    if used > 0 {
        close(&mut kernel, &mut slabs, &mut device_side, &mut dma);
    }
    Plan { kernel, slabs }
}

/// The device staging ring of a copy stream (`SLOTS * SLOT_BYTES` from `cuMemAlloc`, freed on
/// drop), with the stream its kernels run on.
pub(super) struct Ring {
    memory: u64,
    kernel_stream: std::sync::Arc<CudaStream>,
}

impl Ring {
    /// Allocates the ring and creates its kernel stream in `ctx` (bound by the caller).
    fn new(ctx: &std::sync::Arc<cudarc::driver::CudaContext>) -> Result<Self> {
        let kernel_stream = ctx
            .new_stream()
            .map_err(|e| driver::error("create the staging kernel's stream", e))?;
        // SAFETY: a plain allocation in the bound context, owned by the value built below and
        // freed in its Drop.
        let memory = unsafe { result::malloc_sync(SLOT_BYTES as usize * SLOTS) }
            .map_err(|e| driver::error("allocate the staging ring (cuMemAlloc)", e))?;
        Ok(Self {
            memory,
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
            *ring = Some(Ring::new(inner.device.context())?);
        }
        let Some(ring) = ring.as_ref() else {
            return Err(Error::Unsupported(UnsupportedError::Feature {
                what: "the staging ring could not be set up".into(),
            }));
        };
        let enqueued = self.enqueue_through(ring, kernel, copies, gather, descs);
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

    fn enqueue_through(
        &self,
        ring: &Ring,
        kernel: &CudaFunction,
        copies: &[DeviceCopy],
        gather: bool,
        descs: &mut Option<DescBuffers>,
    ) -> Result<()> {
        let inner = &self.inner;
        let sm_count = inner.sm_count;
        let plan = plan(copies, gather, ring.memory, SLOT_BYTES, SLOTS, |c| {
            split_for_kernel(c, sm_count).into_owned()
        });
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
        let d = self.take_descs(plan.kernel.len())?;
        // SAFETY: `d.host` is a pinned allocation of `capacity >= plan.kernel.len()` entries that
        // no in-flight work uses (it came from the free list or was just allocated).
        unsafe {
            std::ptr::copy_nonoverlapping(plan.kernel.as_ptr(), d.host, plan.kernel.len());
        }
        let (dev, host) = (d.dev, d.host);
        *descs = Some(d);
        // SAFETY: `host` holds the descriptors written just above and stays allocated and
        // untouched until the completion (which owns it now) has finished, which is after the
        // kernel stream's work (the copy stream waits for it below).
        let staged = unsafe { std::slice::from_raw_parts(host.cast_const(), plan.kernel.len()) };
        // SAFETY: the device buffer holds at least as many descriptors; the upload is ordered
        // before the launches on the kernel stream.
        unsafe { result::memcpy_htod_async(dev, staged, ks.cu_stream()) }
            .map_err(|e| driver::error("upload copy descriptors", e))?;
        let size = std::mem::size_of::<DeviceCopy>() as u64;
        // Per slot: the event after its last use by the other stream.
        let mut freed: Vec<Option<CudaEvent>> = (0..SLOTS).map(|_| None).collect();
        for slab in &plan.slabs {
            let launch = |stream: &CudaStream| -> Result<()> {
                if slab.kernel.is_empty() {
                    return Ok(());
                }
                // SAFETY: the slab's descriptors were uploaded on the kernel stream before
                // (the launch is on it, after the upload); they name device ranges of the
                // transfer (valid per `copy_async`'s contract) and a range of the slot, which
                // this transfer alone uses now (ring lock, and the events order its reuse).
                unsafe {
                    self.launch_copy_kernel(
                        kernel,
                        dev + slab.kernel.start as u64 * size,
                        slab.kernel.len(),
                        stream.cu_stream(),
                    )
                }
            };
            if gather {
                if let Some(e) = freed[slab.slot].take() {
                    wait(ks, &e)?;
                }
                launch(ks)?;
                wait(main, &event(ks)?)?;
                self.enqueue_dma(&slab.dma, gather)?;
                freed[slab.slot] = Some(event(main)?);
            } else {
                if let Some(e) = freed[slab.slot].take() {
                    wait(main, &e)?;
                }
                self.enqueue_dma(&slab.dma, gather)?;
                wait(ks, &event(main)?)?;
                launch(ks)?;
                freed[slab.slot] = Some(event(ks)?);
            }
        }
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

    fn no_split(c: &[DeviceCopy]) -> Vec<DeviceCopy> {
        c.to_vec()
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
            let kernel = &plan.kernel[slab.kernel.clone()];
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
        let plan = plan(copies, gather, BASE, slot, slots, no_split);
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
            let bytes: u64 = plan.kernel[s.kernel.clone()].iter().map(|c| c.len).sum();
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
        assert_eq!(plan.kernel.len(), 5); // 24+8 | 16+16 | 8
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
}
