//! Host topology read from sysfs and procfs, with no external tools: GPUs with their PCI address
//! and NUMA node, NUMA nodes with their CPUs and memory, hugepage pools, the transparent-hugepage
//! mode, and the cgroup limits the process runs under.
//!
//! Everything is read relative to a root directory, so the parsers run against fake trees in
//! tests: [`Topology::detect`] reads `/`, [`Topology::from_root`] any other root. Missing files
//! are normal (containers hide parts of sysfs) and leave fields empty; malformed contents are
//! skipped and described in [`Topology::warnings`], never a panic.

mod cgroup;
mod cpulist;
mod memory;
mod pci;

pub use cgroup::CgroupLimits;
pub use cpulist::format_cpu_list;
use cpulist::parse_cpu_list;
pub use memory::{HugepagePool, ThpMode};
pub use pci::{GpuInfo, PcieLink};

use serde::Serialize;
use std::path::{Path, PathBuf};

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    /// Node number.
    pub id: u32,
    /// CPUs of the node.
    pub cpus: Vec<u32>,
    /// Memory of the node in bytes, when sysfs reports it.
    pub memory_bytes: Option<u64>,
    /// Hugepage pools of the node.
    pub hugepages: Vec<HugepagePool>,
}

/// What the host looks like to this process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// NVIDIA GPUs on the PCI bus.
    pub gpus: Vec<GpuInfo>,
    /// NUMA nodes (empty on kernels without NUMA support in sysfs).
    pub numa_nodes: Vec<NumaNode>,
    /// System-wide hugepage pools.
    pub hugepages: Vec<HugepagePool>,
    /// Transparent hugepage mode.
    pub thp: Option<ThpMode>,
    /// Limits of the cgroup the process runs in.
    pub cgroup: CgroupLimits,
    /// Files that existed but could not be parsed.
    pub warnings: Vec<String>,
}

impl Topology {
    /// Reads the topology of this machine.
    pub fn detect() -> Self {
        Self::from_root("/")
    }

    /// Reads a topology from a tree laid out like `/` (`sys/...`, `proc/self/cgroup`).
    pub fn from_root(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        let mut r = Reader {
            root: root.to_path_buf(),
            warnings: Vec::new(),
        };
        let gpus = pci::read_gpus(&mut r);
        let numa_nodes = read_numa_nodes(&mut r);
        let hugepages = memory::read_pools(&mut r, "sys/kernel/mm/hugepages");
        let thp = memory::read_thp(&mut r);
        let cgroup = cgroup::read(&mut r);
        Topology {
            gpus,
            numa_nodes,
            hugepages,
            thp,
            cgroup,
            warnings: r.warnings,
        }
    }

    /// The NUMA node of the GPU at `pci_address` (e.g. `0000:17:00.0`), when known.
    pub fn gpu_numa_node(&self, pci_address: &str) -> Option<u32> {
        self.gpus
            .iter()
            .find(|g| g.pci_address.eq_ignore_ascii_case(pci_address))
            .and_then(|g| g.numa_node)
    }

    /// The CPUs of NUMA node `node`, if it exists.
    pub fn node_cpus(&self, node: u32) -> Option<&[u32]> {
        self.numa_nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.cpus.as_slice())
    }
}

/// Reads files under a root and collects warnings for malformed ones.
pub(crate) struct Reader {
    root: PathBuf,
    warnings: Vec<String>,
}

impl Reader {
    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// The trimmed contents of `rel`, or `None` if it cannot be read.
    pub(crate) fn read(&self, rel: impl AsRef<Path>) -> Option<String> {
        std::fs::read_to_string(self.path(rel))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Parses `rel` with `parse`; a file that exists but does not parse becomes a warning.
    pub(crate) fn parse<T>(
        &mut self,
        rel: impl AsRef<Path>,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let rel = rel.as_ref();
        let text = self.read(rel)?;
        let value = parse(&text);
        if value.is_none() {
            self.warn(format!("{}: cannot parse {text:?}", rel.display()));
        }
        value
    }

    pub(crate) fn warn(&mut self, warning: String) {
        tracing::debug!(%warning, "topology");
        self.warnings.push(warning);
    }

    /// Names of the entries of directory `rel`, sorted; empty if it cannot be read.
    pub(crate) fn list(&self, rel: impl AsRef<Path>) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn read_numa_nodes(r: &mut Reader) -> Vec<NumaNode> {
    let base = Path::new("sys/devices/system/node");
    let mut nodes: Vec<NumaNode> = r
        .list(base)
        .into_iter()
        .filter_map(|name| {
            let id: u32 = name.strip_prefix("node")?.parse().ok()?;
            Some((name, id))
        })
        .map(|(name, id)| {
            let dir = base.join(&name);
            let cpus = r
                .parse(dir.join("cpulist"), |s| parse_cpu_list(s).ok())
                .unwrap_or_default();
            let memory_bytes = r.parse(dir.join("meminfo"), memory::parse_node_mem_total);
            let hugepages = memory::read_pools(r, dir.join("hugepages"));
            NumaNode {
                id,
                cpus,
                memory_bytes,
                hugepages,
            }
        })
        .collect();
    nodes.sort_by_key(|n| n.id);
    nodes
}
