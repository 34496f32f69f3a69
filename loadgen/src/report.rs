//! Turns a run's result into reports: the terminal table, the JSON
//! summary, the HDR interval log, the SVG percentile plot, and the verdict
//! on `--max-*`/`--min-*` thresholds. Writes files only where told.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::machine::Machine;
use crate::metrics::{series_values, Counters, Metric, Percentiles};
use crate::run::{RunConfig, RunResult};

/// Exit code: the run went as configured and met every threshold.
pub const EXIT_OK: u8 = 0;
/// Exit code: the run could not be done (connection, setup, I/O).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad arguments (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the run completed but missed a threshold.
pub const EXIT_THRESHOLD: u8 = 3;

/// Seconds of the throughput series printed on the terminal (the JSON has
/// them all).
const SERIES_SHOWN_MAX: usize = 30;

/// Pass/fail limits; `None` is not checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub max_p99_dispatch_us: Option<u64>,
    pub max_p999_dispatch_us: Option<u64>,
    pub max_p99_submit_us: Option<u64>,
    /// Jobs completed per second, over the whole run.
    pub min_throughput: Option<f64>,
    pub max_violations: Option<u64>,
}

/// The numbers thresholds are judged on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub p99_dispatch_us: u64,
    pub p999_dispatch_us: u64,
    pub p99_submit_us: u64,
    pub throughput: f64,
    pub violations: u64,
}

impl Thresholds {
    /// Each missed threshold, as a sentence; empty when all are met.
    pub fn missed(&self, observed: &Observed) -> Vec<String> {
        let mut missed = Vec::new();
        let mut over = |name: &str, limit: Option<u64>, value: u64, unit: &str| {
            if let Some(limit) = limit {
                if value > limit {
                    missed.push(format!(
                        "{name} is {value}{unit}, above the limit {limit}{unit}"
                    ));
                }
            }
        };
        over(
            "p99 dispatch latency",
            self.max_p99_dispatch_us,
            observed.p99_dispatch_us,
            " µs",
        );
        over(
            "p99.9 dispatch latency",
            self.max_p999_dispatch_us,
            observed.p999_dispatch_us,
            " µs",
        );
        over(
            "p99 submit latency",
            self.max_p99_submit_us,
            observed.p99_submit_us,
            " µs",
        );
        over(
            "order violations",
            self.max_violations,
            observed.violations,
            "",
        );
        if let Some(limit) = self.min_throughput {
            if observed.throughput < limit {
                missed.push(format!(
                    "throughput is {:.0} jobs/s, below the limit {limit:.0} jobs/s",
                    observed.throughput
                ));
            }
        }
        missed
    }

    pub fn exit_code(&self, observed: &Observed) -> u8 {
        if self.missed(observed).is_empty() {
            EXIT_OK
        } else {
            EXIT_THRESHOLD
        }
    }
}

pub fn observed(result: &RunResult) -> Observed {
    let overall = &result.latencies.overall;
    let dispatch = Percentiles::of(overall.get(Metric::Dispatch));
    Observed {
        p99_dispatch_us: dispatch.p99,
        p999_dispatch_us: dispatch.p999,
        p99_submit_us: Percentiles::of(overall.get(Metric::SubmitAck)).p99,
        throughput: achieved_throughput(result),
        violations: result.order.as_ref().map_or(0, |o| o.violations),
    }
}

/// Jobs completed per second from the first send to the last completion.
pub fn achieved_throughput(result: &RunResult) -> f64 {
    Counters::get(&result.shared.counters.completed) as f64
        / result.total_elapsed.as_secs_f64().max(1e-9)
}

/// What the configuration offered, in jobs per second (open loop only).
pub fn offered_rate(config: &RunConfig) -> Option<f64> {
    match config.mode {
        crate::workload::Mode::Open {
            rate_per_second, ..
        } => Some(rate_per_second * f64::from(config.workload.run_size)),
        crate::workload::Mode::Closed { .. } => None,
    }
}

fn percentiles_json(p: &Percentiles) -> Value {
    json!({
        "count": p.count, "p50_us": p.p50, "p90_us": p.p90, "p99_us": p.p99,
        "p999_us": p.p999, "max_us": p.max, "mean_us": p.mean,
    })
}

