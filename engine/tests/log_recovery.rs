//! Recovery from the sled log and snapshots: a torn last record, a damaged
//! record in the middle, a damaged snapshot, a newer format version, and
//! snapshots that trim the log. Each failure is checked by its exact text.

use std::path::Path;

use lanes::driver::{Driver, DriverConfig, Durability, SnapshotPolicy};
use lanes::log::{format, snapshot, LogReader, LogStore, SledStore};
use lanes::model::{JobSpec, Report, RunSpec};
use lanes::replay::{recover, ReplayOptions, StartError};
use lanes::sched::{Command, Event, EventKind, Reply, Scheduler, SchedulerConfig};

/// A workload with submissions, dispatches and completions; returns the
/// events in batches of `batch` events, and the final state.
fn workload(runs: usize, batch: usize) -> (Vec<Vec<Event>>, Scheduler) {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let mut events = Vec::new();
    let mut now = 1_000;
    let Ok(Reply::Registered { agent }) = scheduler.handle(
        Command::RegisterAgent {
            name: "a".into(),
            pools: vec!["default".into()],
            labels: vec![],
            slots: 2,
            running: vec![],
        },
        now,
        &mut events,
    ) else {
        panic!("register failed")
    };
    for i in 0..runs {
        now += 1;
        let spec = RunSpec {
            jobs: vec![
                JobSpec {
                    payload: vec![i as u8; 3],
                    ..JobSpec::default()
                };
                2
            ],
            ..RunSpec::default()
        };
        scheduler
            .handle(Command::SubmitRun(spec), now, &mut events)
            .unwrap();
        scheduler
            .handle(Command::TakeWork { agent, count: 2 }, now, &mut events)
            .unwrap();
        let running: Vec<_> = scheduler.agents().next().unwrap().running.to_vec();
        if let Some(&job) = running.first() {
            let attempt = scheduler.job(job).unwrap().attempt;
            scheduler
                .handle(
                    Command::complete_one(agent, job, attempt, Report::Succeeded, 0),
                    now,
                    &mut events,
                )
                .unwrap();
        }
    }
    (
        events.chunks(batch).map(<[Event]>::to_vec).collect(),
        scheduler,
    )
}

fn write_all(store: &mut SledStore, syncer: &mut dyn lanes::log::Syncer, batches: &[Vec<Event>]) {
    for batch in batches {
        store.write(batch[0].seq, &format::encode(batch)).unwrap();
    }
    syncer.sync().unwrap();
}

/// Opens a store, writes the batches durably, and closes it.
fn log_with(data: &Path, batches: &[Vec<Event>]) {
    let mut store = SledStore::open(data).unwrap();
    let mut syncer = store.syncer();
    write_all(&mut store, syncer.as_mut(), batches);
}

/// As [`log_with`], then writes `batch` again with `edit` applied to its
/// record's bytes (in place of the good record), durably.
fn log_with_edited(
    data: &Path,
    batches: &[Vec<Event>],
    batch: usize,
    edit: impl FnOnce(&mut Vec<u8>),
) {
    let mut store = SledStore::open(data).unwrap();
    let mut syncer = store.syncer();
    write_all(&mut store, syncer.as_mut(), batches);
    let mut bytes = format::encode(&batches[batch]);
    edit(&mut bytes);
    store.write(batches[batch][0].seq, &bytes).unwrap();
    syncer.sync().unwrap();
}

fn state_after(batches: &[Vec<Event>]) -> Scheduler {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    for event in batches.iter().flatten() {
        scheduler.apply(event);
    }
    scheduler
}

fn start(data: &Path, repair: bool) -> Result<(Scheduler, lanes::replay::StartReport), StartError> {
    let mut store = SledStore::open(data).unwrap();
    recover(
        data,
        &mut store,
        SchedulerConfig::default(),
        ReplayOptions { repair },
    )
}

#[test]
fn clean_log_replays_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, live) = workload(50, 7);
    log_with(dir.path(), &batches);
    let (recovered, report) = start(dir.path(), false).unwrap();
    assert_eq!(recovered.digest(), live.digest());
    assert_eq!(report.replay.records, batches.len() as u64);
    assert_eq!(report.replay.torn_tail, None);
    recovered.check_invariants();
}

