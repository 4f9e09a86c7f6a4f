//! CUDA storages on a real GPU: allocate, fill with random data, move through the device and
//! back, compare, free. Run on the GPU machine with `--ignored` (see `scripts/gpu-build.sh`).
//!
//! Tests whose names start with `error_` provoke driver errors on purpose; the harness runs them
//! under compute-sanitizer with API-error reporting off, and all others with it on.

use kvmem::Completion as _;
use kvmem::cuda::{self, CudaDevice};
use kvmem::error::{BoundsError, CudaError, MemoryError};
use kvmem::nixl::{MemType, NixlCompatible};
use kvmem::{
    BackgroundPinnedOptions, BackgroundPinnedStorage, Buffer, DevicePool, DeviceStorage, Error,
    ExternalDeviceMemory, ExternalPinnedMemory, HostMemory, MappedPinnedOptions,
    MappedPinnedStorage, MemoryDescriptor, OffsetBuffer, PageTier, PinnedStorage, StorageKind,
    SystemStorage,
};

const MIB: usize = 1 << 20;

fn gpu() -> CudaDevice {
    CudaDevice::new(0).expect("CUDA device 0 must be usable on the GPU machine")
}

/// Fills `region` with random bytes (a fresh seed each run, printed for reproduction).
fn randomize(region: &mut (impl HostMemory + ?Sized)) {
    let seed = fastrand::u64(..);
    println!("random seed {seed:#x} for {} bytes", region.size());
    let mut rng = fastrand::Rng::with_seed(seed);
    rng.fill(region.as_mut_slice());
}

fn random_host(len: usize) -> SystemStorage {
    let mut s = SystemStorage::new(len).unwrap();
    randomize(&mut s);
    s
}

/// Sets every byte to a value random data is most unlikely to match everywhere.
fn poison(region: &mut (impl HostMemory + ?Sized)) {
    region.memset(0xa5);
}

/// Reads device region `dev` back into poisoned host memory and asserts that it holds `want`.
fn assert_device_holds(dev: &(impl MemoryDescriptor + ?Sized), want: &[u8]) {
    let mut back = SystemStorage::new(dev.size()).unwrap();
    poison(&mut back);
    cuda::copy_device_to_host(dev, &mut back).unwrap();
    assert!(
        want == back.as_slice(),
        "data changed on the way through the device"
    );
}

/// Writes random data into device region `dev` and reads it back into poisoned host memory.
fn round_trip(dev: &(impl MemoryDescriptor + ?Sized)) {
    let src = random_host(dev.size());
    cuda::copy_host_to_device(&src, dev).unwrap();
    assert_device_holds(dev, src.as_slice());
}

/// Random data from pinned `host` to the device and back into a second, poisoned host region.
fn round_trip_from(host: &mut (impl HostMemory + ?Sized), back: &mut (impl HostMemory + ?Sized)) {
    let device = gpu();
    randomize(host);
    poison(back);
    let dev = DeviceStorage::new(&device, host.size()).unwrap();
    cuda::copy_host_to_device(host, &dev).unwrap();
    cuda::copy_device_to_host(&dev, back).unwrap();
    assert!(
        host.as_slice() == back.as_slice(),
        "data changed on the way through the device"
    );
}

