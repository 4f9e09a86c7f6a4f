//! A compute load: an SM-saturating kernel on its own stream, standing in for an engine's
//! matmuls while copies are measured beside it (`kvmem bench --with-compute`).
//!
//! The kernel (`kernels/compute.cu`, shipped as PTX like the copy kernel) runs independent
//! chains of fused multiply-adds in every thread of a grid that fills every multiprocessor, and
//! writes one float per thread. [`ComputeLoad::expected`] recomputes a thread's value on the CPU,
//! so the kernel's work can be checked, not just timed.
//!
//! ```no_run
//! use kvmem::cuda::CudaDevice;
//! use kvmem::cuda::compute::ComputeLoad;
//!
//! let gpu = CudaDevice::new(0)?;
//! let load = ComputeLoad::new(&gpu)?;
//! let iterations = load.calibrate(std::time::Duration::from_millis(2))?;
//! let alone = load.time(iterations, 10)?;
//! println!("10 launches of {iterations} iterations: {alone:?}");
//! # Ok::<(), kvmem::Error>(())
//! ```

// This module launches a kernel with raw parameters: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::CudaDevice;
use super::driver::{self, DeferredErrors};
use crate::error::Result;
use cudarc::driver::{CudaEvent, CudaFunction, CudaStream, result};
use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The compute kernel, as PTX.
const COMPUTE_PTX: &str = include_str!("../../kernels/compute.ptx");
const KERNEL_NAME: &str = "kvmem_fma_load";
/// Threads per block, and blocks per multiprocessor: 2048 threads, a full SM on Hopper.
const THREADS: u32 = 256;
const BLOCKS_PER_SM: u32 = 8;
/// What `compute.cu` computes with.
const CHAINS: usize = 8;
const A: f32 = 0.999_999;
const B: f32 = 0.000_001;

/// The compute kernel on its own stream, with its output buffer.
pub struct ComputeLoad {
    device: CudaDevice,
    stream: Arc<CudaStream>,
    kernel: CudaFunction,
    /// One float per thread of the grid (`cuMemAlloc`), freed on drop.
    out: u64,
    grid: u32,
    /// Last field: logs what destroying the stream and unloading the module recorded.
    _deferred: DeferredErrors,
}

impl ComputeLoad {
    /// Loads the kernel and creates its stream and output buffer on `device`.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the PTX does not load (a driver
    /// older than the PTX's ISA version) or the stream or buffer cannot be created.
    pub fn new(device: &CudaDevice) -> Result<Self> {
        let ctx = device.context();
        let (stream, kernel) =
            super::stream_and_kernel(device, COMPUTE_PTX, KERNEL_NAME, "load the compute kernel")?;
        let kernel = kernel?;
        let sms = ctx
            .attribute(driver::DeviceAttribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| driver::error("query a device attribute", e))?;
        let grid = u32::try_from(sms.max(1)).unwrap_or(1) * BLOCKS_PER_SM;
        let bytes = (grid * THREADS) as usize * size_of::<f32>();
        // SAFETY: a plain allocation in the bound context, owned by the value built below and
        // freed in its Drop.
        let out = unsafe { result::malloc_sync(bytes) }
            .map_err(|e| driver::error("allocate the compute kernel's output", e))?;
        Ok(Self {
            device: device.clone(),
            stream,
            kernel,
            out,
            grid,
            _deferred: DeferredErrors::new(ctx.clone(), "release the compute load"),
        })
    }

    /// Threads in one launch (one output float each).
    pub fn threads(&self) -> usize {
        (self.grid * THREADS) as usize
    }

