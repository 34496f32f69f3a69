//! Short runs against a real Lanes server in this process (loopback, a
//! temporary data folder): every job submitted is dispatched and completed,
//! the order checker finds nothing, and the binary's exit codes hold.
//! Timing figures are never asserted here: that is the benchmarks' job.

use std::process::Command;
use std::time::Duration;

use lanes::driver::Durability;
use lanes_loadgen::lanes_target::{self, LanesTarget};
use lanes_loadgen::metrics::{Counters, Metric};
use lanes_loadgen::pacer::Arrivals;
use lanes_loadgen::run::{RunConfig, RunResult};
use lanes_loadgen::workload::{JobDuration, Mode, Workload};
use lanes_tests::{Options, TestServer, ADMIN, AGENT, SUBMITTER};

fn target(server: &TestServer) -> LanesTarget {
    LanesTarget {
        address: server.address().to_string(),
        submitter_token: SUBMITTER.to_vec(),
        agent_token: AGENT.to_vec(),
        admin_token: Some(ADMIN.to_vec()),
    }
}

fn config(mode: Mode, run_size: u32, job_duration: JobDuration) -> RunConfig {
    RunConfig {
        workload: Workload {
            queues: vec!["lg-0".into(), "lg-1".into()],
            priorities: vec![0, 5, -3],
            tag_values: 4,
            tag_limit: None,
            run_size,
            job_duration,
            payload_bytes: 64,
        },
        mode,
        connections: 2,
        agents: 2,
        slots_per_agent: 8,
        jobs: Some(600),
        duration: Duration::from_millis(600),
        drain_timeout: Duration::from_secs(20),
        seed: 7,
        late_threshold: Duration::from_millis(1),
        in_flight_max: 256,
        preload: None,
        progress: false,
    }
}

fn assert_all_done(result: &RunResult) {
    let c = &result.shared.counters;
    let sent = Counters::get(&c.sent);
    assert!(sent > 0, "something was sent");
    assert_eq!(Counters::get(&c.rejected), 0);
    assert_eq!(Counters::get(&c.acked), sent, "every job acknowledged");
    assert_eq!(
        Counters::get(&c.dispatched),
        sent,
        "every job dispatched once"
    );
    assert_eq!(Counters::get(&c.completed), sent, "every job completed");
    assert_eq!(Counters::get(&c.completion_errors), 0);
    assert!(result.drained);
    let order = result
        .order
        .as_ref()
        .expect("the order is checked for Lanes");
    assert_eq!(order.violations, 0, "{:?}", order.examples);
    assert_eq!(order.dispatches, sent);
    // One submit latency per submission (a batch is one), the others per job.
    let submissions = result.latencies.overall.get(Metric::SubmitAck).len();
    assert!(submissions > 0 && submissions <= sent);
    for metric in [Metric::QueueWait, Metric::EndToEnd] {
        assert_eq!(
            result.latencies.overall.get(metric).len(),
            sent,
            "{metric:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_run_dispatches_and_completes_every_job_in_order() {
    let server = TestServer::start_with(Options {
        durability: Durability::None,
        ..Options::default()
    })
    .await;
    let config = config(
        Mode::Open {
            rate_per_second: 1_000.0,
            arrivals: Arrivals::Poisson,
        },
        1,
        JobDuration::Exponential(Duration::from_millis(2)),
    );
    let result = lanes_target::run(&config, &target(&server))
        .await
        .expect("the run");
    assert_all_done(&result);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_batches_with_a_backlog_keep_priority_order() {
    let server = TestServer::start_with(Options {
        durability: Durability::None,
        ..Options::default()
    })
    .await;
    // Few slots, batches of 20 and 1 ms jobs: work piles up, so order is
    // observable.
    let mut config = config(
        Mode::Closed { outstanding: 2 },
        20,
        JobDuration::Fixed(Duration::from_millis(1)),
    );
    config.slots_per_agent = 2;
    config.jobs = Some(1_000);
    config.duration = Duration::from_secs(30);
    let result = lanes_target::run(&config, &target(&server))
        .await
        .expect("the run");
    assert_all_done(&result);
    assert!(
        result.order.as_ref().expect("checked").judged_jobs > 0,
        "the checker had jobs to judge"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_3_on_a_missed_threshold_and_0_when_met() {
    let server = TestServer::start_with(Options {
        durability: Durability::None,
        ..Options::default()
    })
    .await;
    let address = server.address().to_string();
    let run = |extra: &'static [&'static str]| {
        let address = address.clone();
        tokio::task::spawn_blocking(move || {
            let json = tempfile::NamedTempFile::new().expect("a temporary file");
            let status = Command::new(env!("CARGO_BIN_EXE_lanes-loadgen"))
                .args(["--target", &format!("lanes://{address}")])
                .args([
                    "--rate",
                    "500",
                    "--duration",
                    "300ms",
                    "--quiet",
                    "--seed",
                    "1",
                ])
                .args(["--connections", "1", "--agents", "1", "--slots", "4"])
                .arg("--json")
                .arg(json.path())
                .args(extra)
                .env(
                    "LANES_TOKEN",
                    std::str::from_utf8(SUBMITTER).expect("utf-8"),
                )
                .env(
                    "LANES_AGENT_TOKEN",
                    std::str::from_utf8(AGENT).expect("utf-8"),
                )
                .output()
                .expect("the binary runs");
            let summary: serde_json::Value =
                serde_json::from_slice(&std::fs::read(json.path()).expect("the summary"))
                    .expect("JSON");
            (status, summary)
        })
    };
    let (met, summary) = run(&["--max-violations", "0"]).await.expect("joined");
    assert_eq!(
        met.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&met.stderr)
    );
    assert_eq!(summary["seed"], 1);
    assert!(summary["machine"]["cores"].as_u64().is_some());
    assert_eq!(
        summary["counts"]["acked_jobs"], summary["counts"]["completed_jobs"],
        "{summary}"
    );
    let (missed, summary) = run(&["--min-throughput", "1e12"]).await.expect("joined");
    assert_eq!(
        missed.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&missed.stdout)
    );
    assert_eq!(
        summary["thresholds"]["missed"].as_array().map(Vec::len),
        Some(1)
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_lanes-loadgen"))
        .args(["--rate", "fast"])
        .output()
        .expect("the binary runs");
    assert_eq!(bad.status.code(), Some(2));
    server.stop().await;
}
