//! Finding and loading the NIXL runtime (`libnixl_capi.so`).
//!
//! `nixl-sys` is built with its `stub-api` feature: kvmem links without NIXL and the C API is
//! resolved the first time it is used. If the library cannot be found then, `nixl-sys` aborts the
//! process. kvmem never lets it get that far: every NIXL entry point first calls
//! [`ensure_loaded`], which looks for the library in known places, loads it, and returns
//! [`NixlError::Unavailable`] if it is nowhere to be found.
//!
//! Where kvmem looks, the ways a user installs NIXL: if `$KVMEM_NIXL_LIB_DIR` is set, there
//! alone (a directory that holds `libnixl_capi.so`; an explicit setting that is wrong is an
//! error, not a hint). Otherwise, in order:
//! 1. NIXL's install prefix: `$NIXL_PREFIX/lib{/x86_64-linux-gnu,64,}`, and the parent of
//!    `$NIXL_PLUGIN_DIR`;
//! 2. the active Python environment's `nixl-cu12` / `nixl-cu13` wheel (its
//!    `.nixl_cu1x.mesonpy.libs` directory): the site-packages of `$VIRTUAL_ENV` when set,
//!    otherwise those of the `python3` on the `PATH`;
//! 3. NIXL's default prefix, `/opt/nvidia/nvda_nixl`;
//! 4. the dynamic loader's search path (`LD_LIBRARY_PATH`, `ld.so.cache`).

// This module loads the NIXL runtime library: unsafe code is allowed here (denied at the crate root).
#![allow(unsafe_code)]

use crate::error::{Error, NixlError, Result};
use std::ffi::OsString;
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

/// NIXL's default install prefix.
const DEFAULT_PREFIX: &str = "/opt/nvidia/nvda_nixl";

fn candidate_dirs() -> Vec<PathBuf> {
    search_dirs(&|name| std::env::var_os(name), &python_site_packages)
}

/// The directories to search, in order, given the environment (`env`) and a way to ask the
/// `python3` on the `PATH` for its site-packages (called only without `VIRTUAL_ENV`).
fn search_dirs(
    env: &dyn Fn(&str) -> Option<OsString>,
    python_sites: &dyn Fn() -> Vec<PathBuf>,
) -> Vec<PathBuf> {
    if let Some(dir) = env(LIB_DIR_ENV) {
        return vec![PathBuf::from(dir)];
    }
    let prefix_libs = |prefix: &Path| {
        ["lib/x86_64-linux-gnu", "lib64", "lib"]
            .into_iter()
            .map(|lib| prefix.join(lib))
            .collect::<Vec<_>>()
    };
    let mut dirs = Vec::new();
    if let Some(prefix) = env("NIXL_PREFIX") {
        dirs.extend(prefix_libs(Path::new(&prefix)));
    }
    if let Some(plugins) = env("NIXL_PLUGIN_DIR")
        && let Some(parent) = Path::new(&plugins).parent()
    {
        dirs.push(parent.to_path_buf());
    }
    let sites = match env("VIRTUAL_ENV") {
        Some(venv) => venv_site_packages(Path::new(&venv)),
        None => python_sites(),
    };
    dirs.extend(sites.iter().flat_map(|site| wheel_lib_dirs(site)));
    dirs.extend(prefix_libs(Path::new(DEFAULT_PREFIX)));
    dirs
}

/// `lib/python3*/site-packages` of a virtual environment.
fn venv_site_packages(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut sites: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    sites.sort();
    sites
}

/// The site-packages directories of the `python3` on the `PATH` (none when there is none).
fn python_site_packages() -> Vec<PathBuf> {
    const SCRIPT: &str =
        "import site\nfor p in site.getsitepackages() + [site.getusersitepackages()]: print(p)";
    match std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect(),
        _ => Vec::new(),
    }
}

/// The library directories a `nixl-cu12`/`nixl-cu13` wheel installed into `site`.
fn wheel_lib_dirs(site: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(site) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(".nixl_cu1") && name.ends_with(".libs")
        })
        .map(|e| e.path())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_follows_the_users_installation_not_the_build_tree() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("venv");
        let site = venv.join("lib/python3.12/site-packages");
        for d in [".nixl_cu13.mesonpy.libs", "nixl_cu13", "numpy.libs"] {
            std::fs::create_dir_all(site.join(d)).unwrap();
        }
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let no_python = || -> Vec<PathBuf> { panic!("python3 asked although VIRTUAL_ENV is set") };

        // KVMEM_NIXL_LIB_DIR alone.
        let env = vars(vec![
            (LIB_DIR_ENV, "/x".into()),
            ("NIXL_PREFIX", "/p".into()),
        ]);
        let only = search_dirs(&env, &no_python);
        assert_eq!(only, [PathBuf::from("/x")]);

        // NIXL_PREFIX, then the active virtual environment's wheel, then the default prefix.
        let env = vars(vec![
            ("NIXL_PREFIX", "/p".into()),
            ("VIRTUAL_ENV", venv.display().to_string()),
        ]);
        let dirs = search_dirs(&env, &no_python);
        let wheel = site.join(".nixl_cu13.mesonpy.libs");
        let pos = |p: &Path| dirs.iter().position(|d| d == p);
        assert_eq!(pos(Path::new("/p/lib")), Some(2));
        assert_eq!(pos(&wheel), Some(3));
        assert!(pos(&Path::new(DEFAULT_PREFIX).join("lib")) > pos(&wheel));
        assert_eq!(dirs.len(), 7, "{dirs:?}");
        assert!(
            dirs.iter()
                .all(|d| !d.starts_with(env!("CARGO_MANIFEST_DIR"))),
            "{dirs:?}"
        );

        // Without VIRTUAL_ENV: the python3 on the PATH says where its packages are.
        let sites = || vec![site.clone()];
        let dirs = search_dirs(&vars(Vec::new()), &sites);
        assert_eq!(dirs.first(), Some(&wheel));
    }
}
