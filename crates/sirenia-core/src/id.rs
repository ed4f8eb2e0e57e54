//! Identifiers: stream ids, global positions, event ids, expected versions and timestamps.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::{InvalidStreamId, InvalidTimestamp};
use crate::limits::MAX_STREAM_ID_BYTES;

/// The name of a stream: UTF-8, 1 to [`MAX_STREAM_ID_BYTES`] bytes, no control characters.
///
/// The *category* of a stream is the part before the first `-` (`account-42` → `account`); a
/// name without `-` is its own category. Cloning is cheap (the name is reference counted).
///
/// ```
/// use sirenia_core::StreamId;
/// let id = StreamId::new("account-42")?;
/// assert_eq!(id.category(), "account");
/// assert!(StreamId::new("").is_err());
/// # Ok::<(), sirenia_core::InvalidStreamId>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Validates `name` and makes a stream id of it.
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidStreamId> {
        let name = name.as_ref();
        Self::validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// Makes the stream id `<category>-<id>`, the usual name of an aggregate's stream.
    pub fn for_aggregate(category: &str, id: impl fmt::Display) -> Result<Self, InvalidStreamId> {
        if category.is_empty() || category.contains('-') {
            return Err(InvalidStreamId::BadCategory {
                category: category.to_owned(),
            });
        }
        Self::new(format!("{category}-{id}"))
    }

    fn validate(name: &str) -> Result<(), InvalidStreamId> {
        if name.is_empty() {
            return Err(InvalidStreamId::Empty);
        }
        if name.len() > MAX_STREAM_ID_BYTES {
            return Err(InvalidStreamId::TooLong {
                len: name.len() as u64,
                max: MAX_STREAM_ID_BYTES as u64,
            });
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(InvalidStreamId::ControlCharacter { code: u32::from(c) });
        }
        Ok(())
    }

    /// The stream name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: the part before the first `-`, or the whole name when there is none.
    pub fn category(&self) -> &str {
        match self.0.split_once('-') {
            Some((category, _)) => category,
            None => &self.0,
        }
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for StreamId {
    type Err = InvalidStreamId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(Self(Arc::from(s)))
    }
}

impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        StreamId::new(&*s).map_err(serde::de::Error::custom)
    }
}

/// A position in the global log.
///
/// Positions are strictly increasing in commit order: once a reader has observed position `p`, no
/// event below `p` ever becomes visible. Stored events start at position 1, so
/// [`Position::START`] (0) is before every event. Positions may have holes (a store may burn a
/// position in a rolled-back transaction) but never reorder.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before every event: reading from here reads the whole log.
    pub const START: Position = Position(0);
    /// After every event: reading backward from here starts at the newest event.
    pub const END: Position = Position(u64::MAX);

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The position right after this one (saturating at [`Position::END`]).
    pub const fn next(self) -> Position {
        Position(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for Position {
    fn from(v: u64) -> Self {
        Position(v)
    }
}

/// The unique id of an event: a UUID, version 7 (time-ordered) unless the caller sets it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A fresh time-ordered (v7) id.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// The id of the `index`-th event produced by the command `command_id`.
    ///
    /// Deterministic (UUID v5 in the command id's namespace), so a retried command yields the same
    /// event ids and the store recognises the retry instead of appending twice.
    pub fn derived(command_id: Uuid, index: u32) -> Self {
        EventId(Uuid::new_v5(&command_id, &index.to_be_bytes()))
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Uuid> for EventId {
    fn from(u: Uuid) -> Self {
        EventId(u)
    }
}

/// What a writer expects of a stream's version (its number of events) before its append.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "version")]
pub enum ExpectedVersion {
    /// No expectation: append whatever the stream holds.
    Any,
    /// The stream must not exist (hold no event).
    NoStream,
    /// The stream must exist (hold at least one event).
    StreamExists,
    /// The stream must hold exactly this many events.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `current` (`None`: the stream does not exist)
    /// satisfies this expectation.
    pub fn is_satisfied_by(self, current: Option<u64>) -> bool {
        let version = current.unwrap_or(0);
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => version == 0,
            ExpectedVersion::StreamExists => version > 0,
            ExpectedVersion::Exact(v) => version == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// A UTC instant with microsecond precision: microseconds since the Unix epoch.
///
/// Displays and parses as RFC 3339 (`2026-11-23T10:15:30.123456Z`); serde uses the same text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The current time of the system clock (the epoch if the clock is before it).
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// From microseconds since the Unix epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// From a [`SystemTime`] (clamped to the epoch and truncated to microseconds).
    pub fn from_system_time(t: SystemTime) -> Self {
        let micros = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp(micros)
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    /// Parses RFC 3339 with any offset (`2026-11-23T10:15:30.5+01:00`); sub-microsecond digits
    /// are truncated.
    pub fn parse_rfc3339(text: &str) -> Result<Self, InvalidTimestamp> {
        let parsed =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| InvalidTimestamp::Syntax {
                    text: text.chars().take(64).collect(),
                    reason: e.to_string(),
                })?;
        let nanos = parsed.unix_timestamp_nanos();
        if nanos < 0 {
            return Err(InvalidTimestamp::BeforeEpoch);
        }
        u64::try_from(nanos / 1000)
            .map(Timestamp)
            .map_err(|_| InvalidTimestamp::OutOfRange)
    }

    fn to_offset_date_time(self) -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000).ok()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always six fractional digits: readers can rely on microsecond precision.
        match self.to_offset_date_time() {
            Some(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            ),
            None => write!(f, "{}us", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Timestamp {
    type Err = InvalidTimestamp;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_rfc3339(s)
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
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}
