//! What one pass over a copy list tells the methods that run it: its size, its shortest and
//! longest copy, the most pieces the copy kernel splits it into, and where its host side lies
//! and whether it comes in host order.
//!
//! Method resolution, the kernel's splitting, the staged method's descriptor bound and host
//! ordering each used to walk the list on their own before the first copy could start: on the
//! H200 machine, for a 65,536-copy vLLM offload, resolving took 0.17 ms and the staged method's
//! passes up to its first DMA 0.36 ms, the GPU idle meanwhile (docs/PERFORMANCE.md, sixth
//! session). They now read one [`Shape`]. That one pass still costs about 0.3 ms there (the
//! list, 1.5 MB, is mostly out of cache by then); folding the shape into the planner as it
//! makes each copy instead was tried and made planning twice as slow (120 → 265 µs hot), so
//! the list is walked once here.

use super::{DeviceCopy, KERNEL_MIN_PIECE, Location};

/// A copy list's [`Shape`], computed in one pass by [`Shape::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    /// Copies in the list.
    pub(super) count: usize,
    /// Their bytes (saturating).
    pub(super) total: u64,
    /// The shortest copy's length (`u64::MAX` for an empty list).
    pub(super) shortest: u64,
    /// The longest copy's length (0 for an empty list).
    pub(super) longest: u64,
    /// The sum over the copies of their length in [`KERNEL_MIN_PIECE`]s, rounded up: the most
    /// pieces the copy kernel's splitting makes of them (saturating).
    pub(super) pieces: u64,
    /// The host side, when one side is pinned host memory.
    pub(super) host: Option<HostSpan>,
}

/// Where the host side of a copy list lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HostSpan {
    /// True when the destinations are the host's (device to host, or host to host).
    pub(super) is_dst: bool,
    /// The lowest host address.
    pub(super) lo: u64,
    /// The end of the highest host range (saturating).
    pub(super) hi: u64,
    /// True when the host addresses never decrease along the list.
    pub(super) ordered: bool,
}

impl HostSpan {
    /// The host address of `c`.
    pub(super) fn of(&self, c: &DeviceCopy) -> u64 {
        if self.is_dst { c.dst } else { c.src }
    }
}

impl Shape {
    /// The shape of `copies` from `src` to `dst`, in one pass.
    pub(super) fn between(copies: &[DeviceCopy], src: Location, dst: Location) -> Self {
        let host_is_dst = match (src, dst) {
            (_, Location::Host) => Some(true),
            (Location::Host, _) => Some(false),
            _ => None,
        };
        Self::of(copies, host_is_dst)
    }

    /// The shape of `copies`, in one pass; their host side is the destination's for
    /// `Some(true)`, the source's for `Some(false)`, and none is looked at for `None`.
    pub(super) fn of(copies: &[DeviceCopy], host_is_dst: Option<bool>) -> Self {
        let (mut total, mut shortest, mut longest, mut pieces) = (0u64, u64::MAX, 0u64, 0u64);
        let mut tally = |len: u64| {
            total = total.saturating_add(len);
            shortest = shortest.min(len);
            longest = longest.max(len);
            pieces = pieces.saturating_add(len.div_ceil(KERNEL_MIN_PIECE));
        };
        let host = match host_is_dst {
            None => {
                copies.iter().for_each(|c| tally(c.len));
                None
            }
            Some(is_dst) => {
                let (mut lo, mut hi, mut ordered, mut last) = (u64::MAX, 0u64, true, 0u64);
                for c in copies {
                    tally(c.len);
                    let at = if is_dst { c.dst } else { c.src };
                    lo = lo.min(at);
                    hi = hi.max(at.saturating_add(c.len));
                    ordered &= at >= last;
                    last = at;
                }
                Some(HostSpan {
                    is_dst,
                    lo,
                    hi,
                    ordered,
                })
            }
        };
        Self {
            count: copies.len(),
            total,
            shortest,
            longest,
            pieces,
            host,
        }
    }

