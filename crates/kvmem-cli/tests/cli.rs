//! The `kvmem` binary end to end.

mod common;

use common::{json_of, kvmem, stdout_of};

#[test]
fn info_reports_the_installed_nixl_runtime_and_its_plugins() {
    let v = json_of(&kvmem().args(["info", "--json"]).output().unwrap());
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["nixl"]["available"], true, "{v}");
    let plugins: Vec<&str> = v["nixl"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // The nixl-cu12 wheel ships these plugin files; the runtime must report them.
    let plugin_dir = v["nixl"]["plugin_dir"].as_str().unwrap();
    for p in ["UCX", "POSIX"] {
        assert!(plugins.contains(&p), "{p} not in {plugins:?}");
        assert!(
            std::path::Path::new(plugin_dir)
                .join(format!("libplugin_{p}.so"))
                .is_file()
        );
    }
    // The CUDA probe must agree with the machine.
    let has_cuda = std::path::Path::new("/dev/nvidiactl").exists();
    if !has_cuda {
        assert_eq!(v["cuda_driver"]["available"], false);
        assert_eq!(v["cuda_devices"].as_array().unwrap().len(), 0);
    } else {
        assert!(!v["cuda_devices"].as_array().unwrap().is_empty(), "{v}");
    }
}

#[test]
fn info_without_the_runtime_says_so_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path();
    let info = |args: &[&str]| {
        kvmem()
            .args(args)
            .env("KVMEM_NIXL_LIB_DIR", empty)
            .output()
            .unwrap()
    };
    let v = json_of(&info(&["info", "--json"]));
    assert_eq!(v["nixl"]["available"], false);
    let err = v["nixl"]["error"].as_str().unwrap();
    assert!(
        err.contains("KVMEM_NIXL_LIB_DIR") && err.contains("nixl-cu12"),
        "{err}"
    );

    assert!(stdout_of(&info(&["info"])).contains("NIXL runtime:  no"));
}

#[test]
fn demo_runs_its_checks() {
    let out = kvmem().args(["demo", "--blocks", "8"]).output().unwrap();
    assert!(stdout_of(&out).contains("all checks passed"));
}
