//! Unit tests of the agent configuration.

use super::*;

#[test]
fn toml_with_underscored_backend_and_scalar_params() {
    let c = AgentConfig::from_toml_str(
        r#"
        name = "a"
        backends = ["UCX", "GDS_MT"]
        listen = true
        listen_port = 5555
        thread_sync = "strict"
        registration_chunk = "1GiB"
        [backend_params.GDS_MT]
        thread_count = 8
        use_x = true
        [backend_params.UCX]
        ucx_devices = "mlx5_0:1"
        "#,
    )
    .unwrap();
    assert_eq!(c.backends, ["UCX", "GDS_MT"]);
    assert_eq!(c.params_for("gds_mt").unwrap()["thread_count"], "8");
    assert_eq!(c.params_for("GDS_MT").unwrap()["use_x"], "true");
    assert_eq!(c.params_for("ucx").unwrap()["ucx_devices"], "mlx5_0:1");
    assert_eq!((c.listen, c.listen_port), (true, 5555));
    assert_eq!(c.thread_sync, ThreadSync::Strict);
    assert_eq!(c.registration_chunk, 1 << 30);
    let n = c.to_nixl();
    assert!(n.enable_listen_thread && n.enable_prog_thread);
    assert_eq!(n.listen_port, 5555);
}

#[test]
fn toml_errors_are_config_errors() {
    for bad in [
        "nmae = \"typo\"",
        "backends = []",
        "registration_chunk = 1000",
        "registration_chunk = \"12XB\"",
        "backends = [\"UCX\", \"ucx\"]",
        "[backend_params.POSIX]\nx = 1",
        "thread_sync = \"sometimes\"",
    ] {
        let err = AgentConfig::from_toml_str(bad).unwrap_err();
        assert!(
            matches!(err, Error::Config(ConfigError::Agent { .. })),
            "{bad}: {err}"
        );
    }
}

#[test]
fn env_overrides_with_double_underscore_params() {
    let c = AgentConfig::from_vars([
        ("PATH", "/bin"),
        ("KVMEM_NIXL_NAME", "env-agent"),
        ("KVMEM_NIXL_BACKENDS", "UCX, gds_mt ,POSIX"),
        ("KVMEM_NIXL_BACKEND_GDS_MT__THREAD_COUNT", "16"),
        ("KVMEM_NIXL_BACKEND_UCX__UCX_ERROR_HANDLING_MODE", "none"),
        ("KVMEM_NIXL_PROGRESS_THREAD", "off"),
        ("KVMEM_NIXL_LISTEN", "yes"),
        ("KVMEM_NIXL_LISTEN_PORT", "7000"),
        ("KVMEM_NIXL_THREAD_SYNC", "RW"),
        ("KVMEM_NIXL_REGISTRATION_CHUNK", "2M"),
    ])
    .unwrap();
    assert_eq!(c.name, "env-agent");
    assert_eq!(c.backends, ["UCX", "gds_mt", "POSIX"]);
    assert_eq!(c.params_for("GDS_MT").unwrap()["thread_count"], "16");
    assert_eq!(
        c.params_for("UCX").unwrap()["ucx_error_handling_mode"],
        "none"
    );
    assert!(!c.progress_thread && c.listen);
    assert_eq!(c.listen_port, 7000);
    assert_eq!(c.registration_chunk, 2 << 20);
}

#[test]
fn env_file_then_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "name = \"from-file\"\nbackends = [\"POSIX\"]\n").unwrap();
    let c = AgentConfig::from_vars([
        ("KVMEM_NIXL_CONFIG", path.to_str().unwrap()),
        ("KVMEM_NIXL_LISTEN", "1"),
    ])
    .unwrap();
    assert_eq!(
        (c.name.as_str(), c.backends.as_slice()),
        ("from-file", &["POSIX".to_owned()][..])
    );
    assert!(c.listen);
}

#[test]
fn env_errors_name_the_variable() {
    for (var, value) in [
        ("KVMEM_NIXL_LISTEN", "maybe"),
        ("KVMEM_NIXL_LISTEN_PORT", "70000"),
        ("KVMEM_NIXL_BACKEND_GDS_MT_THREAD_COUNT", "8"),
        ("KVMEM_NIXL_BACKEND_POSIX__X", "1"),
        ("KVMEM_NIXL_BAKCENDS", "UCX"),
        ("KVMEM_NIXL_REGISTRATION_CHUNK", "0"),
    ] {
        let err = AgentConfig::from_vars([(var, value)]).unwrap_err();
        let Error::Config(ConfigError::Agent { origin, .. }) = &err else {
            panic!("{var}: {err}")
        };
        // Errors found while validating the whole config name the environment instead.
        assert!(origin == var || origin == "environment", "{var}: {err}");
    }
}

#[test]
fn byte_counts() {
    assert_eq!(parse_bytes("4096"), Ok(4096));
    assert_eq!(parse_bytes("64GiB"), Ok(64 << 30));
    assert_eq!(parse_bytes("3 k"), Ok(3 << 10));
    assert!(parse_bytes("GiB").is_err());
    assert!(parse_bytes("99999999999T").is_err());
}
