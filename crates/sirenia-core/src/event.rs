//! Events as they are written ([`NewEvent`]) and as they are stored ([`RecordedEvent`]).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{EventId, Position, StreamId, Timestamp};

/// The content type of JSON payloads, the default.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// An event's metadata: correlation and causation ids and a user map.
///
/// Stored as compact JSON; its encoded size is capped by
/// [`MAX_METADATA_BYTES`](crate::limits::MAX_METADATA_BYTES).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id shared by everything one request or process caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the message (command or event) that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Anything else, string keys to JSON values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none() && self.causation_id.is_none() && self.user.is_empty()
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds a user entry.
    pub fn with(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.user.insert(key.into(), value);
        self
    }

    /// The compact JSON encoding stores keep (`{}` when empty).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Its id; appending the same id again at the same place is idempotent.
    pub id: EventId,
    /// Its type: a stable name, never a Rust type path.
    pub event_type: String,
    /// The schema version of its payload.
    pub schema_version: u16,
    /// The payload's content type ([`JSON_CONTENT_TYPE`] by default).
    pub content_type: String,
    /// The payload.
    pub data: Bytes,
    /// Its metadata.
    pub metadata: Metadata,
}

impl NewEvent {
    /// A JSON event with a fresh v7 id, schema version 1 and no metadata.
    pub fn json(event_type: impl Into<String>, data: &serde_json::Value) -> Self {
        NewEvent {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: JSON_CONTENT_TYPE.to_owned(),
            // Serializing a `Value` into a Vec cannot fail.
            data: Bytes::from(serde_json::to_vec(data).unwrap_or_default()),
            metadata: Metadata::default(),
        }
    }

    /// An event with raw bytes as payload.
    pub fn raw(
        event_type: impl Into<String>,
        content_type: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Self {
        NewEvent {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: content_type.into(),
            data: data.into(),
            metadata: Metadata::default(),
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, v: u16) -> Self {
        self.schema_version = v;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Whether `recorded` holds the same content as this event: id, type, schema version,
    /// content type and payload. This is what makes a repeated append idempotent; metadata is not
    /// compared, because a retry may carry fresh metadata (a new trace id, say).
    ///
    /// JSON payloads are compared as JSON values, not bytes: a store may keep JSON in a
    /// normalized form (PostgreSQL's `jsonb` drops insignificant whitespace and orders keys).
    pub fn same_content_as(&self, recorded: &RecordedEvent) -> bool {
        self.id == recorded.id
            && self.event_type == recorded.event_type
            && self.schema_version == recorded.schema_version
            && self.content_type == recorded.content_type
            && (self.data == recorded.data || self.same_json_as(recorded))
    }

    fn same_json_as(&self, recorded: &RecordedEvent) -> bool {
        let essence = self.content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
            return false;
        }
        match (
            serde_json::from_slice::<serde_json::Value>(&self.data),
            serde_json::from_slice::<serde_json::Value>(&recorded.data),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Its position in the global log.
    pub position: Position,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its revision in the stream (0 for the first event).
    pub revision: u64,
    /// Its id.
    pub id: EventId,
    /// Its type.
    pub event_type: String,
    /// The schema version of its payload.
    pub schema_version: u16,
    /// The payload's content type.
    pub content_type: String,
    /// The payload.
    pub data: Bytes,
    /// Its metadata.
    pub metadata: Metadata,
    /// When the store committed it (store clock, UTC).
    pub recorded_at: Timestamp,
}

impl RecordedEvent {
    /// The recorded event a store makes of `event`.
    pub fn from_new(
        event: NewEvent,
        stream_id: StreamId,
        revision: u64,
        position: Position,
        recorded_at: Timestamp,
    ) -> Self {
        RecordedEvent {
            position,
            stream_id,
            revision,
            id: event.id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            content_type: event.content_type,
            data: event.data,
            metadata: event.metadata,
            recorded_at,
        }
    }

    /// The payload parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}
