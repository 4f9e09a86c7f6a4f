//! Running `fio` as the disk paths' outside yardstick.

use super::report::Percentiles;
use std::path::PathBuf;
use std::process::Command;

/// fio's `--version`, or `None` when fio is not on `PATH`.
pub fn version() -> Option<String> {
    let out = Command::new("fio").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One fio run: a single job over the first `size` bytes of `file`.
pub struct FioJob {
    pub file: PathBuf,
    pub size: usize,
    pub block: usize,
    pub write: bool,
    pub random: bool,
    pub queue_depth: u32,
}

/// What one fio run measured.
pub struct FioRun {
    pub bytes_per_s: f64,
    pub clat_us: Percentiles,
}

/// Runs `job` with `O_DIRECT` through `io_uring` and parses fio's JSON output.
pub fn run(job: &FioJob) -> Result<FioRun, String> {
    let rw = match (job.write, job.random) {
        (true, false) => "write",
        (true, true) => "randwrite",
        (false, false) => "read",
        (false, true) => "randread",
    };
    let out = Command::new("fio")
        .arg("--name=kvmem")
        .arg(format!("--filename={}", job.file.display()))
        .arg(format!("--size={}", job.size))
        .arg(format!("--bs={}", job.block))
        .arg(format!("--rw={rw}"))
        .arg(format!("--iodepth={}", job.queue_depth))
        .args(["--direct=1", "--ioengine=io_uring", "--output-format=json"])
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio --rw={rw} --bs={} failed: {}",
            job.block,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&out.stdout, if job.write { "write" } else { "read" })
}

fn parse(json: &[u8], dir: &str) -> Result<FioRun, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("cannot parse fio's JSON: {e}"))?;
    let stats = &v["jobs"][0][dir];
    let bw = stats["bw_bytes"]
        .as_f64()
        .ok_or_else(|| format!("fio's JSON has no jobs[0].{dir}.bw_bytes"))?;
    let clat = &stats["clat_ns"];
    let pct = |k: &str| clat["percentile"][k].as_f64().unwrap_or(0.0) / 1e3;
    Ok(FioRun {
        bytes_per_s: bw,
        clat_us: Percentiles {
            min: clat["min"].as_f64().unwrap_or(0.0) / 1e3,
            p50: pct("50.000000"),
            p90: pct("90.000000"),
            p99: pct("99.000000"),
            max: clat["max"].as_f64().unwrap_or(0.0) / 1e3,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_fio_json() {
        let json = br#"{"jobs":[{"write":{"bw_bytes":1048576000,"clat_ns":{"min":1000,"max":9000,
            "percentile":{"50.000000":2000,"90.000000":4000,"99.000000":8000}}}}]}"#;
        let r = parse(json, "write").unwrap();
        assert_eq!(r.bytes_per_s, 1048576000.0);
        assert_eq!(
            (r.clat_us.p50, r.clat_us.p99, r.clat_us.max),
            (2.0, 8.0, 9.0)
        );
        assert!(parse(json, "read").is_err());
        assert!(parse(b"not json", "write").is_err());
    }
}
