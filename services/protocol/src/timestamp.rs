//! Timestamps as the wire shows them: RFC 3339 in UTC with microseconds
//! (`2026-11-22T10:00:00.123456Z`), which JavaScript's `Date` and Python's
//! `datetime.fromisoformat` both read.
//!
//! Internally a timestamp is microseconds since the Unix epoch, so it is
//! `Copy`, orders as an integer and fits in one Redis field.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Microseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// A string that is not an ISO-8601 / RFC 3339 date-time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ISO-8601 timestamp (expected e.g. 2026-11-22T10:00:00Z)")]
pub struct TimestampError;

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// From microseconds since the epoch.
    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    fn from_datetime(dt: OffsetDateTime) -> Self {
        let nanos = dt.unix_timestamp_nanos();
        Self((nanos / 1_000) as i64)
    }

    /// Parses RFC 3339 (`...Z` or `...+02:00`) or an ISO-8601 date-time
    /// without an offset, which is taken as UTC (what Python's
    /// `datetime.utcnow().isoformat()` produces).
    ///
    /// Only instants whose UTC year is 0000-9999 are accepted: RFC 3339,
    /// the wire format, cannot write any other (a fuzzer found
    /// `9999-12-31T23:59:59-22:00`, which is year 10000 in UTC).
    pub fn parse(s: &str) -> Result<Self, TimestampError> {
        let dt = OffsetDateTime::parse(s, &Rfc3339)
            .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
            .or_else(|_| {
                PrimitiveDateTime::parse(s, &Iso8601::DEFAULT)
                    .map(|p| p.assume_offset(UtcOffset::UTC))
            })
            .map_err(|_| TimestampError)?;
        let utc = dt.checked_to_offset(UtcOffset::UTC).ok_or(TimestampError)?;
        if !(0..=9999).contains(&utc.year()) {
            return Err(TimestampError);
        }
        Ok(Self::from_datetime(utc))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.microsecond()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc_micros() {
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123456Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn parses_offsets_and_naive_times() {
        let z = Timestamp::parse("2023-11-14T22:13:20Z").unwrap();
        assert_eq!(Timestamp::parse("2023-11-14T23:13:20+01:00"), Ok(z));
        assert_eq!(Timestamp::parse("2023-11-14T22:13:20"), Ok(z));
        assert_eq!(
            Timestamp::parse("2023-11-14T22:13:20.5")
                .unwrap()
                .as_micros(),
            z.as_micros() + 500_000
        );
        assert!(Timestamp::parse("yesterday").is_err());
        // Found by the fuzz smoke run: year 10000 once converted to UTC.
        assert!(Timestamp::parse("9999-12-31T23:59:59.9991-22:00").is_err());
        assert!(Timestamp::parse("9999-12-31T23:59:59.9991-22").is_err());
        let last = Timestamp::parse("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(Timestamp::parse(&last.to_string()), Ok(last));
        assert!(Timestamp::parse("12345").is_err());
    }
}