pub fn configuration_json(config: &RunConfig) -> Value {
    let w = &config.workload;
    json!({
        "mode": config.mode.label(),
        "connections": config.connections,
        "agents": config.agents,
        "slots_per_agent": config.slots_per_agent,
        "jobs": config.jobs,
        "duration_s": config.duration.as_secs_f64(),
        "drain_timeout_s": config.drain_timeout.as_secs_f64(),
        "late_threshold_us": config.late_threshold.as_micros() as u64,
        "in_flight_max": config.in_flight_max,
        "queues": w.queues,
        "priorities": w.priorities,
        "tag_values": w.tag_values,
        "tag_limit": w.tag_limit,
        "run_size": w.run_size,
        "job_duration": format!("{:?}", w.job_duration),
        "payload_bytes": w.payload_bytes,
        "preload": config.preload.as_ref().map(|p| json!({
            "jobs": p.jobs, "priority": p.priority, "tag_values": p.tag_values, "limit": p.limit,
        })),
    })
}

pub fn machine_json(machine: &Machine) -> Value {
    json!({
        "hostname": machine.hostname, "cores": machine.cores,
        "kernel": machine.kernel, "cpu": machine.cpu_model,
    })
}

/// The JSON summary of a run.
pub fn summary_json(
    config: &RunConfig,
    result: &RunResult,
    thresholds: &Thresholds,
    machine: &Machine,
) -> Value {
    let c = &result.shared.counters;
    let mut metrics = serde_json::Map::new();
    for metric in Metric::ALL {
        let mut by_priority = serde_json::Map::new();
        for (priority, set) in &result.latencies.by_priority {
            by_priority.insert(
                priority.to_string(),
                percentiles_json(&Percentiles::of(set.get(metric))),
            );
        }
        metrics.insert(
            metric.name().to_string(),
            json!({
                "overall": percentiles_json(&Percentiles::of(result.latencies.overall.get(metric))),
                "by_priority": by_priority,
            }),
        );
    }
    let observed = observed(result);
    json!({
        "tool": "lanes-loadgen",
        "version": env!("CARGO_PKG_VERSION"),
        "target": result.target,
        "seed": config.seed,
        "started_unix_s": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as f64 - result.total_elapsed.as_secs_f64(),
        "configuration": configuration_json(config),
        "machine": machine_json(machine),
        "counts": {
            "sent_jobs": Counters::get(&c.sent),
            "acked_jobs": Counters::get(&c.acked),
            "rejected_submissions": Counters::get(&c.rejected),
            "dispatched_jobs": Counters::get(&c.dispatched),
            "completed_jobs": Counters::get(&c.completed),
            "completion_errors": Counters::get(&c.completion_errors),
            "late_sends": Counters::get(&c.late),
            "dropped_sends": Counters::get(&c.dropped),
            "send_lag_max_us": Counters::get(&c.send_lag_ns_max) / 1_000,
            "preload_dispatched": Counters::get(&result.shared.preload_dispatched),
            "preload_completed": Counters::get(&result.shared.preload_completed),
        },
        "rates": {
            "offered_jobs_per_s": offered_rate(config),
            "sent_jobs_per_s": Counters::get(&c.sent) as f64 / result.send_elapsed.as_secs_f64().max(1e-9),
            "achieved_jobs_per_s": observed.throughput,
        },
        "elapsed": {
            "sending_s": result.send_elapsed.as_secs_f64(),
            "total_s": result.total_elapsed.as_secs_f64(),
            "generator_cpu_s": result.cpu.as_secs_f64(),
            "drained": result.drained,
        },
        "latency": metrics,
        "series": {
            "completed_per_second": series_values(&c.completed_per_second),
            "acked_jobs_per_second": series_values(&c.acked_per_second),
        },
        "order": result.order.as_ref().map(|o| json!({
            "dispatches": o.dispatches,
            "judged_jobs": o.judged_jobs,
            "violations": o.violations,
            "examples": o.examples.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>(),
        })),
        "thresholds": {
            "missed": thresholds.missed(&observed),
        },
        "warnings": result.warnings,
    })
}

