//! The run file of `lanes submit --file`: a Buildkite-shaped pipeline in
//! YAML or TOML (docs/OPERATIONS.md, "Pipeline files"). It reads the file
//! into a [`Pipeline`]; it does not talk to the engine, and it checks only
//! the file's shape: the engine checks names, limits and priorities.
//!
//! The file is read into a generic tree first and walked by hand, so that
//! every mistake names where it is (`steps[2].priority: ...`) and unknown
//! keys are refused rather than silently ignored (a Buildkite key Lanes does
//! not know, such as `depends_on`, would otherwise change nothing unseen).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context};
use lanes::model::{JobOptions, JobSpec, Pair, Priority, RunSpec};
use lanes::runner::Payload;
use serde_json::{Map, Value};

use crate::common::{milliseconds, parse_duration};

const TOP_LEVEL_KEYS: &[&str] = &[
    "steps",
    "priority",
    "queue",
    "tags",
    "agents",
    "env",
    "max_queued_time",
    "deadline",
    "max_attempts",
];

const STEP_KEYS: &[&str] = &[
    "command",
    "commands",
    "label",
    "name",
    "priority",
    "queue",
    "tags",
    "agents",
    "env",
    "max_queued_time",
    "deadline",
    "max_attempts",
];

/// A run as the file describes it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pipeline {
    /// The run's defaults: its top-level keys.
    pub defaults: JobOptions,
    /// Environment for every step; a step's own `env` wins.
    pub env: BTreeMap<String, String>,
    /// The command steps, in order; a `wait` step marks the next one.
    pub steps: Vec<Step>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub options: JobOptions,
    /// A `wait` step stands before this one.
    pub wait_before: bool,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub label: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
}

/// Reads a pipeline file; its format comes from its extension.
pub fn read(path: &Path) -> anyhow::Result<Pipeline> {
    let format = match path.extension().and_then(|extension| extension.to_str()) {
        Some("yml" | "yaml") => Format::Yaml,
        Some("toml") => Format::Toml,
        _ => bail!(
            "{}: a pipeline file ends in .yml, .yaml or .toml",
            path.display()
        ),
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, format).map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))
}

pub fn parse(text: &str, format: Format) -> Result<Pipeline, String> {
    let tree: Value = match format {
        Format::Yaml => serde_yaml::from_str(text).map_err(|error| error.to_string())?,
        Format::Toml => toml::from_str(text).map_err(|error| error.to_string())?,
    };
    let top = tree
        .as_object()
        .ok_or("expected a map with `steps` at the top")?;
    from_map(top, &[])
}

/// A pipeline from a map already read, which may also hold `extra_keys`
/// for its caller (a trigger's `name` and `cron`, say).
pub fn from_map(top: &Map<String, Value>, extra_keys: &[&str]) -> Result<Pipeline, String> {
    let known: Vec<&str> = TOP_LEVEL_KEYS.iter().chain(extra_keys).copied().collect();
    check_keys(top, &known, "the top level")?;
    let defaults = options(top, "")?;
    let env = strings(top.get("env"), "env")?.into_iter().collect();
    let Some(list) = top.get("steps") else {
        return Err("`steps` is missing".into());
    };
    let list = list.as_array().ok_or("steps: expected a list of steps")?;
    let mut steps = Vec::new();
    let mut wait_pending = false;
    for (index, step) in list.iter().enumerate() {
        let at = format!("steps[{index}]");
        if is_wait(step, &at)? {
            // Several waits in a row are one; a wait before the first
            // command still holds nothing back (no earlier job).
            wait_pending = true;
            continue;
        }
        let map = step
            .as_object()
            .ok_or(format!("{at}: expected a command step (a map) or `wait`"))?;
        for unsupported in ["block", "input", "trigger", "group"] {
            if map.contains_key(unsupported) {
                return Err(format!("{at}: `{unsupported}` steps are not supported"));
            }
        }
        check_keys(map, STEP_KEYS, &at)?;
        let argv = command(map, &at)?;
        let label = match map.get("label").or(map.get("name")) {
            None | Some(Value::Null) => None,
            Some(label) => Some(scalar(label, &format!("{at}.label"))?),
        };
        steps.push(Step {
            options: options(map, &format!("{at}."))?,
            wait_before: std::mem::take(&mut wait_pending),
            argv,
            env: strings(map.get("env"), &format!("{at}.env"))?
                .into_iter()
                .collect(),
            label,
        });
    }
    if steps.is_empty() {
        return Err("steps: no command step".into());
    }
    Ok(Pipeline {
        defaults,
        env,
        steps,
    })
}

