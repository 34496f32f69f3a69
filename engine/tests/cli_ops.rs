//! The operating side of the `lanes` binary, run as a real process:
//! shell completions, JSON log lines on stderr, and `lanes serve` with its
//! HTTP listener and systemd notifications (to a socket the test binds as
//! `NOTIFY_SOCKET`), stopped by SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Bound on every wait for something another process does.
const PATIENCE: Duration = Duration::from_secs(20);

fn lanes(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lanes"));
    command
        .args(args)
        .env_remove("LANES_LOG_FORMAT")
        .env_remove("LANES_HTTP")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn output(args: &[&str]) -> (i32, String, String) {
    let output = tokio::time::timeout(PATIENCE, lanes(args).output())
        .await
        .unwrap_or_else(|_| panic!("lanes {args:?} did not finish"))
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[tokio::test]
async fn completions_are_printed_for_every_shell() {
    let check = |shell: &'static str, marker: &'static str| async move {
        let (code, stdout, stderr) = output(&["completions", shell]).await;
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(
            stdout.contains(marker),
            "{shell}: no {marker:?} in\n{stdout}"
        );
        // Every subcommand is offered.
        for command in ["serve", "submit", "queue", "completions"] {
            assert!(stdout.contains(command), "{shell}: no {command}");
        }
        assert!(stderr.is_empty(), "{shell}: {stderr}");
    };
    check("bash", "complete -F _lanes").await;
    check("zsh", "#compdef lanes").await;
    check("fish", "complete -c lanes").await;
    check("elvish", "edit:completion:arg-completer[lanes]").await;
    check("powershell", "Register-ArgumentCompleter").await;
    let (code, _, stderr) = output(&["completions", "tcsh"]).await;
    assert_eq!(code, 2, "{stderr}");
}

/// `GET path` over a fresh connection: the status code and the body.
async fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: lanes\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The next datagram on the notify socket, as text.
fn notification(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let length = socket.recv(&mut buffer).expect("a notification in time");
    String::from_utf8_lossy(&buffer[..length]).into_owned()
}

#[tokio::test]
async fn serve_logs_json_serves_http_and_tells_systemd() {
    let folder = tempfile::tempdir().unwrap();
    let notify_path = folder.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let data = folder.path().join("data");
    let mut serve = lanes(&[
        "--log-format",
        "json",
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ])
    .env("RUST_LOG", "info")
    .env("NOTIFY_SOCKET", &notify_path)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(serve.stderr.take().unwrap()).lines();
    let mut lines = Vec::new();
    while let Some(line) = tokio::time::timeout(PATIENCE, stderr.next_line())
        .await
        .expect("serve starts in time")
        .unwrap()
    {
        let serving = line.starts_with("lanes: serving on");
        lines.push(line);
        if serving {
            break;
        }
    }
    let logs: Vec<Value> = lines
        .iter()
        .filter(|line| !line.starts_with("lanes: "))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let message = |log: &Value| log["fields"]["message"].as_str().unwrap_or("").to_string();
    let http = logs
        .iter()
        .find(|log| message(log).starts_with("HTTP listening"))
        .unwrap_or_else(|| panic!("no HTTP line in {lines:?}"));
    assert_eq!(http["level"], "INFO");
    let address = http["fields"]["address"].as_str().unwrap().to_string();
    assert!(logs.iter().any(|log| message(log) == "recovered"
        && log["target"] == "lanes"
        && log["fields"]["events"].is_number()));
    assert_eq!(notification(&notify), "READY=1\n");

    assert_eq!(get(&address, "/readyz").await, (200, "ready\n".to_string()));
    let (status, metrics) = get(&address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("lanes_queue_waiting_jobs{queue=\"default\"} 0"));

    let pid = rustix::process::Pid::from_raw(serve.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(notification(&notify), "STOPPING=1\n");
    let mut rest = Vec::new();
    while let Some(line) = stderr.next_line().await.unwrap() {
        rest.push(line);
    }
    let status = tokio::time::timeout(PATIENCE, serve.wait())
        .await
        .expect("serve stops in time")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter().any(|line| line == "lanes: stopping"),
        "{rest:?}"
    );
    for line in rest.iter().filter(|line| !line.starts_with("lanes: ")) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let mut stdout = String::new();
    serve
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    assert_eq!(stdout, "", "data only on stdout, and serve prints none");
}
