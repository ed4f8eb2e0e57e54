//! One event as one line of JSON: what `read --json`, `tail --json` and `export` print and
//! `import` reads. JSON payloads are embedded as they are stored (byte for byte); others are
//! hex-encoded in `data_hex`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sirenia::{EventId, Metadata, Position, RecordedEvent, StreamId, Timestamp};

/// An event as a line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Line {
    pub(crate) position: u64,
    pub(crate) stream: String,
    pub(crate) revision: u64,
    pub(crate) id: uuid::Uuid,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) schema_version: u16,
    pub(crate) content_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub(crate) metadata: Metadata,
    pub(crate) recorded_at: Timestamp,
}

/// Why a line is not an event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    #[error("not an event line: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad stream id: {0}")]
    Stream(#[from] sirenia::InvalidStreamId),
    #[error("an event has `data` or `data_hex`, exactly one")]
    Payload,
    #[error("bad hex in data_hex")]
    Hex,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn unhex(text: &str) -> Result<Vec<u8>, LineError> {
    if !text.len().is_multiple_of(2) {
        return Err(LineError::Hex);
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16).ok_or(LineError::Hex);
            let (high, low) = (digit(pair[0])?, digit(pair[1])?);
            u8::try_from(high * 16 + low).map_err(|_| LineError::Hex)
        })
        .collect()
}

impl Line {
    pub(crate) fn from_event(event: &RecordedEvent) -> Self {
        let json = event.content_type.starts_with("application/json");
        // Embedded as stored when that keeps the line one line and the bytes exact; otherwise
        // (line breaks, surrounding white space) hex.
        let raw = json
            .then(|| std::str::from_utf8(&event.data).ok())
            .flatten()
            .filter(|text| !text.contains(['\n', '\r']) && text.trim() == *text)
            .and_then(|text| RawValue::from_string(text.to_owned()).ok());
        let data_hex = raw.is_none().then(|| hex(&event.data));
        Line {
            position: event.position.0,
            stream: event.stream_id.as_str().to_owned(),
            revision: event.revision,
            id: *event.id.as_uuid(),
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            content_type: event.content_type.clone(),
            data: raw,
            data_hex,
            metadata: event.metadata.clone(),
            recorded_at: event.recorded_at,
        }
    }

    pub(crate) fn parse(text: &str) -> Result<RecordedEvent, LineError> {
        let line: Line = serde_json::from_str(text)?;
        let data = match (line.data, line.data_hex) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(hex)) => unhex(&hex)?,
            _ => return Err(LineError::Payload),
        };
        Ok(RecordedEvent {
            position: Position(line.position),
            stream_id: StreamId::new(line.stream)?,
            revision: line.revision,
            id: EventId::from(line.id),
            event_type: line.event_type,
            schema_version: line.schema_version,
            content_type: line.content_type,
            data: data.into(),
            metadata: line.metadata,
            recorded_at: line.recorded_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{hex, unhex};

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)).ok(), Some(bytes));
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
    }
}
