//! The HTTP listener of a real engine: `/metrics` after real traffic (the
//! per-queue counters and gauges, histogram buckets, log and connection
//! metrics), `/livez`, and `/readyz` before and after readiness is
//! withdrawn. Spoken with a hand-written HTTP/1.1 GET over loopback.

use std::net::SocketAddr;

use lanes::model::{QueueConfig, Report};
use lanes_tests::{complete, in_queue, next_dispatch, one_job, Options, TestServer, ADMIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: its status code and body.
struct Answer {
    status: u16,
    body: String,
}

/// `GET path` on a fresh connection, read to its end.
async fn get(address: SocketAddr, path: &str) -> Answer {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: lanes\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.expect("read");
    let text = String::from_utf8(bytes).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "expected a sized body: {head}"
    );
    Answer {
        status,
        body: body.to_string(),
    }
}

/// The value of the sample `series` (a name with its labels, as rendered).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn metrics_count_a_queues_traffic_and_readiness_follows_the_engine() {
    let server = TestServer::start_with(Options {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Options::default()
    })
    .await;
    let http = server
        .running
        .as_ref()
        .unwrap()
        .http_address()
        .expect("an HTTP address");
    assert_eq!(get(http, "/livez").await.status, 200);
    let ready = get(http, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    let admin = server.client(ADMIN).await;
    let mut builds = QueueConfig::new("builds");
    builds.depth = Some(100);
    admin.put_queue(builds).await.expect("put queue");
    for _ in 0..5 {
        admin.submit(one_job(in_queue("builds"))).await.unwrap();
    }
    let agent = server.agent("worker-1", &["default"], &[], 1).await;
    for _ in 0..3 {
        agent.take_work(1).await.unwrap();
        let (job, attempt) = next_dispatch(&agent).await;
        complete(&agent, job, attempt, Report::Succeeded).await;
    }

    let metrics = get(http, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    let queue = |name: &str| format!("{name}{{queue=\"builds\"}}");
    assert_eq!(sample(&text, &queue("lanes_jobs_submitted_total")), 5.0);
    assert_eq!(sample(&text, &queue("lanes_jobs_dispatched_total")), 3.0);
    assert_eq!(sample(&text, &queue("lanes_jobs_completed_total")), 3.0);
    assert_eq!(sample(&text, &queue("lanes_queue_waiting_jobs")), 2.0);
    assert_eq!(sample(&text, &queue("lanes_queue_running_jobs")), 0.0);
    assert_eq!(sample(&text, &queue("lanes_queue_depth_limit_jobs")), 100.0);
    assert!(sample(&text, &queue("lanes_queue_oldest_waiting_age_seconds")) >= 0.0);
    // The default queue had no traffic: gauges, no counters.
    assert_eq!(
        sample(&text, "lanes_queue_waiting_jobs{queue=\"default\"}"),
        0.0
    );
    assert!(!text.contains("lanes_jobs_submitted_total{queue=\"default\"}"));
    // Histograms with the configured buckets.
    assert_eq!(sample(&text, &queue("lanes_queue_wait_seconds_count")), 3.0);
    assert_eq!(
        sample(
            &text,
            "lanes_queue_wait_seconds_bucket{queue=\"builds\",le=\"+Inf\"}"
        ),
        3.0
    );
    assert!(text.contains("lanes_queue_wait_seconds_bucket{queue=\"builds\",le=\"3600\"}"));
    assert_eq!(sample(&text, "lanes_dispatch_latency_seconds_count"), 3.0);
    assert!(text.contains("lanes_dispatch_latency_seconds_bucket{le=\"0.001\"}"));
    assert!(sample(&text, "lanes_log_sync_seconds_count") >= 1.0);
    assert!(text.contains("lanes_log_sync_seconds_bucket{le=\"0.0001\"}"));
    assert!(text.contains("lanes_log_batch_events_bucket{le=\"16384\"}"));
    assert!(sample(&text, "lanes_log_batch_events_sum") >= 5.0 + 3.0 + 3.0);
    assert!(sample(&text, "lanes_log_appended_bytes_total") > 0.0);
    // The admin and the agent.
    assert_eq!(sample(&text, "lanes_connections"), 2.0);
    assert_eq!(sample(&text, "lanes_agents_connected"), 1.0);
    // Three finished one-job runs, within the default retention.
    assert_eq!(sample(&text, "lanes_finished_runs_kept"), 3.0);
    assert_eq!(sample(&text, "lanes_finished_jobs_kept"), 3.0);
    assert_eq!(sample(&text, "lanes_forgotten_run_keys"), 0.0);
    assert!(text.contains("# TYPE lanes_jobs_dispatched_total counter"));
    assert!(text.contains("# HELP lanes_queue_wait_seconds"));

    let running = server.running.as_ref().unwrap();
    running.withdraw_readiness();
    let ready = get(http, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (503, "stopping\n"));
    assert_eq!(get(http, "/livez").await.status, 200);
    // The engine still serves while it is not ready.
    admin.submit(one_job(in_queue("builds"))).await.unwrap();
    drop((admin, agent));
    server.stop().await;
    assert!(
        TcpStream::connect(http).await.is_err(),
        "the HTTP listener closes with the engine"
    );
}

#[tokio::test]
async fn without_http_there_is_no_listener() {
    let server = TestServer::start().await;
    assert_eq!(server.running.as_ref().unwrap().http_address(), None);
    server.stop().await;
}