#[test]
fn torn_last_record_stops_replay_before_it_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(20, 5);
    let (good, last) = batches.split_at(batches.len() - 1);
    let mut store = SledStore::open(dir.path()).unwrap();
    let mut syncer = store.syncer();
    write_all(&mut store, syncer.as_mut(), good);
    let torn = format::encode(&last[0]);
    store
        .write(last[0][0].seq, &torn[..torn.len() / 2])
        .unwrap();
    syncer.sync().unwrap();
    drop(syncer);
    drop(store);
    let (recovered, report) = start(dir.path(), false).unwrap();
    let seq = last[0][0].seq;
    let (torn_seq, reason) = report.replay.torn_tail.expect("a torn tail is reported");
    assert_eq!(torn_seq, seq);
    assert!(reason.starts_with("record payload is"), "{reason}");
    assert_eq!(recovered.digest(), state_after(good).digest());
    // The torn record is gone: the next start is clean.
    let (again, report) = start(dir.path(), false).unwrap();
    assert_eq!(report.replay.torn_tail, None);
    assert_eq!(again.digest(), recovered.digest());
}

#[test]
fn flipped_byte_in_the_middle_refuses_to_start_unless_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(20, 5);
    let victim = &batches[3];
    log_with_edited(dir.path(), &batches, 3, |bytes| {
        let at = bytes.len() - 2;
        bytes[at] ^= 0x10;
    });
    let error = start(dir.path(), false).unwrap_err();
    let seq = victim[0].seq;
    let after = batches.len() - 4;
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "the log is corrupt at sequence {seq}: record checksum mismatch"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{after} good records follow it. Start with --repair"
        )),
        "{text}"
    );
    // Nothing was changed by the refusal; repair cuts the log at the damage.
    let (repaired, report) = start(dir.path(), true).unwrap();
    assert_eq!(report.replay.repaired, Some((seq, after as u64 + 1)));
    assert_eq!(repaired.digest(), state_after(&batches[..3]).digest());
    let (again, report) = start(dir.path(), false).unwrap();
    assert_eq!(report.replay.repaired, None);
    assert_eq!(again.digest(), repaired.digest());
}

#[test]
fn a_gap_in_the_sequence_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(10, 5);
    let mut kept = batches.clone();
    kept.remove(2);
    log_with(dir.path(), &kept);
    let error = start(dir.path(), false).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the log has a gap: expected sequence {}, found {}. Start with --repair to cut the log at sequence {}",
            batches[2][0].seq, batches[3][0].seq, batches[2][0].seq
        )
    );
}

#[test]
fn newer_record_format_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(5, 5);
    let newer = format::FORMAT_VERSION + 1;
    log_with_edited(dir.path(), &batches, 1, |bytes| {
        bytes[4..6].copy_from_slice(&newer.to_le_bytes());
    });
    let error = start(dir.path(), true).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the log holds a record (sequence {}) written by format version {newer}, newer than this build reads ({}): upgrade Lanes",
            batches[1][0].seq,
            format::FORMAT_VERSION
        )
    );
}

#[test]
fn a_record_with_unknown_flags_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(5, 5);
    // A flag this build does not know under a good checksum: written on
    // purpose by another build, not torn, so never cut off as a torn tail.
    let last = batches.last().unwrap();
    log_with_edited(dir.path(), &batches, batches.len() - 1, |bytes| {
        bytes[6..8].copy_from_slice(&0x4000u16.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), &bytes[format::HEADER_LEN..]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    });
    let error = start(dir.path(), true).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the log holds a record (sequence {}, format version {}) with flags 0x4000 this build does not know, under a good checksum: it was written by another build of Lanes; start it with that build",
            last[0].seq,
            format::FORMAT_VERSION
        )
    );
}

