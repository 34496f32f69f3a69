//! lanes-loadgen: the command line. Parses flags into a run configuration,
//! runs it against the target, prints and writes the reports, and exits
//! with a code that says whether the thresholds were met (see README.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use lanes_loadgen::lanes_target::{self, LanesTarget};
use lanes_loadgen::machine::Machine;
use lanes_loadgen::pacer::Arrivals;
use lanes_loadgen::peers::{self, PeerKind, PeerTarget};
use lanes_loadgen::report::{self, Thresholds, EXIT_FAILED};
use lanes_loadgen::run::{Preload, RunConfig};
use lanes_loadgen::workload::{JobDuration, Mode, Workload};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Drive a job server with many submitters and simulated agents, and
/// measure submit, queue-wait, dispatch and end-to-end latency, throughput
/// and dispatch order.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// lanes://HOST:PORT, beanstalkd://HOST:PORT or redis://HOST:PORT.
    #[arg(long, default_value = "lanes://127.0.0.1:7070")]
    target: String,
    /// Submitter token (Lanes).
    #[arg(long, env = "LANES_TOKEN", default_value = "", hide_env_values = true)]
    token: String,
    /// Agent token (Lanes); defaults to --token.
    #[arg(long, env = "LANES_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// Admin token (Lanes): needed to create queues and tag rules.
    #[arg(long, env = "LANES_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Open-loop arrival rate, submissions per second ("5000" or "5000/s").
    #[arg(long, default_value = "1000", value_parser = parse_rate)]
    rate: f64,
    /// Spacing of open-loop arrivals.
    #[arg(long, default_value = "poisson", value_parser = ["poisson", "fixed"])]
    arrivals: String,
    /// Closed loop instead: each connection keeps --outstanding submissions
    /// in flight. Latency then counts from the actual send.
    #[arg(long)]
    closed: bool,
    #[arg(long, default_value_t = 1)]
    outstanding: u32,

    /// Submitter connections.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Simulated agents (Lanes) or groups of worker connections (peers).
    #[arg(long, default_value_t = 4)]
    agents: u32,
    /// Slots per agent.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// Stop after submitting this many jobs.
    #[arg(long)]
    jobs: Option<u64>,
    /// How long to send for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to wait after sending for outstanding jobs to complete.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,

    /// Queues (names lg-0, lg-1, ...); 1 uses the default queue.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Priorities, one drawn uniformly per submission.
    #[arg(
        long,
        default_value = "0",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    priorities: Vec<i32>,
    /// Distinct values of the lg-tag tag (0: untagged).
    #[arg(long, default_value_t = 0)]
    tag_values: u32,
    /// Running jobs allowed per lg-tag value (a tag rule).
    #[arg(long)]
    tag_limit: Option<u32>,
    /// Jobs per submission: 1 is one job per request; more is a batch.
    #[arg(long, default_value_t = 1)]
    run_size: u32,
    /// Job run time: 0, 5ms, fixed:5ms, exp:5ms, uniform:1ms..10ms.
    #[arg(long, default_value = "0", value_parser = JobDuration::parse)]
    job_duration: JobDuration,
    /// Payload bytes per job (at least 24: the measuring header).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    /// Jobs to submit before the measured run, held back by a tag limit.
    #[arg(long)]
    preload: Option<u64>,
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    preload_priority: i32,
    #[arg(long, default_value_t = 100)]
    preload_tag_values: u32,
    #[arg(long, default_value_t = 1)]
    preload_limit: u32,

    /// Seed of every random choice; printed in every report.
    #[arg(long)]
    seed: Option<u64>,
    /// A send more than this many microseconds behind its intended time is
    /// late. Tokio's timers tick in milliseconds, so up to 1 ms of lag is
    /// the timer's; the default allows for it.
    #[arg(long, default_value_t = 2_000)]
    late_us: u64,
    /// Open loop: submissions in flight per connection.
    #[arg(long, default_value_t = 1_024)]
    in_flight: u32,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,

    /// Write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every histogram here, in HdrHistogram's interval log format.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Write a latency-by-percentile plot here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,

    #[arg(long)]
    max_p99_dispatch_us: Option<u64>,
    #[arg(long)]
    max_p999_dispatch_us: Option<u64>,
    #[arg(long)]
    max_p99_submit_us: Option<u64>,
    /// Jobs completed per second over the run.
    #[arg(long)]
    min_throughput: Option<f64>,
    #[arg(long)]
    max_violations: Option<u64>,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!(
            "{text:?}: expected a positive rate such as 5000 or 5000/s"
        )),
    }
}

enum Target {
    Lanes(LanesTarget),
    Peer(PeerTarget),
}

