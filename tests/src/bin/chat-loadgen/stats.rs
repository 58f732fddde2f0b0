//! Delivery accounting: loss, duplicates, order and latency per subscriber,
//! merged into one report printed as a table and as one JSON line.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one subscriber saw.
#[derive(Debug)]
pub(crate) struct SubStats {
    /// End-to-end latency (client send → client receive), microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Message frames received (duplicates included).
    pub(crate) received: u64,
    /// Frames whose (publisher, n) was seen before.
    pub(crate) duplicated: u64,
    /// Frames older than one already received from the same publisher.
    pub(crate) out_of_order: u64,
    /// Frames whose room `seq` did not rise.
    pub(crate) seq_regressions: u64,
    last_seq: u64,
    seen: HashMap<u32, PubTrack>,
    /// Receive time of the last frame (Unix µs).
    pub(crate) last_receive_us: i64,
}

#[derive(Debug, Default)]
struct PubTrack {
    max_n: Option<u64>,
    seen: Vec<bool>,
}

impl SubStats {
    pub(crate) fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            received: 0,
            duplicated: 0,
            out_of_order: 0,
            seq_regressions: 0,
            last_seq: 0,
            seen: HashMap::new(),
            last_receive_us: 0,
        }
    }

    /// Records one message frame.
    pub(crate) fn record(&mut self, publisher: u32, n: u64, sent_us: i64, seq: u64, now_us: i64) {
        self.received += 1;
        self.last_receive_us = now_us;
        let _ = self.latency.record((now_us - sent_us).max(1) as u64);
        if seq <= self.last_seq {
            self.seq_regressions += 1;
        }
        self.last_seq = self.last_seq.max(seq);
        let t = self.seen.entry(publisher).or_default();
        let i = n as usize;
        if t.seen.len() <= i {
            t.seen.resize(i + 1, false);
        }
        if t.seen[i] {
            self.duplicated += 1;
            return;
        }
        t.seen[i] = true;
        if t.max_n.is_some_and(|m| n < m) {
            self.out_of_order += 1;
        }
        t.max_n = Some(t.max_n.map_or(n, |m| m.max(n)));
    }

    /// Distinct messages received.
    pub(crate) fn unique(&self) -> u64 {
        self.received - self.duplicated
    }
}

/// The result of one scenario run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) refused: u64,
    pub(crate) expected_deliveries: u64,
    pub(crate) received_deliveries: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) out_of_order: u64,
    pub(crate) seq_regressions: u64,
    pub(crate) duration_s: f64,
    pub(crate) deliveries_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// Scenario-specific figures (connect rate, RSS, …).
    #[serde(flatten)]
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Merges subscriber stats; `expected` is the total deliveries owed.
    pub(crate) fn from_subs(
        scenario: &str,
        subs: &[SubStats],
        expected: u64,
        start_us: i64,
    ) -> Self {
        let mut latency =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        let mut r = Report {
            scenario: scenario.into(),
            expected_deliveries: expected,
            ..Default::default()
        };
        let mut last = start_us;
        let mut unique = 0;
        for s in subs {
            let _ = latency.add(&s.latency);
            r.received_deliveries += s.received;
            r.duplicated += s.duplicated;
            r.out_of_order += s.out_of_order;
            r.seq_regressions += s.seq_regressions;
            unique += s.unique();
            last = last.max(s.last_receive_us);
        }
        r.lost = expected.saturating_sub(unique);
        r.duration_s = ((last - start_us).max(1) as f64) / 1e6;
        r.deliveries_per_s = r.received_deliveries as f64 / r.duration_s;
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        r.p50_ms = ms(0.5);
        r.p90_ms = ms(0.9);
        r.p99_ms = ms(0.99);
        r.p999_ms = ms(0.999);
        r.max_ms = latency.max() as f64 / 1000.0;
        r
    }

    /// Adds the publishers' send-to-ack times (`ack_p50_ms`, `ack_p99_ms`)
    /// and how many acks came out of send order.
    pub(crate) fn add_ack_latency(&mut self, ack_us: &[u64], out_of_order: u64) {
        let mut h =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        for &us in ack_us {
            let _ = h.record(us.max(1));
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        for (k, q) in [("ack_p50_ms", 0.5), ("ack_p99_ms", 0.99)] {
            self.extra.insert(k.into(), format!("{:.2}", ms(q)).into());
        }
        self.extra
            .insert("acks_out_of_order".into(), out_of_order.into());
    }

    /// Prints a human table, then the JSON line (prefixed `RESULT `).
    pub(crate) fn print(&self) {
        println!("scenario            {}", self.scenario);
        println!(
            "sent / acked        {} / {} (refused {})",
            self.sent, self.acked, self.refused
        );
        println!(
            "deliveries          expected {}  received {}",
            self.expected_deliveries, self.received_deliveries
        );
        println!(
            "lost / dup / ooo    {} / {} / {} (seq regressions {})",
            self.lost, self.duplicated, self.out_of_order, self.seq_regressions
        );
        println!(
            "rate                {:.0} deliveries/s over {:.2} s",
            self.deliveries_per_s, self.duration_s
        );
        println!(
            "latency ms          p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        );
        for (k, v) in &self.extra {
            println!("{k:<20}{v}");
        }
        println!("RESULT {}", serde_json::to_string(self).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_order_and_loss() {
        let mut s = SubStats::new();
        s.record(1, 0, 0, 1, 1000);
        s.record(1, 2, 0, 2, 2000);
        s.record(1, 1, 0, 3, 3000);
        s.record(1, 1, 0, 3, 3000);
        assert_eq!(
            (s.received, s.duplicated, s.out_of_order, s.seq_regressions),
            (4, 1, 1, 1)
        );
        let r = Report::from_subs("t", &[s], 4, 0);
        assert_eq!(r.lost, 1);
        assert!(r.max_ms >= 2.9);
    }
}
