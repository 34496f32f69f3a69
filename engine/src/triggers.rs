//! Cron triggers (Flyte's triggers): runs the engine submits by itself on a
//! schedule.
//!
//! The rules are a pure function, [`due`]: which scheduled time fires now,
//! given the trigger's schedule, the last time it fired and the time before
//! which misses are forgiven. The scheduler records each firing
//! (`TriggerFired`, with the time it was due), so a restart reads the last
//! firing back from the log and never fires the same time twice.
//! [`spawn`] is the edge: a task that sleeps until the next time is due and
//! sends `FireTrigger` commands to the writer.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use tokio::sync::watch;

use crate::driver::{Clock, DriverHandle};
use crate::model::{RunSpec, TimeMs};
use crate::sched::{Command, Rejection, Reply};

/// What a trigger does with times it missed while the engine was down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Missed {
    /// Fire the most recent missed time once, at start.
    #[default]
    Latest,
    /// Fire nothing for missed times: wait for the next one.
    Skip,
}

impl FromStr for Missed {
    type Err = String;

    fn from_str(text: &str) -> Result<Missed, String> {
        match text {
            "latest" => Ok(Missed::Latest),
            "none" => Ok(Missed::Skip),
            _ => Err(format!("{text:?}: expected \"latest\" or \"none\"")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression {expression:?}: {reason}")]
    Cron { expression: String, reason: String },
    #[error("time zone {0:?} is not an IANA time zone name (for example UTC or Europe/Paris)")]
    Zone(String),
}

/// A cron expression (5 fields, or 6 with seconds first) in a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Schedule {
    pub fn parse(expression: &str, zone: &str) -> Result<Schedule, ScheduleError> {
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(expression)
            .map_err(|error| ScheduleError::Cron {
                expression: expression.to_string(),
                reason: error.to_string(),
            })?;
        let zone = zone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| ScheduleError::Zone(zone.to_string()))?;
        Ok(Schedule { cron, zone })
    }

    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    /// `time` in the schedule's zone, down to the whole second (cron's
    /// finest unit), so every time found is a whole second too.
    fn at(&self, time: TimeMs) -> DateTime<chrono_tz::Tz> {
        let seconds = (time / 1_000).min(i64::MAX as u64) as i64;
        let utc = Utc
            .timestamp_opt(seconds, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        utc.with_timezone(&self.zone)
    }

    /// The first scheduled time strictly after `time`.
    pub fn next_after(&self, time: TimeMs) -> Option<TimeMs> {
        let next = self.cron.find_next_occurrence(&self.at(time), false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }

    /// The last scheduled time at or before `time`.
    pub fn latest_at_or_before(&self, time: TimeMs) -> Option<TimeMs> {
        let previous = self
            .cron
            .find_previous_occurrence(&self.at(time), true)
            .ok()?;
        u64::try_from(previous.timestamp_millis()).ok()
    }
}

/// The scheduled time to fire at `now`, if any: the latest one at or
/// before `now` that is later than `floor` (the last firing, or the time
/// before which misses are forgiven). Only the latest fires, once: a trigger
/// never fires a burst to catch up.
pub fn due(schedule: &Schedule, floor: Option<TimeMs>, now: TimeMs) -> Option<TimeMs> {
    let latest = schedule.latest_at_or_before(now)?;
    match floor {
        Some(floor) if latest <= floor => None,
        _ => Some(latest),
    }
}

/// The floor a trigger starts from when the engine starts at `start`:
/// never at or before its last firing, and, unless it catches up on the
/// latest missed time, never before the start. A trigger that never fired
/// is new: nothing was missed.
pub fn start_floor(last_fired: Option<TimeMs>, start: TimeMs, missed: Missed) -> TimeMs {
    match (last_fired, missed) {
        (Some(last), Missed::Latest) => last,
        (Some(last), Missed::Skip) => last.max(start),
        (None, _) => start,
    }
}

/// One configured trigger.
#[derive(Clone, Debug)]
pub struct Trigger {
    pub name: String,
    pub schedule: Schedule,
    pub missed: Missed,
    /// The run each firing submits.
    pub run: RunSpec,
}

/// Replaces the running triggers (a configuration reload).
#[derive(Clone)]
pub struct Triggers {
    replace: Arc<watch::Sender<Vec<Trigger>>>,
}

impl Triggers {
    /// Takes effect at once; times missed in between are not caught up.
    pub fn replace(&self, triggers: Vec<Trigger>) {
        self.replace.send_replace(triggers);
    }
}

/// Longest sleep between looks at the clock: a wall clock that jumps (NTP,
/// a suspended machine) is noticed within this.
const WAKE_MAX: Duration = Duration::from_secs(1);

/// Starts the task that fires `triggers` through `driver`. It ends when the
/// driver stops.
pub fn spawn(driver: DriverHandle, clock: Clock, triggers: Vec<Trigger>) -> Triggers {
    let (replace, mut replaced) = watch::channel(triggers);
    tokio::spawn(async move {
        let Ok(fired) = driver.read(|s| s.triggers_fired().clone()).await else {
            return;
        };
        let start = clock();
        let mut floors = floors(&replaced.borrow_and_update(), &fired, start, true);
        loop {
            let current = replaced.borrow().clone();
            let now = clock();
            for trigger in &current {
                let floor = floors.get(&trigger.name).copied();
                let Some(scheduled) = due(&trigger.schedule, floor, now) else {
                    continue;
                };
                floors.insert(trigger.name.clone(), scheduled);
                if !fire(&driver, trigger, scheduled).await {
                    return;
                }
            }
            let next = current
                .iter()
                .filter_map(|trigger| trigger.schedule.next_after(now))
                .min();
            let sleep = next.map_or(WAKE_MAX, |next| {
                Duration::from_millis(next.saturating_sub(clock())).min(WAKE_MAX)
            });
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                changed = replaced.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Ok(fired) = driver.read(|s| s.triggers_fired().clone()).await else {
                        return;
                    };
                    floors = floors_after_reload(&replaced.borrow_and_update(), &fired, &floors, clock());
                }
                _ = driver.stopped() => return,
            }
        }
    });
    Triggers {
        replace: Arc::new(replace),
    }
}

/// Each trigger's floor at start.
fn floors(
    triggers: &[Trigger],
    fired: &BTreeMap<String, TimeMs>,
    start: TimeMs,
    starting: bool,
) -> BTreeMap<String, TimeMs> {
    triggers
        .iter()
        .map(|trigger| {
            let last = fired.get(&trigger.name).copied();
            let missed = if starting {
                trigger.missed
            } else {
                Missed::Skip
            };
            (trigger.name.clone(), start_floor(last, start, missed))
        })
        .collect()
}

/// After a reload, triggers that stayed keep their floor; new ones start
/// now, with nothing missed.
fn floors_after_reload(
    triggers: &[Trigger],
    fired: &BTreeMap<String, TimeMs>,
    kept: &BTreeMap<String, TimeMs>,
    now: TimeMs,
) -> BTreeMap<String, TimeMs> {
    let mut floors = floors(triggers, fired, now, false);
    for (name, floor) in floors.iter_mut() {
        if let Some(&kept) = kept.get(name) {
            *floor = kept;
        }
    }
    floors
}

/// Fires one trigger; false when the engine stopped.
async fn fire(driver: &DriverHandle, trigger: &Trigger, scheduled: TimeMs) -> bool {
    let command = Command::FireTrigger {
        trigger: trigger.name.clone(),
        scheduled,
        run: trigger.run.clone(),
    };
    match driver.command(command).await {
        Err(_) => false,
        Ok(Ok(Reply::Fired {
            submitted: Ok((run, first_job, count)),
        })) => {
            tracing::info!(trigger = %trigger.name, scheduled, run = run.0, first_job = first_job.0, count, "trigger fired");
            true
        }
        Ok(Ok(Reply::Fired {
            submitted: Err(rejection),
        })) => {
            tracing::warn!(trigger = %trigger.name, scheduled, %rejection, "trigger fired, its run was refused");
            true
        }
        Ok(Err(rejection @ Rejection::AlreadyFired { .. })) => {
            tracing::debug!(trigger = %trigger.name, %rejection, "trigger time already fired");
            true
        }
        Ok(Err(rejection)) => {
            tracing::error!(trigger = %trigger.name, %rejection, "trigger could not fire");
            true
        }
        Ok(Ok(reply)) => {
            tracing::error!(trigger = %trigger.name, ?reply, "a firing answered unexpectedly");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z in milliseconds.
    const NEW_YEAR: TimeMs = 1_767_225_600_000;
    const MINUTE: TimeMs = 60_000;

    fn every_minute() -> Schedule {
        Schedule::parse("* * * * *", "UTC").expect("a schedule")
    }

    #[test]
    fn seconds_are_optional() {
        let every_second = Schedule::parse("* * * * * *", "UTC").expect("six fields");
        assert_eq!(every_second.next_after(NEW_YEAR), Some(NEW_YEAR + 1_000));
        assert_eq!(every_minute().next_after(NEW_YEAR), Some(NEW_YEAR + MINUTE));
        assert_eq!(
            every_minute().latest_at_or_before(NEW_YEAR + MINUTE - 1),
            Some(NEW_YEAR)
        );
    }

    #[test]
    fn time_zones_move_the_schedule() {
        // 02:00 in Paris on 1 January is 01:00 UTC.
        let paris = Schedule::parse("0 2 * * *", "Europe/Paris").expect("a schedule");
        assert_eq!(paris.next_after(NEW_YEAR), Some(NEW_YEAR + 60 * MINUTE));
        let utc = Schedule::parse("0 2 * * *", "UTC").expect("a schedule");
        assert_eq!(utc.next_after(NEW_YEAR), Some(NEW_YEAR + 120 * MINUTE));
    }

    #[test]
    fn bad_expressions_and_zones_are_named() {
        let error = Schedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(error
            .to_string()
            .starts_with("cron expression \"61 * * * *\""));
        let error = Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(
            error.to_string(),
            "time zone \"Mars/Olympus\" is not an IANA time zone name (for example UTC or Europe/Paris)"
        );
        assert!(
            Schedule::parse("* * * * * * *", "UTC").is_err(),
            "no year field"
        );
    }

    #[test]
    fn only_the_latest_due_time_fires_and_only_once() {
        let schedule = every_minute();
        let now = NEW_YEAR + 10 * MINUTE + 5;
        // Ten minutes missed: one firing, for the latest.
        assert_eq!(
            due(&schedule, Some(NEW_YEAR), now),
            Some(NEW_YEAR + 10 * MINUTE)
        );
        assert_eq!(due(&schedule, Some(NEW_YEAR + 10 * MINUTE), now), None);
        assert_eq!(due(&schedule, None, now), Some(NEW_YEAR + 10 * MINUTE));
    }

    #[test]
    fn the_missed_policy_sets_where_a_restart_starts() {
        let schedule = every_minute();
        let last = NEW_YEAR;
        let start = NEW_YEAR + 30 * MINUTE + 7;
        // latest: the most recent missed time fires once at start.
        let floor = start_floor(Some(last), start, Missed::Latest);
        assert_eq!(
            due(&schedule, Some(floor), start),
            Some(NEW_YEAR + 30 * MINUTE)
        );
        // none: nothing fires until the next time.
        let floor = start_floor(Some(last), start, Missed::Skip);
        assert_eq!(due(&schedule, Some(floor), start), None);
        assert_eq!(
            due(&schedule, Some(floor), NEW_YEAR + 31 * MINUTE),
            Some(NEW_YEAR + 31 * MINUTE)
        );
        // A trigger that never fired missed nothing.
        let floor = start_floor(None, start, Missed::Latest);
        assert_eq!(due(&schedule, Some(floor), start), None);
    }

    #[test]
    fn missed_policy_names() {
        assert_eq!("latest".parse(), Ok(Missed::Latest));
        assert_eq!("none".parse(), Ok(Missed::Skip));
        assert!("all".parse::<Missed>().is_err());
    }
}
