//! `kvmem replay` on the synthetic Mooncake trace, with small blocks: the checks that the cache
//! is right — unlimited capacity equals the unlimited reference, a host tier alone equals plain
//! LRU at the same capacity — and a disk tier that adds hits and serves nothing corrupt.

mod common;

use common::{args, json_of, kvmem};
use std::path::PathBuf;

fn trace() -> PathBuf {
    let rel =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/traces/synthetic_trace.jsonl");
    let path = std::env::var_os("KVMEM_TRACE")
        .map(PathBuf::from)
        .unwrap_or(rel);
    assert!(
        path.is_file(),
        "the synthetic trace is not at {} (set KVMEM_TRACE to its path)",
        path.display()
    );
    path
}

/// `kvmem replay` of the trace with 4 KiB blocks and the options in `line`; its JSON.
fn replay(line: &str) -> serde_json::Value {
    let out = kvmem()
        .arg("replay")
        .arg(trace())
        .args(["--block-bytes", "4096", "--json"])
        .args(args(line))
        .output()
        .unwrap();
    json_of(&out)
}

fn f(v: &serde_json::Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn unlimited_capacity_equals_the_infinite_reference() {
    let v = replay("--host-blocks 50000");
    let hit = f(&v, "hit_rate");
    assert!(hit > 0.5, "the trace shares prefixes: {v}");
    assert_eq!(hit, f(&v, "reference.infinite_hit_rate"), "{v}");
    assert_eq!(f(&v, "tiers.host.hit_rate"), hit);
    assert_eq!(f(&v, "tiers.gpu.hit_rate"), 0.0);
    assert_eq!(f(&v, "tiers.disk.hit_rate"), 0.0);
    assert!(v["gpu_memory"].as_str().unwrap().len() > 4);
}

#[test]
fn host_only_equals_plain_lru() {
    for blocks in ["1000", "4000"] {
        let v = replay(&format!("--host-blocks {blocks}"));
        let (hit, lru) = (f(&v, "hit_rate"), f(&v, "reference.lru_hit_rate"));
        assert!(
            (hit - lru).abs() <= 0.001,
            "{blocks} host blocks: {hit} vs LRU {lru}"
        );
        assert!(
            hit < f(&v, "reference.infinite_hit_rate"),
            "a small tier must miss: {v}"
        );
        assert!(f(&v, "tiers.host.evictions") > 0.0);
    }
}

#[test]
fn a_disk_tier_adds_hits_and_a_gpu_tier_takes_the_first() {
    let host = replay("--host-blocks 1000");
    let v = replay("--host-blocks 1000 --disk-blocks 8000 --gpu-blocks 500");
    assert!(f(&v, "hit_rate") > f(&host, "hit_rate") + 0.05, "{v}");
    assert!(
        f(&v, "tiers.disk.hit_rate") > 0.0 && f(&v, "tiers.gpu.hit_rate") > 0.0,
        "{v}"
    );
    assert!(f(&v, "tiers.disk.bytes_in") > 0.0 && f(&v, "tiers.disk.bytes_out") > 0.0);
    assert_eq!(f(&v, "corrupt"), 0.0);
}
