//! Registering memory with a NIXL agent, so that the registration can never outlive the memory.
//!
//! [`register`] takes ownership of a storage and returns a [`Registered`] value that owns both the
//! storage and its NIXL registration. Dropping it deregisters first and frees the memory second:
//! the registration is a field declared before the storage, and Rust drops fields in declaration
//! order. On failure the storage comes back to the caller in [`RegisterError`], together with the
//! cause.
//!
//! Every storage kind works: host and pinned memory, device memory, files ([`DiskStorage`]
//! registers `(offset 0, length, fd)` with NIXL's file backends), type-erased [`Buffer`]s and
//! views ([`OffsetBuffer`] registers just its range), and foreign types such as a framework's
//! `ExternalDeviceMemory` through [`Storage`].
//!
//! A region larger than the agent's `registration_chunk` (64 GiB by default) is registered as
//! several consecutive registrations; transfers split blocks that cross a chunk boundary
//! on their own. Registering a range that overlaps one the agent already registered is refused
//! with [`NixlError::AlreadyRegistered`].
//!
//! [`DiskStorage`]: crate::DiskStorage
//! [`OffsetBuffer`]: crate::OffsetBuffer
//! [`Buffer`]: crate::Buffer

// This module hands raw memory regions to NIXL: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use super::agent::{Agent, lock};
use crate::descriptor::Storage;
use crate::error::{BoundsError, Error, NixlError, Result};
use crate::host::HostMemory;
use crate::region::{AddressSpace, MemType, NixlDescriptor};
use std::fmt;

impl Agent {
    /// Registers `storage` with this agent's backends and returns it wrapped in a [`Registered`]
    /// that deregisters before the memory is freed.
    ///
    /// ```no_run
    /// use kvmem::nixl::{Agent, AgentConfig};
    /// use kvmem::{Buffer, SystemStorage};
    /// let agent = Agent::new(AgentConfig::new("a"))?;
    /// let registered = agent.register(SystemStorage::new(1 << 20)?)?; // `?` drops the storage on error
    /// let shared = Buffer::new(registered); // a registered, shareable region for transfers
    /// # Ok::<(), kvmem::Error>(())
    /// ```
    ///
    /// # Errors
    /// The storage is handed back in [`RegisterError`] with: [`BoundsError::ZeroSize`] for an empty
    /// region; [`BoundsError::Overflow`] for a range that wraps the address space;
    /// [`NixlError::AlreadyRegistered`] when it overlaps memory this agent registered;
    /// [`NixlError::Call`] when NIXL refuses (for example when no running backend supports the
    /// memory type).
    pub fn register<S: Storage>(
        &self,
        storage: S,
    ) -> std::result::Result<Registered<S>, RegisterError<S>> {
        // Boxed first so that the address NIXL registers stays put when the value moves.
        let storage = Box::new(storage);
        match self.register_boxed(&*storage) {
            Ok(registration) => Ok(Registered {
                registration,
                storage,
            }),
            Err(error) => Err(RegisterError {
                storage: *storage,
                error,
            }),
        }
    }

    fn register_boxed<S: Storage>(&self, storage: &S) -> Result<Registration> {
        let region = storage.nixl_region();
        let (len, mem_type, device_id) = (region.size, region.mem_type, region.device_id);
        if len == 0 {
            return Err(Error::Bounds(BoundsError::ZeroSize {
                what: "memory to register",
            }));
        }
        let start = region.addr;
        let len64 = u64::try_from(len).map_err(|_| {
            Error::Bounds(BoundsError::Overflow {
                what: "registration length",
            })
        })?;
        start
            .checked_add(len64)
            .ok_or(Error::Bounds(BoundsError::Overflow {
                what: "registered range",
            }))?;
        let chunk = self.shared.config.registration_chunk;
        let space = region.space();

        // The registry lock is held across the NIXL calls so that two overlapping registrations
        // cannot both pass the check.
        let mut registry = lock(&self.shared.registry);
        let id = registry.reserve(space, start, len64, chunk).map_err(
            |(existing_addr, existing_len)| {
                Error::Nixl(NixlError::AlreadyRegistered {
                    agent: self.shared.name.clone(),
                    mem_type,
                    device_id,
                    addr: start,
                    len,
                    existing_addr,
                    existing_len: usize::try_from(existing_len).unwrap_or(usize::MAX),
                })
            },
        )?;
        let mut handles = Vec::new();
        let mut offset = 0u64;
        while offset < len64 {
            let piece = (len64 - offset).min(chunk);
            // In range: `piece` is at most `len`, a usize.
            let desc = NixlDescriptor::new(space, start + offset, piece as usize);
            match self.nixl().register_memory(&desc, None) {
                Ok(h) => handles.push(h),
                Err(source) => {
                    // Undo what was done: deregister the chunks that did register.
                    drop(handles);
                    registry.release(space, start, id);
                    // The nixl-cu12 wheel's UCX installs its CUDA memory hooks from a module that
                    // needs libcudart.so.12; without them its memory-type cache takes GPU memory
                    // for host memory and the UCX backend refuses it.
                    let memtype_cache_on = !matches!(
                        std::env::var("UCX_MEMTYPE_CACHE").as_deref(),
                        Ok("n" | "no" | "0" | "off")
                    );
                    let op = if mem_type == MemType::Vram && memtype_cache_on {
                        "register GPU memory (does a running backend support VRAM? With UCX from \
                         the nixl-cu12 wheel on a machine without libcudart.so.12, UCX takes GPU \
                         memory for host memory: set UCX_MEMTYPE_CACHE=n)"
                    } else {
                        "register memory (does a running backend support this memory type?)"
                    };
                    return Err(Error::nixl(op, source));
                }
            }
            offset += piece;
        }
        drop(registry);
        tracing::debug!(agent = %self.shared.name, addr = %format_args!("{start:#x}"), len, ?mem_type, device_id, chunks = handles.len(), "registered");
        crate::accounting::registered(&self.shared.name, len as u64);
        Ok(Registration {
            handles,
            agent: self.clone(),
            space,
            start,
            id,
            descriptor: region,
        })
    }