/// The terminal report.
pub fn terminal(
    config: &RunConfig,
    result: &RunResult,
    thresholds: &Thresholds,
    machine: &Machine,
) -> String {
    let mut out = String::new();
    let c = &result.shared.counters;
    let observed = observed(result);
    out.push_str(&format!(
        "lanes-loadgen {} → {}\n  {}\n  seed {}  connections {}  agents {} × {} slots  run size {}  payload {} B  durations {:?}\n  machine {} ({} cores, {}, {})\n",
        env!("CARGO_PKG_VERSION"),
        result.target,
        config.mode.label(),
        config.seed,
        config.connections,
        config.agents,
        config.slots_per_agent,
        config.workload.run_size,
        config.workload.payload_bytes,
        config.workload.job_duration,
        machine.hostname,
        machine.cores,
        machine.kernel,
        machine.cpu_model,
    ));
    let offered =
        offered_rate(config).map_or("closed loop".to_string(), |r| format!("{r:.0} jobs/s"));
    out.push_str(&format!(
        "  offered {offered}  sent {:.0} jobs/s  achieved {:.0} jobs/s (completed)\n",
        Counters::get(&c.sent) as f64 / result.send_elapsed.as_secs_f64().max(1e-9),
        observed.throughput
    ));
    out.push_str(&format!(
        "  jobs: sent {} acked {} rejected-submissions {} dispatched {} completed {} completion-errors {}\n  sends: late {} dropped {} max lag {:.2} ms  generator CPU {:.1} s over {:.1} s\n",
        Counters::get(&c.sent),
        Counters::get(&c.acked),
        Counters::get(&c.rejected),
        Counters::get(&c.dispatched),
        Counters::get(&c.completed),
        Counters::get(&c.completion_errors),
        Counters::get(&c.late),
        Counters::get(&c.dropped),
        Counters::get(&c.send_lag_ns_max) as f64 / 1e6,
        result.cpu.as_secs_f64(),
        result.total_elapsed.as_secs_f64(),
    ));
    let series = series_values(&c.completed_per_second);
    if !series.is_empty() {
        let shown: Vec<String> = series
            .iter()
            .take(SERIES_SHOWN_MAX)
            .map(u64::to_string)
            .collect();
        out.push_str(&format!(
            "  completed per second: {}{}\n",
            shown.join(" "),
            if series.len() > SERIES_SHOWN_MAX {
                " …"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "\n  {:<12} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "latency µs", "priority", "count", "p50", "p90", "p99", "p99.9", "max"
    ));
    for metric in Metric::ALL {
        let mut rows = vec![("all".to_string(), result.latencies.overall.get(metric))];
        if result.latencies.by_priority.len() > 1 {
            rows.extend(
                result
                    .latencies
                    .by_priority
                    .iter()
                    .map(|(p, set)| (p.to_string(), set.get(metric))),
            );
        }
        for (priority, histogram) in rows {
            let p = Percentiles::of(histogram);
            if p.count == 0 && priority != "all" {
                continue;
            }
            out.push_str(&format!(
                "  {:<12} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
                metric.name(),
                priority,
                p.count,
                p.p50,
                p.p90,
                p.p99,
                p.p999,
                p.max
            ));
        }
    }
    if let Some(order) = &result.order {
        out.push_str(&format!(
            "\n  order: {} violations in {} dispatches ({} jobs could be judged as waiting)\n",
            order.violations, order.dispatches, order.judged_jobs
        ));
        for v in &order.examples {
            out.push_str(&format!(
                "    queue {}: job {} (priority {}) dispatched while job {} (priority {}) waited\n",
                v.queue, v.dispatched_job, v.dispatched_priority, v.waiting_job, v.waiting_priority
            ));
        }
    } else {
        out.push_str("\n  order: not checked for this target\n");
    }
    for warning in &result.warnings {
        out.push_str(&format!("\n  WARNING: {warning}"));
    }
    if !result.warnings.is_empty() {
        out.push('\n');
    }
    let missed = thresholds.missed(&observed);
    for m in &missed {
        out.push_str(&format!("\n  THRESHOLD MISSED: {m}"));
    }
    if !missed.is_empty() {
        out.push('\n');
    }
    out
}

/// Writes every histogram (overall and per priority) as one interval of an
/// HDR histogram log, tagged `metric` or `metric/p<priority>`.
pub fn write_hdr_log(path: &Path, result: &RunResult) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut serializer = V2Serializer::new();
    let start = SystemTime::now() - result.total_elapsed;
    let mut writer = IntervalLogWriterBuilder::new()
        .with_base_time(start)
        .with_start_time(start)
        .add_comment("lanes-loadgen latency histograms, microseconds")
        .begin_log_with(&mut file, &mut serializer)
        .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))?;
    let duration = result.total_elapsed;
    let mut write = |tag: String, histogram: &Histogram<u64>| -> anyhow::Result<()> {
        let tag = hdrhistogram::serialization::interval_log::Tag::new(&tag)
            .ok_or_else(|| anyhow::anyhow!("tag {tag:?} is not valid in an HDR log"))?;
        writer
            .write_histogram(histogram, std::time::Duration::ZERO, duration, Some(tag))
            .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))
    };
    for metric in Metric::ALL {
        write(
            metric.name().to_string(),
            result.latencies.overall.get(metric),
        )?;
        for (priority, set) in &result.latencies.by_priority {
            write(format!("{}/p{priority}", metric.name()), set.get(metric))?;
        }
    }
    drop(writer);
    file.flush()?;
    Ok(())
}

