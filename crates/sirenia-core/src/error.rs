//! Errors. Every store maps its backend's failures onto these backend-neutral kinds, keeping the
//! original error as the source.

use std::error::Error as StdError;
use std::fmt;

use crate::id::{EventId, ExpectedVersion, StreamId};

/// A boxed error from a backend, kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a string is not a valid [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidStreamId {
    /// The name is empty.
    #[error("stream id is empty")]
    Empty,
    /// The name is longer than the limit.
    #[error("stream id is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: u64,
        /// The limit, [`MAX_STREAM_ID_BYTES`](crate::limits::MAX_STREAM_ID_BYTES).
        max: u64,
    },
    /// The name contains a control character.
    #[error("stream id contains the control character U+{code:04X}")]
    ControlCharacter {
        /// The character's code point.
        code: u32,
    },
    /// An aggregate category is empty or contains `-`.
    #[error("category {category:?} is empty or contains '-'")]
    BadCategory {
        /// The rejected category.
        category: String,
    },
}

/// Why a text is not a valid timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTimestamp {
    /// Not RFC 3339.
    #[error("{text:?} is not an RFC 3339 timestamp: {reason}")]
    Syntax {
        /// The text (at most its first 64 characters).
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// Before 1970-01-01T00:00:00Z.
    #[error("timestamp is before the Unix epoch")]
    BeforeEpoch,
    /// Too far in the future to represent.
    #[error("timestamp is out of range")]
    OutOfRange,
}

/// A named limit (see [`limits`](crate::limits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// [`MAX_STREAMS_PER_APPEND`](crate::limits::MAX_STREAMS_PER_APPEND).
    StreamsPerAppend,
    /// [`MAX_EVENTS_PER_APPEND`](crate::limits::MAX_EVENTS_PER_APPEND).
    EventsPerAppend,
    /// [`MAX_EVENT_BYTES`](crate::limits::MAX_EVENT_BYTES).
    EventBytes,
    /// [`MAX_METADATA_BYTES`](crate::limits::MAX_METADATA_BYTES).
    MetadataBytes,
    /// [`MAX_APPEND_BYTES`](crate::limits::MAX_APPEND_BYTES).
    AppendBytes,
    /// [`MAX_EVENT_TYPE_BYTES`](crate::limits::MAX_EVENT_TYPE_BYTES).
    EventTypeBytes,
    /// [`MAX_CONTENT_TYPE_BYTES`](crate::limits::MAX_CONTENT_TYPE_BYTES).
    ContentTypeBytes,
    /// [`MAX_PAGE_SIZE`](crate::limits::MAX_PAGE_SIZE).
    PageSize,
    /// [`MAX_COMMAND_RETRIES`](crate::limits::MAX_COMMAND_RETRIES).
    CommandRetries,
    /// [`MAX_EVENTS_PER_COMMAND`](crate::limits::MAX_EVENTS_PER_COMMAND).
    EventsPerCommand,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::StreamsPerAppend => "stream writes per append",
            Limit::EventsPerAppend => "events per append",
            Limit::EventBytes => "bytes per event payload",
            Limit::MetadataBytes => "bytes of metadata per event",
            Limit::AppendBytes => "bytes per append",
            Limit::EventTypeBytes => "bytes per event type",
            Limit::ContentTypeBytes => "bytes per content type",
            Limit::PageSize => "events per page",
            Limit::CommandRetries => "command retries",
            Limit::EventsPerCommand => "events per command",
        })
    }
}

/// Where an event id that is being appended is already stored, when that is not an idempotent
/// repeat of the same append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingEvent {
    /// The stream that holds it.
    pub stream: StreamId,
    /// Its revision there.
    pub revision: u64,
}

