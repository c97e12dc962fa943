//! Which versions a store keeps: the last N, and the newest version in each of the last N
//! hours, days and weeks that have one (restic's `forget` semantics). A version is kept if any
//! rule keeps it; the newest is always kept.

use std::ops::RangeInclusive;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// What `--keep-last` (and config.json's `keep_last`) may be.
pub const KEEP_LAST: RangeInclusive<u32> = 2..=999;

/// What `--keep-hourly`, `--keep-daily` and `--keep-weekly` (and config.json's keys) may be.
pub const KEEP_PERIODS: RangeInclusive<u32> = 0..=99_999;

/// A range of counts as clap's parser takes it.
fn counts(range: RangeInclusive<u32>) -> RangeInclusive<i64> {
    i64::from(*range.start())..=i64::from(*range.end())
}

/// The retention policy of a version store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest versions kept whatever their dates; they are `_0` … `_{last-1}`.
    pub last: u32,
    /// Hours, counted back from the newest version's, whose newest version is kept.
    pub hourly: u32,
    /// Days, likewise.
    pub daily: u32,
    /// Weeks (Monday to Sunday), likewise.
    pub weekly: u32,
}

impl Default for Retention {
    /// Two numbered versions as in the seed, and the newest of each of the last 24 hours, 9
    /// days and 4 weeks that have one. Nine days (today and the eight before) so that what
    /// stood at the end of a day is still there at least a week after it was deleted the
    /// next day, whenever that day it was deleted.
    fn default() -> Retention {
        Retention {
            last: 2,
            hourly: 24,
            daily: 9,
            weekly: 4,
        }
    }
}

/// The retention options of both programs' command lines (oneway with `--versioned`, twoway
/// for its recovery system), each given or not.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Keep {
    /// Versions: the newest kept as _0 … _{N-1}, the latest last (at least 2; default 2, or
    /// twoway's config.json "keep_last").
    #[arg(id = "keep_last", long = "keep-last", visible_alias = "keep", value_name = "N",
          value_parser = clap::value_parser!(u32).range(counts(KEEP_LAST)))]
    pub last: Option<u32>,
    /// Versions: also the newest of each of the last N hours that have one (default 24, or
    /// twoway's config.json "keep_hourly").
    #[arg(id = "keep_hourly", long = "keep-hourly", value_name = "N",
          value_parser = clap::value_parser!(u32).range(counts(KEEP_PERIODS)))]
    pub hourly: Option<u32>,
    /// Versions: and of each of the last N days (default 9, or twoway's config.json
    /// "keep_daily": what stood at the end of a day stays at least a week after it is deleted).
    #[arg(id = "keep_daily", long = "keep-daily", value_name = "N",
          value_parser = clap::value_parser!(u32).range(counts(KEEP_PERIODS)))]
    pub daily: Option<u32>,
    /// Versions: and of each of the last N weeks, Monday to Sunday (default 4, or twoway's
    /// config.json "keep_weekly").
    #[arg(id = "keep_weekly", long = "keep-weekly", value_name = "N",
          value_parser = clap::value_parser!(u32).range(counts(KEEP_PERIODS)))]
    pub weekly: Option<u32>,
}

/// The retention options as they are written, in the order of [`Keep`]'s fields.
const FLAGS: [&str; 4] = [
    "--keep-last",
    "--keep-hourly",
    "--keep-daily",
    "--keep-weekly",
];

impl Keep {
    /// `base` with the options given in its place.
    pub fn over(self, base: Retention) -> Retention {
        Retention {
            last: self.last.unwrap_or(base.last),
            hourly: self.hourly.unwrap_or(base.hourly),
            daily: self.daily.unwrap_or(base.daily),
            weekly: self.weekly.unwrap_or(base.weekly),
        }
    }

    /// The first option given, if any.
    pub fn given(self) -> Option<&'static str> {
        let values = [self.last, self.hourly, self.daily, self.weekly];
        FLAGS
            .into_iter()
            .zip(values)
            .find_map(|(flag, n)| n.map(|_| flag))
    }
}

impl Retention {
    /// The command-line options that give this policy (for a versioning child).
    pub fn args(&self) -> Vec<String> {
        let values = [self.last, self.hourly, self.daily, self.weekly];
        FLAGS
            .into_iter()
            .zip(values)
            .flat_map(|(flag, n)| [flag.to_string(), n.to_string()])
            .collect()
    }

