//! Between the client protocol's messages and Sirenia's model: stream names, event ids,
//! expected revisions, metadata and errors.

use std::collections::HashMap;

use ::uuid::Uuid;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use sirenia_core::limits::{
    MAX_APPEND_BYTES, MAX_CONTENT_TYPE_BYTES, MAX_EVENT_BYTES, MAX_EVENT_TYPE_BYTES,
    MAX_EVENTS_PER_APPEND, MAX_METADATA_BYTES,
};
use sirenia_core::{
    EventId, ExpectedVersion, Limit, Metadata, NewEvent, RecordedEvent, StoreError, StreamId,
};
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::proto::client::{StreamIdentifier, Uuid as ProtoUuid, uuid};
use crate::proto::streams::read_resp::read_event::RecordedEvent as ProtoRecorded;

/// The name of the global log in the protocol; it cannot be written to.
pub(crate) const ALL_STREAM: &str = "$all";
/// The prefix of EventStoreDB's stream-metadata streams (`$$order-1`), which the server does not
/// write.
pub(crate) const METADATA_STREAM_PREFIX: &str = "$$";

/// The custom-metadata key holding the correlation id (EventStoreDB's convention).
pub const CORRELATION_ID_KEY: &str = "$correlationId";
/// The custom-metadata key holding the causation id (EventStoreDB's convention).
pub const CAUSATION_ID_KEY: &str = "$causationId";
/// The user-metadata key keeping custom metadata that is not a JSON object (or whose
/// correlation or causation id is not a string), as the exact UTF-8 text the client sent.
pub const RAW_METADATA_KEY: &str = "$esdbMetadata";
/// As [`RAW_METADATA_KEY`], for custom metadata that is not UTF-8: the bytes in base64.
pub const RAW_METADATA_BASE64_KEY: &str = "$esdbMetadataBase64";

/// How much of a client's malformed input an error message repeats (it travels in a header).
const SHOWN_INPUT_CHARS: usize = 64;

/// 100-nanosecond ticks per microsecond: the protocol's `created` is in ticks since the Unix
/// epoch, Sirenia's timestamps in microseconds.
const TICKS_PER_MICROSECOND: u64 = 10;

/// The stream named by `identifier`, or INVALID_ARGUMENT.
pub(crate) fn stream_id(identifier: Option<&StreamIdentifier>) -> Result<StreamId, Status> {
    let identifier =
        identifier.ok_or_else(|| Status::invalid_argument("stream_identifier is missing"))?;
    let name = std::str::from_utf8(&identifier.stream_name)
        .map_err(|_| Status::invalid_argument("the stream name is not UTF-8"))?;
    StreamId::new(name).map_err(|e| Status::invalid_argument(format!("stream name: {e}")))
}

/// A stream name as the protocol sends it.
pub(crate) fn stream_identifier(stream: &StreamId) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: Bytes::copy_from_slice(stream.as_str().as_bytes()),
    }
}

/// The UUID in `id`, or INVALID_ARGUMENT.
pub(crate) fn uuid_of(id: Option<&ProtoUuid>) -> Result<Uuid, Status> {
    match id.and_then(|id| id.value.as_ref()) {
        Some(uuid::Value::Structured(s)) => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&s.most_significant_bits.to_be_bytes());
            bytes[8..].copy_from_slice(&s.least_significant_bits.to_be_bytes());
            Ok(Uuid::from_bytes(bytes))
        }
        Some(uuid::Value::String(text)) => Uuid::parse_str(text).map_err(|e| {
            let shown: String = text.chars().take(SHOWN_INPUT_CHARS).collect();
            Status::invalid_argument(format!("event id {shown:?}: {e}"))
        }),
        None => Err(Status::invalid_argument("an event id is missing")),
    }
}

/// `id` in the form the client asked for.
pub(crate) fn proto_uuid(id: Uuid, structured: bool) -> ProtoUuid {
    let value = if structured {
        let bytes = id.as_bytes();
        let (high, low) = bytes.split_at(8);
        let mut most = [0u8; 8];
        let mut least = [0u8; 8];
        most.copy_from_slice(high);
        least.copy_from_slice(low);
        uuid::Value::Structured(uuid::Structured {
            most_significant_bits: i64::from_be_bytes(most),
            least_significant_bits: i64::from_be_bytes(least),
        })
    } else {
        uuid::Value::String(id.to_string())
    };
    ProtoUuid { value: Some(value) }
}

/// The protocol's exact expected revision (the revision of the stream's last event) as a
/// Sirenia expected version (the stream's number of events).
pub(crate) fn exact_revision(revision: u64) -> Result<ExpectedVersion, Status> {
    revision
        .checked_add(1)
        .map(ExpectedVersion::Exact)
        .ok_or_else(|| Status::invalid_argument("the expected revision is out of range"))
}

