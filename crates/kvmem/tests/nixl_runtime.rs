//! The real NIXL runtime (installed by `scripts/setup.sh`) is found, loaded and lists its plugins.

#[test]
fn runtime_loads_and_lists_ucx_and_posix() {
    let rt =
        kvmem::nixl::ensure_loaded().expect("NIXL runtime should be installed by scripts/setup.sh");
    assert!(rt.library.as_ref().is_some_and(|p| p.is_file()), "{rt:?}");
    let plugins = kvmem::nixl::runtime::available_plugins().unwrap();
    for needed in ["UCX", "POSIX"] {
        assert!(
            plugins.iter().any(|p| p == needed),
            "{needed} missing from {plugins:?}"
        );
    }
}
