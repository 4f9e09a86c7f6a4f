//! The spec (`shared/seed/external.rs`, one file of NVIDIA Dynamo's `dynamo-memory`) compiled
//! unmodified against kvmem: its `crate::` paths resolve to the re-exports below, and its own unit
//! test runs as part of this test binary.
//!
//! The spec is not part of this repository. The build script (crates/kvmem/build.rs) looks for it
//! in `$KVMEM_SPEC_DIR`, else in `shared/seed/` beside the checkout or a directory above it, and
//! sets `cfg(kvmem_spec)` when it finds it. Without it this binary holds one ignored test whose
//! reason says so, so that the run shows the spec was not checked rather than passing silently.

#[cfg(kvmem_spec)]
pub use kvmem::nixl;
#[cfg(kvmem_spec)]
pub use kvmem::{MemoryDescriptor, StorageKind};

// `#[path = "/absolute/path/external.rs"] mod external;`, written by the build script.
#[cfg(kvmem_spec)]
include!(concat!(env!("OUT_DIR"), "/spec_external_mod.rs"));

#[cfg(kvmem_spec)]
#[test]
fn spec_type_is_a_kvmem_storage() {
    // The foreign type plugs into kvmem's own machinery: views and type-erased buffers.
    // SAFETY: the address is only described, never dereferenced.
    let ext = unsafe { external::ExternalDeviceMemory::new(0x10000 as *const u8, 8192, 1) };
    let buffer = kvmem::Buffer::new(ext);
    let view = kvmem::OffsetBuffer::new(buffer.clone(), 4096, 4096).unwrap();
    assert_eq!(view.addr(), 0x10000 + 4096);
    assert_eq!(view.storage_kind(), StorageKind::Device(1));
    let back = buffer
        .downcast_ref::<external::ExternalDeviceMemory>()
        .unwrap();
    assert_eq!((back.as_ptr() as usize, back.device_id()), (0x10000, 1));
}

#[cfg(not(kvmem_spec))]
#[test]
#[ignore = "the spec file was not found, so it was NOT compiled against kvmem: set KVMEM_SPEC_DIR \
            to the directory holding external.rs (see crates/kvmem/build.rs)"]
fn spec_file_not_found() {
    panic!(
        "spec file not found: {}",
        include_str!(concat!(env!("OUT_DIR"), "/spec_missing.txt"))
    );
}