/// The protocol's current revision for a stream of `version` events: `None` for no stream.
pub(crate) fn current_revision(version: Option<u64>) -> Option<u64> {
    version.filter(|v| *v > 0).map(|v| v - 1)
}

/// The number the protocol's error trailers use for an expectation: the revision, or -1 (no
/// stream), -2 (any), -4 (stream exists).
fn expected_trailer(expected: ExpectedVersion) -> i64 {
    match expected {
        ExpectedVersion::Exact(v) => i64::try_from(v).map_or(i64::MAX, |v| v - 1),
        ExpectedVersion::NoStream => -1,
        ExpectedVersion::Any => -2,
        ExpectedVersion::StreamExists => -4,
    }
}

/// Custom metadata (bytes) as Sirenia metadata.
///
/// A JSON object maps to fields: `$correlationId` and `$causationId` (strings) to the
/// correlation and causation ids, every other key to the user map. Anything else (not JSON, not
/// an object, an empty object, a non-string id) is kept exactly, under [`RAW_METADATA_KEY`]
/// (UTF-8 text) or [`RAW_METADATA_BASE64_KEY`] (other bytes).
pub fn metadata_from_custom(custom: &[u8]) -> Metadata {
    if custom.is_empty() {
        return Metadata::default();
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(custom)
    {
        let mut metadata = Metadata::default();
        let mut structured = true;
        for (key, value) in map {
            match (key.as_str(), value) {
                (CORRELATION_ID_KEY, serde_json::Value::String(id)) => {
                    metadata.correlation_id = Some(id);
                }
                (CAUSATION_ID_KEY, serde_json::Value::String(id)) => {
                    metadata.causation_id = Some(id);
                }
                (CORRELATION_ID_KEY | CAUSATION_ID_KEY | RAW_METADATA_KEY, _)
                | (RAW_METADATA_BASE64_KEY, _) => structured = false,
                (_, value) => {
                    metadata.user.insert(key, value);
                }
            }
        }
        // `{}` would read back as no metadata at all: keep it as sent.
        if structured && !metadata.is_empty() {
            return metadata;
        }
    }
    let raw = match std::str::from_utf8(custom) {
        Ok(text) => (RAW_METADATA_KEY, text.to_owned()),
        Err(_) => (RAW_METADATA_BASE64_KEY, BASE64.encode(custom)),
    };
    Metadata::default().with(raw.0, serde_json::Value::String(raw.1))
}

/// Sirenia metadata as custom metadata: the bytes kept by [`metadata_from_custom`], or a
/// compact JSON object (`$correlationId`, `$causationId`, then the user keys in order); empty
/// when there is no metadata.
pub fn custom_from_metadata(metadata: &Metadata) -> Bytes {
    if metadata.correlation_id.is_none() && metadata.causation_id.is_none() {
        if metadata.user.is_empty() {
            return Bytes::new();
        }
        if metadata.user.len() == 1 {
            match metadata.user.iter().next() {
                Some((key, serde_json::Value::String(text))) if key == RAW_METADATA_KEY => {
                    return Bytes::from(text.clone().into_bytes());
                }
                Some((key, serde_json::Value::String(text))) if key == RAW_METADATA_BASE64_KEY => {
                    if let Ok(bytes) = BASE64.decode(text) {
                        return Bytes::from(bytes);
                    }
                }
                _ => {}
            }
        }
    }
    let ids = [
        (CORRELATION_ID_KEY, &metadata.correlation_id),
        (CAUSATION_ID_KEY, &metadata.causation_id),
    ];
    let ids = ids.into_iter().filter_map(|(key, id)| {
        id.as_ref()
            .map(|id| (key.to_owned(), serde_json::Value::String(id.clone())))
    });
    let user = metadata.user.iter().map(|(k, v)| (k.clone(), v.clone()));
    let mut text = String::from("{");
    for (i, (key, value)) in ids.chain(user).enumerate() {
        if i > 0 {
            text.push(',');
        }
        // Serializing strings and `Value`s cannot fail.
        text.push_str(&serde_json::to_string(&key).unwrap_or_default());
        text.push(':');
        text.push_str(&serde_json::to_string(&value).unwrap_or_default());
    }
    text.push('}');
    Bytes::from(text.into_bytes())
}

/// The events of one append as they arrive, each checked against the store's limits at once,
/// so a call never buffers more than the store would take.
#[derive(Debug, Default)]
pub(crate) struct Proposed {
    events: Vec<NewEvent>,
    bytes: usize,
}

/// Why a proposed event was refused: a store limit (typed, so each call answers it its way)
/// or a malformed message.
#[derive(Debug)]
pub(crate) enum Refused {
    Store(StoreError),
    Request(Status),
}

impl From<Refused> for Status {
    fn from(refused: Refused) -> Status {
        match refused {
            Refused::Store(error) => status(error),
            Refused::Request(status) => status,
        }
    }
}

fn too_large(limit: Limit, max: usize, actual: usize) -> Refused {
    Refused::Store(StoreError::LimitExceeded {
        limit,
        max: max as u64,
        actual: actual as u64,
    })
}

impl Proposed {
    /// Checks and adds one proposed message.
    pub(crate) fn push(
        &mut self,
        id: Option<&ProtoUuid>,
        metadata: HashMap<String, String>,
        custom_metadata: &[u8],
        data: Bytes,
    ) -> Result<(), Refused> {
        if self.events.len() == MAX_EVENTS_PER_APPEND {
            return Err(too_large(
                Limit::EventsPerAppend,
                MAX_EVENTS_PER_APPEND,
                self.events.len() + 1,
            ));
        }
        if data.len() > MAX_EVENT_BYTES {
            return Err(too_large(Limit::EventBytes, MAX_EVENT_BYTES, data.len()));
        }
        if custom_metadata.len() > MAX_METADATA_BYTES {
            return Err(too_large(
                Limit::MetadataBytes,
                MAX_METADATA_BYTES,
                custom_metadata.len(),
            ));
        }
        let properties: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.bytes = self
            .bytes
            .saturating_add(data.len())
            .saturating_add(custom_metadata.len())
            .saturating_add(properties);
        if self.bytes > MAX_APPEND_BYTES {
            return Err(too_large(Limit::AppendBytes, MAX_APPEND_BYTES, self.bytes));
        }
        let event = new_event(id, metadata, custom_metadata, data).map_err(Refused::Request)?;
        self.events.push(event);
        Ok(())
    }

    /// Bytes held: data, custom metadata and properties of the events so far.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The events, in order.
    pub(crate) fn into_events(self) -> Vec<NewEvent> {
        self.events
    }
}

/// A proposed message as a Sirenia event.
fn new_event(
    id: Option<&ProtoUuid>,
    mut metadata: HashMap<String, String>,
    custom_metadata: &[u8],
    data: Bytes,
) -> Result<NewEvent, Status> {
    let id = uuid_of(id)?;
    let event_type = metadata
        .remove("type")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::invalid_argument("an event has no type (metadata \"type\")"))?;
    if event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(status(StoreError::LimitExceeded {
            limit: Limit::EventTypeBytes,
            max: MAX_EVENT_TYPE_BYTES as u64,
            actual: event_type.len() as u64,
        }));
    }
    let content_type = metadata
        .remove("content-type")
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    if content_type.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(status(StoreError::LimitExceeded {
            limit: Limit::ContentTypeBytes,
            max: MAX_CONTENT_TYPE_BYTES as u64,
            actual: content_type.len() as u64,
        }));
    }
    Ok(NewEvent::raw(event_type, content_type, data)
        .with_id(EventId(id))
        .with_metadata(metadata_from_custom(custom_metadata)))
}

