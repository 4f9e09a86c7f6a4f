//! Unit tests of the error types.

use super::*;

/// Library messages say what to do without naming files of kvmem's own repository.
#[test]
fn messages_name_no_repository_files() {
    let errors: Vec<Error> = vec![
        NixlError::Unavailable {
            searched: "KVMEM_NIXL_LIB_DIR unset".into(),
        }
        .into(),
        CudaError::Unavailable {
            reason: "no libcuda.so.1".into(),
        }
        .into(),
        Error::spawn("test worker", std::io::Error::other("no threads left")),
    ];
    for e in errors {
        let text = e.to_string();
        for word in ["scripts/", "setup.sh", ".venv", "==1."] {
            assert!(!text.contains(word), "{text:?} names {word:?}");
        }
    }
}

#[test]
fn nixl_status_is_kvmem_own_and_keeps_the_distinction_callers_need() {
    assert_eq!(
        NixlStatus::of(&nixl_sys::NixlError::NotFound),
        NixlStatus::NotFound
    );
    assert_eq!(
        NixlStatus::of(&nixl_sys::NixlError::BackendError),
        NixlStatus::Backend
    );
    let nul = std::ffi::CString::new("a\0b").unwrap_err();
    assert_eq!(
        NixlStatus::of(&nixl_sys::NixlError::StringConversionError(nul)),
        NixlStatus::InvalidString
    );
    let e = Error::nixl("list plugins", nixl_sys::NixlError::InvalidParam);
    assert!(matches!(
        e,
        Error::Nixl(NixlError::Call {
            op: "list plugins",
            source: NixlStatus::InvalidParam
        })
    ));
    assert!(std::error::Error::source(&e).is_some(), "{e}");
}

#[test]
fn a_failed_thread_spawn_is_not_an_allocation_failure() {
    let e = Error::spawn("NIXL polling", std::io::Error::other("EAGAIN"));
    assert!(
        matches!(
            e,
            Error::Transfer(TransferError::WorkerSpawn {
                worker: "NIXL polling",
                ..
            })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("NIXL polling thread"), "{e}");
}

#[test]
fn size_rules_say_how_the_sizes_must_relate() {
    let e: Error = BoundsError::SizeMismatch {
        op: "a region copy",
        src: 8,
        dst: 4,
        rule: SizeRule::AtLeast,
    }
    .into();
    assert!(e.to_string().contains("at least as large as"), "{e}");
}