    /// Enqueues one launch of `iterations` FMA iterations per chain on the load's stream.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the launch is refused.
    pub fn launch(&self, iterations: u32) -> Result<()> {
        self.device.bind()?;
        let mut out = self.out;
        let mut iterations = iterations;
        let mut params = [
            (&mut out as *mut u64).cast::<c_void>(),
            (&mut iterations as *mut u32).cast::<c_void>(),
        ];
        // SAFETY: the kernel takes (float*, u32); `params` points at values of exactly those
        // types that outlive the call; `out` is a device allocation owned by `self` of one float
        // per thread of the grid (grid × THREADS), which is every index the kernel writes; it
        // stays allocated until `self` drops, which waits for the stream first (Drop).
        unsafe {
            result::launch_kernel(
                self.kernel.cu_function(),
                (self.grid, 1, 1),
                (THREADS, 1, 1),
                0,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| driver::error("launch the compute kernel", e))
    }

    /// An event recorded after the work enqueued so far: [`CudaEvent::is_complete`] says when
    /// the launches before it have finished.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if the event cannot be recorded.
    pub fn record(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(None)
            .map_err(|e| driver::error("record an event", e))
    }

    /// Waits for every launch so far.
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if a launch failed.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver::error("wait for the compute kernel", e))
    }

    /// The wall time of `launches` back-to-back launches of `iterations` each, from the first
    /// enqueue until the stream is idle.
    ///
    /// # Errors
    /// As for [`launch`](Self::launch).
    pub fn time(&self, iterations: u32, launches: usize) -> Result<Duration> {
        self.synchronize()?;
        let t = Instant::now();
        for _ in 0..launches {
            self.launch(iterations)?;
        }
        self.synchronize()?;
        Ok(t.elapsed())
    }

    /// Iterations for one launch to take about `target` on an otherwise idle device.
    ///
    /// # Errors
    /// As for [`launch`](Self::launch).
    pub fn calibrate(&self, target: Duration) -> Result<u32> {
        let mut iterations = 1024u32;
        self.time(iterations, 1)?; // first launch: module and clocks warm up
        loop {
            let took = self.time(iterations, 1)?;
            if took >= target / 4 || iterations >= u32::MAX / 2 {
                let scaled = iterations as f64 * target.as_secs_f64() / took.as_secs_f64();
                return Ok(scaled.clamp(1.0, f64::from(u32::MAX)) as u32);
            }
            iterations *= 2;
        }
    }

    /// The outputs of the last launch, once it has finished (waits for the stream).
    ///
    /// # Errors
    /// [`CudaError::Driver`](crate::error::CudaError::Driver) if a launch or the copy failed.
    pub fn outputs(&self) -> Result<Vec<f32>> {
        self.synchronize()?;
        self.device.bind()?;
        let mut host = vec![0f32; self.threads()];
        // SAFETY: `out` holds one float per thread, as many as `host`; the launches writing it
        // have finished (synchronized above).
        unsafe { result::memcpy_dtoh_sync(&mut host, self.out) }
            .map_err(|e| driver::error("read the compute kernel's output", e))?;
        Ok(host)
    }

    /// What thread `index` writes after a launch of `iterations`, computed on the CPU.
    pub fn expected(index: usize, iterations: u32) -> f32 {
        let mut x = [0f32; CHAINS];
        for (k, v) in x.iter_mut().enumerate() {
            *v = ((index % 1024) as f32).mul_add(1.0 / 1024.0, k as f32);
        }
        for _ in 0..iterations {
            for v in &mut x {
                *v = v.mul_add(A, B);
            }
        }
        x.iter().fold(0.0f32, |sum, v| sum + v)
    }
}

impl Drop for ComputeLoad {
    fn drop(&mut self) {
        if self.device.bind().is_err() {
            tracing::warn!("cannot bind the context to free the compute load; leaking its output");
            return;
        }
        // No launch may still write the output when it is freed.
        match self.stream.synchronize() {
            // SAFETY: `out` came from `malloc_sync` in `new` and is freed once, here, with
            // every launch that wrote it finished.
            Ok(()) => driver::log_failure("free the compute kernel's output", unsafe {
                result::free_sync(self.out)
            }),
            Err(e) => driver::log_failure("wait for the compute kernel (output leaked)", Err(e)),
        }
    }
}

impl std::fmt::Debug for ComputeLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeLoad")
            .field("device", &self.device.ordinal())
            .field("grid", &self.grid)
            .field("threads_per_block", &THREADS)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_reference_follows_the_fma_chains() {
        // No iterations: the seeds' sum, 8 * (index % 1024) / 1024 + (0 + 1 + ... + 7).
        assert_eq!(ComputeLoad::expected(0, 0), 28.0);
        assert_eq!(ComputeLoad::expected(1024 + 512, 0), 28.0 + 4.0);
        // x -> x * A + B heads for B / (1 - A) = 1 (f32 rounding stops it a little off):
        // eight chains stay bounded, near 8, however long the kernel runs.
        let far = ComputeLoad::expected(3, 5_000_000);
        assert!((7.5..9.0).contains(&far), "{far}");
        let one = ComputeLoad::expected(0, 1);
        assert_eq!(
            one,
            (0..8).fold(0.0f32, |s, k| s + (k as f32).mul_add(A, B))
        );
    }
}
