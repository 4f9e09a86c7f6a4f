//! `kvmem info`: what this machine offers.

use crate::error::Result;
use clap::Args;
use serde::Serialize;
use std::io::Write;

/// Arguments of `kvmem info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Info {
    version: &'static str,
    cuda_driver: Probe,
    cuda_devices: Vec<CudaDevice>,
    nixl: Nixl,
    topology: kvmem::topology::Topology,
}

#[derive(Debug, Serialize)]
struct Probe {
    available: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct CudaDevice {
    #[serde(flatten)]
    info: kvmem::cuda::DeviceInfo,
    /// The current PCIe link, from sysfs.
    pcie_link: Option<String>,
}

#[derive(Debug, Serialize)]
struct Nixl {
    available: bool,
    library: Option<String>,
    plugin_dir: Option<String>,
    plugins: Vec<String>,
    error: Option<String>,
}

fn probe_cuda(topology: &kvmem::topology::Topology) -> (Probe, Vec<CudaDevice>) {
    let driver = match kvmem::cuda::load_driver() {
        Ok(d) => d,
        Err(e) => {
            return (
                Probe {
                    available: false,
                    detail: e.to_string(),
                },
                Vec::new(),
            );
        }
    };
    let (major, minor) = driver.cuda_version;
    match kvmem::cuda::devices() {
        Ok(infos) => {
            let devices: Vec<CudaDevice> = infos
                .into_iter()
                .map(|info| {
                    let pcie_link = topology
                        .gpus
                        .iter()
                        .find(|g| g.pci_address.eq_ignore_ascii_case(&info.pci_bus_id))
                        .and_then(|g| match (&g.link.speed, g.link.width) {
                            (Some(s), Some(w)) => Some(format!("{s} x{w}")),
                            _ => None,
                        });
                    CudaDevice { info, pcie_link }
                })
                .collect();
            (
                Probe {
                    available: true,
                    detail: format!("CUDA {major}.{minor} driver, {} device(s)", devices.len()),
                },
                devices,
            )
        }
        Err(e) => (
            Probe {
                available: true,
                detail: format!("CUDA {major}.{minor} driver, but listing devices failed: {e}"),
            },
            Vec::new(),
        ),
    }
}

fn probe_nixl() -> Nixl {
    let runtime = match kvmem::nixl::ensure_loaded() {
        Ok(rt) => rt,
        Err(e) => {
            return Nixl {
                available: false,
                library: None,
                plugin_dir: None,
                plugins: Vec::new(),
                error: Some(crate::error::with_hint(&e)),
            };
        }
    };
    let (plugins, error) = match kvmem::nixl::runtime::available_plugins() {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Nixl {
        available: true,
        library: Some(runtime.library.as_ref().map_or_else(
            || "(found on the loader path)".into(),
            |p| p.display().to_string(),
        )),
        plugin_dir: runtime.plugin_dir.as_ref().map(|p| p.display().to_string()),
        plugins,
        error,
    }
}

/// Runs `kvmem info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let topology = kvmem::topology::Topology::detect();
    let (cuda_driver, cuda_devices) = probe_cuda(&topology);
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        cuda_driver,
        cuda_devices,
        nixl: probe_nixl(),
        topology,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "kvmem {}", info.version)?;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    writeln!(
        out,
        "CUDA driver:   {} ({})",
        yes_no(info.cuda_driver.available),
        info.cuda_driver.detail
    )?;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    for d in &info.cuda_devices {
        let i = &d.info;
        writeln!(
            out,
            "  {}: {}  {:.1} GiB ({:.1} free)  sm_{}{}  {}  {}",
            i.ordinal,
            i.name,
            gib(i.total_memory),
            gib(i.free_memory),
            i.compute_capability.0,
            i.compute_capability.1,
            i.pci_bus_id,
            d.pcie_link.as_deref().unwrap_or("link unknown")
        )?;
    }
    writeln!(out, "NIXL runtime:  {}", yes_no(info.nixl.available))?;
    if let Some(lib) = &info.nixl.library {
        writeln!(out, "  library:     {lib}")?;
    }
    if let Some(dir) = &info.nixl.plugin_dir {
        writeln!(out, "  plugin dir:  {dir}")?;
    }
    if info.nixl.available {
        writeln!(out, "  plugins:     {}", info.nixl.plugins.join(", "))?;
    }
    if let Some(e) = &info.nixl.error {
        writeln!(out, "  error:       {e}")?;
    }
    write_topology(&mut out, &info.topology)?;
    Ok(())
}

fn write_topology(out: &mut impl Write, t: &kvmem::topology::Topology) -> std::io::Result<()> {
    use kvmem::topology::format_cpu_list;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    writeln!(out, "GPUs (PCI):    {}", t.gpus.len())?;
    for g in &t.gpus {
        let node = g
            .numa_node
            .map_or_else(|| "unknown".into(), |n| n.to_string());
        let link = match (&g.link.speed, g.link.width) {
            (Some(s), Some(w)) => format!("{s} x{w}"),
            _ => "link unknown".into(),
        };
        writeln!(out, "  {}  NUMA node {node}  {link}", g.pci_address)?;
    }
    writeln!(out, "NUMA nodes:    {}", t.numa_nodes.len())?;
    for n in &t.numa_nodes {
        let mem = n
            .memory_bytes
            .map_or_else(|| "?".into(), |b| format!("{:.1} GiB", gib(b)));
        writeln!(
            out,
            "  node {}: cpus {}  memory {mem}",
            n.id,
            format_cpu_list(&n.cpus)
        )?;
    }
    for p in &t.hugepages {
        writeln!(
            out,
            "hugepages {} KiB: {} reserved, {} free",
            p.page_size / 1024,
            p.total,
            p.free
        )?;
    }
    if let Some(thp) = t.thp {
        writeln!(out, "THP:           {thp:?}")?;
    }
    let cg = &t.cgroup;
    let cpus = cg
        .cpu_quota
        .map_or_else(|| "unlimited".into(), |q| format!("{:.2} CPUs", q.cores()));
    let mem = cg
        .memory_max
        .map_or_else(|| "unlimited".into(), |m| format!("{:.1} GiB", gib(m)));
    let version = cg
        .version
        .map_or_else(|| "none".into(), |v| format!("v{v}"));
    writeln!(out, "cgroup:        {version}, cpu {cpus}, memory {mem}")?;
    if let Some(set) = &cg.cpuset {
        writeln!(out, "  cpuset:      {}", format_cpu_list(set))?;
    }
    for w in &t.warnings {
        writeln!(out, "  warning:     {w}")?;
    }
    Ok(())
}
