//! NIXL errors, with kvmem's own copy of the status a NIXL call returns.

use crate::region::MemType;

/// The status a failed NIXL call returned (kvmem's own copy, so that the error does not expose
/// the bindings' types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NixlStatus {
    /// NIXL refused a parameter.
    #[error("NIXL refused a parameter")]
    InvalidParam,
    /// A NIXL backend reported an error.
    #[error("a NIXL backend reported an error")]
    Backend,
    /// A name passed to NIXL contains a NUL byte.
    #[error("a name passed to NIXL contains a NUL byte")]
    InvalidString,
    /// An index passed to NIXL is out of range.
    #[error("an index passed to NIXL is out of range")]
    IndexOutOfBounds,
    /// NIXL was given or returned an invalid pointer.
    #[error("NIXL was given or returned an invalid pointer")]
    InvalidDataPointer,
    /// NIXL could not create a transfer request.
    #[error("NIXL could not create a transfer request")]
    CreateRequest,
    /// NIXL could not create a registration list.
    #[error("NIXL could not create a registration descriptor list")]
    CreateRegistrationList,
    /// NIXL could not add a registration descriptor.
    #[error("NIXL could not add a registration descriptor")]
    AddRegistration,
    /// NIXL could not prepare a descriptor list.
    #[error("NIXL could not prepare a descriptor list")]
    PrepareList,
    /// NIXL could not create a backend.
    #[error("NIXL could not create a backend")]
    CreateBackend,
    /// NIXL has no telemetry for a request.
    #[error("NIXL has no telemetry for this request (telemetry off, or the request not done)")]
    NoTelemetry,
    /// NIXL does not know the object named (a peer, a request, a backend).
    #[error("NIXL does not know the object named")]
    NotFound,
}

impl NixlStatus {
    /// kvmem's status for an error of the NIXL bindings.
    pub(crate) fn of(e: &nixl_sys::NixlError) -> Self {
        use nixl_sys::NixlError as E;
        match e {
            E::InvalidParam => Self::InvalidParam,
            E::BackendError => Self::Backend,
            E::StringConversionError(_) => Self::InvalidString,
            E::IndexOutOfBounds => Self::IndexOutOfBounds,
            E::InvalidDataPointer => Self::InvalidDataPointer,
            E::FailedToCreateXferRequest => Self::CreateRequest,
            E::RegDescListCreationFailed => Self::CreateRegistrationList,
            E::RegDescAddFailed => Self::AddRegistration,
            E::FailedToCreateXferDlistHandle => Self::PrepareList,
            E::FailedToCreateBackend => Self::CreateBackend,
            E::NoTelemetry => Self::NoTelemetry,
            E::NotFound => Self::NotFound,
        }
    }
}

/// The NIXL runtime is missing, a NIXL call failed, or memory is (not) registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixlError {
    /// The NIXL runtime library cannot be loaded.
    #[error(
        "the NIXL runtime (libnixl_capi.so) is not available ({searched}); install NIXL (for \
         example the nixl-cu12 or nixl-cu13 Python package) and point KVMEM_NIXL_LIB_DIR at the \
         directory holding libnixl_capi.so"
    )]
    Unavailable {
        /// Where kvmem looked and what failed.
        searched: String,
    },

    /// A NIXL call failed.
    #[error("NIXL failed to {op}: {source}")]
    Call {
        /// The operation.
        op: &'static str,
        /// NIXL's status.
        #[source]
        source: NixlStatus,
    },

    /// A configured NIXL backend has no plugin on this machine.
    #[error(
        "NIXL backend '{backend}' is not installed (installed plugins: {installed}); check the \
         spelling or install the plugin into NIXL's plugin directory"
    )]
    UnknownBackend {
        /// The backend that was asked for.
        backend: String,
        /// The plugins NIXL can load here, comma-separated.
        installed: String,
    },

    /// An agent does not run a backend an operation needs.
    #[error(
        "agent '{agent}' has no running '{backend}' backend (running: {running}{failed}); add it \
         to the agent's backends (config `backends`, or KVMEM_NIXL_BACKENDS)"
    )]
    BackendUnavailable {
        /// The agent's name.
        agent: String,
        /// The backend that was asked for.
        backend: String,
        /// The backends that did start, comma-separated.
        running: String,
        /// Backends that were configured but failed to start, with their errors.
        failed: String,
    },

    /// A range overlaps memory the agent already registered.
    #[error(
        "{mem_type:?} range {addr:#x}+{len} (device {device_id}) overlaps {existing_addr:#x}+\
         {existing_len}, which agent '{agent}' already registered; register each range once and \
         share the registered value (for example through a Buffer)"
    )]
    AlreadyRegistered {
        /// The agent's name.
        agent: String,
        /// NIXL memory type of the range.
        mem_type: MemType,
        /// Device id (CUDA ordinal, file descriptor, or 0).
        device_id: u64,
        /// Start of the refused range.
        addr: u64,
        /// Length of the refused range.
        len: usize,
        /// Start of the registration it overlaps.
        existing_addr: u64,
        /// Length of the registration it overlaps.
        existing_len: usize,
    },

    /// Memory given to a transfer is not registered with NIXL.
    #[error(
        "{what} is not registered with a NIXL agent; register it (`Agent::register`) and \
         use the registered value, or a view of it, in transfers"
    )]
    NotRegistered {
        /// What was not registered.
        what: String,
    },
}