/// A stored event as the protocol's recorded event.
pub(crate) fn recorded(event: &RecordedEvent, structured_ids: bool) -> ProtoRecorded {
    let created = event
        .recorded_at
        .as_micros()
        .saturating_mul(TICKS_PER_MICROSECOND);
    let metadata = HashMap::from([
        ("type".to_owned(), event.event_type.clone()),
        ("content-type".to_owned(), event.content_type.clone()),
        ("created".to_owned(), created.to_string()),
    ]);
    ProtoRecorded {
        id: Some(proto_uuid(event.id.0, structured_ids)),
        stream_identifier: Some(stream_identifier(&event.stream_id)),
        stream_revision: event.revision,
        prepare_position: event.position.get(),
        commit_position: event.position.get(),
        metadata,
        custom_metadata: custom_from_metadata(&event.metadata),
        data: event.data.clone(),
    }
}

/// A status with the `exception` trailer the clients map to their typed errors, plus more.
fn with_trailers(mut status: Status, exception: &str, extra: &[(&'static str, String)]) -> Status {
    let metadata = status.metadata_mut();
    if let Ok(value) = MetadataValue::try_from(exception) {
        metadata.insert("exception", value);
    }
    for (key, value) in extra {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            metadata.insert(*key, value);
        }
    }
    status
}

/// The status for a tombstoned stream: FAILED_PRECONDITION, `exception: stream-deleted`.
pub(crate) fn stream_deleted(stream: &StreamId) -> Status {
    with_trailers(
        Status::failed_precondition(format!("stream {stream} is deleted")),
        "stream-deleted",
        &[("stream-name", stream.as_str().to_owned())],
    )
}

/// A store error as a gRPC status the clients understand.
pub(crate) fn status(error: StoreError) -> Status {
    match error {
        StoreError::Conflict {
            stream,
            expected,
            actual,
        } => with_trailers(
            Status::failed_precondition(format!(
                "wrong expected version on stream {stream}: expected {expected}, actual {}",
                actual.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
            )),
            "wrong-expected-version",
            &[
                ("stream-name", stream.as_str().to_owned()),
                ("expected-version", expected_trailer(expected).to_string()),
                (
                    "actual-version",
                    current_revision(actual)
                        .map_or(-1, |r| i64::try_from(r).unwrap_or(i64::MAX))
                        .to_string(),
                ),
            ],
        ),
        StoreError::StreamTombstoned { stream } => stream_deleted(&stream),
        StoreError::LimitExceeded {
            limit: Limit::AppendBytes,
            max,
            ..
        } => with_trailers(
            Status::invalid_argument(error.to_string()),
            "maximum-append-size-exceeded",
            &[("maximum-append-size", max.to_string())],
        ),
        StoreError::LimitExceeded { .. }
        | StoreError::InvalidAppend(_)
        | StoreError::InvalidStreamId(_)
        | StoreError::InvalidOptions { .. }
        | StoreError::RevisionOutOfRange { .. } => Status::invalid_argument(error.to_string()),
        StoreError::EventIdReused { .. } => Status::already_exists(error.to_string()),
        StoreError::StreamNotFound { .. } => Status::not_found(error.to_string()),
        StoreError::WritesDisabled { .. } | StoreError::Backend { .. } | StoreError::Closed => {
            Status::unavailable(error.to_string())
        }
        StoreError::Corrupt { .. } => Status::data_loss(error.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn json_objects_map_to_fields() {
        let m = metadata_from_custom(br#"{"$correlationId":"c","$causationId":"d","k":[1]}"#);
        assert_eq!(m.correlation_id.as_deref(), Some("c"));
        assert_eq!(m.causation_id.as_deref(), Some("d"));
        assert_eq!(m.user.get("k"), Some(&json!([1])));
        assert_eq!(
            &custom_from_metadata(&m)[..],
            br#"{"$correlationId":"c","$causationId":"d","k":[1]}"#
        );
    }

    #[test]
    fn other_bytes_are_kept_exactly() {
        for raw in [
            &b"plain text"[..],
            b"[1,2]",
            b"\xff\x00\x01",
            br#"{"$correlationId":42}"#,
            br#"{"$esdbMetadata":"x"}"#,
        ] {
            let m = metadata_from_custom(raw);
            assert!(m.correlation_id.is_none() && m.user.len() == 1, "{m:?}");
            assert_eq!(&custom_from_metadata(&m)[..], raw);
        }
        assert!(metadata_from_custom(b"").is_empty());
        assert!(custom_from_metadata(&Metadata::default()).is_empty());
    }

    #[test]
    fn structured_ids_round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(uuid_of(Some(&proto_uuid(id, true))).unwrap(), id);
        assert_eq!(uuid_of(Some(&proto_uuid(id, false))).unwrap(), id);
        assert!(uuid_of(None).is_err());
    }

    #[test]
    fn expected_revisions_are_versions_minus_one() {
        assert_eq!(exact_revision(4).unwrap(), ExpectedVersion::Exact(5));
        assert!(exact_revision(u64::MAX).is_err());
        assert_eq!(current_revision(Some(5)), Some(4));
        assert_eq!(current_revision(Some(0)), None);
        assert_eq!(current_revision(None), None);
    }

    proptest! {
        /// Custom metadata reads back as sent: byte for byte, or, for a JSON object that maps
        /// to fields, as an equal JSON object.
        #[test]
        fn custom_metadata_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                       keys in proptest::collection::btree_map("[$a-z]{1,6}", "[a-z]{0,4}", 0..4)) {
            let back = custom_from_metadata(&metadata_from_custom(&bytes));
            prop_assert_eq!(&back[..], &bytes[..]);
            let object = serde_json::to_vec(&keys).unwrap();
            let back = custom_from_metadata(&metadata_from_custom(&object));
            prop_assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&back).unwrap(),
                serde_json::from_slice::<serde_json::Value>(&object).unwrap()
            );
        }
    }
}
