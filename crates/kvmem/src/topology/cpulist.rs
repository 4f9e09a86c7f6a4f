use crate::error::{ConfigError, Error, Result};

/// Largest CPU number accepted in a list; guards against a malformed range allocating gigabytes.
const MAX_CPU: u32 = 1 << 20;

/// Parses a kernel CPU list such as `0-3,8,10-11` (also `0-15:2` strides, empty for none).
///
/// # Errors
/// [`ConfigError::Topology`] for malformed text, reversed ranges or CPU numbers above 2^20.
pub(crate) fn parse_cpu_list(text: &str) -> Result<Vec<u32>> {
    let bad = |why: &str| Error::Config(ConfigError::Topology(format!("cpu list {text:?}: {why}")));
    let mut cpus = Vec::new();
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (range, stride) = match part.split_once(':') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| bad("bad stride"))?),
            None => (part, 1),
        };
        if stride == 0 {
            return Err(bad("zero stride"));
        }
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u32>().map_err(|_| bad("bad number"))?,
                b.trim().parse::<u32>().map_err(|_| bad("bad number"))?,
            ),
            None => {
                let n = range.parse::<u32>().map_err(|_| bad("bad number"))?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(bad("range runs backwards"));
        }
        if hi > MAX_CPU {
            return Err(bad("cpu number too large"));
        }
        cpus.extend((lo..=hi).step_by(stride as usize));
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPUs as a compact kernel-style list (`0-3,8`).
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_gaps_and_strides() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("0-6:3").unwrap(), [0, 3, 6]);
        assert_eq!(parse_cpu_list("5,1,5").unwrap(), [1, 5]);
        assert_eq!(format_cpu_list(&[11, 0, 1, 2, 3, 8, 10]), "0-3,8,10-11");
        for bad in ["3-1", "a", "1-", "0-4:0", "4294967295", "1,,x"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }
}
