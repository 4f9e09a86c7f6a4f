use super::{Reader, cpulist::parse_cpu_list};
use serde::Serialize;
use std::path::PathBuf;

/// CPU bandwidth limit: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuQuota {
    /// Microseconds of CPU time allowed per period.
    pub quota_us: u64,
    /// Period length in microseconds.
    pub period_us: u64,
}

impl CpuQuota {
    /// The limit in CPUs (quota / period).
    pub fn cores(&self) -> f64 {
        self.quota_us as f64 / self.period_us.max(1) as f64
    }
}

/// Limits of the cgroup this process runs in. `None` means unlimited or unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupLimits {
    /// Cgroup version (1 or 2), when one was found.
    pub version: Option<u8>,
    /// CPU bandwidth limit.
    pub cpu_quota: Option<CpuQuota>,
    /// CPUs the process may run on.
    pub cpuset: Option<Vec<u32>>,
    /// Memory limit in bytes.
    pub memory_max: Option<u64>,
}

fn parse_limit(s: &str) -> Option<Option<u64>> {
    match s {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// cgroup v2 `cpu.max`: `max 100000` or `200000 100000`.
fn parse_cpu_max(s: &str) -> Option<Option<CpuQuota>> {
    let mut w = s.split_whitespace();
    let quota = w.next()?;
    let period: u64 = w.next().map_or(Some(100_000), |p| p.parse().ok())?;
    match quota {
        "max" => Some(None),
        q => Some(Some(CpuQuota {
            quota_us: q.parse().ok()?,
            period_us: period,
        })),
    }
}

pub(super) fn read(r: &mut Reader) -> CgroupLimits {
    let proc_cgroup = r.read("proc/self/cgroup").unwrap_or_default();
    // v2: the line `0::/path`.
    if let Some(path) = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        let mut dir = PathBuf::from("sys/fs/cgroup").join(path.trim_start_matches('/'));
        if !r.path(&dir).is_dir() {
            // Inside a cgroup namespace the path may not exist under our mount: use the root.
            dir = PathBuf::from("sys/fs/cgroup");
        }
        if r.path(&dir).join("cgroup.controllers").exists() {
            return CgroupLimits {
                version: Some(2),
                cpu_quota: r.parse(dir.join("cpu.max"), parse_cpu_max).flatten(),
                cpuset: r
                    .parse(dir.join("cpuset.cpus.effective"), |s| {
                        parse_cpu_list(s).ok()
                    })
                    .filter(|c| !c.is_empty()),
                memory_max: r.parse(dir.join("memory.max"), parse_limit).flatten(),
            };
        }
    }
    // v1: one hierarchy per controller.
    let v1 = PathBuf::from("sys/fs/cgroup");
    if r.path(v1.join("memory")).is_dir() || r.path(v1.join("cpu")).is_dir() {
        let quota: Option<i64> = r.parse(v1.join("cpu/cpu.cfs_quota_us"), |s| s.parse().ok());
        let period: Option<u64> = r.parse(v1.join("cpu/cpu.cfs_period_us"), |s| s.parse().ok());
        let cpu_quota = match (quota, period) {
            (Some(q), Some(p)) if q > 0 => Some(CpuQuota {
                quota_us: q as u64,
                period_us: p,
            }),
            _ => None,
        };
        // v1 reports "no limit" as a huge number near i64::MAX rounded to pages.
        let memory_max = r
            .parse(v1.join("memory/memory.limit_in_bytes"), |s| {
                s.parse::<u64>().ok()
            })
            .filter(|m| *m < (1 << 62));
        return CgroupLimits {
            version: Some(1),
            cpu_quota,
            cpuset: r
                .parse(v1.join("cpuset/cpuset.effective_cpus"), |s| {
                    parse_cpu_list(s).ok()
                })
                .filter(|c| !c.is_empty()),
            memory_max,
        };
    }
    CgroupLimits::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_and_limits() {
        assert_eq!(parse_cpu_max("max 100000"), Some(None));
        let q = parse_cpu_max("250000 100000").unwrap().unwrap();
        assert_eq!(q.cores(), 2.5);
        assert_eq!(parse_cpu_max("x 1"), None);
        assert_eq!(parse_limit("max"), Some(None));
        assert_eq!(parse_limit("1024"), Some(Some(1024)));
    }
}
