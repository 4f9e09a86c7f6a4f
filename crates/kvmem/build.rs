//! Finds the spec file (`external.rs`, one file of NVIDIA Dynamo's `dynamo-memory` crate) that
//! `tests/spec_external.rs` compiles against kvmem. The spec is not part of this repository: it is
//! looked for in `$KVMEM_SPEC_DIR`, else in `shared/seed/` beside this checkout or beside any
//! directory above it (the project's CI clones next to a `shared/` folder). When it is found, the
//! `kvmem_spec` cfg is set and `$OUT_DIR/spec_external_mod.rs` declares the module at the file's
//! absolute path; when it is not, the test is left out and a warning says so. The search runs
//! again when this file or `KVMEM_SPEC_DIR` changes (or the found file does): after adding the
//! spec beside a checkout that lacked it, set the variable or touch this file.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const SPEC_FILE: &str = "external.rs";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kvmem_spec)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=KVMEM_SPEC_DIR");
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    match find_spec(&manifest) {
        Ok(spec) => {
            println!("cargo::rerun-if-changed={}", spec.display());
            println!("cargo::rustc-cfg=kvmem_spec");
            let decl = format!(
                "#[path = {:?}]\nmod external;\n",
                spec.to_str().expect("the spec path is valid UTF-8")
            );
            fs::write(out.join("spec_external_mod.rs"), decl).expect("OUT_DIR is writable");
        }
        Err(why) => {
            fs::write(out.join("spec_missing.txt"), &why).expect("OUT_DIR is writable");
            // The test binary still builds, with one ignored test that names the reason, so that
            // every test run shows it (cargo prints this warning only when the script runs).
            println!(
                "cargo::warning=tests/spec_external.rs is NOT built: {why}. Set KVMEM_SPEC_DIR to \
                 the directory that holds the spec's {SPEC_FILE} to build and run it."
            );
        }
    }
}

/// The spec file: `$KVMEM_SPEC_DIR/external.rs` if the variable is set (an error if the file is
/// not there), else the first `<dir>/shared/seed/external.rs` over the directories above the crate.
fn find_spec(manifest: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("KVMEM_SPEC_DIR") {
        let file = Path::new(&dir).join(SPEC_FILE);
        return canonical(&file).ok_or_else(|| {
            format!(
                "KVMEM_SPEC_DIR is set but {} does not exist",
                file.display()
            )
        });
    }
    manifest
        .ancestors()
        .skip(1)
        .find_map(|dir| canonical(&dir.join("shared").join("seed").join(SPEC_FILE)))
        .ok_or_else(|| format!("no shared/seed/{SPEC_FILE} beside this checkout or any directory above it, and KVMEM_SPEC_DIR is not set"))
}

fn canonical(file: &Path) -> Option<PathBuf> {
    file.is_file().then(|| file.canonicalize().ok()).flatten()
}
