//! The request planner: turns the compressed ranges of missing chunks into few ranged requests.
//!
//! Input is a set of gzip member ranges `[offset, end)` in one blob. The planner
//! 1. sorts them and unions overlapping ones (packed chunks share one member);
//! 2. bridges the gap between neighbours when fetching the gap costs less than another round trip
//!    (`max_gap`), or when the bridged span is still small (`min_fetch`) — but never past
//!    `max_request` bytes per range;
//! 3. groups the resulting ranges into requests (one `read_ranges` call each, a multi-range GET
//!    for the registry) of at most `max_request` bytes and `max_ranges_per_request` ranges.
//!
//! The cost model: at 20 ms RTT and 100 Mbit/s, 250 KB of transfer takes as long as one round
//! trip (0.020 s × 12.5 MB/s), so reading a gap up to that size is never slower than a second
//! request. `max_request` bounds memory per request and lets large reads proceed as several
//! requests in parallel.

use std::ops::Range;

/// Tunables of the planner and of the fetch concurrency budgets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Bridge gaps up to this many bytes between two needed ranges.
    pub max_gap: u64,
    /// Ranges whose combined span is at most this are fetched as one range whatever the gap.
    pub min_fetch: u64,
    /// Upper bound of one request (sum of its ranges), unless a single member is larger.
    pub max_request: u64,
    /// Upper bound of ranges in one multi-range request (keeps the `Range:` header short).
    pub max_ranges_per_request: usize,
    /// Concurrent requests for on-demand reads.
    pub on_demand_requests: usize,
    /// Concurrent requests for prefetch.
    pub prefetch_requests: usize,
    /// Concurrent requests for background fill.
    pub background_requests: usize,
}

impl Default for PlannerConfig {
    fn default() -> PlannerConfig {
        PlannerConfig {
            // 20 ms RTT × 100 Mbit/s = 250 KB: a smaller gap is cheaper to read than to skip.
            max_gap: 256 << 10,
            // Same break-even: a request this small is dominated by its round trip.
            min_fetch: 256 << 10,
            // 16 MiB = 1.3 s at 100 Mbit/s: long enough to amortise the RTT (1.5 % overhead),
            // short enough that prefetch pieces interleave and memory per request stays bounded.
            max_request: 16 << 20,
            // Registries and CDNs reject very long Range headers; 32 ranges stay under 1 KB.
            max_ranges_per_request: 32,
            // A FUSE mount runs a handful of reader threads; 8 keeps all of them busy.
            on_demand_requests: 8,
            // Two large requests saturate one link; more only adds contention with on-demand.
            prefetch_requests: 2,
            background_requests: 1,
        }
    }
}

/// One planned request: disjoint, sorted ranges fetched with one `read_ranges` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) ranges: Vec<Range<u64>>,
}