fn build(args: &Args) -> anyhow::Result<(RunConfig, Target, Thresholds)> {
    let queues = if args.queues <= 1 {
        vec![lanes::model::DEFAULT_QUEUE.to_string()]
    } else {
        (0..args.queues).map(|i| format!("lg-{i}")).collect()
    };
    let workload = Workload {
        queues,
        priorities: args.priorities.clone(),
        tag_values: args.tag_values,
        tag_limit: args.tag_limit,
        run_size: args.run_size,
        job_duration: args.job_duration,
        payload_bytes: args.payload_bytes,
    };
    workload.validate().map_err(anyhow::Error::msg)?;
    if args.connections == 0
        || args.agents == 0
        || args.slots == 0
        || args.outstanding == 0
        || args.in_flight == 0
    {
        bail!("--connections, --agents, --slots, --outstanding and --in-flight must be at least 1");
    }
    let mode = if args.closed {
        Mode::Closed {
            outstanding: args.outstanding,
        }
    } else {
        Mode::Open {
            rate_per_second: args.rate,
            arrivals: if args.arrivals == "fixed" {
                Arrivals::Fixed
            } else {
                Arrivals::Poisson
            },
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let config = RunConfig {
        workload,
        mode,
        connections: args.connections,
        agents: args.agents,
        slots_per_agent: args.slots,
        jobs: args.jobs,
        duration: if args.closed && args.jobs.is_some() && args.duration == Duration::from_secs(10)
        {
            // A job count bounds a closed run; the default duration does not.
            Duration::from_secs(24 * 3600)
        } else {
            args.duration
        },
        drain_timeout: args.drain_timeout,
        seed,
        late_threshold: Duration::from_micros(args.late_us),
        in_flight_max: args.in_flight,
        preload: args.preload.map(|jobs| Preload {
            jobs,
            priority: args.preload_priority,
            tag_values: args.preload_tag_values,
            limit: args.preload_limit,
        }),
        progress: !args.quiet,
    };
    let (scheme, address) = args
        .target
        .split_once("://")
        .with_context(|| format!("--target {:?}: expected SCHEME://HOST:PORT", args.target))?;
    let target = match scheme {
        "lanes" => {
            if args.token.is_empty() {
                bail!("give a submitter token: --token or LANES_TOKEN");
            }
            Target::Lanes(LanesTarget {
                address: address.to_string(),
                submitter_token: args.token.clone().into_bytes(),
                agent_token: args
                    .agent_token
                    .clone()
                    .unwrap_or_else(|| args.token.clone())
                    .into_bytes(),
                admin_token: args.admin_token.clone().map(String::into_bytes),
            })
        }
        "beanstalkd" | "beanstalk" => Target::Peer(PeerTarget {
            kind: PeerKind::Beanstalkd,
            address: address.to_string(),
        }),
        "redis" => Target::Peer(PeerTarget {
            kind: PeerKind::Redis,
            address: address.to_string(),
        }),
        other => bail!("--target scheme {other:?}: expected lanes, beanstalkd or redis"),
    };
    let thresholds = Thresholds {
        max_p99_dispatch_us: args.max_p99_dispatch_us,
        max_p999_dispatch_us: args.max_p999_dispatch_us,
        max_p99_submit_us: args.max_p99_submit_us,
        min_throughput: args.min_throughput,
        max_violations: args.max_violations,
    };
    Ok((config, target, thresholds))
}

async fn run(args: Args) -> anyhow::Result<u8> {
    let (mut config, target, thresholds) = build(&args)?;
    if let (Target::Peer(_), Mode::Closed { outstanding }) = (&target, config.mode) {
        // The peer clients do not pipeline: outstanding requests become
        // connections.
        config.connections *= outstanding;
    }
    let machine = Machine::read();
    eprintln!(
        "lanes-loadgen: seed {} → {} ({})",
        config.seed,
        args.target,
        config.mode.label()
    );
    let result = match &target {
        Target::Lanes(lanes) => lanes_target::run(&config, lanes).await?,
        Target::Peer(peer) => peers::run(&config, peer).await?,
    };
    print!(
        "{}",
        report::terminal(&config, &result, &thresholds, &machine)
    );
    if let Some(path) = &args.json {
        let summary = report::summary_json(&config, &result, &thresholds, &machine);
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.hdr_log {
        report::write_hdr_log(path, &result)?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report::percentile_svg(&result))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(thresholds.exit_code(&report::observed(&result)))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The generator's own stalls would count as the server's latency.
    if let Err(error) = lanes::allocator::tune_for_latency() {
        eprintln!("lanes-loadgen: transparent huge pages stay on ({error}): expect latency spikes");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lanes-loadgen: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("lanes-loadgen: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