impl Pipeline {
    /// The run: each step's command and environment (the pipeline's, then
    /// the step's own) become its job's payload.
    pub fn into_run(self, idempotency_key: Option<String>) -> RunSpec {
        let env = self.env;
        let jobs = self
            .steps
            .into_iter()
            .map(|step| {
                let mut step_env = env.clone();
                step_env.extend(step.env);
                JobSpec {
                    options: step.options,
                    wait_before: step.wait_before,
                    payload: Payload {
                        argv: step.argv,
                        env: step_env,
                        label: step.label,
                    }
                    .encode(),
                }
            })
            .collect();
        RunSpec {
            defaults: self.defaults,
            jobs,
            idempotency_key,
        }
    }
}

fn check_keys(map: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), String> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(format!(
            "{at}: unknown key `{key}` (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// `- wait`, `- wait: ~` (YAML), `wait = {}` (TOML).
fn is_wait(step: &Value, at: &str) -> Result<bool, String> {
    match step {
        Value::String(text) if text == "wait" => Ok(true),
        Value::String(text) => Err(format!(
            "{at}: {text:?} is not a step: write `- wait`, or a map with `command`"
        )),
        Value::Object(map) if map.contains_key("wait") => {
            let plain = match &map["wait"] {
                Value::Null => true,
                Value::Object(options) => options.is_empty(),
                _ => false,
            };
            if map.len() > 1 || !plain {
                return Err(format!(
                    "{at}: a wait step takes no options (write `- wait` or `- wait: ~`)"
                ));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `command` or `commands`: a string, or a list of strings joined into one
/// script; either runs as `sh -e -c <script>` (Buildkite runs its commands
/// with `-e` too: the first failing line fails the step).
fn command(map: &Map<String, Value>, at: &str) -> Result<Vec<String>, String> {
    let (key, value) = match (map.get("command"), map.get("commands")) {
        (Some(value), None) => ("command", value),
        (None, Some(value)) => ("commands", value),
        (Some(_), Some(_)) => return Err(format!("{at}: both `command` and `commands`")),
        (None, None) => return Err(format!("{at}: no `command`")),
    };
    let script = match value {
        Value::String(line) => line.clone(),
        Value::Array(lines) => lines
            .iter()
            .map(|line| {
                line.as_str().map(str::to_string).ok_or(format!(
                    "{at}.{key}: expected a string or a list of strings"
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
            .join("\n"),
        _ => {
            return Err(format!(
                "{at}.{key}: expected a string or a list of strings"
            ))
        }
    };
    if script.trim().is_empty() {
        return Err(format!("{at}.{key}: empty"));
    }
    Ok(vec!["sh".into(), "-e".into(), "-c".into(), script])
}

/// The job options a map sets: the top level (`at` empty) or a step's.
fn options(map: &Map<String, Value>, at: &str) -> Result<JobOptions, String> {
    let priority = match map.get("priority") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let text = scalar(value, &format!("{at}priority"))?;
            Some(
                Priority::from_str(&text)
                    .map_err(|error| format!("{at}priority: {error}"))?
                    .0,
            )
        }
    };
    let duration = |key: &str| -> Result<Option<u64>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => {
                let text = scalar(value, &format!("{at}{key}"))?;
                parse_duration(&text)
                    .map(|duration| Some(milliseconds(duration)))
                    .map_err(|error| format!("{at}{key}: {error}"))
            }
        }
    };
    let max_attempts = match map.get("max_attempts") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|value| u32::try_from(value).ok())
                .ok_or(format!("{at}max_attempts: expected a whole number"))?,
        ),
    };
    Ok(JobOptions {
        queue: match map.get("queue") {
            None | Some(Value::Null) => None,
            Some(value) => Some(scalar(value, &format!("{at}queue"))?),
        },
        priority,
        tags: strings(map.get("tags"), &format!("{at}tags"))?,
        labels: strings(map.get("agents"), &format!("{at}agents"))?,
        max_queued_time_ms: duration("max_queued_time")?,
        deadline_ms: duration("deadline")?,
        max_attempts,
    })
}

/// A map of scalars, as `key=value` pairs in the file's order.
fn strings(value: Option<&Value>, at: &str) -> Result<Vec<Pair>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| Ok((key.clone(), scalar(value, &format!("{at}.{key}"))?)))
            .collect(),
        Some(_) => Err(format!("{at}: expected a map of key: value")),
    }
}

