//! CronJob schedules as Kubernetes reads them (robfig/cron's standard
//! syntax: five fields, names of months and weekdays, `?`, and the
//! descriptors `@yearly`/`@annually`, `@monthly`, `@weekly`,
//! `@daily`/`@midnight` and `@hourly`), evaluated in the CronJob's
//! `timeZone` (IANA; UTC when unset). Parsing and the search of
//! occurrences are croner's; what kube's syntax does not have (seconds,
//! years, `L`, `W`, `#`) is refused here before croner sees it, and so is
//! `@every`, which Weft does not run yet. The API server validates with
//! [`Schedule::parse`]; the CronJob controller schedules with it.

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// The descriptors kube accepts, as five fields.
fn descriptor(s: &str) -> Option<&'static str> {
    // Case-sensitive, as robfig/cron's.
    Some(match s {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// Whether a field uses only what robfig/cron's standard parser knows:
/// numbers, names, `*`, `?`, lists, ranges and steps.
fn standard_field(field: &str) -> bool {
    field.split(',').all(|part| {
        !part.is_empty()
            && part.split(['-', '/']).all(|t| {
                t == "*"
                    || t == "?"
                    || t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty()
                    || (t.len() == 3 && t.chars().all(|c| c.is_ascii_alphabetic()))
            })
    })
}

impl Schedule {
    /// Parses `schedule` for `time_zone` (UTC when `None`).
    ///
    /// # Errors
    /// kube's reasons where it has them: a `TZ=`/`CRON_TZ=` prefix, an
    /// unknown time zone, or what is wrong with the pattern.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let s = schedule.trim();
        if s.contains("TZ") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let tz: Tz = match time_zone {
            None => Tz::UTC,
            Some(name) => name
                .parse()
                .map_err(|_| format!("unknown time zone {name}"))?,
        };
        let owned: String;
        let pattern = if s.starts_with('@') {
            descriptor(s).ok_or_else(|| {
                if s.to_ascii_lowercase().starts_with("@every") {
                    "@every is not supported by Weft yet; use five fields (such as \"*/5 * * * *\")"
                        .to_string()
                } else {
                    format!("unrecognized descriptor: {s}")
                }
            })?
        } else {
            let fields: Vec<&str> = s.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(format!(
                    "expected exactly 5 fields, found {}: {s}",
                    fields.len()
                ));
            }
            if let Some(f) = fields.iter().find(|f| !standard_field(f)) {
                return Err(format!("unsupported syntax in field {f:?}: {s}"));
            }
            // robfig's day of week is 0-6 (croner would take 7 as Sunday).
            if fields[4]
                .split([',', '-', '/'])
                .any(|t| t.parse::<u32>().is_ok_and(|n| n > 6))
                && !fields[4].contains('/')
            {
                return Err(format!("end of range above maximum (6): {}", fields[4]));
            }
            // `?` means `*` in any field (croner takes it only in the days).
            owned = fields
                .iter()
                .map(|f| if *f == "?" { "*" } else { f })
                .collect::<Vec<_>>()
                .join(" ");
            owned.as_str()
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| format!("{e}: {s}"))?;
        Ok(Self { cron, tz })
    }

    /// The first scheduled time strictly after `t` (seconds since the
    /// epoch), if any within croner's search horizon.
    #[must_use]
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let at = self
            .tz
            .from_utc_datetime(&DateTime::<Utc>::from_timestamp(t, 0)?.naive_utc());
        self.cron
            .find_next_occurrence(&at, false)
            .ok()
            .map(|d| d.timestamp())
    }

    /// The scheduled times in `(after, until]`: how many there are (up to
    /// `cap + 1`, so that "more than `cap`" can be told) and the latest.
    #[must_use]
    pub fn between(&self, after: i64, until: i64, cap: usize) -> (usize, Option<i64>) {
        let mut count = 0;
        let mut last = None;
        let mut t = after;
        while let Some(next) = self.next_after(t) {
            if next > until {
                break;
            }
            count += 1;
            last = Some(next);
            t = next;
            if count > cap {
                // Too many to walk: the latest is the one before `until`.
                if let Some(prev) = self.latest_at_or_before(until) {
                    last = Some(prev);
                }
                break;
            }
        }
        (count, last)
    }

    /// The latest scheduled time at or before `t`.
    fn latest_at_or_before(&self, t: i64) -> Option<i64> {
        let at = self
            .tz
            .from_utc_datetime(&DateTime::<Utc>::from_timestamp(t, 0)?.naive_utc());
        self.cron
            .find_previous_occurrence(&at, true)
            .ok()
            .map(|d| d.timestamp())
    }

    /// `t` as RFC 3339 in the schedule's time zone (kube's
    /// `batch.kubernetes.io/cronjob-scheduled-timestamp`).
    #[must_use]
    pub fn format(&self, t: i64) -> String {
        // Go's RFC 3339: `Z` for a zero offset.
        DateTime::<Utc>::from_timestamp(t, 0)
            .map(|d| {
                d.with_timezone(&self.tz)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z.
    const NEW_YEAR: i64 = 1_767_225_600;

    #[test]
    fn kubes_syntax_is_read_and_the_rest_refused() {
        for ok in [
            "*/5 * * * *",
            "0 9 * * MON-FRI",
            "30 2 1,15 JAN,JUL ?",
            "@hourly",
            "@midnight",
            "@annually",
            "? * * * *",
            "* ? * ? *",
        ] {
            assert!(Schedule::parse(ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "0 * * * * *",
            "0 0 L * *",
            "0 0 * * 5#2",
            "0 0 15W * *",
            "61 * * * *",
            "@every 5m",
            "0 0 * * 7",
            "0 0 * * 0-7",
            "@DAILY",
            "@often",
            "CRON_TZ=UTC 0 * * * *",
            "TZ=Europe/Paris 0 * * * *",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
        assert_eq!(
            Schedule::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err(),
            "unknown time zone Mars/Olympus"
        );
    }

    #[test]
    fn occurrences_follow_the_time_zone() {
        let hourly = Schedule::parse("@hourly", None).expect("valid");
        assert_eq!(hourly.next_after(NEW_YEAR), Some(NEW_YEAR + 3600));
        assert_eq!(hourly.next_after(NEW_YEAR - 1), Some(NEW_YEAR));
        // 09:00 in Tokyo is 00:00 UTC.
        let tokyo = Schedule::parse("0 9 * * *", Some("Asia/Tokyo")).expect("valid");
        assert_eq!(tokyo.next_after(NEW_YEAR - 60), Some(NEW_YEAR));
        assert_eq!(tokyo.format(NEW_YEAR), "2026-01-01T09:00:00+09:00");
        assert_eq!(hourly.format(NEW_YEAR), "2026-01-01T00:00:00Z");
        // Every minute for an hour: 60, the last at the hour's end.
        let minutely = Schedule::parse("* * * * *", None).expect("valid");
        assert_eq!(
            minutely.between(NEW_YEAR, NEW_YEAR + 3600, 100),
            (60, Some(NEW_YEAR + 3600))
        );
        // A day of them: counting stops past the cap, the latest is right.
        assert_eq!(
            minutely.between(NEW_YEAR, NEW_YEAR + 86_400 + 30, 100),
            (101, Some(NEW_YEAR + 86_400))
        );
        assert_eq!(minutely.between(NEW_YEAR, NEW_YEAR + 59, 100), (0, None));
    }
}
