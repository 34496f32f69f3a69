use lanes::model::*;
use lanes::sched::*;

#[test]
fn dagster_example() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let mut ev = Vec::new();
    s.handle(
        Command::SetTagRules(vec![TagRule {
            key: "team".into(),
            matches: TagMatch::AnyValue,
            limit: 1,
        }]),
        1,
        &mut ev,
    )
    .unwrap();
    let mut ids = vec![];
    for tags in [
        vec![("team".to_string(), "docs".to_string())],
        vec![("team".into(), "docs".into())],
        vec![],
    ] {
        let r = s
            .handle(
                Command::SubmitRun(RunSpec {
                    defaults: JobOptions {
                        tags,
                        ..Default::default()
                    },
                    jobs: vec![JobSpec::default()],
                    idempotency_key: None,
                }),
                2,
                &mut ev,
            )
            .unwrap();
        let Reply::Submitted { first_job, .. } = r else {
            panic!()
        };
        ids.push(first_job);
    }
    let Reply::Registered { agent } = s
        .handle(
            Command::RegisterAgent {
                name: "a".into(),
                pools: vec!["default".into()],
                labels: vec![],
                slots: 10,
                running: vec![],
            },
            3,
            &mut ev,
        )
        .unwrap()
    else {
        panic!()
    };
    ev.clear();
    s.handle(Command::TakeWork { agent, count: 10 }, 4, &mut ev)
        .unwrap();
    s.check_invariants();
    let dispatched: Vec<JobId> = ev
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::JobDispatched { job, .. } => Some(job),
            _ => None,
        })
        .collect();
    assert_eq!(dispatched, vec![ids[0], ids[2]]);
    ev.clear();
    s.handle(
        Command::Complete {
            agent,
            job: ids[0],
            attempt: 1,
            report: Report::Succeeded,
            exit_code: 0,
        },
        5,
        &mut ev,
    )
    .unwrap();
    s.check_invariants();
    let dispatched: Vec<JobId> = ev
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::JobDispatched { job, .. } => Some(job),
            _ => None,
        })
        .collect();
    assert_eq!(dispatched, vec![ids[1]]);
}
