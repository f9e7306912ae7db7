//! `strftime_now(format)` for chat templates: HF `transformers` gives templates this function
//! (Python's `datetime.now().strftime(format)`), and templates put today's date in the system
//! prompt with it (gpt-oss: `"Current date: " + strftime_now("%Y-%m-%d")`; Llama 3.1:
//! `"%d %b %Y"`).
//!
//! Written here rather than taken from a date crate: minijinja's contrib crate has no
//! `strftime`, templates use a handful of fields, and the calendar conversion is one
//! well-known function ([`civil_from_days`]); the clock is UTC, as in the containers the
//! worker runs in.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `(year, month 1..=12, day 1..=31)` of `days` since 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `format` with the C `strftime` fields `%Y %y %m %d %e %j %H %M %S %b %B %h %a %A %%`
/// filled from `now` (UTC); any other `%x` is kept as it is, as glibc does with unknown
/// conversions. What chat templates' `strftime_now` returns, for any instant.
pub fn strftime(format: &str, now: SystemTime) -> String {
    let secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates_match_the_calendar() {
        // Dates checked against `date -u -d @SECS`.
        assert_eq!(strftime("%Y-%m-%d", at(0)), "1970-01-01");
        assert_eq!(
            strftime("%a %A %d %b %B %Y %H:%M:%S %j", at(951_782_400)),
            "Tue Tuesday 29 Feb February 2000 00:00:00 060"
        );
        assert_eq!(
            strftime("%d %b %Y, %e|%y|%h|%%|%Q", at(1_796_420_567)),
            "04 Dec 2026,  4|26|Dec|%|%Q"
        );
        assert_eq!(strftime("%H:%M:%S", at(1_796_420_567)), "21:42:47");
        assert_eq!(strftime("%j", at(1_798_761_599)), "365");
        assert_eq!(strftime("%j", at(1_861_876_800)), "366", "a leap year");
        assert_eq!(strftime("trailing %", at(0)), "trailing %");
        // Before the epoch.
        assert_eq!(
            strftime("%Y-%m-%d %H", UNIX_EPOCH - Duration::from_secs(3600)),
            "1969-12-31 23"
        );
        for days in [-800_000i64, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