#[test]
fn snapshot_image_round_trips_to_the_same_digest() {
    let (_, live) = workload(40, 1000);
    let image = live.image();
    let bytes = snapshot::encode(&image);
    let decoded = snapshot::decode("test", &bytes).unwrap();
    assert_eq!(decoded, image);
    let restored = Scheduler::from_image(SchedulerConfig::default(), decoded).unwrap();
    restored.check_invariants();
    assert_eq!(restored.digest(), live.digest());
}

#[test]
fn start_up_loads_the_snapshot_and_replays_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, live) = workload(30, 4);
    let half = batches.len() / 2;
    snapshot::write(dir.path(), state_after(&batches[..half]).image()).unwrap();
    // The log still holds every record; those covered by the snapshot are skipped.
    log_with(dir.path(), &batches);
    let (recovered, report) = start(dir.path(), false).unwrap();
    assert_eq!(
        report.snapshot.as_ref().map(|s| s.0),
        Some(batches[half - 1].last().unwrap().seq)
    );
    assert_eq!(report.replay.records, (batches.len() - half) as u64);
    assert_eq!(recovered.digest(), live.digest());
}

#[test]
fn damaged_snapshot_refuses_to_start_unless_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, live) = workload(30, 4);
    log_with(dir.path(), &batches);
    let older = snapshot::write(dir.path(), state_after(&batches[..5]).image()).unwrap();
    let newer = snapshot::write(dir.path(), state_after(&batches[..10]).image()).unwrap();
    let mut bytes = std::fs::read(&newer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&newer, &bytes).unwrap();
    let error = start(dir.path(), false).unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "snapshot {} is damaged: checksum mismatch",
            newer.display()
        )),
        "{text}"
    );
    let (recovered, report) = start(dir.path(), true).unwrap();
    assert_eq!(report.skipped_snapshots.len(), 1);
    assert_eq!(
        report.snapshot.map(|s| s.1),
        Some(older.display().to_string())
    );
    assert_eq!(recovered.digest(), live.digest());
}

#[test]
fn newer_snapshot_format_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (batches, _) = workload(5, 4);
    let path = snapshot::write(dir.path(), state_after(&batches).image()).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4..6].copy_from_slice(&7u16.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let error = start(dir.path(), true).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "snapshot {} was written by snapshot format 7; this build reads up to {}: upgrade Lanes",
            path.display(),
            snapshot::SNAPSHOT_VERSION
        )
    );
}

#[test]
fn driver_snapshots_trim_the_log_and_restart_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let config = DriverConfig {
        durability: Durability::Sync,
        snapshots: Some(SnapshotPolicy {
            data: dir.path().to_path_buf(),
            every_events: 50,
            scheduler: SchedulerConfig::default(),
        }),
        ..DriverConfig::default()
    };
    let driver = Driver::start(
        Scheduler::new(SchedulerConfig::default()),
        Box::new(store),
        config,
        Box::new(()),
    );
    let handle = driver.handle();
    for _ in 0..200 {
        let spec = RunSpec {
            jobs: vec![JobSpec::default()],
            ..RunSpec::default()
        };
        let reply = handle
            .blocking_command(Command::SubmitRun(spec))
            .unwrap()
            .unwrap();
        assert!(matches!(reply, Reply::Submitted { .. }));
    }
    let live = driver.stop().unwrap();
    let snapshots = snapshot::list(dir.path()).unwrap();
    assert!(!snapshots.is_empty(), "no snapshot was taken");
    assert!(snapshots.len() <= snapshot::SNAPSHOTS_KEPT);
    let store = SledStore::open(dir.path()).unwrap();
    let mut first = None;
    store
        .scan(0, &mut |key, _| {
            first = Some(key);
            false
        })
        .unwrap();
    assert!(
        first.is_none_or(|first| first > 1),
        "records before the snapshot were trimmed"
    );
    drop(store);
    let (recovered, report) = start(dir.path(), false).unwrap();
    assert!(report.snapshot.is_some());
    assert_eq!(recovered.digest(), live.digest());
    assert!(matches!(
        recovered.job(lanes::model::JobId(200)).map(|j| j.status),
        Some(lanes::sched::view::JobStatus::Waiting)
    ));
    let _ = EventKind::LeasesRestarted;
}