/// A string, number or boolean, as text.
fn scalar(value: &Value, at: &str) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        _ => Err(format!("{at}: expected a string or a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_error(text: &str, format: Format, expected: &str) {
        let error = parse(text, format).expect_err("the file is refused");
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }

    #[test]
    fn yaml_buildkite_whole_build_priority_with_a_wait_step() {
        let pipeline = parse(
            r#"
priority: 100
env:
  CI: 1
steps:
  - label: "emergency fix"
    command: "run_this_now.sh"
  - wait: ~
  - label: "this can wait"
    commands:
      - make
      - make test
    priority: 1
    agents:
      os: linux
    env:
      CI: "2"
  - wait
  - command: ["echo done"]
"#,
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(pipeline.defaults.priority, Some(100));
        assert_eq!(pipeline.env["CI"], "1");
        let steps = &pipeline.steps;
        assert_eq!(steps.len(), 3);
        assert_eq!(
            steps
                .iter()
                .map(|step| step.wait_before)
                .collect::<Vec<_>>(),
            [false, true, true]
        );
        assert_eq!(steps[0].label.as_deref(), Some("emergency fix"));
        assert_eq!(steps[0].argv, ["sh", "-e", "-c", "run_this_now.sh"]);
        assert_eq!(steps[0].options.priority, None);
        assert_eq!(steps[1].argv[3], "make\nmake test");
        assert_eq!(steps[1].options.priority, Some(1));
        assert_eq!(steps[1].options.labels, [("os".into(), "linux".into())]);
        assert_eq!(steps[1].env["CI"], "2");
    }

    #[test]
    fn toml_has_the_same_shape() {
        let pipeline = parse(
            r#"
priority = -1
queue = "batch"
tags = { team = "docs" }
deadline = "1h"

[[steps]]
command = "make"
max_queued_time = "5m"

[[steps]]
wait = {}

[[steps]]
command = "make test"
queue = "ci"
"#,
            Format::Toml,
        )
        .unwrap();
        assert_eq!(pipeline.defaults.priority, Some(-1));
        assert_eq!(pipeline.defaults.queue.as_deref(), Some("batch"));
        assert_eq!(pipeline.defaults.tags, [("team".into(), "docs".into())]);
        assert_eq!(pipeline.defaults.deadline_ms, Some(3_600_000));
        assert_eq!(pipeline.steps[0].options.max_queued_time_ms, Some(300_000));
        assert!(pipeline.steps[1].wait_before);
        assert_eq!(pipeline.steps[1].options.queue.as_deref(), Some("ci"));
    }

    #[test]
    fn mistakes_name_where_they_are() {
        check_error(
            "steps:\n  - command: x\n    priority: high\n",
            Format::Yaml,
            r#"steps[0].priority: priority "high" is not an integer"#,
        );
        check_error(
            "priority: 1.5\nsteps:\n  - command: x\n",
            Format::Yaml,
            r#"priority: priority "1.5" is not an integer"#,
        );
        check_error(
            "steps:\n  - command: x\n    depends_on: y\n",
            Format::Yaml,
            "steps[0]: unknown key `depends_on`",
        );
        check_error(
            "steps:\n  - block: release\n",
            Format::Yaml,
            "`block` steps are not supported",
        );
        check_error(
            "steps:\n  - wait: {continue_on_failure: true}\n  - command: x\n",
            Format::Yaml,
            "a wait step takes no options",
        );
        check_error("steps:\n  - wait\n", Format::Yaml, "no command step");
        check_error("queue: x\n", Format::Yaml, "`steps` is missing");
        check_error(
            "[[steps]]\ncommand = 3\n",
            Format::Toml,
            "steps[0].command: expected a string or a list of strings",
        );
        check_error(
            "[[steps]]\ncommand = \"x\"\ndeadline = \"soon\"\n",
            Format::Toml,
            "steps[0].deadline:",
        );
    }
}
