//! One timestamp format for snapshots and clients.
//!
//! Snapshots store instants as fixed-width RFC 3339 UTC text with milliseconds
//! (`2024-05-01T12:00:00.000Z`), so text order is time order and SQLite can compare and index them
//! without conversion. Records arrive with any offset and precision; [`Timestamp::parse`] normalises.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// A UTC instant with millisecond precision, between years 1 and 9999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_millis: i64,
}

/// Why a string is not a timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid timestamp {input:?}: expected RFC 3339 (2024-05-01T12:00:00Z) or a date (2024-05-01)"
)]
pub struct TimestampError {
    input: String,
}

/// Earliest accepted instant: 0001-01-01T00:00:00Z, keeping the text form fixed-width.
const MIN_UNIX_MILLIS: i64 = -62_135_596_800_000;
/// Latest accepted instant: 9999-12-31T23:59:59.999Z.
const MAX_UNIX_MILLIS: i64 = 253_402_300_799_999;

impl Timestamp {
    /// The instant `unix_millis` milliseconds after the Unix epoch, if it is within years 1–9999.
    pub fn from_unix_millis(unix_millis: i64) -> Option<Self> {
        (MIN_UNIX_MILLIS..=MAX_UNIX_MILLIS)
            .contains(&unix_millis)
            .then_some(Self { unix_millis })
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.unix_millis
    }

    /// Parses RFC 3339 with any offset and precision (truncated to milliseconds), or a bare
    /// `YYYY-MM-DD` date meaning midnight UTC.
    pub fn parse(input: &str) -> Result<Self, TimestampError> {
        let error = || TimestampError {
            input: input.chars().take(64).collect(),
        };
        let trimmed = input.trim();
        let instant = match OffsetDateTime::parse(trimmed, &Rfc3339) {
            Ok(instant) => instant,
            Err(_) => Date::parse(trimmed, format_description!("[year]-[month]-[day]"))
                .map_err(|_| error())?
                .midnight()
                .assume_utc(),
        };
        // Floor, so precision is truncated before 1970 too (`/` would round those up).
        let unix_millis = i64::try_from(instant.unix_timestamp_nanos().div_euclid(1_000_000))
            .map_err(|_| error())?;
        Self::from_unix_millis(unix_millis).ok_or_else(error)
    }

    /// The canonical stored form, `YYYY-MM-DDTHH:MM:SS.sssZ`.
    pub fn to_rfc3339(self) -> String {
        let instant =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.unix_millis) * 1_000_000)
                .expect("range checked at construction")
                .to_offset(UtcOffset::UTC);
        instant
            .format(format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .expect("every in-range instant formats")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_offsets_and_precision() {
        let ts = Timestamp::parse("2024-05-01T14:30:15.123456+02:00").unwrap();
        assert_eq!(ts.to_rfc3339(), "2024-05-01T12:30:15.123Z");
        assert_eq!(Timestamp::parse(&ts.to_rfc3339()).unwrap(), ts);
        assert_eq!(
            Timestamp::parse("1969-12-31T23:59:59.9999Z")
                .unwrap()
                .to_rfc3339(),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn bare_date_is_midnight_utc() {
        assert_eq!(
            Timestamp::parse("2023-12-31").unwrap().to_rfc3339(),
            "2023-12-31T00:00:00.000Z"
        );
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        for bad in [
            "",
            "yesterday",
            "2024-13-01",
            "12345",
            "2024-05-01T25:00:00Z",
            "0000-01-01",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Timestamp::from_unix_millis(MAX_UNIX_MILLIS + 1).is_none());
        assert!(Timestamp::from_unix_millis(MIN_UNIX_MILLIS - 1).is_none());
    }

    #[test]
    fn text_order_is_time_order() {
        let a = Timestamp::from_unix_millis(MIN_UNIX_MILLIS).unwrap();
        let b = Timestamp::from_unix_millis(0).unwrap();
        let c = Timestamp::from_unix_millis(MAX_UNIX_MILLIS).unwrap();
        assert!(a.to_rfc3339() < b.to_rfc3339() && b.to_rfc3339() < c.to_rfc3339());
    }
}
