//! The configuration file of `lanes serve --config FILE` (docs/OPERATIONS.md,
//! "Configuration reference"): the engine's settings, its tokens, and the
//! queues, tag limits and cron triggers it applies at start and on reload.
//!
//! Every mistake names its line: the file is read with serde into types
//! that refuse unknown keys and wrong types (toml places those errors), and
//! the checks after that keep each entry's span to place theirs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanes::driver::Durability;
use lanes::model::{QueueConfig, TagMatch, TagRule, DEFAULT_POOL};
use lanes::protocol::Role;
use lanes::sched::{check_queue_config, check_tag_rules};
use lanes::triggers::{Missed, Schedule, Trigger};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::common::{milliseconds, parse_duration};
use crate::pipeline;
use crate::serve::{parse_durability, parse_role};

/// The file as read, before any check that needs more than its types.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    limits: LimitsSection,
    tls: Option<TlsSection>,
    #[serde(default, rename = "token")]
    tokens: Vec<Spanned<TokenEntry>>,
    #[serde(default, rename = "queue")]
    queues: Vec<Spanned<QueueEntry>>,
    #[serde(rename = "tag_limit")]
    tag_limits: Option<Vec<Spanned<TagLimitEntry>>>,
    #[serde(default, rename = "trigger")]
    triggers: Vec<Spanned<toml::Table>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    http: Option<String>,
    #[serde(default, deserialize_with = "durability")]
    durability: Option<Durability>,
    #[serde(default, deserialize_with = "duration")]
    lease: Option<Duration>,
    snapshot_every: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    retain_finished: Option<Duration>,
    retain_finished_jobs: Option<u64>,
    retain_keys: Option<u64>,
    #[serde(default, deserialize_with = "missed")]
    missed_triggers: Option<Missed>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    frame_length_max: Option<usize>,
    frame_length_max_unauthenticated: Option<usize>,
    payload_bytes_max: Option<usize>,
    connections_max: Option<usize>,
    requests_in_flight_max: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    idle_frame_timeout: Option<Duration>,
    output_bytes_max: Option<usize>,
    completions_per_request_max: Option<usize>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    #[serde(deserialize_with = "role")]
    role: Role,
    token: Option<String>,
    /// A file holding the token (surrounding whitespace is not part of it):
    /// keeps secrets out of the configuration file.
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct QueueEntry {
    name: String,
    #[serde(default)]
    priority: i32,
    pools: Option<Vec<String>>,
    action_concurrency: Option<u32>,
    run_concurrency: Option<u32>,
    depth: Option<u32>,
    #[serde(default = "yes")]
    job_priority: bool,
    #[serde(default)]
    paused: bool,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TagLimitEntry {
    key: String,
    value: Option<String>,
    #[serde(default)]
    per_value: bool,
    limit: u32,
}

fn yes() -> bool {
    true
}

/// Parses a string value with `parse`, so a bad value is placed by toml.
fn parsed<'de, D, T>(
    deserializer: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map(Some).map_err(serde::de::Error::custom)
}

fn durability<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Durability>, D::Error> {
    parsed(d, parse_durability)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, parse_duration)
}

fn missed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Missed>, D::Error> {
    parsed(d, |text| text.parse())
}

fn role<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
    let text = String::deserialize(d)?;
    parse_role(&text).map_err(serde::de::Error::custom)
}

/// The file's settings, checked. `None`: the file does not say (a flag,
/// the environment or the built-in default decides).
#[derive(Debug, Default)]
pub struct Config {
    pub data: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// `off` or an address.
    pub http: Option<String>,
    pub durability: Option<Durability>,
    pub lease_ms: Option<u64>,
    pub snapshot_every: Option<u64>,
    pub retain_finished_ms: Option<u64>,
    pub retain_finished_jobs: Option<u64>,
    pub retain_keys: Option<u64>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub tokens: Vec<(Role, String)>,
    pub limits: lanes::server::Limits,
    /// What a reload applies again.
    pub rules: Rules,
}

/// The part of the configuration a reload applies: queues, tag limits,
/// triggers.
#[derive(Debug, Default)]
pub struct Rules {
    pub queues: Vec<QueueConfig>,
    /// `None`: the file has no `[[tag_limit]]`, and the rules in force stay.
    pub tag_rules: Option<Vec<TagRule>>,
    pub triggers: Vec<Trigger>,
}

/// A mistake in the file, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    path: String,
    message: String,
}

/// Reads and checks the file.
pub fn read(path: &Path) -> Result<Config, ConfigError> {
    let fail = |message: String| ConfigError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
    parse(&text).map_err(fail)
}

/// The line (from 1) where byte `offset` of `text` is.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