/// Plans requests covering every range in `members` (which must satisfy `start <= end`).
pub(crate) fn plan(members: &[Range<u64>], cfg: &PlannerConfig) -> Vec<Request> {
    let mut sorted: Vec<Range<u64>> = members
        .iter()
        .filter(|r| r.start < r.end)
        .cloned()
        .collect();
    sorted.sort_by_key(|r| (r.start, r.end));

    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in sorted {
        if let Some(cur) = merged.last_mut() {
            let overlaps = r.start < cur.end;
            let gap = r.start.saturating_sub(cur.end);
            let end = cur.end.max(r.end);
            let span = end - cur.start;
            let bridge = gap <= cfg.max_gap || span <= cfg.min_fetch;
            if overlaps || (bridge && span <= cfg.max_request) {
                cur.end = end;
                continue;
            }
        }
        merged.push(r);
    }

    let mut requests: Vec<Request> = Vec::new();
    let mut cur = Request { ranges: Vec::new() };
    let mut cur_bytes = 0u64;
    for r in merged {
        let len = r.end - r.start;
        let full = cur.ranges.len() >= cfg.max_ranges_per_request.max(1)
            || cur_bytes.saturating_add(len) > cfg.max_request;
        if !cur.ranges.is_empty() && full {
            requests.push(std::mem::replace(&mut cur, Request { ranges: Vec::new() }));
            cur_bytes = 0;
        }
        cur_bytes = cur_bytes.saturating_add(len);
        cur.ranges.push(r);
    }
    if !cur.ranges.is_empty() {
        requests.push(cur);
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_gap: u64, min_fetch: u64, max_request: u64, max_ranges: usize) -> PlannerConfig {
        PlannerConfig {
            max_gap,
            min_fetch,
            max_request,
            max_ranges_per_request: max_ranges,
            ..PlannerConfig::default()
        }
    }

    #[test]
    // Vectors of one range are the point of several cases.
    #[allow(clippy::single_range_in_vec_init)]
    fn table() {
        type Case = (
            &'static str,
            PlannerConfig,
            Vec<Range<u64>>,
            Vec<Vec<Range<u64>>>,
        );
        let cases: Vec<Case> = vec![
            ("empty", cfg(10, 0, 100, 4), vec![], vec![]),
            (
                "empty ranges dropped",
                cfg(10, 0, 100, 4),
                vec![5..5],
                vec![],
            ),
            (
                "adjacent merge",
                cfg(0, 0, 100, 4),
                vec![0..10, 10..20],
                vec![vec![0..20]],
            ),
            (
                "unsorted input with duplicates (packed members)",
                cfg(0, 0, 100, 4),
                vec![10..20, 0..10, 10..20],
                vec![vec![0..20]],
            ),
            (
                "gap within max_gap bridged",
                cfg(5, 0, 100, 4),
                vec![0..10, 15..20],
                vec![vec![0..20]],
            ),
            (
                "gap over max_gap kept as two ranges of one request",
                cfg(4, 0, 100, 4),
                vec![0..10, 15..20],
                vec![vec![0..10, 15..20]],
            ),
            (
                "small span bridged by min_fetch despite gap",
                cfg(0, 30, 100, 4),
                vec![0..10, 25..30],
                vec![vec![0..30]],
            ),
            (
                "bridging stops at max_request",
                cfg(100, 0, 25, 4),
                vec![0..10, 12..22, 24..34],
                vec![vec![0..22], vec![24..34]],
            ),
            (
                "max_ranges_per_request splits requests",
                cfg(0, 0, 1000, 2),
                vec![0..1, 10..11, 20..21],
                vec![vec![0..1, 10..11], vec![20..21]],
            ),
            (
                "a member larger than max_request is one request",
                cfg(0, 0, 10, 4),
                vec![0..50, 60..65],
                vec![vec![0..50], vec![60..65]],
            ),
            (
                "adjacent ranges respect max_request",
                cfg(0, 0, 10, 4),
                vec![0..8, 8..16],
                vec![vec![0..8], vec![8..16]],
            ),
            (
                "overlap always merges even past max_request",
                cfg(0, 0, 10, 4),
                vec![0..8, 4..16],
                vec![vec![0..16]],
            ),
        ];
        for (name, cfg, input, want) in cases {
            let got: Vec<Vec<Range<u64>>> =
                plan(&input, &cfg).into_iter().map(|r| r.ranges).collect();
            assert_eq!(got, want, "{name}");
            // Every input range is covered by exactly one planned range.
            for r in input.iter().filter(|r| r.start < r.end) {
                let covering = got
                    .iter()
                    .flatten()
                    .filter(|p| p.start <= r.start && r.end <= p.end)
                    .count();
                assert_eq!(covering, 1, "{name}: {r:?}");
            }
        }
    }

    #[test]
    fn default_gap_matches_the_rtt_bandwidth_product() {
        // 20 ms × 100 Mbit/s in bytes.
        let break_even = 100_000_000 / 8 * 20 / 1000;
        let gap = PlannerConfig::default().max_gap;
        assert!(
            gap.abs_diff(break_even) * 10 < break_even,
            "{gap} vs {break_even}"
        );
    }
}
