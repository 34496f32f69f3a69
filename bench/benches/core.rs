//! The scheduling-core benchmark (issue 2): dispatch + complete pairs per
//! second through the pure state machine, one thread, no log, no network,
//! with 1,000,000 jobs waiting across 100 queues and 1,000 running, at
//! several shares of the waiting jobs blocked by a full tag rule; and bytes
//! of memory per waiting job.
//!
//! Run: `cargo bench -p lanes-bench --bench core [-- --runs 5 ...]`
//! (`--help` lists the options). Results go to docs/BENCHMARKS.md.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use lanes_bench::{list, CoreBench, CoreConfig, CountingAllocator, PairsReport};
use mimalloc::MiMalloc;

#[global_allocator]
static ALLOCATOR: CountingAllocator<MiMalloc> = CountingAllocator::new(MiMalloc);

/// Target of issue 2: pairs per second, at every blocked share.
const PAIRS_PER_SECOND_MIN: f64 = 1_000_000.0;
/// Target of issue 2: bytes per waiting job, payload aside.
const BYTES_PER_WAITING_JOB_MAX: f64 = 300.0;
/// Target of issue 2: the most-blocked figure within this factor of the
/// unblocked one.
const BLOCKED_SLOWDOWN_MAX: f64 = 2.0;

const USAGE: &str = "\
usage: core [--jobs N] [--queues N] [--agents N] [--slots N] [--run-size N]
            [--blocked P,P,...] [--pairs N] [--warmup N] [--runs N] [--check]
            [--same-process]

  --jobs N       jobs waiting once the agents are busy   (1000000)
  --queues N     queues the jobs are spread over         (100)
  --agents N     agents                                  (100)
  --slots N      slots per agent                         (10)
  --run-size N   jobs per submitted run                  (100)
  --blocked P,.. percent of waiting jobs blocked, each a scenario (0,90,99)
  --pairs N      pairs per measured run                  (1000000)
  --warmup N     pairs before the measured runs          (100000)
  --runs N       measured runs per scenario              (5)
  --check        run the scheduler's full invariant check after each scenario
  --same-process run every scenario in this process (by default each runs
                 in a fresh child process, so no scenario inherits the heap
                 of another and resident growth means something)";

/// Marks the line a child process reports its scenario on.
const RESULT_PREFIX: &str = "scenario-result";

struct Options {
    base: CoreConfig,
    blocked: Vec<u32>,
    pairs: u64,
    warmup: u64,
    runs: usize,
    check: bool,
    same_process: bool,
    /// Set in a child process: report the one scenario for the parent.
    child: bool,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        base: CoreConfig {
            waiting_jobs: 1_000_000,
            queues: 100,
            agents: 100,
            slots_per_agent: 10,
            jobs_per_run: 100,
            blocked_percent: 0,
        },
        blocked: vec![0, 90, 99],
        pairs: 1_000_000,
        warmup: 100_000,
        runs: 5,
        check: false,
        same_process: false,
        child: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            "--jobs" => options.base.waiting_jobs = value()?.parse()?,
            "--queues" => options.base.queues = value()?.parse()?,
            "--agents" => options.base.agents = value()?.parse()?,
            "--slots" => options.base.slots_per_agent = value()?.parse()?,
            "--run-size" => options.base.jobs_per_run = value()?.parse()?,
            "--blocked" => options.blocked = list(&value()?, |s| Ok(s.parse()?))?,
            "--pairs" => options.pairs = value()?.parse()?,
            "--warmup" => options.warmup = value()?.parse()?,
            "--runs" => options.runs = value()?.parse()?,
            "--check" => options.check = true,
            "--same-process" => options.same_process = true,
            "--child" => options.child = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if options.runs == 0 || options.pairs == 0 || options.blocked.is_empty() {
        bail!("need at least one run, one pair and one scenario\n{USAGE}");
    }
    Ok(options)
}

struct Scenario {
    blocked_percent: u32,
    median: f64,
    min: f64,
    max: f64,
    bytes_per_waiting_job: f64,
    /// Resident set growth per waiting job; NaN where unknown.
    resident_per_waiting_job: f64,
}

impl Scenario {
    /// The line a child prints for its parent.
    fn encode(&self) -> String {
        format!(
            "{RESULT_PREFIX} {} {} {} {} {} {}",
            self.blocked_percent,
            self.median,
            self.min,
            self.max,
            self.bytes_per_waiting_job,
            self.resident_per_waiting_job
        )
    }