/// An SVG plot of latency against percentile (log scale of 1/(1-q)), one
/// line per metric, the usual HdrHistogram view. Written by hand: a few
/// dozen lines of markup against a plotting crate's compile time.
pub fn percentile_svg(result: &RunResult) -> String {
    const WIDTH: f64 = 900.0;
    const HEIGHT: f64 = 520.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 170.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 60.0;
    const DECADES: f64 = 5.0; // up to 99.999 %
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut lines = Vec::new();
    let mut max_us = 1u64;
    for metric in Metric::ALL {
        let histogram = result.latencies.overall.get(metric);
        if histogram.is_empty() {
            continue;
        }
        let mut points = Vec::new();
        for step in 0..=200 {
            let x = DECADES * f64::from(step) / 200.0;
            let q = 1.0 - 10f64.powf(-x);
            let v = histogram.value_at_quantile(q).max(1);
            points.push((x, v));
        }
        max_us = max_us.max(histogram.max());
        lines.push((metric, points));
    }
    let y_max = (max_us as f64).log10().ceil().max(1.0);
    let px = |x: f64| LEFT + x / DECADES * (WIDTH - LEFT - RIGHT);
    let py = |v: u64| HEIGHT - BOTTOM - (v as f64).log10() / y_max * (HEIGHT - TOP - BOTTOM);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"24\" font-size=\"15\">Latency by percentile: {}</text>\n",
        xml_escape(&result.target)
    );
    for decade in 0..=DECADES as u32 {
        let x = px(f64::from(decade));
        let label = match decade {
            0 => "0%".to_string(),
            d => format!("{}%", 100.0 - 100.0 * 10f64.powi(-(d as i32))),
        };
        svg.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 18.0
        ));
    }
    for power in 0..=y_max as u32 {
        let v = 10u64.pow(power);
        let y = py(v);
        let label = if v >= 1_000_000 {
            format!("{} s", v / 1_000_000)
        } else if v >= 1_000 {
            format!("{} ms", v / 1_000)
        } else {
            format!("{v} µs")
        };
        svg.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n",
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 16.0
    ));
    for (i, (metric, points)) in lines.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, v)| format!("{:.1},{:.1}", px(*x), py(*v)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text>\n",
            path.join(" "),
            WIDTH - RIGHT + 10.0,
            TOP + 20.0 * (i as f64 + 1.0),
            metric.name()
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_pass_and_fail_with_documented_exit_codes() {
        let observed = Observed {
            p99_dispatch_us: 900,
            p999_dispatch_us: 2_000,
            p99_submit_us: 400,
            throughput: 10_000.0,
            violations: 0,
        };
        let none = Thresholds::default();
        assert_eq!(none.exit_code(&observed), EXIT_OK);
        let met = Thresholds {
            max_p99_dispatch_us: Some(900),
            max_p999_dispatch_us: Some(2_000),
            max_p99_submit_us: Some(500),
            min_throughput: Some(10_000.0),
            max_violations: Some(0),
        };
        assert_eq!(met.exit_code(&observed), EXIT_OK);
        let cases = [
            Thresholds {
                max_p99_dispatch_us: Some(899),
                ..Thresholds::default()
            },
            Thresholds {
                max_p999_dispatch_us: Some(1_999),
                ..Thresholds::default()
            },
            Thresholds {
                max_p99_submit_us: Some(399),
                ..Thresholds::default()
            },
            Thresholds {
                min_throughput: Some(10_001.0),
                ..Thresholds::default()
            },
        ];
        for thresholds in cases {
            assert_eq!(
                thresholds.exit_code(&observed),
                EXIT_THRESHOLD,
                "{thresholds:?}"
            );
            assert_eq!(thresholds.missed(&observed).len(), 1);
        }
        let violated = Observed {
            violations: 1,
            ..observed.clone()
        };
        let strict = Thresholds {
            max_violations: Some(0),
            ..Thresholds::default()
        };
        assert_eq!(strict.exit_code(&violated), EXIT_THRESHOLD);
        assert_eq!(
            strict.missed(&violated),
            vec!["order violations is 1, above the limit 0".to_string()]
        );
        assert_ne!(EXIT_THRESHOLD, EXIT_USAGE);
        assert_ne!(EXIT_THRESHOLD, EXIT_FAILED);
    }
}