pub fn parse(text: &str) -> Result<Config, String> {
    // toml's message already says "TOML parse error at line N, column M"
    // and quotes the line.
    let file: File = toml::from_str(text).map_err(|error| error.to_string())?;
    let at = |span: std::ops::Range<usize>, message: String| {
        format!("line {}: {message}", line_of(text, span.start))
    };
    let mut config = Config {
        data: file.server.data,
        listen: file.server.listen,
        http: file.server.http,
        durability: file.server.durability,
        lease_ms: file.server.lease.map(milliseconds),
        snapshot_every: file.server.snapshot_every,
        retain_finished_ms: file.server.retain_finished.map(milliseconds),
        retain_finished_jobs: file.server.retain_finished_jobs,
        retain_keys: file.server.retain_keys,
        tls: file.tls.map(|tls| (tls.cert, tls.key)),
        ..Config::default()
    };
    let limits = &mut config.limits;
    let section = file.limits;
    macro_rules! set {
        ($($field:ident),*) => {
            $(if let Some(value) = section.$field {
                limits.$field = value;
            })*
        };
    }
    set!(
        frame_length_max,
        frame_length_max_unauthenticated,
        payload_bytes_max,
        connections_max,
        requests_in_flight_max,
        handshake_timeout,
        idle_frame_timeout,
        output_bytes_max,
        completions_per_request_max
    );
    let most = lanes::sched::COMPLETIONS_PER_COMMAND_MAX;
    if limits.completions_per_request_max > most {
        return Err(format!(
            "[limits] completions_per_request_max = {}: at most {most} (one request is one command on the writer)",
            limits.completions_per_request_max
        ));
    }
    for entry in file.tokens {
        let span = entry.span();
        let entry = entry.into_inner();
        let token = match (entry.token, entry.token_file) {
            (Some(token), None) => token,
            (None, Some(file)) => std::fs::read_to_string(&file)
                .map_err(|error| at(span, format!("token_file {}: {error}", file.display())))?
                .trim()
                .to_string(),
            _ => {
                return Err(at(
                    span,
                    "a [[token]] has either `token` or `token_file`, not both or neither".into(),
                ))
            }
        };
        config.tokens.push((entry.role, token));
    }
    for entry in file.queues {
        let span = entry.span();
        let entry = entry.into_inner();
        let queue = QueueConfig {
            pools: entry
                .pools
                .unwrap_or_else(|| vec![DEFAULT_POOL.to_string()]),
            priority: entry.priority,
            action_concurrency: entry.action_concurrency,
            run_concurrency: entry.run_concurrency,
            depth: entry.depth,
            priority_supported: entry.job_priority,
            paused: entry.paused,
            ..QueueConfig::new(&entry.name)
        };
        check_queue_config(&queue)
            .map_err(|error| at(span.clone(), format!("queue {:?}: {error}", entry.name)))?;
        if config.rules.queues.iter().any(|q| q.name == queue.name) {
            return Err(at(span, format!("queue {:?} appears twice", queue.name)));
        }
        config.rules.queues.push(queue);
    }
    if let Some(entries) = file.tag_limits {
        let mut rules = Vec::new();
        for entry in entries {
            let span = entry.span();
            let entry = entry.into_inner();
            let matches = match (entry.value, entry.per_value) {
                (None, false) => TagMatch::AnyValue,
                (None, true) => TagMatch::EachValue,
                (Some(value), false) => TagMatch::Value(value),
                (Some(_), true) => {
                    return Err(at(
                        span,
                        "a tag limit has a `value` or `per_value = true`, not both".into(),
                    ))
                }
            };
            rules.push(TagRule {
                key: entry.key,
                matches,
                limit: entry.limit,
            });
            check_tag_rules(&rules).map_err(|error| at(span, format!("tag limit: {error}")))?;
        }
        config.rules.tag_rules = Some(rules);
    }
    let missed_default = file.server.missed_triggers.unwrap_or_default();
    for entry in file.triggers {
        let span = entry.span();
        let trigger =
            trigger(entry.into_inner(), missed_default).map_err(|e| at(span.clone(), e))?;
        if config.rules.triggers.iter().any(|t| t.name == trigger.name) {
            return Err(at(
                span,
                format!("trigger {:?} appears twice", trigger.name),
            ));
        }
        config.rules.triggers.push(trigger);
    }
    Ok(config)
}

