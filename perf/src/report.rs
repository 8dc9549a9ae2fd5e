//! perf's output: bdevperf's results table (reference/spdk.md §5) with p50/p99/p99.9 added, the
//! progress line, and the `--json-results` file in the schema of bdevperf's `perform_tests`,
//! with the percentiles and the latency histogram added so one run gives every plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::Workload;
use crate::job::JobResult;

/// Derived figures of one job.
pub struct JobFigures {
    pub runtime_s: f64,
    pub iops: f64,
    pub mibps: f64,
    pub fail_per_s: f64,
    pub timeout_per_s: f64,
    pub avg_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

pub fn figures(result: &JobResult) -> JobFigures {
    let runtime_s = result.runtime_ns as f64 / 1e9;
    let succeeded = result.ios.saturating_sub(result.failed);
    // bdevperf counts successful completions (a verify write+read pair once) as IOs.
    let iops = succeeded as f64 / runtime_s;
    let quantile = |q: f64| {
        if result.latency_ns.is_empty() {
            0.0
        } else {
            result.latency_ns.value_at_quantile(q) as f64 / 1000.0
        }
    };
    JobFigures {
        runtime_s,
        iops,
        mibps: iops * result.spec.io_size_bytes as f64 / (1 << 20) as f64,
        fail_per_s: result.failed as f64 / runtime_s,
        timeout_per_s: 0.0,
        avg_us: if succeeded == 0 {
            0.0
        } else {
            result.latency_sum_ns as f64 / succeeded as f64 / 1000.0
        },
        min_us: result.latency_min_ns as f64 / 1000.0,
        max_us: result.latency_max_ns as f64 / 1000.0,
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
    }
}

fn job_line(result: &JobResult) -> String {
    let spec = &result.spec;
    if spec.workload.is_mixed() {
        format!(
            "Job: {} (Core Mask 0x{:x}, workload: {}, percentage: {}, depth: {}, IO size: {})",
            spec.bdev_name,
            1u64 << spec.core,
            spec.workload.name(),
            spec.rwmixread,
            spec.queue_depth,
            spec.io_size_bytes
        )
    } else {
        format!(
            "Job: {} (Core Mask 0x{:x}, workload: {}, depth: {}, IO size: {})",
            spec.bdev_name,
            1u64 << spec.core,
            spec.workload.name(),
            spec.queue_depth,
            spec.io_size_bytes
        )
    }
}

/// The final table, as bdevperf prints it, plus a percentile block.
pub fn table(results: &[JobResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{:>107}", "Latency(us)");
    let _ = writeln!(
        out,
        "\r {:<28}: {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "Device Information",
        "runtime(s)",
        "IOPS",
        "MiB/s",
        "Fail/s",
        "TO/s",
        "Average",
        "min",
        "max"
    );
    let mut total_iops = 0.0;
    let mut total_mibps = 0.0;
    let mut total_fail = 0.0;
    let mut weighted_latency = 0.0;
    let mut total_ios = 0u64;
    let mut total_min = f64::MAX;
    let mut total_max = 0.0f64;
    for result in results {
        let f = figures(result);
        let _ = writeln!(out, "{}", job_line(result));
        if result.failed > 0 {
            let _ = writeln!(
                out,
                "Job: {} ended in about {:.2} seconds with error",
                result.spec.bdev_name, f.runtime_s
            );
        }
        if matches!(
            result.spec.workload,
            crate::args::Workload::Verify | crate::args::Workload::Reset
        ) {
            // In IO units, as bdevperf prints it despite the label.
            let io_blocks = result.spec.io_blocks().max(1);
            let _ = writeln!(
                out,
                "\t Verification LBA range: start 0x{:x} length 0x{:x}",
                result.spec.first_block / io_blocks,
                result.spec.num_blocks / io_blocks
            );
        }
        let _ = writeln!(
            out,
            "\t {:<20}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
            result.spec.bdev_name,
            f.runtime_s,
            f.iops,
            f.mibps,
            f.fail_per_s,
            f.timeout_per_s,
            f.avg_us,
            f.min_us,
            f.max_us
        );
        total_iops += f.iops;
        total_mibps += f.mibps;
        total_fail += f.fail_per_s;
        let succeeded = result.ios.saturating_sub(result.failed);
        weighted_latency += f.avg_us * succeeded as f64;
        total_ios += succeeded;
        if succeeded > 0 {
            total_min = total_min.min(f.min_us);
        }
        total_max = total_max.max(f.max_us);
    }
    let _ = writeln!(out, "\r {}", "=".repeat(115));
    let avg = if total_ios == 0 { 0.0 } else { weighted_latency / total_ios as f64 };
    if total_min == f64::MAX {
        total_min = 0.0;
    }
    let _ = writeln!(
        out,
        "\r {:<28}: {:>10} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
        "Total", "", total_iops, total_mibps, total_fail, 0.0, avg, total_min, total_max
    );
    let _ = writeln!(out, "\n{:>59}", "Latency percentiles(us)");
    let _ = writeln!(
        out,
        "\r {:<28}: {:>10} {:>10} {:>10}",
        "Device Information", "p50", "p99", "p99.9"
    );
    for result in results {
        let f = figures(result);
        let _ = writeln!(
            out,
            "\t {:<20}: {:>10.2} {:>10.2} {:>10.2}",
            result.spec.bdev_name, f.p50_us, f.p99_us, f.p999_us
        );
    }
    for result in results {
        if result.mismatched_blocks > 0 {
            let _ = writeln!(
                out,
                "verify_only: {}: {} blocks match none of the patterns",
                result.spec.bdev_name, result.mismatched_blocks
            );
        }
        if result.prefill_failed > 0 {
            let _ = writeln!(
                out,
                "prefill: {}: {} IOs failed",
                result.spec.bdev_name, result.prefill_failed
            );
        }
    }
    out
}

/// Sub-buckets per power of two of the JSON histogram: bucket widths of 1/16 octave (at most
/// 6.25 % of their lower bound), as fine as a plotted distribution needs, and at most 16 buckets
/// per octave of latency, so a result stays a few KiB (the recording histogram keeps 3
/// significant digits: thousands of distinct values).
const BUCKETS_PER_OCTAVE_LOG2: u32 = 4;

/// The lower bound of the JSON bucket holding `ns`: values below 16 ns are their own bucket,
/// above that the octave's 16 equal parts.
fn bucket_floor_ns(ns: u64) -> (u64, u64) {
    let octave = 63 - ns.max(1).leading_zeros();
    if octave < BUCKETS_PER_OCTAVE_LOG2 {
        return (ns, ns + 1);
    }
    let shift = octave - BUCKETS_PER_OCTAVE_LOG2;
    let low = (ns >> shift) << shift;
    (low, low.saturating_add(1u64 << shift))
}

/// The timed IOs' latencies as `[{low_us, high_us, count}]`, ascending, empty buckets left out:
/// each IO counted once in the bucket whose `[low_us, high_us)` holds its latency. The
/// recording histogram's own buckets are narrower than these and aligned to powers of two, so
/// each falls inside one of them.
pub fn latency_buckets(latency_ns: &Histogram<u64>) -> Value {
    let mut counts: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for recorded in latency_ns.iter_recorded() {
        let value = latency_ns.lowest_equivalent(recorded.value_iterated_to());
        let (low, high) = bucket_floor_ns(value);
        counts.entry(low).or_insert((high, 0)).1 += recorded.count_at_value();
    }
    Value::Array(
        counts
            .into_iter()
            .map(|(low, (high, count))| {
                json!({
                    "low_us": low as f64 / 1000.0,
                    "high_us": high as f64 / 1000.0,
                    "count": count,
                })
            })
            .collect(),
    )
}

/// `perform_tests`' result schema, plus p50/p99/p99.9, the latency histogram and our
/// verify_only counts.
pub fn json(results: &[JobResult], core_count: usize) -> Value {
    let entries: Vec<Value> = results
        .iter()
        .map(|result| {
            let f = figures(result);
            let spec = &result.spec;
            let mut entry = json!({
                "job": spec.bdev_name,
                "core_mask": format!("0x{:x}", 1u64 << spec.core),
                "workload": spec.workload.name(),
            });
            if spec.workload.is_mixed() {
                entry["percentage"] = json!(spec.rwmixread);
            }
            entry["status"] = json!(result.status.name());
            if matches!(spec.workload, Workload::Verify | Workload::Reset) {
                let io_blocks = spec.io_blocks().max(1);
                let (start, length) = (spec.first_block / io_blocks, spec.num_blocks / io_blocks);
                entry["verify_range"] = json!({"start": start, "length": length});
            }
            for (key, value) in [
                ("queue_depth", json!(spec.queue_depth)),
                ("io_size", json!(spec.io_size_bytes)),
                ("runtime", json!(f.runtime_s)),
                ("iops", json!(f.iops)),
                ("mibps", json!(f.mibps)),
                ("io_failed", json!(result.failed)),
                ("io_timeout", json!(0)),
                ("avg_latency_us", json!(f.avg_us)),
                ("min_latency_us", json!(f.min_us)),
                ("max_latency_us", json!(f.max_us)),
                ("p50_latency_us", json!(f.p50_us)),
                ("p99_latency_us", json!(f.p99_us)),
                ("p99_9_latency_us", json!(f.p999_us)),
                ("mismatched_blocks", json!(result.mismatched_blocks)),
                ("latency_buckets", latency_buckets(&result.latency_ns)),
            ] {
                entry[key] = value;
            }
            entry
        })
        .collect();
    json!({"results": entries, "core_count": core_count})
}

/// The once-a-second progress figure: `%12.2f IOPS, %8.2f MiB/s`.
pub fn progress_line(iops: f64, mibps: f64) -> String {
    format!("{iops:>12.2} IOPS, {mibps:>8.2} MiB/s")
}

/// One `-S` period: each job's figures so far and the total, as bdevperf prints them.
pub fn period_table(rows: &[(&crate::job::JobSpec, f64, u64, u64, u64, u64)]) -> String {
    // (spec, elapsed_s, ios, failed, bytes, latency_sum_ns)
    let mut out = String::new();
    let (mut iops_total, mut mibps_total, mut fail_total, mut latency_total, mut ios_total) =
        (0.0, 0.0, 0.0, 0.0, 0u64);
    for (spec, elapsed_s, ios, failed, bytes, latency_sum_ns) in rows {
        let succeeded = ios.saturating_sub(*failed);
        let iops = succeeded as f64 / elapsed_s;
        let mibps = *bytes as f64 / elapsed_s / (1 << 20) as f64;
        let fail = *failed as f64 / elapsed_s;
        let avg =
            if succeeded == 0 { 0.0 } else { *latency_sum_ns as f64 / succeeded as f64 / 1000.0 };
        let _ = writeln!(
            out,
            "Job: {} (Core Mask 0x{:x}, workload: {}, depth: {}, IO size: {})",
            spec.bdev_name,
            1u64 << spec.core,
            spec.workload.name(),
            spec.queue_depth,
            spec.io_size_bytes
        );
        let _ = writeln!(
            out,
            "\t {:<20}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}",
            spec.bdev_name, elapsed_s, iops, mibps, fail, 0.0, avg, 0.0, 0.0
        );
        iops_total += iops;
        mibps_total += mibps;
        fail_total += fail;
        latency_total += avg * succeeded as f64;
        ios_total += succeeded;
    }
    let _ = writeln!(out, "\r {}", "=".repeat(115));
    let avg = if ios_total == 0 { 0.0 } else { latency_total / ios_total as f64 };
    let _ = writeln!(
        out,
        "\r {:<28}: {:>10} {:>10.2} {:>10.2} {:>10.2} {:>8.2} {:>10.2} {:>10.2} {:>10.2}\n",
        "Total", "", iops_total, mibps_total, fail_total, 0.0, avg, 0.0, 0.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sixteenths_of_an_octave() {
        assert_eq!(bucket_floor_ns(0), (0, 1));
        assert_eq!(bucket_floor_ns(15), (15, 16));
        assert_eq!(bucket_floor_ns(16), (16, 17));
        assert_eq!(bucket_floor_ns(31), (31, 32));
        assert_eq!(bucket_floor_ns(32), (32, 34));
        assert_eq!(bucket_floor_ns(1000), (992, 1024));
        assert_eq!(bucket_floor_ns(1024), (1024, 1088));
        assert_eq!(bucket_floor_ns(u64::MAX).0, 0xf800_0000_0000_0000);
    }

    #[test]
    fn every_recorded_latency_lands_in_the_bucket_that_holds_it() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
        let latencies = [1u64, 999, 1000, 1001, 5_000, 5_050, 250_000, 3_000_000_000];
        for (i, &ns) in latencies.iter().enumerate() {
            histogram.record_n(ns, i as u64 + 1).unwrap();
        }
        let buckets = latency_buckets(&histogram);
        let buckets = buckets.as_array().unwrap();
        let total: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(total, histogram.len());
        for (i, &ns) in latencies.iter().enumerate() {
            let us = ns as f64 / 1000.0;
            let holding = buckets
                .iter()
                .find(|b| {
                    b["low_us"].as_f64().unwrap() <= us && us < b["high_us"].as_f64().unwrap()
                })
                .unwrap_or_else(|| panic!("no bucket holds {ns} ns"));
            assert!(holding["count"].as_u64().unwrap() > i as u64, "{ns} ns: {holding}");
        }
        let lows: Vec<f64> = buckets.iter().map(|b| b["low_us"].as_f64().unwrap()).collect();
        assert!(lows.windows(2).all(|w| w[0] < w[1]), "ascending: {lows:?}");
    }

    #[test]
    fn an_empty_histogram_has_no_buckets() {
        let histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
        assert_eq!(latency_buckets(&histogram), json!([]));
    }
}
