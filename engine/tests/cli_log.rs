//! `lanes log`: the operator's inspection commands, run as the real binary
//! against a data folder written through the library.

use std::path::Path;
use std::process::Command as Process;

use lanes::log::{format, snapshot, LogStore, SledStore};
use lanes::model::{JobSpec, RunSpec};
use lanes::sched::{Command, Scheduler, SchedulerConfig};

/// Writes a log of `runs` submissions, one record each; returns the state.
fn data_folder(data: &Path, runs: usize) -> Scheduler {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let mut store = SledStore::open(data).unwrap();
    let mut syncer = store.syncer();
    for i in 0..runs {
        let mut events = Vec::new();
        let spec = RunSpec {
            jobs: vec![JobSpec {
                payload: vec![i as u8],
                ..JobSpec::default()
            }],
            ..RunSpec::default()
        };
        scheduler
            .handle(Command::SubmitRun(spec), 1_000 + i as u64, &mut events)
            .unwrap();
        store
            .write(events[0].seq, &format::encode(&events))
            .unwrap();
    }
    syncer.sync().unwrap();
    scheduler
}

fn lanes(args: &[&str]) -> (i32, String) {
    let output = Process::new(env!("CARGO_BIN_EXE_lanes"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn log_verify_reports_a_clean_log_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let state = data_folder(dir.path(), 10);
    snapshot::write(dir.path(), state.image()).unwrap();
    let (code, text) = lanes(&["log", "verify", "--data", data]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("log: 10 records, 10 events"), "{text}");
    assert!(text.contains("(sequence 10): ok"), "{text}");
    assert!(text.ends_with("result: clean\n"), "{text}");
}

#[test]
fn log_verify_names_a_damaged_record_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    data_folder(dir.path(), 10);
    {
        let mut store = SledStore::open(dir.path()).unwrap();
        let mut syncer = store.syncer();
        store
            .write(4, b"LNSR-not-a-record-at-all-but-long-enough")
            .unwrap();
        syncer.sync().unwrap();
    }
    let (code, text) = lanes(&["log", "verify", "--data", data]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("DAMAGE: record at sequence 4 is damaged"),
        "{text}"
    );
    assert!(text.contains("result: DAMAGED"), "{text}");
}

#[test]
fn log_print_prints_the_events_of_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    data_folder(dir.path(), 5);
    let (code, text) = lanes(&["log", "print", "--data", data, "--from", "2", "--to", "3"]);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].trim_start().starts_with("2 ") && lines[0].contains("RunSubmitted"),
        "{text}"
    );
    assert!(lines[1].trim_start().starts_with("3 "), "{text}");
}

#[test]
fn log_commands_refuse_a_folder_that_is_not_a_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = lanes(&["log", "verify", "--data", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("is not a Lanes data folder (it has no log/)"),
        "{text}"
    );
}
