//! Wall-clock helpers: Unix seconds and RFC 3339 timestamps without a date crate (the
//! calendar is the chat templates' `strftime`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_secs(secs);
    format!(
        "{}.{millis:03}Z",
        worker_tokenizer::strftime("%Y-%m-%dT%H:%M:%S", at)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            super::rfc3339(1_795_000_000, 999),
            "2026-11-18T11:06:40.999Z"
        );
    }
}