/// Asserts what a pinned host storage fresh from its constructor shows: zeroed bytes, the pinned
/// kind, DRAM to NIXL, and a device address for it (`what` names the storage).
fn assert_fresh_pinned(
    device: &CudaDevice,
    host: &(impl HostMemory + NixlCompatible + ?Sized),
    what: &str,
) {
    assert!(
        host.as_slice().iter().all(|b| *b == 0),
        "{what} starts zeroed"
    );
    assert_eq!(host.storage_kind(), StorageKind::Pinned, "{what}");
    assert_eq!(host.nixl_params().2, MemType::Dram, "{what}");
    assert_ne!(
        cuda::mapped_device_pointer(device, host.addr()).unwrap(),
        0,
        "{what}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn device_info_describes_the_gpu() {
    let count = cuda::device_count().unwrap();
    assert!(count >= 1);
    let driver = cuda::load_driver().unwrap();
    assert!(driver.cuda_version >= (12, 0), "{driver:?}");
    let infos = cuda::devices().unwrap();
    assert_eq!(infos.len(), count);
    let info = &infos[0];
    println!("{info:?}, driver {driver:?}");
    assert_eq!(info.ordinal, 0);
    assert!(!info.name.is_empty());
    assert!(info.total_memory > 1 << 30);
    assert!(info.free_memory > 0 && info.free_memory <= info.total_memory);
    assert!(info.compute_capability.0 >= 7);
    assert!(info.multiprocessors > 0);
    // `dddd:bb:dd.f`, the form sysfs uses.
    let parts: Vec<&str> = info.pci_bus_id.split([':', '.']).collect();
    assert_eq!(parts.len(), 4, "{}", info.pci_bus_id);
    // The same device, opened twice, shares one primary context.
    let (a, b) = (gpu(), gpu());
    assert!(std::sync::Arc::ptr_eq(a.context(), b.context()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn device_storage_round_trips_and_copies_device_to_device() {
    let device = gpu();
    for size in [4096, 3 * MIB + 17, 64 * MIB] {
        let a = DeviceStorage::new(&device, size).unwrap();
        assert_eq!(a.storage_kind(), StorageKind::Device(0));
        assert_eq!(a.size(), size);
        let (ptr, len, mem, id) = a.nixl_params();
        assert_eq!(
            (ptr as usize, len, mem, id),
            (a.addr(), size, MemType::Vram, 0)
        );
        round_trip(&a);
        // Device to device: random data into `a`, copied to poisoned `b`, read back.
        let src = random_host(size);
        cuda::copy_host_to_device(&src, &a).unwrap();
        let b = DeviceStorage::new(&device, size).unwrap();
        let mut poisoned = SystemStorage::new(size).unwrap();
        poison(&mut poisoned);
        cuda::copy_host_to_device(&poisoned, &b).unwrap();
        cuda::copy_device_to_device(&a, &b).unwrap();
        assert_device_holds(&b, src.as_slice());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pinned_storage_round_trips() {
    let device = gpu();
    let size = 32 * MIB + 4096;
    let mut host = PinnedStorage::new(&device, size).unwrap();
    assert_fresh_pinned(&device, &host, "pinned storage");
    let mut back = PinnedStorage::new(&device, size).unwrap();
    round_trip_from(&mut host, &mut back);
    // Small allocations too start on a page (the driver's own alignment for them is less), so
    // pinned memory can take part in O_DIRECT I/O.
    for small in [512, 4096, 64 << 10, 1 << 20] {
        let p = PinnedStorage::new(&device, small).unwrap();
        assert_eq!(
            p.addr() % kvmem::PAGE_SIZE,
            0,
            "{small}-byte pinned storage at {:#x}",
            p.addr()
        );
        assert_eq!(p.size(), small);
        assert!(p.as_slice().iter().all(|b| *b == 0));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mapped_pinned_storage_round_trips_across_registration_chunks() {
    let device = gpu();
    // The GPU's NUMA node from sysfs, else from the driver; none on machines that have none.
    let node = device.numa_node().unwrap();
    let size = 24 * MIB + 4096;
    let options = MappedPinnedOptions {
        numa_node: node,
        threads: Some(4),
        registration_chunk: 4 * MIB,
        ..Default::default()
    };
    let mut host = MappedPinnedStorage::with_options(&device, size, &options).unwrap();
    let report = host.report().clone();
    println!("GPU NUMA node {node:?}; {report:?}");
    assert_eq!(report.registration_chunks, 7);
    let ranges = host.registered_ranges();
    assert_eq!(ranges.len(), 7);
    assert_eq!(ranges[0].start, host.addr());
    assert_eq!(ranges[6].end, host.end_addr().unwrap());
    assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    assert_eq!(report.touch_threads, 4);
    assert_eq!(report.numa_node, node);
    if let Some(node) = node {
        assert_eq!(
            numa_node_of(host.addr()),
            node as i32,
            "pages not on the GPU's node"
        );
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap();
    match host.report().tier {
        PageTier::Transparent { huge_bytes } => {
            assert!(!thp.contains("[never]"));
            assert!(huge_bytes > 0 && huge_bytes <= size);
        }
        PageTier::HugeTlb { page_size } => assert!(page_size >= 2 * MIB),
        PageTier::Base => {}
    }
    assert_fresh_pinned(&device, &host, "mapped pinned storage");
    // One copy spans all seven registrations.
    let mut back = MappedPinnedStorage::new(&device, size).unwrap();
    assert_eq!(back.report().registration_chunks, 1);
    round_trip_from(&mut host, &mut back);
}

/// The NUMA node the page at `addr` lives on (get_mempolicy with MPOL_F_NODE | MPOL_F_ADDR).
fn numa_node_of(addr: usize) -> i32 {
    // From <linux/mempolicy.h>.
    const MPOL_F_NODE: libc::c_ulong = 1;
    const MPOL_F_ADDR: libc::c_ulong = 2;
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy only writes `node`; `addr` is a mapped, touched page of the caller.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &raw mut node,
            std::ptr::null_mut::<libc::c_ulong>(),
            0usize,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    assert_eq!(rc, 0, "get_mempolicy: {}", std::io::Error::last_os_error());
    node
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn external_pinned_memory_round_trips_and_unregisters_on_drop() {
    let device = gpu();
    let size = 16 * MIB;
    let mut owner = SystemStorage::new(size).unwrap();
    let ptr = owner.as_mut_slice().as_mut_ptr();
    for _ in 0..2 {
        // Registering the same range a second time only works if the first drop unregistered.
        // SAFETY: `owner` outlives `pinned` and is not used while `pinned` exists.
        let mut pinned = unsafe { ExternalPinnedMemory::new(&device, ptr, size) }.unwrap();
        assert_eq!(pinned.storage_kind(), StorageKind::Pinned);
        assert_eq!(pinned.addr(), ptr as usize);
        assert_ne!(
            cuda::mapped_device_pointer(&device, pinned.addr()).unwrap(),
            0
        );
        let mut back = PinnedStorage::new(&device, size).unwrap();
        round_trip_from(&mut pinned, &mut back);
    }
    // The owner's memory holds what went through the device.
    assert!(owner.as_slice().iter().any(|b| *b != 0));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn external_device_memory_over_another_owners_allocation_round_trips() {
    use cuda::cudarc::driver::result;
    let device = gpu();
    let size = 8 * MIB + 12;
    device.bind().unwrap();
    // "Another owner": device memory kvmem did not allocate, straight from the driver.
    // SAFETY: a plain allocation, freed below after every use.
    let foreign = unsafe { result::malloc_sync(size) }.unwrap();
    {
        // SAFETY: `foreign` stays allocated until after `ext` is dropped.
        let ext =
            unsafe { ExternalDeviceMemory::new(foreign as usize as *const u8, size, 0) }.unwrap();
        assert_eq!(ext.storage_kind(), StorageKind::Device(0));
        round_trip(&ext);
        // And device to device into kvmem's own storage.
        let own = DeviceStorage::new(&device, size).unwrap();
        let src = random_host(size);
        cuda::copy_host_to_device(&src, &ext).unwrap();
        cuda::copy_device_to_device(&ext, &own).unwrap();
        assert_device_holds(&own, src.as_slice());
    }
    device.bind().unwrap();
    // SAFETY: allocated above; nothing refers to it any more.
    unsafe { result::free_sync(foreign) }.unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pool_reserve_survives_synchronize() {
    let device = gpu();
    let size = 256 * MIB;
    let warm = DevicePool::new(&device, 1 << 30).unwrap();
    let cold = DevicePool::new(&device, 0).unwrap();
    for pool in [&warm, &cold] {
        let a = pool.alloc(size).unwrap();
        assert!(pool.used_bytes().unwrap() >= size as u64);
        round_trip(&a);
        drop(a);
        pool.synchronize().unwrap();
        device.synchronize().unwrap();
        assert_eq!(pool.used_bytes().unwrap(), 0);
    }
    // The default-like threshold of 0 hands everything back at the synchronize...
    assert_eq!(
        cold.reserved_bytes().unwrap(),
        0,
        "threshold 0 should release the reserve"
    );
    // ...a threshold keeps it.
    let reserved = warm.reserved_bytes().unwrap();
    println!("reserved after synchronize: warm {reserved}, cold 0");
    assert!(
        reserved >= size as u64,
        "reserve released: {reserved} bytes left"
    );
    // Trimming gives it back on request.
    warm.trim_to(0).unwrap();
    assert_eq!(warm.reserved_bytes().unwrap(), 0);
    // `reserve` fills the pool ahead of use, and it stays filled across synchronizes.
    warm.reserve(size).unwrap();
    device.synchronize().unwrap();
    assert!(warm.reserved_bytes().unwrap() >= size as u64);
    assert_eq!(warm.release_threshold(), 1 << 30);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pool_allocations_are_distinct_and_round_trip() {
    let device = gpu();
    let pool = DevicePool::new(&device, u64::MAX).unwrap();
    let blocks: Vec<_> = (1..=4)
        .map(|i| pool.alloc(i * MIB + 100).unwrap())
        .collect();
    for (i, a) in blocks.iter().enumerate() {
        assert_eq!(a.storage_kind(), StorageKind::Device(0));
        assert_eq!(a.nixl_params().2, MemType::Vram);
        for b in &blocks[i + 1..] {
            let disjoint = a.end_addr().unwrap() <= b.addr() || b.end_addr().unwrap() <= a.addr();
            assert!(disjoint, "{a:?} overlaps {b:?}");
        }
        round_trip(a);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn storages_move_between_threads() {
    // Created on one thread, used on a second, dropped on a third: each binds the context
    // itself.
    let (dev, mut pinned) = std::thread::spawn(|| {
        let device = gpu();
        (
            DeviceStorage::new(&device, 4 * MIB).unwrap(),
            PinnedStorage::new(&device, 4 * MIB).unwrap(),
        )
    })
    .join()
    .unwrap();
    let (dev, pinned_back) = std::thread::spawn(move || {
        randomize(&mut pinned);
        cuda::copy_host_to_device(&pinned, &dev).unwrap();
        assert_device_holds(&dev, pinned.as_slice());
        (dev, pinned)
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        drop(dev);
        drop(pinned_back);
    })
    .join()
    .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn error_device_index_out_of_range() {
    let count = cuda::device_count().unwrap();
    for ordinal in [count, count + 5, usize::MAX] {
        match CudaDevice::new(ordinal) {
            Err(e @ Error::Cuda(CudaError::DeviceNotFound { .. })) => {
                let msg = e.to_string();
                assert!(msg.contains(&ordinal.to_string()) && msg.contains(&count.to_string()));
            }
            other => panic!("expected CudaDeviceNotFound, got {other:?}"),
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn error_device_out_of_memory_names_the_numbers() {
    let device = gpu();
    let total = device.memory_info().unwrap().total;
    let requested = total + (1 << 30);
    let check = |e: Error| match e {
        Error::Cuda(CudaError::OutOfMemory {
            device: 0,
            requested: r,
            free,
            total: t,
        }) => {
            assert_eq!((r, t), (requested, total));
            assert!(free > 0 && free <= total);
        }
        other => panic!("expected DeviceOutOfMemory, got {other:?}"),
    };
    check(DeviceStorage::new(&device, requested).unwrap_err());
    let free_before = device.memory_info().unwrap().free;
    let pool = DevicePool::new(&device, 0).unwrap();
    check(pool.alloc(requested).unwrap_err());
    // The failed attempt must not leave the device's memory held by the pool.
    assert_eq!(pool.reserved_bytes().unwrap(), 0);
    let free_after = device.memory_info().unwrap().free;
    assert!(
        free_after + 64 * MIB >= free_before,
        "free memory fell from {free_before} to {free_after} bytes"
    );
    // The device still works afterwards.
    round_trip(&DeviceStorage::new(&device, MIB).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn error_registering_pinned_memory_twice() {
    let device = gpu();
    let mut owner = SystemStorage::new(4 * MIB).unwrap();
    let ptr = owner.as_mut_slice().as_mut_ptr();
    // SAFETY: `owner` outlives both values and is not used meanwhile.
    let first = unsafe { ExternalPinnedMemory::new(&device, ptr, 4 * MIB) }.unwrap();
    // SAFETY: as above; this registration is expected to fail.
    let second = unsafe { ExternalPinnedMemory::new(&device, ptr, 4 * MIB) };
    match second {
        Err(Error::Cuda(CudaError::Driver { name, .. })) => {
            assert_eq!(name, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED")
        }
        other => panic!("expected a CUDA error, got {other:?}"),
    }
    drop(first);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn error_copies_check_the_device_range() {
    let device = gpu();
    let dev = DeviceStorage::new(&device, MIB).unwrap();
    let host = random_host(MIB);
    // Size mismatch.
    let small = random_host(MIB - 1);
    assert!(matches!(
        cuda::copy_host_to_device(&small, &dev),
        Err(Error::Bounds(BoundsError::SizeMismatch { src, dst, .. })) if src == MIB - 1 && dst == MIB
    ));
    // A range running past the end of the allocation.
    // SAFETY: only described; the copy must refuse before touching it.
    let past = unsafe { ExternalDeviceMemory::new(dev.addr() as *const u8, MIB + 1, 0) }.unwrap();
    assert!(matches!(
        cuda::copy_host_to_device(&random_host(MIB + 1), &past),
        Err(Error::Cuda(CudaError::NotDeviceMemory { .. }))
    ));
    // Pinned host memory claimed to be device memory.
    let pinned = PinnedStorage::new(&device, MIB).unwrap();
    // SAFETY: as above.
    let liar = unsafe { ExternalDeviceMemory::new(pinned.addr() as *const u8, MIB, 0) }.unwrap();
    assert!(matches!(
        cuda::copy_host_to_device(&host, &liar),
        Err(Error::Cuda(CudaError::NotDeviceMemory { .. }))
    ));
    // An address the driver has never seen.
    // SAFETY: as above.
    let bogus = unsafe { ExternalDeviceMemory::new(0x10 as *const u8, MIB, 0) }.unwrap();
    assert!(matches!(
        cuda::copy_host_to_device(&host, &bogus),
        Err(Error::Cuda(CudaError::NotDeviceMemory { .. }))
    ));
    // A device ordinal that does not exist.
    // SAFETY: as above.
    let elsewhere = unsafe { ExternalDeviceMemory::new(dev.addr() as *const u8, MIB, 99) }.unwrap();
    assert!(matches!(
        cuda::copy_host_to_device(&host, &elsewhere),
        Err(Error::Cuda(CudaError::DeviceNotFound { ordinal: 99, .. }))
    ));
}

#[test]
#[ignore = "needs a CUDA GPU and at least 32 free 2 MiB hugetlb pages (run.sh reserves them)"]
fn hugetlb_pages_are_used_when_reserved() {
    let device = gpu();
    let size = 48 * MIB;
    let mut host = MappedPinnedStorage::new(&device, size).unwrap();
    println!("{:?}", host.report());
    assert!(
        matches!(host.report().tier, PageTier::HugeTlb { page_size } if page_size >= 2 * MIB),
        "got {:?}",
        host.report().tier
    );
    let mut back = PinnedStorage::new(&device, size).unwrap();
    round_trip_from(&mut host, &mut back);
    // Without hugetlb, the same request takes the THP/base path.
    let plain = MappedPinnedStorage::with_options(
        &device,
        size,
        &MappedPinnedOptions {
            hugetlb: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!matches!(plain.report().tier, PageTier::HugeTlb { .. }));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn error_one_copy_cannot_span_two_registrations() {
    // Why the copy helpers split at registration boundaries: the driver refuses one copy that
    // crosses from one `cuMemHostRegister` range into the next. If a driver ever accepts it, this
    // test fails and the splitting can go.
    use cuda::cudarc::driver::result;
    let device = gpu();
    let options = MappedPinnedOptions {
        registration_chunk: MIB,
        ..Default::default()
    };
    let mut host = MappedPinnedStorage::with_options(&device, 2 * MIB, &options).unwrap();
    randomize(&mut host);
    let dev = DeviceStorage::new(&device, 2 * MIB).unwrap();
    device.bind().unwrap();
    // SAFETY: `dev` is a live 2 MiB device allocation; `host` is borrowed for the copy.
    let whole = unsafe { result::memcpy_htod_sync(dev.device_ptr(), host.as_slice()) };
    assert!(
        whole.is_err(),
        "the driver accepted a copy across two registrations"
    );
    // Split at the boundary, as the helpers do, it works.
    cuda::copy_host_to_device(&host, &dev).unwrap();
    assert_device_holds(&dev, host.as_slice());
}

/// The background-pinned pool: CPU writes while the threads page-lock it, the first chunk is
/// ready soon, and every byte survives the trip to the device and back once it is all pinned.
#[test]
#[ignore = "needs a CUDA GPU"]
fn background_pinned_storage_is_usable_at_once_and_round_trips() {
    let device = gpu();
    let size = 64 * MIB + 4096;
    let options = BackgroundPinnedOptions {
        chunk: 4 * MIB,
        threads: 2,
        memory: MappedPinnedOptions {
            numa_node: device.numa_node().unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut host = BackgroundPinnedStorage::with_options(&device, size, &options).unwrap();
    assert_eq!(host.storage_kind(), StorageKind::Pinned);
    let ranges = host.registered_ranges();
    assert_eq!(ranges[0].len(), 4 * MIB, "the chunk asked for");
    assert_eq!(ranges.len(), 17);
    assert_eq!(ranges[0].start, host.addr());
    assert_eq!(ranges[16].end, host.end_addr().unwrap());
    assert!(
        host.as_slice().iter().all(|b| *b == 0),
        "background-pinned storage starts zeroed"
    );
    // Written while (part of) it is still being page-locked: pinning must keep the bytes.
    randomize(&mut host);
    let expected = host.as_slice().to_vec();
    host.wait_range_pinned(0, 4096, std::time::Duration::from_secs(30))
        .unwrap();
    assert!(host.is_pinned(0, 4 * MIB).unwrap());
    host.wait_pinned(std::time::Duration::from_secs(60))
        .unwrap();
    let progress = host.progress();
    println!("{progress:?}");
    assert!(progress.fully_pinned.is_some());
    assert_eq!(progress.pinned_bytes, size);
    assert_eq!((progress.pinned_chunks, progress.chunks), (17, 17));
    assert!(progress.first_chunk.unwrap() <= progress.fully_pinned.unwrap());
    assert_eq!(progress.failure, None);
    assert!(
        host.as_slice() == expected.as_slice(),
        "pinning changed bytes"
    );
    let dev = DeviceStorage::new(&device, size).unwrap();
    cuda::copy_host_to_device(&host, &dev).unwrap();
    host.memset(0xa5);
    cuda::copy_device_to_host(&dev, &mut host).unwrap();
    assert!(
        host.as_slice() == expected.as_slice(),
        "round trip changed bytes"
    );
}

/// A transfer engine copy from and to a pool that is still being page-locked waits for the
/// chunks it uses (and only those), then moves every byte right.
#[test]
#[ignore = "needs a CUDA GPU"]
fn background_pinned_transfers_wait_for_their_chunks() {
    use kvmem::transfer::{EngineConfig, TransferEngine};
    let device = gpu();
    let engine = TransferEngine::new(EngineConfig::default()).unwrap();
    // One thread and small chunks: the end of 2 GiB is pinned a good while after the start.
    let size = 2048 * MIB;
    let options = BackgroundPinnedOptions {
        chunk: 2 * MIB,
        threads: 1,
        ..Default::default()
    };
    let pool = Buffer::new(BackgroundPinnedStorage::with_options(&device, size, &options).unwrap());
    let tail = OffsetBuffer::new(pool.clone(), size - 8 * MIB, 8 * MIB).unwrap();
    let dev = Buffer::new(DeviceStorage::new(&device, 8 * MIB).unwrap());
    let src = Buffer::new(random_host(8 * MIB));
    // Host -> device -> the pool's tail (waits for the tail's chunks) -> device -> host.
    engine.copy_region(&src, &dev).unwrap().wait().unwrap();
    let storage = pool.downcast_ref::<BackgroundPinnedStorage>().unwrap();
    println!(
        "tail pinned before the copy into it: {}; {:?}",
        storage.is_pinned(size - 8 * MIB, 8 * MIB).unwrap(),
        storage.progress()
    );
    engine
        .copy_region(&dev, &Buffer::new(tail.clone()))
        .unwrap()
        .wait()
        .unwrap();
    assert!(storage.is_pinned(size - 8 * MIB, 8 * MIB).unwrap());
    println!("after the first copy: {:?}", storage.progress());
    let back = Buffer::new(DeviceStorage::new(&device, 8 * MIB).unwrap());
    engine
        .copy_region(&Buffer::new(tail), &back)
        .unwrap()
        .wait()
        .unwrap();
    let mut out = SystemStorage::new(8 * MIB).unwrap();
    out.memset(0x5a);
    let out = Buffer::new(out);
    engine.copy_region(&back, &out).unwrap().wait().unwrap();
    let got = out.downcast_ref::<SystemStorage>().unwrap().as_slice();
    let want = src.downcast_ref::<SystemStorage>().unwrap().as_slice();
    assert!(
        got == want,
        "bytes through the background-pinned pool differ"
    );
    storage
        .wait_pinned(std::time::Duration::from_secs(120))
        .unwrap();
}

/// A wait that cannot be met in time fails with the typed error, naming the numbers.
#[test]
#[ignore = "needs a CUDA GPU"]
fn background_pinning_wait_times_out_with_a_typed_error() {
    let device = gpu();
    let size = 4096 * MIB;
    let options = BackgroundPinnedOptions {
        chunk: 2 * MIB,
        threads: 1,
        ..Default::default()
    };
    let pool = BackgroundPinnedStorage::with_options(&device, size, &options).unwrap();
    let e = pool
        .wait_range_pinned(size - 4096, 4096, std::time::Duration::from_millis(1))
        .unwrap_err();
    match e {
        Error::Memory(MemoryError::PinningTimeout { total, pinned, .. }) => {
            assert_eq!(total, size);
            assert!(pinned < size);
        }
        other => panic!("expected PinningTimeout, got {other}"),
    }
    assert!(matches!(
        pool.wait_range_pinned(size, 1, std::time::Duration::ZERO),
        Err(Error::Bounds(BoundsError::OutOfBounds { .. }))
    ));
    // Dropping it while it pins stops the threads and unregisters what they pinned.
    drop(pool);
}

/// The compute load's kernel runs and computes what the CPU computes, in every thread of a grid
/// that fills the device; its time grows with its iterations.
#[test]
#[ignore = "needs a CUDA GPU"]
fn compute_load_kernel_matches_the_cpu() {
    use kvmem::cuda::compute::ComputeLoad;
    let device = gpu();
    let load = ComputeLoad::new(&device).unwrap();
    let sms = device.info().unwrap().multiprocessors as usize;
    assert!(load.threads() >= sms * 1024, "{} threads", load.threads());
    for iterations in [0u32, 1, 1000, 100_003] {
        load.launch(iterations).unwrap();
        let out = load.outputs().unwrap();
        assert_eq!(out.len(), load.threads());
        // A thread's result depends on its index modulo 1024 alone: the CPU computes those 1024
        // once per count (every thread's own, at 100k iterations, took minutes on the H200).
        let wants: Vec<f32> = (0..1024)
            .map(|r| ComputeLoad::expected(r, iterations))
            .collect();
        for (i, v) in out.iter().enumerate() {
            let want = wants[i % 1024];
            assert_eq!(
                v.to_bits(),
                want.to_bits(),
                "thread {i}, {iterations} iterations"
            );
        }
    }
    let iterations = load.calibrate(std::time::Duration::from_millis(5)).unwrap();
    let one = load.time(iterations, 1).unwrap();
    let four = load.time(iterations, 4).unwrap();
    println!("{iterations} iterations: 1 launch {one:?}, 4 launches {four:?}");
    assert!(four > one * 2, "4 launches {four:?} vs 1 {one:?}");
    let end = load.record().unwrap();
    load.synchronize().unwrap();
    assert!(end.is_complete());
}
