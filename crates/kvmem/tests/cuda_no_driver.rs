//! Every CUDA entry point answers with an error, never a crash, where the driver is missing.
//!
//! The tests ask the dynamic loader themselves whether `libcuda` is there, and check kvmem's
//! answer against that: without it (CI), every entry point must return
//! `CudaError::Unavailable`; with it (the GPU machine), the same entry points must work or fail
//! with a different, typed error. Either way, each branch asserts.

use kvmem::cuda::{self, CudaDevice};
use kvmem::error::{CudaError, UnsupportedError};
use kvmem::{Error, ExternalDeviceMemory, HostMemory, MemoryDescriptor, SystemStorage};

/// Whether the dynamic loader can find the CUDA driver library at all.
fn libcuda_loadable() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the driver library runs its initialisers only; nothing is called.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: kvmem::Result<T>) {
    match result {
        Err(e @ Error::Cuda(CudaError::Unavailable { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("libcuda"),
                "{what}: message should name libcuda: {msg}"
            );
            assert!(
                msg.contains("nvidia-smi"),
                "{what}: message should say what to do: {msg}"
            );
        }
        other => panic!("{what}: expected CudaUnavailable, got {other:?}"),
    }
}

#[test]
fn every_entry_point_reports_a_missing_driver() {
    let fake_device = {
        // SAFETY: only described, never dereferenced (the copy must fail before any use).
        unsafe { ExternalDeviceMemory::new(0x7000_0000 as *const u8, 4096, 0) }.unwrap()
    };
    let mut host = SystemStorage::new(4096).unwrap();
    host.memset(3);

    if !libcuda_loadable() {
        assert_unavailable("load_driver", cuda::load_driver());
        assert_unavailable("device_count", cuda::device_count());
        assert_unavailable("devices", cuda::devices());
        assert_unavailable("CudaDevice::new", CudaDevice::new(0));
        assert_unavailable("CudaDevice::new(7)", CudaDevice::new(7));
        assert_unavailable(
            "copy_host_to_device",
            cuda::copy_host_to_device(&host, &fake_device),
        );
        assert_unavailable(
            "copy_device_to_host",
            cuda::copy_device_to_host(&fake_device, &mut host),
        );
        assert_unavailable(
            "copy_device_to_device",
            cuda::copy_device_to_device(&fake_device, &fake_device),
        );
        // Asking again gives the same answer (cached), still no panic.
        assert_unavailable("CudaDevice::new again", CudaDevice::new(0));
        // Every storage constructor takes a `&CudaDevice`, which cannot exist without a driver.
    } else {
        match cuda::device_count() {
            Ok(n) => {
                assert!(cuda::load_driver().unwrap().cuda_version.0 >= 12);
                assert!(matches!(
                    CudaDevice::new(n),
                    Err(Error::Cuda(CudaError::DeviceNotFound { ordinal, count })) if ordinal == n && count == n
                ));
            }
            // A driver library without a usable GPU (a container without the device, say).
            Err(e) => assert!(
                matches!(e, Error::Cuda(CudaError::Unavailable { .. })),
                "{e:?}"
            ),
        }
    }
    // Copies check the kind of memory before touching the driver.
    assert!(matches!(
        cuda::copy_host_to_device(&host, &host),
        Err(Error::Unsupported(
            UnsupportedError::WrongStorageKind { .. }
        ))
    ));
    assert_eq!(host.size(), 4096);
}