    /// For versions dated `times` (oldest first), whether each is kept, calendar periods being
    /// those of `zone`. The newest is always kept, and so are the `last` newest.
    pub fn keep(&self, times: &[Timestamp], zone: &TimeZone) -> Vec<bool> {
        let mut kept = vec![false; times.len()];
        let buckets: Vec<(Date, i8, Date)> = times
            .iter()
            .map(|t| {
                let local = t.to_zoned_datetime(zone.clone());
                let date = local.date();
                (date, local.hour(), monday_of(date))
            })
            .collect();
        // Per rule: how many more periods it keeps, and the period of the last one kept.
        let mut hours = (self.hourly, None);
        let mut days = (self.daily, None);
        let mut weeks = (self.weekly, None);
        for (rank, i) in (0..times.len()).rev().enumerate() {
            let (date, hour, week) = buckets[i];
            let mut keep = rank < self.last.max(1) as usize;
            keep |= take(&mut hours, (date, hour));
            keep |= take(&mut days, (date, 0));
            keep |= take(&mut weeks, (week, 0));
            kept[i] = keep;
        }
        kept
    }
}

/// Whether a rule with `left` periods to go keeps the newest version of `period` (met newest
/// first: the first version met in a period is its newest).
fn take(rule: &mut (u32, Option<(Date, i8)>), period: (Date, i8)) -> bool {
    let (left, last) = rule;
    if *left == 0 || *last == Some(period) {
        return false;
    }
    *left -= 1;
    *last = Some(period);
    true
}

/// The Monday that starts `date`'s week.
fn monday_of(date: Date) -> Date {
    let back = date.weekday().to_monday_zero_offset();
    date.checked_sub(jiff::Span::new().days(back))
        .unwrap_or(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        format!("{text}Z").parse().unwrap()
    }

    fn kept(policy: Retention, times: &[&str]) -> Vec<String> {
        let times: Vec<Timestamp> = times.iter().map(|t| at(t)).collect();
        let keep = policy.keep(&times, &TimeZone::UTC);
        times
            .iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(t, _)| t.to_string())
            .collect()
    }

    fn policy(last: u32, hourly: u32, daily: u32, weekly: u32) -> Retention {
        Retention {
            last,
            hourly,
            daily,
            weekly,
        }
    }

    #[test]
    fn the_newest_of_each_hour_is_kept_and_the_last_whatever_their_hours() {
        let times = [
            "2026-12-07T09:10:00",
            "2026-12-07T09:50:00",
            "2026-12-07T10:05:00",
            "2026-12-07T10:06:00",
            "2026-12-07T10:07:00",
        ];
        assert_eq!(
            kept(policy(2, 24, 0, 0), &times),
            [
                "2026-12-07T09:50:00Z",
                "2026-12-07T10:06:00Z",
                "2026-12-07T10:07:00Z"
            ]
        );
        // Two hours only: the current one and the one before.
        assert_eq!(kept(policy(1, 1, 0, 0), &times), ["2026-12-07T10:07:00Z"]);
    }

    #[test]
    fn periods_without_a_version_are_not_counted() {
        // Three days with versions, a fortnight apart: daily 3 keeps all three.
        let times = [
            "2026-11-01T12:00:00",
            "2026-11-15T12:00:00",
            "2026-11-29T12:00:00",
        ];
        assert_eq!(kept(policy(1, 0, 3, 0), &times).len(), 3);
        assert_eq!(kept(policy(1, 0, 2, 0), &times).len(), 2);
    }

    #[test]
    fn weeks_start_on_monday() {
        // Sunday 6 December and Monday 7 December 2026 are in different weeks.
        let times = [
            "2026-12-05T12:00:00",
            "2026-12-06T12:00:00",
            "2026-12-07T12:00:00",
        ];
        assert_eq!(
            kept(policy(1, 0, 0, 2), &times),
            ["2026-12-06T12:00:00Z", "2026-12-07T12:00:00Z"]
        );
    }

    #[test]
    fn the_newest_is_kept_even_by_a_policy_of_nothing() {
        let times = ["2026-12-07T09:10:00", "2026-12-07T09:11:00"];
        assert_eq!(kept(policy(0, 0, 0, 0), &times), ["2026-12-07T09:11:00Z"]);
    }

    #[test]
    fn the_default_keeps_what_stood_at_the_end_of_a_day_for_a_week() {
        // A version every hour for ten days.
        let start = at("2026-12-01T00:30:00");
        let times: Vec<Timestamp> = (0..240)
            .map(|h| start.checked_add(jiff::Span::new().hours(h)).unwrap())
            .collect();
        let keep = Retention::default().keep(&times, &TimeZone::UTC);
        let kept: Vec<&Timestamp> = times
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(t, _)| t)
            .collect();
        // The last 24 hours, the ends of 8 earlier days, and of earlier weeks.
        let end_of_dec_3 = at("2026-12-03T23:30:00");
        assert!(kept.contains(&&end_of_dec_3), "{kept:?}");
        assert!(kept.len() < 40, "{}", kept.len());
        assert!(!kept.contains(&&at("2026-12-03T22:30:00")));
    }

    #[test]
    fn args_name_every_rule() {
        assert_eq!(
            Retention::default().args().join(" "),
            "--keep-last 2 --keep-hourly 24 --keep-daily 9 --keep-weekly 4"
        );
    }
}
