//! Finding and loading the NIXL runtime (`libnixl_capi.so`).
//!
//! `nixl-sys` is built with its `stub-api` feature: kvmem links without NIXL and the C API is
//! resolved the first time it is used. If the library cannot be found then, `nixl-sys` aborts the
//! process. kvmem never lets it get that far: every NIXL entry point first calls
//! [`ensure_loaded`], which looks for the library in known places, loads it, and returns
//! [`NixlError::Unavailable`] if it is nowhere to be found.
//!
//! Where kvmem looks: if `$KVMEM_NIXL_LIB_DIR` is set, there alone (a directory that holds
//! `libnixl_capi.so`; an explicit setting that is wrong is an error, not a hint). Otherwise, in
//! order:
//! 1. the parent of `$NIXL_PLUGIN_DIR`;
//! 2. the project-local virtual environment kvmem was built in (`.venv/lib/python3*/site-packages/
//!    .nixl_cu12.mesonpy.libs`, as installed by the PyPI wheel `nixl-cu12`), and one next to the
//!    running executable;
//! 3. NIXL's own install prefix, `$NIXL_PREFIX` or `/opt/nvidia/nvda_nixl`;
//! 4. the dynamic loader's search path (`LD_LIBRARY_PATH`, `ld.so.cache`).

use crate::error::{Error, NixlError, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the one directory to load `libnixl_capi.so` from.
pub const LIB_DIR_ENV: &str = "KVMEM_NIXL_LIB_DIR";

/// The file name of NIXL's C API library.
pub const CAPI_LIBRARY: &str = "libnixl_capi.so";

/// What was loaded: where the NIXL runtime lives on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixlRuntime {
    /// Full path of the loaded `libnixl_capi.so`, when kvmem found it itself; `None` when the
    /// dynamic loader found it on its search path.
    pub library: Option<PathBuf>,
    /// The directory NIXL loads its backend plugins from, when known.
    pub plugin_dir: Option<PathBuf>,
}

static RUNTIME: OnceLock<std::result::Result<NixlRuntime, String>> = OnceLock::new();

/// Loads the NIXL runtime once per process, and returns where it came from.
///
/// # Errors
/// [`NixlError::Unavailable`] when `libnixl_capi.so` cannot be found or loaded; the message lists
/// the places searched and how to install the runtime.
pub fn ensure_loaded() -> Result<&'static NixlRuntime> {
    RUNTIME.get_or_init(load).as_ref().map_err(|searched| {
        Error::Nixl(NixlError::Unavailable {
            searched: searched.clone(),
        })
    })
}

/// True when the NIXL runtime can be loaded in this process.
pub fn is_available() -> bool {
    ensure_loaded().is_ok()
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(LIB_DIR_ENV) {
        return vec![PathBuf::from(dir)];
    }
    if let Some(plugins) = std::env::var_os("NIXL_PLUGIN_DIR")
        && let Some(parent) = Path::new(&plugins).parent()
    {
        dirs.push(parent.to_path_buf());
    }
    // The workspace this crate was built from, and the directory of the running executable
    // and its ancestors: a `.venv` made by `scripts/setup.sh` sits at the workspace root.
    let mut roots = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    for root in roots {
        dirs.extend(venv_nixl_dirs(&root.join(".venv")));
    }
    let prefix = std::env::var_os("NIXL_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nvidia/nvda_nixl"));
    dirs.push(prefix.join("lib/x86_64-linux-gnu"));
    dirs.push(prefix.join("lib64"));
    dirs.push(prefix.join("lib"));
    dirs
}

/// The library directories of a `nixl-cu12`/`nixl-cu13` wheel installed in the venv at `venv`.
fn venv_nixl_dirs(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .flat_map(|sp| {
            std::fs::read_dir(&sp)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(".nixl") && name.ends_with(".libs")
                })
                .map(|e| e.path())
                .collect::<Vec<_>>()
        })
        .collect();
    dirs.sort();
    dirs
}

fn load() -> std::result::Result<NixlRuntime, String> {
    let mut searched = Vec::new();
    let mut failures = Vec::new();
    for dir in candidate_dirs() {
        let lib = dir.join(CAPI_LIBRARY);
        if !lib.is_file() {
            searched.push(dir.display().to_string());
            continue;
        }
        match preload(&lib) {
            Ok(()) => {
                let plugin_dir = std::env::var_os("NIXL_PLUGIN_DIR")
                    .map(PathBuf::from)
                    .or_else(|| Some(dir.join("plugins")).filter(|p| p.is_dir()));
                return finish(NixlRuntime {
                    library: Some(lib),
                    plugin_dir,
                });
            }
            Err(e) => failures.push(format!("{}: {e}", lib.display())),
        }
    }
    if let Some(dir) = std::env::var_os(LIB_DIR_ENV) {
        return Err(format!(
            "{LIB_DIR_ENV}={} holds no loadable {CAPI_LIBRARY}{}",
            Path::new(&dir).display(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join("; "))
            }
        ));
    }
    // Last resort: the dynamic loader's own search path.
    match preload(Path::new(CAPI_LIBRARY)) {
        Ok(()) => finish(NixlRuntime {
            library: None,
            plugin_dir: std::env::var_os("NIXL_PLUGIN_DIR").map(PathBuf::from),
        }),
        Err(e) => {
            failures.push(format!("{CAPI_LIBRARY} on the loader path: {e}"));
            let mut msg = format!("searched {}", searched.join(", "));
            if !failures.is_empty() {
                msg.push_str(&format!("; failed to load: {}", failures.join("; ")));
            }
            Err(msg)
        }
    }
}

fn finish(runtime: NixlRuntime) -> std::result::Result<NixlRuntime, String> {
    // nixl-sys resolves the library by its soname, which now names the copy loaded above.
    if nixl_sys::is_stub() {
        return Err(format!(
            "{CAPI_LIBRARY} was loaded from {:?} but nixl-sys could not bind to it",
            runtime.library
        ));
    }
    tracing::debug!(library = ?runtime.library, plugins = ?runtime.plugin_dir, "NIXL runtime loaded");
    Ok(runtime)
}

/// Loads `lib` and keeps it loaded for the life of the process.
fn preload(lib: &Path) -> std::result::Result<(), libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading libnixl_capi.so runs its static initialisers (C++ runtime, logging set-up);
    // they have no preconditions on the caller. The handle is leaked on purpose: nixl-sys resolves
    // symbols from this library for the rest of the process, so it must never be unloaded.
    let library = unsafe { Library::open(Some(lib), RTLD_NOW | RTLD_GLOBAL) }?;
    std::mem::forget(library);
    Ok(())
}

/// The backend plugins the NIXL runtime offers on this machine (UCX, POSIX, GDS, …), as NIXL
/// itself reports them.
///
/// # Errors
/// [`NixlError::Unavailable`] without the runtime; [`NixlError::Call`] if NIXL refuses to list them.
pub fn available_plugins() -> Result<Vec<String>> {
    ensure_loaded()?;
    let agent = nixl_sys::Agent::new("kvmem-plugin-probe")
        .map_err(|source| Error::nixl("create a probe agent", source))?;
    let list = agent
        .get_available_plugins()
        .map_err(|source| Error::nixl("list plugins", source))?;
    let mut plugins: Vec<String> = list
        .iter()
        .filter_map(|p| p.ok())
        .map(str::to_owned)
        .collect();
    plugins.sort();
    Ok(plugins)
}