/// Why an append was rejected as malformed before any I/O.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAppend {
    /// No stream write at all.
    #[error("an append needs at least one stream write")]
    Empty,
    /// The same stream appears twice in one append.
    #[error("stream {0} appears more than once in one append")]
    DuplicateStream(StreamId),
    /// The same event id appears twice in one append.
    #[error("event id {0} appears more than once in one append")]
    DuplicateEventId(EventId),
    /// An event type is empty or contains a control character.
    #[error("event type {0:?} is empty or contains a control character")]
    BadEventType(String),
    /// A content type is empty or contains a control character.
    #[error("content type {0:?} is empty or contains a control character")]
    BadContentType(String),
    /// Metadata could not be encoded as JSON.
    #[error("metadata cannot be encoded: {0}")]
    BadMetadata(String),
}

/// An error from an [`EventStore`](crate::EventStore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A stream's version did not match the writer's expectation. Nothing was written.
    #[error("conflict on stream {stream}: expected {expected}, actual {}", display_version(*.actual))]
    Conflict {
        /// The stream whose expectation failed.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version at the time (`None`: the stream does not exist).
        actual: Option<u64>,
    },
    /// An event id being appended is already stored elsewhere or with another payload, and the
    /// append is not an idempotent repeat. Nothing was written.
    #[error(
        "event id {event_id} is already stored in {} at revision {} with other content or at another place",
        existing.stream, existing.revision
    )]
    EventIdReused {
        /// The reused id.
        event_id: EventId,
        /// Where it is stored.
        existing: ExistingEvent,
    },
    /// A named limit was exceeded. Nothing was written.
    #[error("limit exceeded: {actual} {limit}, the most allowed is {max}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The limit's value.
        max: u64,
        /// What the request had.
        actual: u64,
    },
    /// The append is malformed. Nothing was written.
    #[error("invalid append: {0}")]
    InvalidAppend(#[from] InvalidAppend),
    /// A stream id is invalid.
    #[error(transparent)]
    InvalidStreamId(#[from] InvalidStreamId),
    /// The store refuses writes until it is reopened, after an I/O error it could not rule out
    /// having lost data to (an embedded store after a failed write or sync).
    #[error("the store refuses writes until it is reopened: {reason}")]
    WritesDisabled {
        /// What happened first.
        reason: String,
    },
    /// The options given to open or configure a store are invalid.
    #[error("invalid store options: {message}")]
    InvalidOptions {
        /// What is wrong.
        message: String,
    },
    /// The store is already open for writing elsewhere (another process or handle holds its
    /// lock).
    #[error("the store is already in use: {message}")]
    InUse {
        /// What holds it.
        message: String,
    },
    /// The stored data was written by a newer version of Sirenia, or is not a Sirenia store.
    #[error("incompatible store: {message}")]
    Incompatible {
        /// What is wrong.
        message: String,
    },
    /// Stored data could not be understood (corruption).
    #[error("stored data is invalid: {message}")]
    Corrupt {
        /// What is wrong.
        message: String,
    },
    /// The backend is unreachable or failed; the operation may or may not have taken effect (an
    /// append may be retried with the same event ids: it is idempotent).
    #[error("backend failure: {message}")]
    Backend {
        /// A short description.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The stream is tombstoned: it can never be read, written or changed again.
    #[error("stream {stream} is tombstoned: it can never be read or written again")]
    StreamTombstoned {
        /// The stream.
        stream: StreamId,
    },
    /// The operation needs a stream that exists (and is not soft-deleted).
    #[error("stream {stream} does not exist")]
    StreamNotFound {
        /// The stream.
        stream: StreamId,
    },
    /// A revision past the stream's end was given where one within it is needed.
    #[error("revision {revision} is past the end of stream {stream} (version {version})")]
    RevisionOutOfRange {
        /// The stream.
        stream: StreamId,
        /// The revision given.
        revision: u64,
        /// The stream's version.
        version: u64,
    },
    /// The stream's events before `readable_from` were truncated and no snapshot at or after
    /// that revision exists, so the aggregate cannot be loaded from the events that remain.
    #[error(
        "stream {stream} is truncated before revision {readable_from} and no snapshot covers the \
         hidden events"
    )]
    StreamTruncated {
        /// The stream.
        stream: StreamId,
        /// Its first readable revision.
        readable_from: u64,
    },
    /// An event read could not be upcast (see [`upcasting`](crate::upcasting)).
    #[error("an event read could not be upcast: {0}")]
    Upcast(#[source] CodecError),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// A backend failure with its source.
    pub fn backend(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether this is a [`StoreError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

fn display_version(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("version {v}"),
        None => "no stream".to_owned(),
    }
}

/// An error of the event [codec](crate::codec).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload could not be serialized.
    #[error("cannot encode event: {0}")]
    Encode(#[source] serde_json::Error),
    /// The event value is not an enum variant, so it has no type name.
    #[error("events must be enum variants (externally tagged); got {0}")]
    NotAnEnumVariant(&'static str),
    /// The payload could not be deserialized as the named event type.
    #[error("cannot decode event {event_type} v{schema_version}: {source}")]
    Decode {
        /// The event type.
        event_type: String,
        /// Its schema version.
        schema_version: u16,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The content type is not JSON.
    #[error("content type {0:?} is not supported by the JSON codec")]
    UnsupportedContentType(String),
    /// The stored schema version differs from the current one and no upcaster bridges them.
    #[error(
        "event {event_type} is stored at schema v{found} but the code expects v{expected} and no upcaster applies"
    )]
    SchemaVersion {
        /// The event type.
        event_type: String,
        /// The stored (or upcast) version.
        found: u16,
        /// The version the code writes.
        expected: u16,
    },
    /// An upcaster failed.
    #[error("upcaster for {event_type} v{schema_version} failed: {message}")]
    Upcast {
        /// The event type it was given.
        event_type: String,
        /// The schema version it was given.
        schema_version: u16,
        /// What it said.
        message: String,
    },
    /// A declared upcast rule is invalid.
    #[error("upcast rule for {event_type} v{schema_version} is invalid: {message}")]
    InvalidRule {
        /// The type the rule is for.
        event_type: String,
        /// The version the rule is for.
        schema_version: u16,
        /// What is wrong.
        message: String,
    },
    /// An upcaster chain did not end within [`MAX_UPCAST_STEPS`](crate::limits::MAX_UPCAST_STEPS).
    #[error("upcaster chain for {0} does not end (a cycle?)")]
    UpcastCycle(String),
}

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: StdError + 'static> {
    /// The aggregate rejected the command (a business rule). Nothing was written.
    #[error(transparent)]
    Rejected(E),
    /// The caller's expected version did not match (no retry is made for a caller's expectation).
    #[error("conflict on stream {stream}: expected version {expected}, actual {}", display_version(*.actual))]
    Conflict {
        /// The aggregate's stream.
        stream: StreamId,
        /// What the caller expected.
        expected: u64,
        /// The version found.
        actual: Option<u64>,
    },
    /// Concurrent writers kept winning: the command conflicted on every attempt.
    #[error("command on {stream} conflicted on all {attempts} attempts")]
    TooManyConflicts {
        /// The aggregate's stream.
        stream: StreamId,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The command id was already used for a command on another stream.
    #[error("command id {command_id} was already used on stream {stream}")]
    CommandIdReused {
        /// The command id.
        command_id: uuid::Uuid,
        /// The stream where it was used.
        stream: StreamId,
    },
    /// The command produced more events than [`MAX_EVENTS_PER_COMMAND`](crate::limits::MAX_EVENTS_PER_COMMAND).
    #[error("command produced {0} events; the limit is {max}", max = crate::limits::MAX_EVENTS_PER_COMMAND)]
    TooManyEvents(u64),
    /// The aggregate id does not make a valid stream id.
    #[error(transparent)]
    InvalidId(#[from] InvalidStreamId),
    /// An event could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The aggregate id does not make a valid stream id.
    #[error(transparent)]
    InvalidId(#[from] InvalidStreamId),
    /// An event could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E: StdError + 'static> From<LoadError> for CommandError<E> {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::InvalidId(e) => CommandError::InvalidId(e),
            LoadError::Codec(e) => CommandError::Codec(e),
            LoadError::Store(e) => CommandError::Store(e),
        }
    }
}
