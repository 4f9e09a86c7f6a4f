//! `kvmem bench` end to end, on a tiny sweep: the table, the JSON and the plot (SVG and PNG) all
//! appear, say what was measured, and every point checked its bytes.

mod common;

use common::{args, json_of, kvmem, stderr_of_failure};
use std::process::{Command, Output};
use tempfile::TempDir;

fn fio_on_path() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A run's output folder and the folder for its disk files.
struct Dirs {
    out: TempDir,
    disk: TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            out: tempfile::tempdir().unwrap(),
            disk: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs `kvmem bench --json` with the options in `line` and environment `env`, writing to
    /// the output folder and putting its disk files in the disk folder.
    fn bench(&self, line: &str, env: &[(&str, &str)]) -> Output {
        kvmem()
            .envs(env.iter().copied())
            .args(["bench", "--json"])
            .args(args(line))
            .arg("--out-dir")
            .arg(self.out.path())
            .arg("--disk-dir")
            .arg(self.disk.path())
            .output()
            .unwrap()
    }

    /// [`Dirs::bench`] without extra environment; the JSON it printed, or a failure with its
    /// exit status and output.
    #[track_caller]
    fn json(&self, line: &str) -> serde_json::Value {
        json_of(&self.bench(line, &[]))
    }
}

#[test]
fn a_small_sweep_writes_table_json_and_plot() {
    let dirs = Dirs::new();
    let v =
        dirs.json("--sizes 4K,64K --iterations 2 --host-bytes 1M --disk-bytes 1M --nixl-bytes 1M");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs.out.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(v, on_disk);

    // 5 paths (host, disk write/read, NIXL loopback write/read: CI has the NIXL runtime) x 2
    // patterns x 2 sizes, each with a measured transfer and reference.
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 20, "{v}");
    for p in points {
        let (bw, rf) = (
            p["gib_s"].as_f64().unwrap(),
            p["reference_gib_s"].as_f64().unwrap(),
        );
        assert!(
            bw > 0.0 && rf > 0.0 && p["ratio"].as_f64().unwrap() > 0.0,
            "{p}"
        );
        assert_eq!(p["bytes"], 1 << 20);
        let block = p["block_bytes"].as_u64().unwrap();
        assert_eq!(p["blocks"].as_u64().unwrap() * block, 1 << 20);
        let copies = p["copies"].as_u64().unwrap();
        let nixl = p["path"] == "nixl-write" || p["path"] == "nixl-read";
        if nixl {
            // One NIXL descriptor per block, prepared once.
            assert_eq!(copies, p["blocks"].as_u64().unwrap(), "{p}");
        } else if p["pattern"] == "sequential" {
            assert_eq!(copies, 1, "sequential blocks merge into one copy: {p}");
        }
        if p["path"] == "host->host" {
            assert!(p["memcpy"]["gib_s"].as_f64().unwrap() > 0.0, "{p}");
        }
        // Every point compared every byte it moved, whatever its path, and says how its
        // reference moved its bytes.
        assert_eq!(p["verified_bytes"], p["bytes"], "{p}");
        let method = p["reference_method"].as_str().unwrap();
        let expected = match p["path"].as_str().unwrap() {
            "host->host" => "host copy threads",
            "host->disk" | "disk->host" => "io_uring",
            _ => "NIXL descriptor",
        };
        assert!(method.contains(expected), "{p}");
    }
    // The fio comparison: present when fio is installed, and said to be missing otherwise.
    let fio = v["fio"].as_str().unwrap();
    let disk_points = points
        .iter()
        .filter(|p| p["path"] == "host->disk" || p["path"] == "disk->host");
    if fio_on_path() {
        assert!(fio.starts_with("fio-"), "{fio}");
        for p in disk_points {
            assert!(p["fio"]["gib_s"].as_f64().unwrap() > 0.0, "{p}");
        }
    } else {
        assert!(fio.contains("NOT FOUND"), "{fio}");
        for p in disk_points {
            assert!(p["fio"].is_null(), "{p}");
        }
    }
    // Disk and fio files are gone.
    assert_eq!(std::fs::read_dir(dirs.disk.path()).unwrap().count(), 0);

    let table = std::fs::read_to_string(dirs.out.path().join("table.txt")).unwrap();
    assert!(
        table.contains("host->disk") && table.contains("disk->host") && table.contains("ratio")
    );
    // The plot: one panel per path family, each series once in the legend beside it, as SVG
    // and as PNG.
    let svg = std::fs::read_to_string(dirs.out.path().join("bench.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..200.min(svg.len())]);
    for text in [
        "host memory",
        "disk (O_DIRECT)",
        "NIXL (UCX)",
        "host-&gt;host sequential",
        "disk-&gt;host scattered",
        "nixl-read scattered",
        "reference: one NIXL descriptor",
    ] {
        assert!(svg.contains(text), "the SVG lacks {text:?}");
    }
    assert_eq!(
        svg.matches("host-&gt;disk sequential").count(),
        1,
        "one legend entry per series"
    );
    let png = std::fs::read(dirs.out.path().join("bench.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

/// Disk points at `--compare-disk-backend` sizes are also timed on the other disk backend, as
/// points of their own that name it; `--disk-backend` picks the sweep's own.
#[test]
fn disk_points_compare_the_two_disk_backends() {
    for (own, other) in [("nixl-posix", "io_uring"), ("io_uring", "nixl-posix")] {
        let v = Dirs::new().json(&format!(
            "--no-fio --paths disk-write,disk-read --sizes 16K,64K --compare-disk-backend 64K \
             --iterations 2 --disk-bytes 1M --disk-backend {own}"
        ));
        assert_eq!(v["settings"]["disk_backend"], own);
        let points = v["points"].as_array().unwrap();
        // 2 paths x 2 patterns x 2 sizes, plus the 64K points again on the other backend.
        assert_eq!(points.len(), 12, "{v}");
        let compared: Vec<_> = points
            .iter()
            .filter(|p| p["disk_backend"] == other)
            .collect();
        assert_eq!(compared.len(), 4, "{v}");
        for p in &compared {
            assert_eq!(p["block_bytes"], 64 << 10, "{p}");
            let path = p["path"].as_str().unwrap();
            assert!(path.ends_with(&format!("({other})")), "{p}");
            assert!(p["gib_s"].as_f64().unwrap() > 0.0, "{p}");
            assert_eq!(p["verified_bytes"], p["bytes"], "{p}");
            assert!(
                p["reference_method"].as_str().unwrap().contains(other),
                "the compared backend's reference runs on it: {p}"
            );
        }
        assert!(
            points
                .iter()
                .filter(|p| p["disk_backend"] == own)
                .all(|p| p["path"] == "host->disk" || p["path"] == "disk->host")
        );
    }
}

/// A wrong byte in any path's destination fails the run with a message naming the point: the
/// test hook (`KVMEM_BENCH_TEST_CORRUPT`, see `bench/verify.rs`) flips one byte of the
/// destination as read back, after the transfer and before the compare.
#[test]
fn a_wrong_byte_in_the_destination_fails_the_run() {
    for path in [
        "host->host",
        "host->disk",
        "disk->host",
        "nixl-write",
        "nixl-read",
    ] {
        let out = Dirs::new().bench(
            "--no-fio --sizes 64K --iterations 1 --host-bytes 1M --disk-bytes 1M --nixl-bytes 1M \
             --compare-disk-backend none",
            &[("KVMEM_BENCH_TEST_CORRUPT", path)],
        );
        let err = stderr_of_failure(&out);
        assert!(
            err.contains("WRONG BYTES") && err.contains(&format!("{path} sequential")),
            "{path}: {err}"
        );
        assert!(err.contains("differs at byte 0"), "{path}: {err}");
    }
}

#[test]
fn bad_bench_settings_are_refused_with_a_message() {
    let err = stderr_of_failure(&Dirs::new().bench("--paths disk-write --sizes 1000", &[]));
    assert!(err.contains("multiples of 4096"), "{err}");
    stderr_of_failure(&kvmem().args(args("bench --sizes 4Q")).output().unwrap());
}

/// The engines' patterns: gather (scattered source blocks into one contiguous run) and scatter
/// (the reverse) on the host and disk paths, every byte checked, and each point says how much
/// CPU its submitting thread spent per chunk.
#[test]
fn gather_and_scatter_points_check_their_bytes_and_report_submit_cpu() {
    let dirs = Dirs::new();
    let v = dirs.json(
        "--paths host,disk-write,disk-read --patterns gather,scatter --sizes 64K --iterations 2 \
         --host-bytes 2M --disk-bytes 2M --compare-disk-backend none --no-fio",
    );
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 6, "3 paths x 2 patterns: {v}");
    for p in points {
        assert!(p["pattern"] == "gather" || p["pattern"] == "scatter", "{p}");
        assert_eq!(p["verified_bytes"], p["bytes"], "{p}");
        assert_eq!(p["chunks"], 32, "{p}");
        // One side is a random order: the blocks do not merge into one copy.
        let copies = p["copies"].as_u64().unwrap();
        assert!(copies > 1 && copies <= 32, "{p}");
        let us = p["submit_cpu_us_per_chunk"].as_f64().unwrap();
        assert!(us.is_finite() && us >= 0.0, "{p}");
    }
    assert_eq!(v["settings"]["gpu_method"], "auto");
    let table = std::fs::read_to_string(dirs.out.path().join("table.txt")).unwrap();
    assert!(
        table.contains("gather") && table.contains("sub us/chk"),
        "{table}"
    );

    // A wrong byte in a gathered destination fails the run.
    let out = dirs.bench(
        "--paths host --patterns gather --sizes 64K --iterations 1 --host-bytes 1M",
        &[("KVMEM_BENCH_TEST_CORRUPT", "host->host")],
    );
    let err = stderr_of_failure(&out);
    assert!(err.contains("gather"), "{err}");
}

#[test]
fn a_preset_fixes_its_paths_and_patterns() {
    let out = kvmem()
        .args(args("bench --preset vllm --paths host"))
        .output()
        .unwrap();
    let err = stderr_of_failure(&out);
    assert!(err.contains("--preset") && err.contains("--paths"), "{err}");
}
