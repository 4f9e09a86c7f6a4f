//! A small structure-aware mutator for the peer-input fuzz runs (stable Rust; cargo-fuzz needs
//! nightly). Shared by `crates/kvmem/tests/fuzz_peer_input.rs` and the CLI's two-node decoder
//! tests (through `#[path]`).
//!
//! Each input is one of: a seed (a valid encoding), a seed with 1 to 8 mutations (bit flips,
//! random or syntax bytes, inserted, deleted, duplicated or truncated ranges, splices with
//! another seed, JSON numbers replaced by extreme ones, the first 4-byte little-endian field
//! after a magic overwritten), or fully random bytes.

#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};

/// How many inputs each decoder gets: `KVMEM_FUZZ_INPUTS`, else `default`.
pub fn inputs(default: u64) -> u64 {
    std::env::var("KVMEM_FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic per seed, no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that steer a JSON parser into its interesting branches.
const SYNTAX: &[u8] = b"{}[]\",:-+.0123456789eE \\ntrufalsn\x00\xff\xc3";

/// Numbers that sit on the edges of u32, u64, usize, i32 and f64.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "4294967295",
    "4294967296",
    "2147483648",
    "18446744073709551615",
    "18446744073709551616",
    "1099511627776",
    "33554433",
    "1e400",
    "-0",
    "0.5",
    "9999999999999999999999999",
];

/// Replaces one JSON number (a run of digits) in `b` by an extreme one.
fn swap_number(rng: &mut Rng, b: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..b.len())
        .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let s = starts[rng.below(starts.len())];
    let e = (s..b.len())
        .find(|&i| !b[i].is_ascii_digit())
        .unwrap_or(b.len());
    let n = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
    b.splice(s..e, n.iter().copied());
}

/// One random edit of `b`; `seeds` for splicing.
fn mutate_once(rng: &mut Rng, b: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = b.len();
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            b[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            b[i] = rng.next() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            b[i] = SYNTAX[rng.below(SYNTAX.len())];
        }
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| SYNTAX[rng.below(SYNTAX.len())]).collect();
            b.splice(i..i, bytes);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(16));
            b.drain(i..i + n);
        }
        5 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            let copy = b[i..i + n].to_vec();
            let at = rng.below(len + 1);
            b.splice(at..at, copy);
        }
        6 => b.truncate(rng.below(len + 1)),
        7 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        8 | 9 => swap_number(rng, b),
        10 if len >= 12 => {
            let v: u32 = match rng.below(4) {
                0 => u32::MAX,
                1 => 0,
                2 => (len - 12) as u32 + 1,
                _ => rng.next() as u32,
            };
            b[8..12].copy_from_slice(&v.to_le_bytes());
        }
        _ => b.push(rng.next() as u8),
    }
}

/// Input number `i` of a run over `seeds`.
pub fn input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(16) {
        0 => {
            let n = rng.below(256);
            (0..n).map(|_| rng.next() as u8).collect()
        }
        1 => seeds[rng.below(seeds.len())].clone(),
        _ => {
            let mut b = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(8) {
                mutate_once(rng, &mut b, seeds);
            }
            b
        }
    }
}

/// What one decoder did over a run.
#[derive(Debug, Default)]
pub struct Tally {
    /// Inputs run.
    pub inputs: u64,
    /// Inputs accepted.
    pub accepted: u64,
    /// Inputs refused with an error of the expected kind.
    pub refused: u64,
    /// Panics (must stay 0).
    pub panics: u64,
    /// Errors of an unexpected kind (must stay 0), with the first few.
    pub untyped: Vec<String>,
}

/// Runs `decode` over `n` inputs from `seeds`. `decode` returns `Ok(true)` when it accepted,
/// `Ok(false)` when it refused with an error of the kind expected, `Err(message)` for a refusal
/// of another kind.
pub fn run(
    name: &str,
    seed: u64,
    n: u64,
    seeds: &[Vec<u8>],
    mut decode: impl FnMut(&[u8]) -> Result<bool, String>,
) -> Tally {
    let mut rng = Rng::new(seed);
    let mut t = Tally::default();
    for _ in 0..n {
        let b = input(&mut rng, seeds);
        t.inputs += 1;
        match catch_unwind(AssertUnwindSafe(|| decode(&b))) {
            Ok(Ok(true)) => t.accepted += 1,
            Ok(Ok(false)) => t.refused += 1,
            Ok(Err(e)) => {
                if t.untyped.len() < 5 {
                    t.untyped.push(e);
                }
            }
            Err(_) => t.panics += 1,
        }
    }
    println!(
        "fuzz {name}: {} inputs, {} accepted, {} refused with a typed error, {} panics, {} \
         untyped errors",
        t.inputs,
        t.accepted,
        t.refused,
        t.panics,
        t.untyped.len()
    );
    t
}

/// Asserts a run saw no panic, no error of an unexpected kind, and both outcomes.
pub fn assert_clean(name: &str, t: &Tally) {
    assert_eq!(t.panics, 0, "{name}: decoder panicked");
    assert!(
        t.untyped.is_empty(),
        "{name}: untyped errors {:?}",
        t.untyped
    );
    assert!(
        t.accepted > 0 && t.refused > 0,
        "{name}: a run must both accept and refuse inputs: {t:?}"
    );
}
