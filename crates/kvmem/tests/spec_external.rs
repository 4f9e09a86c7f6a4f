//! The spec (`shared/seed/external.rs`, one file of NVIDIA Dynamo's `dynamo-memory`) compiled
//! unmodified against kvmem: its `crate::` paths resolve to the re-exports below, and its own unit
//! test runs as part of this test binary.

pub use kvmem::nixl;
pub use kvmem::{MemoryDescriptor, StorageKind};

#[path = "../../../../shared/seed/external.rs"]
mod external;

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