    /// True when this agent has `len` bytes at `addr` of this memory type and device registered
    /// (inside one registration).
    #[cfg(test)] // the unit tests ask; transfers find registrations through `covering`
    pub(crate) fn is_registered(
        &self,
        mem_type: MemType,
        device_id: u64,
        addr: u64,
        len: usize,
    ) -> bool {
        lock(&self.shared.registry)
            .covering(AddressSpace::new(mem_type, device_id), addr, len as u64)
            .is_some()
    }
}

/// A storage registered with a NIXL agent: owns the storage and its registration, and drops the
/// registration first.
///
/// It is itself a [`Storage`]: wrap it in a [`Buffer`](crate::Buffer) to share it with transfers,
/// or take [`OffsetBuffer`](crate::OffsetBuffer) views of that buffer; both report
/// [`nixl_descriptor`](MemoryDescriptor::nixl_descriptor) `= Some(..)`.
pub struct Registered<S: Storage> {
    // Declared before `storage`: fields drop in declaration order, so the registration is always
    // gone before the memory it covers is freed.
    registration: Registration,
    storage: Box<S>,
}

impl<S: Storage> Registered<S> {
    /// The registered storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The agent the storage is registered with.
    pub fn agent(&self) -> &Agent {
        &self.registration.agent
    }

    /// How many NIXL registrations cover the region (more than one when it is larger than the
    /// agent's `registration_chunk`).
    pub fn chunks(&self) -> usize {
        self.registration.handles.len()
    }

    /// Deregisters and gives the storage back.
    pub fn deregister(self) -> S {
        let Registered {
            registration,
            storage,
        } = self;
        drop(registration);
        *storage
    }
}

impl<S: Storage> fmt::Debug for Registered<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("agent", &self.registration.agent.name())
            .field("descriptor", &self.registration.descriptor)
            .field("chunks", &self.registration.handles.len())
            .field("storage", &self.storage)
            .finish()
    }
}

crate::forward_memory_descriptor!(
    impl[S: Storage] Registered<S> => storage,
    as_any: self,
    nixl_descriptor: |r: &Self| Some(r.registration.descriptor),
);

impl<S: Storage + HostMemory> HostMemory for Registered<S> {
    fn as_slice(&self) -> &[u8] {
        self.storage.as_slice()
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.storage.as_mut_slice()
    }
    fn page_locked_ranges(&self) -> Option<Vec<std::ops::Range<usize>>> {
        self.storage.page_locked_ranges()
    }
}

/// A failed registration: the storage, given back, and why.
///
/// Converts into [`Error`] (dropping the storage), so `?` works in functions returning
/// [`kvmem::Result`](crate::Result).
pub struct RegisterError<S> {
    /// The storage that was to be registered, untouched.
    pub storage: S,
    /// Why it was not registered.
    pub error: Error,
}

impl<S> fmt::Debug for RegisterError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Display for RegisterError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registration failed: {}", self.error)
    }
}

impl<S> std::error::Error for RegisterError<S> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<S> From<RegisterError<S>> for Error {
    fn from(e: RegisterError<S>) -> Self {
        e.error
    }
}

/// The NIXL side of a [`Registered`]: its registration handles, deregistered on drop.
struct Registration {
    handles: Vec<nixl_sys::RegistrationHandle>,
    agent: Agent,
    space: AddressSpace,
    start: u64,
    id: u64,
    descriptor: NixlDescriptor,
}

