//! Percentiles, error tallies, and process CPU time and memory read from /proc.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Percentiles of a sample set in microseconds (nearest-rank), as JSON in milliseconds.
pub fn percentiles_ms(samples_us: &mut [u64]) -> Value {
    if samples_us.is_empty() {
        return json!({ "count": 0 });
    }
    samples_us.sort_unstable();
    let n = samples_us.len();
    let at = |p: f64| -> f64 {
        let rank = ((p / 100.0) * n as f64 - 1e-9).ceil() as usize;
        samples_us[rank.clamp(1, n) - 1] as f64 / 1000.0
    };
    let mean = samples_us.iter().map(|&v| v as f64).sum::<f64>() / n as f64 / 1000.0;
    json!({
        "count": n,
        "min": round3(samples_us[0] as f64 / 1000.0),
        "mean": round3(mean),
        "p50": round3(at(50.0)),
        "p90": round3(at(90.0)),
        "p99": round3(at(99.0)),
        "p999": round3(at(99.9)),
        "max": round3(samples_us[n - 1] as f64 / 1000.0),
    })
}

pub fn median_us(samples: &mut [u64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    samples[(samples.len() - 1) / 2] as f64
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Failures counted by kind, with the first few details kept.
#[derive(Default, Debug)]
pub struct Errors {
    pub by_kind: BTreeMap<String, u64>,
    pub samples: Vec<String>,
}

impl Errors {
    const KEEP: usize = 10;

    pub fn add(&mut self, kind: &str, detail: impl Into<String>) {
        *self.by_kind.entry(kind.to_owned()).or_default() += 1;
        if self.samples.len() < Self::KEEP {
            self.samples.push(format!("{kind}: {}", detail.into()));
        }
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn merge(&mut self, other: Errors) {
        for (k, v) in other.by_kind {
            *self.by_kind.entry(k).or_default() += v;
        }
        for s in other.samples {
            if self.samples.len() < Self::KEEP {
                self.samples.push(s);
            }
        }
    }

    pub fn to_json(&self) -> Value {
        json!({ "total": self.total(), "by_kind": self.by_kind, "samples": self.samples })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU and memory of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let pid = pid?;
    Some(ProcSample {
        cpu_s: cpu_seconds(pid)?,
        rss_kib: rss_kib(pid)?,
    })
}

/// This process.
pub fn self_sample() -> Option<ProcSample> {
    sample(Some(std::process::id()))
}

/// CPU used between two samples, as JSON (with the memory at both ends).
pub fn delta_json(before: Option<ProcSample>, after: Option<ProcSample>) -> Value {
    match (before, after) {
        (Some(b), Some(a)) => json!({
            "cpu_s": round3(a.cpu_s - b.cpu_s),
            "rss_kib_before": b.rss_kib,
            "rss_kib_after": a.rss_kib,
        }),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles_ms(&mut v);
        assert_eq!(p["count"], 1000);
        assert_eq!(p["p50"], 500.0);
        assert_eq!(p["p99"], 990.0);
        assert_eq!(p["p999"], 999.0);
        assert_eq!(p["max"], 1000.0);
        assert_eq!(percentiles_ms(&mut [])["count"], 0);
        assert_eq!(median_us(&mut [5, 1, 3]), 3.0);
    }

    #[test]
    fn reads_its_own_process() {
        let s = self_sample().expect("/proc is readable");
        assert!(s.cpu_s >= 0.0);
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn tallies_errors() {
        let mut e = Errors::default();
        e.add("timeout", "a");
        e.add("timeout", "b");
        let mut o = Errors::default();
        o.add("eof", "c");
        e.merge(o);
        assert_eq!(e.total(), 3);
        assert_eq!(e.by_kind["timeout"], 2);
        assert_eq!(e.samples.len(), 3);
    }
}