    /// The shape, for choosing a method, of a list of `total` bytes whose first copies these
    /// are: its count and pieces scaled by `total` over these copies' bytes, its host side one
    /// run or not as `one_run` says. Only method resolution reads it.
    pub(super) fn scaled_to(&self, total: u64, one_run: bool) -> Self {
        if self.total == 0 || total < self.total {
            return *self;
        }
        let scale = |n: u64| {
            u64::try_from(u128::from(n) * u128::from(total) / u128::from(self.total))
                .unwrap_or(u64::MAX)
        };
        Self {
            count: usize::try_from(scale(self.count as u64)).unwrap_or(usize::MAX),
            total,
            pieces: scale(self.pieces),
            host: self.host.map(|h| HostSpan {
                hi: if one_run {
                    h.lo.saturating_add(total)
                } else {
                    u64::MAX
                },
                ..h
            }),
            ..*self
        }
    }

    /// The average copy length (0 for an empty list).
    pub(super) fn average(&self) -> u64 {
        self.total / self.count.max(1) as u64
    }

    /// True when the host ranges add up to the run from the lowest to the highest address (one
    /// run, unless sources overlap).
    pub(super) fn host_is_one_run(&self) -> bool {
        self.host
            .is_some_and(|h| h.hi.saturating_sub(h.lo) == self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(src: u64, dst: u64, len: u64) -> DeviceCopy {
        DeviceCopy { src, dst, len }
    }

    #[test]
    fn one_pass_tells_what_the_separate_ones_did() {
        let mut rng = fastrand::Rng::with_seed(5);
        for round in 0..200 {
            let n = rng.usize(0..50);
            let copies: Vec<DeviceCopy> = (0..n)
                .map(|_| copy(rng.u64(0..1 << 20), rng.u64(0..1 << 20), rng.u64(0..70_000)))
                .collect();
            let (src, dst) = match round % 3 {
                0 => (Location::Device(0), Location::Host),
                1 => (Location::Host, Location::Device(1)),
                _ => (Location::Device(0), Location::Device(0)),
            };
            let s = Shape::between(&copies, src, dst);
            let lens = || copies.iter().map(|c| c.len);
            assert_eq!(s.count, n);
            assert_eq!(s.total, lens().sum::<u64>());
            assert_eq!(s.shortest, lens().min().unwrap_or(u64::MAX));
            assert_eq!(s.longest, lens().max().unwrap_or(0));
            assert_eq!(
                s.pieces,
                lens().map(|l| l.div_ceil(KERNEL_MIN_PIECE)).sum::<u64>()
            );
            match (round % 3, s.host) {
                (2, None) => {}
                (r, Some(h)) if r < 2 => {
                    let at = |c: &DeviceCopy| if r == 0 { c.dst } else { c.src };
                    assert_eq!(h.is_dst, r == 0);
                    assert_eq!(h.lo, copies.iter().map(at).min().unwrap_or(u64::MAX));
                    assert_eq!(
                        h.hi,
                        copies.iter().map(|c| at(c) + c.len).max().unwrap_or(0)
                    );
                    assert_eq!(h.ordered, copies.windows(2).all(|w| at(&w[0]) <= at(&w[1])));
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_head_scaled_to_its_transfer_takes_the_transfers_host_side() {
        let run: Vec<DeviceCopy> = (0..8u64)
            .map(|k| copy(k * 100, 4096 + ((k * 5) % 8) * 16, 16))
            .collect();
        let head = Shape::between(&run, Location::Device(0), Location::Host);
        let whole = head.scaled_to(64 * 16, true);
        assert_eq!((whole.count, whole.total, whole.average()), (64, 1024, 16));
        assert!(whole.host_is_one_run());
        assert!(!head.scaled_to(64 * 16, false).host_is_one_run());
        // A head that is no run of its own, of a transfer that is one.
        let mut holed = run.clone();
        holed[3].dst += 1 << 20;
        let holed = Shape::between(&holed, Location::Device(0), Location::Host);
        assert!(holed.scaled_to(1 << 30, true).host_is_one_run());
        assert_eq!(head.scaled_to(8, false), head, "never scaled down");
    }

    #[test]
    fn a_host_run_is_told_from_a_holed_one() {
        let run: Vec<DeviceCopy> = (0..8u64)
            .map(|k| copy(k * 100, 4096 + ((k * 5) % 8) * 16, 16))
            .collect();
        let s = Shape::between(&run, Location::Device(0), Location::Host);
        assert!(s.host_is_one_run());
        assert!(!s.host.unwrap().ordered);
        let mut holed = run.clone();
        holed[3].dst += 1 << 20;
        assert!(!Shape::between(&holed, Location::Device(0), Location::Host).host_is_one_run());
        assert!(!Shape::of(&run, None).host_is_one_run());
    }
}
