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

#[test]
fn capacity_sweep_is_monotone_for_lru_and_reaches_the_unlimited_reference() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    let out = kvmem()
        .arg("replay")
        .arg(trace())
        .args(args(
            "--block-bytes 4096 --json --limit 2000 --capacities 2000,250,500,1000,50000 --policies lru,s3fifo --plot",
        ))
        .arg(&svg)
        .output()
        .unwrap();
    let v = json_of(&out);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 10, "{v}");
    let series = |policy: &str| -> Vec<&serde_json::Value> {
        points.iter().filter(|p| p["policy"] == policy).collect()
    };
    let lru = series("lru");
    assert_eq!(lru.len(), 5);
    let caps: Vec<f64> = lru.iter().map(|p| f(p, "host_blocks")).collect();
    assert_eq!(caps, [250.0, 500.0, 1000.0, 2000.0, 50000.0], "sorted");
    let infinite = f(lru[0], "infinite_hit_rate");
    for pair in lru.windows(2) {
        assert!(
            f(pair[1], "hit_rate") >= f(pair[0], "hit_rate"),
            "LRU hit rate fell with more capacity: {v}"
        );
    }
    for p in &lru {
        let (hit, reference) = (f(p, "hit_rate"), f(p, "lru_hit_rate"));
        assert!((hit - reference).abs() <= 0.001, "{p}");
        assert_eq!(f(p, "infinite_hit_rate"), infinite);
    }
    assert!(f(lru[0], "hit_rate") < infinite, "250 blocks must miss");
    assert_eq!(f(lru[4], "hit_rate"), infinite, "room for every block");
    let s3 = series("s3fifo");
    assert_eq!(s3.len(), 5);
    assert_eq!(f(s3[4], "hit_rate"), infinite);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("<svg") && svg_text.contains("s3fifo"));
    let png = std::fs::read(svg.with_extension("png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5000);
}

/// `name{labels} value` lines of a Prometheus text page, by name and sorted labels.
fn scrape(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    let (head, body) = page.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut out = std::collections::BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        out.insert(name, value.parse().unwrap());
    }
    out
}

#[test]
fn metrics_addr_serves_the_cache_counters() {
    use std::io::BufRead;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = kvmem()
        .arg("replay")
        .arg(trace())
        .args(args(
            "--block-bytes 4096 --json --limit 600 --host-blocks 300 --disk-blocks 2000 --metrics-hold 120 --metrics-addr",
        ))
        .arg(addr.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The report is printed before the hold: read it, then scrape the final values.
    let mut text = String::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let end = line == "}";
        text += &line;
        if end {
            break;
        }
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("no report ({e}): {text}")
    });
    let m = scrape(addr);
    let _ = child.kill();
    let _ = child.wait();
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} not served: {m:?}"));
    let evictions = f(&v, "tiers.host.evictions");
    assert!(
        evictions > 0.0 && f(&v, "tiers.disk.bytes_out") > 0.0,
        "{v}"
    );
    assert_eq!(get("kvmem_cache_evictions_total{tier=\"host\"}"), evictions);
    assert_eq!(
        get("kvmem_cache_bytes_total{direction=\"in\",tier=\"host\"}"),
        f(&v, "tiers.host.bytes_in")
    );
    assert_eq!(
        get("kvmem_cache_bytes_total{direction=\"out\",tier=\"disk\"}"),
        f(&v, "tiers.disk.bytes_out")
    );
    assert_eq!(
        get("kvmem_cache_op_seconds_count{op=\"load\"}"),
        f(&v, "prefix_load_ms.n"),
        "one load per request with blocks below the GPU tier"
    );
    assert_eq!(get("kvmem_cache_ops_in_flight"), 0.0);
}
