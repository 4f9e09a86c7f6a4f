use super::Reader;
use serde::Serialize;
use std::path::Path;

/// One hugepage pool (`hugepages-2048kB`, `hugepages-1048576kB`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugepagePool {
    /// Page size in bytes.
    pub page_size: u64,
    /// Pages reserved in the pool.
    pub total: u64,
    /// Pages not yet handed out.
    pub free: u64,
}

/// The transparent-hugepage mode (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThpMode {
    /// Huge pages for every anonymous mapping.
    Always,
    /// Huge pages where `madvise(MADV_HUGEPAGE)` asks for them.
    Madvise,
    /// Never.
    Never,
}

pub(super) fn parse_thp(text: &str) -> Option<ThpMode> {
    let selected = text.split_whitespace().find(|w| w.starts_with('['))?;
    match selected.trim_matches(|c| c == '[' || c == ']') {
        "always" => Some(ThpMode::Always),
        "madvise" => Some(ThpMode::Madvise),
        "never" => Some(ThpMode::Never),
        _ => None,
    }
}

pub(super) fn read_thp(r: &mut Reader) -> Option<ThpMode> {
    r.parse("sys/kernel/mm/transparent_hugepage/enabled", parse_thp)
}

/// `hugepages-2048kB` → 2 MiB.
fn pool_page_size(name: &str) -> Option<u64> {
    let kb: u64 = name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

pub(super) fn read_pools(r: &mut Reader, dir: impl AsRef<Path>) -> Vec<HugepagePool> {
    let dir = dir.as_ref();
    r.list(dir)
        .into_iter()
        .filter_map(|name| {
            let page_size = pool_page_size(&name)?;
            let sub = dir.join(&name);
            let total = r.parse(sub.join("nr_hugepages"), |s| s.parse().ok())?;
            let free = r
                .parse(sub.join("free_hugepages"), |s| s.parse().ok())
                .unwrap_or(0);
            Some(HugepagePool {
                page_size,
                total,
                free,
            })
        })
        .collect()
}

/// `Node 0 MemTotal:       131072 kB` → bytes.
pub(super) fn parse_node_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains("MemTotal:"))?;
    let mut words = line.split_whitespace().rev();
    let unit = words.next()?;
    let value: u64 = words.next()?.parse().ok()?;
    match unit {
        "kB" => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_and_meminfo() {
        assert_eq!(parse_thp("always [madvise] never"), Some(ThpMode::Madvise));
        assert_eq!(parse_thp("[always] madvise never"), Some(ThpMode::Always));
        assert_eq!(parse_thp("always madvise never"), None);
        assert_eq!(
            parse_node_mem_total("Node 0 MemTotal:       1024 kB\nNode 0 MemFree: 1 kB"),
            Some(1024 * 1024)
        );
        assert_eq!(pool_page_size("hugepages-1048576kB"), Some(1 << 30));
        assert_eq!(pool_page_size("hugepages-x"), None);
    }
}
