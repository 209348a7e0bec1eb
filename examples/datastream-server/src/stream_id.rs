//! Stream ids: `"<unix_ms>-<seq>"`, ordered numerically.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A stream id `"<unix_ms>-<seq>"`. Ids compare numerically (milliseconds
/// first, then the sequence within the millisecond), never as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Unix time in milliseconds.
    pub ms: u64,
    /// Sequence number within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// The id following `self` at wall-clock time `now_ms`: `(now_ms, 0)`
    /// when the clock moved past `self.ms`, else `(self.ms, self.seq + 1)`
    /// (also when the clock went backwards), so ids strictly increase.
    pub fn next_after(self, now_ms: u64) -> StreamId {
        if now_ms > self.ms {
            StreamId { ms: now_ms, seq: 0 }
        } else {
            StreamId {
                ms: self.ms,
                seq: self.seq.saturating_add(1),
            }
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A string that is not `"<ms>-<seq>"` (or a bare `"<ms>"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream id {0:?}: expected \"<unix_ms>-<seq>\"")]
pub struct InvalidStreamId(pub String);

impl FromStr for StreamId {
    type Err = InvalidStreamId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(InvalidStreamId(text.to_owned()));
        }
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(StreamId { ms, seq }),
            _ => Err(InvalidStreamId(text.to_owned())),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_formats_and_orders_numerically() {
        let a: StreamId = "1700000000000-9".parse().expect("valid");
        let b: StreamId = "1700000000000-10".parse().expect("valid");
        assert!(a < b);
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(
            "17".parse::<StreamId>().expect("bare ms"),
            StreamId { ms: 17, seq: 0 }
        );
        for bad in ["", "-", "1-", "-1", "a-1", "1-2-3", "+1-2"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn next_ids_strictly_increase() {
        let id = StreamId { ms: 10, seq: 4 };
        assert_eq!(id.next_after(10), StreamId { ms: 10, seq: 5 });
        assert_eq!(id.next_after(9), StreamId { ms: 10, seq: 5 });
        assert_eq!(id.next_after(11), StreamId { ms: 11, seq: 0 });
    }
}
