use super::{Reader, cpulist::parse_cpu_list};
use serde::Serialize;
use std::path::Path;

const NVIDIA_VENDOR: u32 = 0x10de;

/// The PCIe link of a device: speed as sysfs words it (`16.0 GT/s PCIe`) and lane count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PcieLink {
    /// Link speed, e.g. `32.0 GT/s PCIe`.
    pub speed: Option<String>,
    /// Number of lanes.
    pub width: Option<u32>,
}

/// An NVIDIA GPU found on the PCI bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// PCI address, `domain:bus:device.function`.
    pub pci_address: String,
    /// PCI device id.
    pub device_id: Option<u32>,
    /// NUMA node the device is attached to; `None` when the kernel reports -1 (unknown).
    pub numa_node: Option<u32>,
    /// CPUs close to the device.
    pub local_cpus: Vec<u32>,
    /// Current link.
    pub link: PcieLink,
    /// Maximum link the device supports.
    pub max_link: PcieLink,
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// `-1` (no NUMA information) is `Some(None)`; a node number is `Some(Some(n))`.
fn parse_numa_node(s: &str) -> Option<Option<u32>> {
    let n: i64 = s.parse().ok()?;
    match n {
        -1 => Some(None),
        n => u32::try_from(n).ok().map(Some),
    }
}

pub(super) fn read_gpus(r: &mut Reader) -> Vec<GpuInfo> {
    let base = Path::new("sys/bus/pci/devices");
    r.list(base)
        .into_iter()
        .filter_map(|addr| {
            let dir = base.join(&addr);
            let vendor = r.read(dir.join("vendor")).and_then(|v| parse_hex(&v))?;
            let class = r.read(dir.join("class")).and_then(|c| parse_hex(&c))?;
            // 0x0300xx VGA controller, 0x0302xx 3D controller (data-centre GPUs).
            if vendor != NVIDIA_VENDOR || !matches!(class >> 8, 0x0300 | 0x0302) {
                return None;
            }
            let link = |r: &mut Reader, prefix: &str| PcieLink {
                speed: r.read(dir.join(format!("{prefix}_link_speed"))),
                width: r.parse(dir.join(format!("{prefix}_link_width")), |s| s.parse().ok()),
            };
            Some(GpuInfo {
                device_id: r.read(dir.join("device")).and_then(|d| parse_hex(&d)),
                numa_node: r.parse(dir.join("numa_node"), parse_numa_node).flatten(),
                local_cpus: r
                    .parse(dir.join("local_cpulist"), |s| parse_cpu_list(s).ok())
                    .unwrap_or_default(),
                link: link(r, "current"),
                max_link: link(r, "max"),
                pci_address: addr,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numa_node_minus_one_is_unknown() {
        assert_eq!(parse_numa_node("-1"), Some(None));
        assert_eq!(parse_numa_node("3"), Some(Some(3)));
        assert_eq!(parse_numa_node("-2"), None);
        assert_eq!(parse_hex("0x10de"), Some(0x10de));
    }
}