    fn decode(line: &str) -> anyhow::Result<Scenario> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(
            fields.len() == 7 && fields[0] == RESULT_PREFIX,
            "bad result line {line:?}"
        );
        Ok(Scenario {
            blocked_percent: fields[1].parse()?,
            median: fields[2].parse()?,
            min: fields[3].parse()?,
            max: fields[4].parse()?,
            bytes_per_waiting_job: fields[5].parse()?,
            resident_per_waiting_job: fields[6].parse()?,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let base = &options.base;
    if !options.child {
        println!(
            "scheduling core: {} waiting jobs over {} queues, {} agents x {} slots = {} running, \
             runs of {} jobs; {} measured runs of {} pairs after {} warm-up pairs",
            base.waiting_jobs,
            base.queues,
            base.agents,
            base.slots_per_agent,
            base.running_jobs(),
            base.jobs_per_run,
            options.runs,
            options.pairs,
            options.warmup
        );
    }
    let mut scenarios = Vec::new();
    for &blocked_percent in &options.blocked {
        let scenario = if options.same_process || options.child {
            run_scenario(&options, blocked_percent)?
        } else {
            run_child(blocked_percent)?
        };
        if options.child {
            println!("{}", scenario.encode());
        }
        scenarios.push(scenario);
    }
    if !options.child {
        report(&scenarios, options.runs);
    }
    Ok(())
}

/// Runs one scenario in a fresh copy of this program, with the same
/// options, and passes its output through.
fn run_child(blocked_percent: u32) -> anyhow::Result<Scenario> {
    let program = std::env::current_exe().context("finding this program")?;
    let mut args: Vec<String> = Vec::new();
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--blocked" => {
                given.next();
            }
            "--bench" => {}
            _ => args.push(arg),
        }
    }
    args.extend(["--blocked".to_string(), blocked_percent.to_string()]);
    args.push("--child".to_string());
    let output = Command::new(&program)
        .args(&args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    ensure!(
        output.status.success(),
        "the {blocked_percent}% scenario failed ({}):\n{stdout}",
        output.status
    );
    let mut result = None;
    for line in stdout.lines() {
        if line.starts_with(RESULT_PREFIX) {
            result = Some(Scenario::decode(line)?);
        } else {
            println!("{line}");
        }
    }
    result.context("the child reported no result")
}

fn run_scenario(options: &Options, blocked_percent: u32) -> anyhow::Result<Scenario> {
    let config = CoreConfig {
        blocked_percent,
        ..options.base.clone()
    };
    println!("\n-- {blocked_percent}% of waiting jobs blocked --");
    let (mut bench, setup) = CoreBench::build(config)?;
    println!(
        "setup: {} jobs in {} runs submitted in {:.3} s: {:.0} jobs/s",
        setup.jobs_submitted,
        setup.runs_submitted,
        setup.submit_time.as_secs_f64(),
        setup.jobs_per_second()
    );
    let resident = setup
        .resident_bytes_per_waiting_job()
        .map_or("unknown".to_string(), |bytes| format!("{bytes:.1}"));
    println!(
        "memory: {:.1} bytes allocated per waiting job ({} bytes for {} jobs); \
         resident growth {resident} bytes per waiting job",
        setup.bytes_per_waiting_job(),
        setup.bytes_allocated,
        setup.jobs_submitted
    );
    if options.warmup > 0 {
        bench.run_pairs(options.warmup)?;
    }
    let mut rates = Vec::with_capacity(options.runs);
    for run in 1..=options.runs {
        let report: PairsReport = bench.run_pairs(options.pairs)?;
        println!(
            "run {run}: {} pairs in {:.3} s: {:.0} pairs/s, {:.3} allocations per pair",
            report.pairs,
            report.time.as_secs_f64(),
            report.pairs_per_second(),
            report.allocations as f64 / report.pairs as f64
        );
        rates.push(report.pairs_per_second());
    }
    bench.check_steady()?;
    if options.check {
        let started = Instant::now();
        bench.check_invariants();
        println!(
            "invariants hold (checked in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    rates.sort_by(f64::total_cmp);
    Ok(Scenario {
        blocked_percent,
        median: (rates[(rates.len() - 1) / 2] + rates[rates.len() / 2]) / 2.0,
        min: rates[0],
        max: rates[rates.len() - 1],
        bytes_per_waiting_job: setup.bytes_per_waiting_job(),
        resident_per_waiting_job: setup.resident_bytes_per_waiting_job().unwrap_or(f64::NAN),
    })
}

fn report(scenarios: &[Scenario], runs: usize) {
    let unblocked = scenarios
        .iter()
        .find(|s| s.blocked_percent == 0)
        .map(|s| s.median);
    println!(
        "\n| blocked | pairs/s (median of {runs}) | min | max | ratio to 0 % \
         | bytes/waiting job | resident bytes/waiting job |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for s in scenarios {
        let ratio = unblocked.map_or("-".to_string(), |u| format!("{:.2}", s.median / u));
        println!(
            "| {} % | {:.0} | {:.0} | {:.0} | {ratio} | {:.1} | {:.1} |",
            s.blocked_percent,
            s.median,
            s.min,
            s.max,
            s.bytes_per_waiting_job,
            s.resident_per_waiting_job
        );
    }
    let slowest = scenarios
        .iter()
        .map(|s| s.median)
        .fold(f64::INFINITY, f64::min);
    let heaviest = scenarios
        .iter()
        .map(|s| s.bytes_per_waiting_job)
        .fold(0.0, f64::max);
    println!();
    println!(
        "target >= {PAIRS_PER_SECOND_MIN:.0} pairs/s: slowest median {slowest:.0}: {}",
        verdict(slowest >= PAIRS_PER_SECOND_MIN)
    );
    println!(
        "target <= {BYTES_PER_WAITING_JOB_MAX:.0} bytes per waiting job: {heaviest:.1}: {}",
        verdict(heaviest <= BYTES_PER_WAITING_JOB_MAX)
    );
    let most_blocked = scenarios
        .iter()
        .filter(|s| s.blocked_percent > 0)
        .max_by_key(|s| s.blocked_percent);
    if let (Some(unblocked), Some(most)) = (unblocked, most_blocked) {
        let ratio = most.median / unblocked;
        println!(
            "target {}% blocked within {BLOCKED_SLOWDOWN_MAX}x of 0%: ratio {ratio:.2} \
             (needs >= {:.2}): {}",
            most.blocked_percent,
            1.0 / BLOCKED_SLOWDOWN_MAX,
            verdict(ratio * BLOCKED_SLOWDOWN_MAX >= 1.0)
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}
