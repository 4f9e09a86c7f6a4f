//! Topology parsers against fake sysfs/procfs trees.

use kvmem::topology::{ThpMode, Topology};
use std::path::Path;

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Writes each `(path below root, text)` of `files`.
fn put_all(root: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        put(root, rel, text);
    }
}

fn h100_box(root: &Path) {
    let gpu = |addr: &str, node: &str| {
        let d = format!("sys/bus/pci/devices/{addr}");
        put(root, &format!("{d}/vendor"), "0x10de\n");
        put(root, &format!("{d}/class"), "0x030200\n");
        put(root, &format!("{d}/device"), "0x2330\n");
        put(root, &format!("{d}/numa_node"), &format!("{node}\n"));
        put(root, &format!("{d}/local_cpulist"), "0-7,16-23\n");
        put(root, &format!("{d}/current_link_speed"), "32.0 GT/s PCIe\n");
        put(root, &format!("{d}/current_link_width"), "16\n");
        put(root, &format!("{d}/max_link_speed"), "32.0 GT/s PCIe\n");
        put(root, &format!("{d}/max_link_width"), "16\n");
    };
    gpu("0000:18:00.0", "0");
    gpu("0000:9a:00.0", "-1");
    put_all(
        root,
        &[
            // An Intel NIC and an NVIDIA audio function: not GPUs.
            ("sys/bus/pci/devices/0000:01:00.0/vendor", "0x8086\n"),
            ("sys/bus/pci/devices/0000:01:00.0/class", "0x020000\n"),
            ("sys/bus/pci/devices/0000:18:00.1/vendor", "0x10de\n"),
            ("sys/bus/pci/devices/0000:18:00.1/class", "0x040300\n"),
            ("sys/devices/system/node/node0/cpulist", "0-7,16-23\n"),
            (
                "sys/devices/system/node/node0/meminfo",
                "Node 0 MemTotal:  65536 kB\nNode 0 MemFree: 1 kB\n",
            ),
            (
                "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
                "512\n",
            ),
            (
                "sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages",
                "500\n",
            ),
            ("sys/devices/system/node/node1/cpulist", "8-15,24-31:2\n"),
            // Not a node directory.
            ("sys/devices/system/node/possible", "0-1\n"),
            (
                "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
                "1024\n",
            ),
            (
                "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
                "1000\n",
            ),
            (
                "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
                "0\n",
            ),
            (
                "sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never\n",
            ),
            ("proc/self/cgroup", "0::/kvmem.slice/job\n"),
        ],
    );
    let cg = "sys/fs/cgroup/kvmem.slice/job";
    put(
        root,
        &format!("{cg}/cgroup.controllers"),
        "cpu memory cpuset\n",
    );
    put(root, &format!("{cg}/cpu.max"), "400000 100000\n");
    put(root, &format!("{cg}/memory.max"), "17179869184\n");
    put(root, &format!("{cg}/cpuset.cpus.effective"), "0-3,8\n");
}

#[test]
fn reads_a_two_socket_gpu_box() {
    let dir = tempfile::tempdir().unwrap();
    h100_box(dir.path());
    let t = Topology::from_root(dir.path());
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);

    assert_eq!(t.gpus.len(), 2);
    let g0 = &t.gpus[0];
    assert_eq!(g0.pci_address, "0000:18:00.0");
    assert_eq!(g0.device_id, Some(0x2330));
    assert_eq!(g0.numa_node, Some(0));
    assert_eq!(g0.local_cpus.len(), 16);
    assert_eq!(g0.link.width, Some(16));
    assert_eq!(g0.link.speed.as_deref(), Some("32.0 GT/s PCIe"));
    assert_eq!(t.gpus[1].numa_node, None, "numa_node -1 means unknown");
    assert_eq!(t.gpu_numa_node("0000:18:00.0"), Some(0));
    assert_eq!(t.gpu_numa_node("0000:9A:00.0"), None);

    assert_eq!(t.numa_nodes.len(), 2);
    assert_eq!(
        t.node_cpus(0).unwrap(),
        [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]
    );
    assert_eq!(
        t.node_cpus(1).unwrap(),
        [8, 9, 10, 11, 12, 13, 14, 15, 24, 26, 28, 30]
    );
    assert_eq!(t.numa_nodes[0].memory_bytes, Some(65536 * 1024));
    assert_eq!(t.numa_nodes[1].memory_bytes, None, "missing meminfo");
    assert_eq!(t.numa_nodes[0].hugepages[0].total, 512);

    let two_mib = t.hugepages.iter().find(|p| p.page_size == 2 << 20).unwrap();
    assert_eq!((two_mib.total, two_mib.free), (1024, 1000));
    let one_gib = t.hugepages.iter().find(|p| p.page_size == 1 << 30).unwrap();
    assert_eq!(
        (one_gib.total, one_gib.free),
        (0, 0),
        "missing free_hugepages reads as 0"
    );
    assert_eq!(t.thp, Some(ThpMode::Madvise));

    assert_eq!(t.cgroup.version, Some(2));
    assert_eq!(t.cgroup.cpu_quota.unwrap().cores(), 4.0);
    assert_eq!(t.cgroup.memory_max, Some(16 << 30));
    assert_eq!(t.cgroup.cpuset.as_deref(), Some(&[0, 1, 2, 3, 8][..]));
}

#[test]
fn empty_tree_gives_an_empty_topology() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Topology::from_root(dir.path()), Topology::default());
    assert_eq!(
        Topology::from_root("/nonexistent/kvmem"),
        Topology::default()
    );
}

#[test]
fn malformed_files_become_warnings_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    put_all(
        root,
        &[
            ("sys/devices/system/node/node0/cpulist", "7-3\n"),
            ("sys/kernel/mm/transparent_hugepage/enabled", "sometimes\n"),
            ("sys/bus/pci/devices/0000:18:00.0/vendor", "0x10de\n"),
            ("sys/bus/pci/devices/0000:18:00.0/class", "0x030200\n"),
            ("sys/bus/pci/devices/0000:18:00.0/numa_node", "banana\n"),
            ("proc/self/cgroup", "0::/\n"),
            ("sys/fs/cgroup/cgroup.controllers", "cpu\n"),
            ("sys/fs/cgroup/cpu.max", "max 100000\n"),
            ("sys/fs/cgroup/memory.max", "max\n"),
        ],
    );
    let t = Topology::from_root(root);
    assert_eq!(t.warnings.len(), 3, "{:?}", t.warnings);
    assert!(t.numa_nodes[0].cpus.is_empty());
    assert_eq!(t.thp, None);
    assert_eq!(t.gpus[0].numa_node, None);
    assert_eq!(t.cgroup.version, Some(2));
    assert_eq!((t.cgroup.cpu_quota, t.cgroup.memory_max), (None, None));
}

#[test]
fn this_machine_reads_consistently() {
    let t = Topology::detect();
    let sys_nodes = std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("node")
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(t.numa_nodes.len(), sys_nodes);
    let online = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let node_cpus: usize = t.numa_nodes.iter().map(|n| n.cpus.len()).sum();
    if sys_nodes > 0 {
        assert!(node_cpus >= 1 && online >= 1, "{t:?}");
    }
}