/// A `[[trigger]]`: its own keys, and a run shaped like a pipeline file.
fn trigger(table: toml::Table, missed_default: Missed) -> Result<Trigger, String> {
    const OWN_KEYS: [&str; 4] = ["name", "cron", "timezone", "missed"];
    let text = |key: &str| -> Result<Option<String>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(format!(
                "`{key}` must be a string, not {}",
                other.type_str()
            )),
        }
    };
    let name = text("name")?.ok_or("a [[trigger]] needs a `name`")?;
    lanes::model::check_name("trigger name", &name)?;
    let cron = text("cron")?.ok_or(format!("trigger {name:?} needs a `cron` expression"))?;
    let zone = text("timezone")?.unwrap_or_else(|| "UTC".to_string());
    let schedule = Schedule::parse(&cron, &zone).map_err(|e| format!("trigger {name:?}: {e}"))?;
    let missed = match text("missed")? {
        Some(policy) => policy
            .parse()
            .map_err(|e| format!("trigger {name:?}: missed: {e}"))?,
        None => missed_default,
    };
    let tree = serde_json::to_value(&table).map_err(|e| format!("trigger {name:?}: {e}"))?;
    let map = tree.as_object().ok_or("a [[trigger]] is a table")?;
    let run = pipeline::from_map(map, &OWN_KEYS).map_err(|e| format!("trigger {name:?}: {e}"))?;
    Ok(Trigger {
        name,
        schedule,
        missed,
        run: run.into_run(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text).expect_err("a mistake")
    }

    #[test]
    fn an_empty_file_is_every_default() {
        let config = parse("").expect("empty is fine");
        assert_eq!(config.data, None);
        assert!(config.rules.queues.is_empty());
        assert_eq!(config.rules.tag_rules, None);
    }

    #[test]
    fn a_full_file_reads() {
        let config = parse(
            r#"
[server]
data = "/var/lib/lanes"
listen = "0.0.0.0:7070"
durability = "interval=20"
lease = "45s"
snapshot_every = 5000

[limits]
payload_bytes_max = 65536
handshake_timeout = "2s"

[[token]]
role = "admin"
token = "0123456789abcdef0123"

[[queue]]
name = "builds"
priority = 2
pools = ["linux"]
action_concurrency = 8
depth = 1000

[[queue]]
name = "nightly"
run_concurrency = 1
job_priority = false

[[tag_limit]]
key = "database"
limit = 2

[[tag_limit]]
key = "tenant"
per_value = true
limit = 1

[[trigger]]
name = "nightly-report"
cron = "0 0 2 * * *"
timezone = "Europe/Paris"
queue = "nightly"
tags = { team = "data" }
steps = [{ command = "make report" }, "wait", { command = "make publish" }]
"#,
        )
        .expect("a good file");
        assert_eq!(config.data, Some(PathBuf::from("/var/lib/lanes")));
        assert_eq!(
            config.durability,
            Some(Durability::Interval(Duration::from_millis(20)))
        );
        assert_eq!(config.lease_ms, Some(45_000));
        assert_eq!(config.limits.payload_bytes_max, 65_536);
        assert_eq!(config.limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(
            config.tokens,
            [(Role::Admin, "0123456789abcdef0123".to_string())]
        );
        assert_eq!(config.rules.queues.len(), 2);
        assert_eq!(config.rules.queues[0].action_concurrency, Some(8));
        assert_eq!(config.rules.queues[1].pools, [DEFAULT_POOL]);
        assert!(!config.rules.queues[1].priority_supported);
        let rules = config.rules.tag_rules.expect("tag limits");
        assert_eq!(rules[1].matches, TagMatch::EachValue);
        let trigger = &config.rules.triggers[0];
        assert_eq!(trigger.schedule.zone(), "Europe/Paris");
        assert_eq!(trigger.missed, Missed::Latest);
        assert_eq!(trigger.run.jobs.len(), 2);
        assert!(trigger.run.jobs[1].wait_before);
        assert_eq!(trigger.run.defaults.queue.as_deref(), Some("nightly"));
    }

    #[test]
    fn mistakes_name_their_line() {
        let unknown = error("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n");
        assert!(unknown.contains("line 3"), "{unknown}");
        assert!(unknown.contains("unknown field `listne`"), "{unknown}");

        let float = error("[[queue]]\nname = \"a\"\npriority = 1.5\n");
        assert!(float.contains("line 3"), "{float}");

        let durability = error("[server]\n\ndurability = \"sometimes\"\n");
        assert!(durability.contains("line 3"), "{durability}");
        assert!(durability.contains("expected sync, none or interval=<milliseconds>"));

        let zero = error("\n[[queue]]\nname = \"a\"\ndepth = 0\n");
        assert!(
            zero.starts_with("line 2: queue \"a\": depth: must be at least 1"),
            "{zero}"
        );

        let completions = error("[limits]\ncompletions_per_request_max = 20000\n");
        assert!(
            completions.starts_with("[limits] completions_per_request_max = 20000: at most 10000"),
            "{completions}"
        );

        let twice = error("[[queue]]\nname = \"a\"\n[[queue]]\nname = \"a\"\n");
        assert!(
            twice.starts_with("line 3: queue \"a\" appears twice"),
            "{twice}"
        );

        let cron = error(
            "[[trigger]]\nname = \"t\"\ncron = \"every day\"\nsteps = [{ command = \"x\" }]\n",
        );
        assert!(
            cron.starts_with("line 1: trigger \"t\": cron expression \"every day\""),
            "{cron}"
        );

        let zone = error("[[trigger]]\nname = \"t\"\ncron = \"* * * * *\"\ntimezone = \"Nowhere\"\nsteps = [{ command = \"x\" }]\n");
        assert!(zone.contains("time zone \"Nowhere\""), "{zone}");

        let step = error("[[trigger]]\nname = \"t\"\ncron = \"* * * * *\"\nsteps = [{ command = \"x\", priority = \"high\" }]\n");
        assert!(step.contains("steps[0].priority"), "{step}");

        let role = error("[[token]]\nrole = \"root\"\ntoken = \"x\"\n");
        assert!(
            role.contains("line 2") && role.contains("\"root\" is not a role"),
            "{role}"
        );
    }
}