impl Drop for Registration {
    fn drop(&mut self) {
        for mut handle in self.handles.drain(..) {
            if let Err(e) = handle.deregister() {
                tracing::warn!(agent = %self.agent.name(), error = %e, "NIXL deregistration failed");
            }
        }
        // Only now may another registration of this range pass the overlap check.
        lock(&self.agent.shared.registry).release(self.space, self.start, self.id);
        crate::accounting::deregistered(self.agent.name(), self.descriptor.size as u64);
        tracing::debug!(agent = %self.agent.name(), addr = %format_args!("{:#x}", self.start), "deregistered");
    }
}

// One NIXL registration (a chunk of a registered region) is named by its descriptor.
impl nixl_sys::MemoryRegion for NixlDescriptor {
    unsafe fn as_ptr(&self) -> *const u8 {
        // An address only, never dereferenced here: NIXL's registration reads it as a number.
        std::ptr::without_provenance(self.addr as usize)
    }
    fn size(&self) -> usize {
        self.size
    }
}

impl nixl_sys::NixlDescriptor for NixlDescriptor {
    fn mem_type(&self) -> MemType {
        self.mem_type
    }
    fn device_id(&self) -> u64 {
        self.device_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nixl::AgentConfig;
    use crate::{Buffer, HostMemory, MemoryDescriptor, OffsetBuffer, SystemStorage};
    use std::sync::{Arc, Mutex};

    /// A storage that, when it frees its memory, records whether NIXL still had it registered.
    #[derive(Debug)]
    struct Probe {
        inner: SystemStorage,
        agent: Agent,
        log: Arc<Mutex<Vec<String>>>,
    }

    crate::forward_memory_descriptor!(
        Probe => inner,
        as_any: self,
        nixl_descriptor: |_| None,
    );

    impl Drop for Probe {
        fn drop(&mut self) {
            let (addr, len) = (self.inner.addr(), self.inner.size());
            // kvmem's record and NIXL's own view: preparing a local list over the range only
            // succeeds while NIXL has it registered.
            let ours = self.agent.is_registered(MemType::Dram, 0, addr as u64, len);
            let mut list = nixl_sys::XferDescList::new(MemType::Dram).unwrap();
            list.add_desc(addr, len, 0);
            let nixls = self
                .agent
                .nixl()
                .prepare_xfer_dlist("", &list, None)
                .is_ok();
            self.log.lock().unwrap().push(format!(
                "memory freed (kvmem registered: {ours}, NIXL registered: {nixls})"
            ));
        }
    }

    #[test]
    fn registration_is_dropped_before_the_memory() {
        let agent = Agent::new(AgentConfig {
            backends: vec!["POSIX".into(), "UCX".into()],
            ..AgentConfig::new("reg-order")
        })
        .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            inner: SystemStorage::new(1 << 16).unwrap(),
            agent: agent.clone(),
            log: log.clone(),
        };
        let (addr, len) = (probe.addr(), probe.size());
        let reg = agent.register(probe).unwrap();
        // While registered, both views agree that it is.
        assert!(agent.is_registered(MemType::Dram, 0, addr as u64, len));
        let mut list = nixl_sys::XferDescList::new(MemType::Dram).unwrap();
        list.add_desc(addr, len, 0);
        assert!(agent.nixl().prepare_xfer_dlist("", &list, None).is_ok());
        drop(reg);
        assert_eq!(
            log.lock().unwrap().as_slice(),
            ["memory freed (kvmem registered: false, NIXL registered: false)"]
        );
        // Also through a shared Buffer: the last clone frees it in the same order.
        let probe = Probe {
            inner: SystemStorage::new(1 << 16).unwrap(),
            agent: agent.clone(),
            log: log.clone(),
        };
        let buffer = Buffer::new(agent.register(probe).unwrap());
        let view = OffsetBuffer::new(buffer.clone(), 4096, 4096).unwrap();
        drop(buffer);
        assert_eq!(
            log.lock().unwrap().len(),
            1,
            "a view keeps the region alive"
        );
        drop(view);
        assert_eq!(
            log.lock().unwrap()[1],
            "memory freed (kvmem registered: false, NIXL registered: false)"
        );
    }

    #[test]
    fn registered_region_reports_its_descriptor_and_bytes() {
        let agent = Agent::new(AgentConfig::new("reg-desc")).unwrap();
        let mut s = SystemStorage::new(8192).unwrap();
        s.memset(7);
        let addr = s.addr();
        let mut reg = agent.register(s).unwrap();
        let d = reg.nixl_descriptor().unwrap();
        assert_eq!(
            (d.addr, d.size, d.mem_type, d.device_id),
            (addr as u64, 8192, MemType::Dram, 0)
        );
        reg.as_mut_slice()[0] = 9;
        assert_eq!(&reg.as_slice()[..2], &[9, 7]);
        assert_eq!(reg.chunks(), 1);
        let back = reg.deregister();
        assert!(!agent.is_registered(MemType::Dram, 0, addr as u64, 8192));
        assert_eq!(back.as_slice()[0], 9);
    }
}
