//! Reads: row decoding and the page queries, run on reader connections.

use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use sirenia_core::lifecycle::{StreamInfo, StreamStatus, append_target};
use sirenia_core::limits::MAX_SCAN_PER_PAGE;
use sirenia_core::{
    AllPage, Direction, EventFilter, EventId, Metadata, Position, RecordedEvent, StoreError,
    StreamId, Timestamp, Uuid,
};

use crate::sqlite_error;

/// The columns of an event, in the order [`decode_row`] reads them.
pub(crate) const SELECT_EVENT: &str = "SELECT position, stream_id, revision, event_id, \
     event_type, schema_version, content_type, data, metadata, recorded_at FROM events";

/// SQLite integers are signed; Sirenia's numbers stay far below `i64::MAX` (a larger one would
/// need 2^63 events), so saturating is only a guard.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        message: format!("{what}: {detail}"),
    }
}

fn unsigned(row: &Row<'_>, index: usize, what: &str) -> Result<u64, StoreError> {
    let v: i64 = row.get(index).map_err(sqlite_error)?;
    u64::try_from(v).map_err(|_| corrupt(what, v))
}

/// Decodes one row of [`SELECT_EVENT`]. `last_stream` caches the previous row's stream id, so a
/// page of one stream shares one allocation.
pub(crate) fn decode_row(
    row: &Row<'_>,
    last_stream: &mut Option<StreamId>,
) -> Result<RecordedEvent, StoreError> {
    let stream_text = row
        .get_ref(1)
        .and_then(|v| v.as_str().map_err(Into::into))
        .map_err(sqlite_error)?;
    let stream_id = match last_stream {
        Some(s) if s.as_str() == stream_text => s.clone(),
        _ => {
            let s = StreamId::new(stream_text).map_err(|e| corrupt("stream id", e))?;
            *last_stream = Some(s.clone());
            s
        }
    };
    let id_bytes = row
        .get_ref(3)
        .and_then(|v| v.as_blob().map_err(Into::into))
        .map_err(sqlite_error)?;
    let id = Uuid::from_slice(id_bytes).map_err(|e| corrupt("event id", e))?;
    let schema_version: i64 = row.get(5).map_err(sqlite_error)?;
    let metadata = match row.get_ref(8).map_err(sqlite_error)? {
        rusqlite::types::ValueRef::Null => Metadata::default(),
        v => {
            let bytes = v.as_blob().map_err(|e| corrupt("metadata", e))?;
            serde_json::from_slice(bytes).map_err(|e| corrupt("metadata", e))?
        }
    };
    Ok(RecordedEvent {
        position: Position(unsigned(row, 0, "position")?),
        stream_id,
        revision: unsigned(row, 2, "revision")?,
        id: EventId(id),
        event_type: row.get(4).map_err(sqlite_error)?,
        schema_version: u16::try_from(schema_version)
            .map_err(|_| corrupt("schema version", schema_version))?,
        content_type: row.get(6).map_err(sqlite_error)?,
        data: Bytes::from(row.get::<_, Vec<u8>>(7).map_err(sqlite_error)?),
        metadata,
        recorded_at: Timestamp::from_micros(unsigned(row, 9, "recorded_at")?),
    })
}

/// Rows of `sql` as events. `expected` sizes the page up front, so events are not moved again
/// as it grows.
fn collect(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    expected: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(sqlite_error)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params.iter()))
        .map_err(sqlite_error)?;
    let mut out = Vec::with_capacity(expected);
    let mut last_stream = None;
    while let Some(row) = rows.next().map_err(sqlite_error)? {
        out.push(decode_row(row, &mut last_stream)?);
    }
    Ok(out)
}

pub(crate) fn head(conn: &Connection) -> Result<Position, StoreError> {
    let head: i64 = conn
        .query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
            r.get(0)
        })
        .map_err(sqlite_error)?;
    u64::try_from(head)
        .map(Position)
        .map_err(|_| corrupt("position", head))
}

/// The stream's version as its events give it and its lifecycle record, in one statement.
pub(crate) const SELECT_STREAM: &str = "SELECT \
     (SELECT revision + 1 FROM events WHERE stream_id = ?1 ORDER BY revision DESC LIMIT 1), \
     l.start, l.readable_from, l.status \
     FROM (SELECT 1) LEFT JOIN stream_lifecycle l ON l.stream_id = ?1";

/// Decodes a row of [`SELECT_STREAM`]: the version from the events (`None`: none) and the
/// stream's record (`None`: neither events nor a lifecycle record).
pub(crate) fn decode_stream(
    row: &Row<'_>,
) -> Result<(Option<u64>, Option<StreamInfo>), StoreError> {
    let version: Option<i64> = row.get(0).map_err(sqlite_error)?;
    let version = version
        .map(|v| u64::try_from(v).map_err(|_| corrupt("revision", v)))
        .transpose()?;
    let status: Option<i64> = row.get(3).map_err(sqlite_error)?;
    let info = match status {
        Some(code) => Some(StreamInfo {
            version: version.unwrap_or(0),
            start: unsigned(row, 1, "stream start")?,
            readable_from: unsigned(row, 2, "readable_from")?,
            status: StreamStatus::from_code(code)?,
        }),
        None => version.map(StreamInfo::active),
    };
    Ok((version, info))
}

pub(crate) fn stream_info(
    conn: &Connection,
    stream: &StreamId,
) -> Result<Option<StreamInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_STREAM).map_err(sqlite_error)?;
    let mut rows = stmt.query([stream.as_str()]).map_err(sqlite_error)?;
    match rows.next().map_err(sqlite_error)? {
        Some(row) => Ok(decode_stream(row)?.1),
        None => Ok(None),
    }
}

pub(crate) fn stream_version(
    conn: &Connection,
    stream: &StreamId,
) -> Result<Option<u64>, StoreError> {
    let info = stream_info(conn, stream)?;
    append_target(stream, info.as_ref())
}

pub(crate) fn event_by_id(
    conn: &Connection,
    id: EventId,
) -> Result<Option<RecordedEvent>, StoreError> {
    let sql = format!("{SELECT_EVENT} WHERE event_id = ?1");
    let events = collect(
        conn,
        &sql,
        &[Value::Blob(id.as_uuid().as_bytes().to_vec())],
        1,
    )?;
    Ok(events.into_iter().next())
}

pub(crate) fn stream_page(
    conn: &Connection,
    stream: &StreamId,
    from: u64,
    direction: Direction,
    max: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    // Revisions hidden by a lifecycle change are below the record's `readable_from`.
    const READABLE: &str =
        "coalesce((SELECT readable_from FROM stream_lifecycle WHERE stream_id = ?1), 0)";
    let sql = match direction {
        Direction::Forward => format!(
            "{SELECT_EVENT} WHERE stream_id = ?1 AND revision >= max(?2, {READABLE}) \
             ORDER BY revision LIMIT ?3"
        ),
        Direction::Backward => format!(
            "{SELECT_EVENT} WHERE stream_id = ?1 AND revision <= ?2 AND revision >= {READABLE} \
             ORDER BY revision DESC LIMIT ?3"
        ),
    };
    let events = collect(
        conn,
        &sql,
        &[
            Value::Text(stream.as_str().to_owned()),
            Value::Integer(to_i64(from)),
            Value::Integer(to_i64(max as u64)),
        ],
        max,
    )?;
    if events.is_empty() {
        // A tombstoned stream reads as an error, not as empty.
        sirenia_core::lifecycle::readable_from(stream, stream_info(conn, stream)?.as_ref())?;
    }
    Ok(events)
}

/// The SQL conditions and parameters for `filter` (parameters numbered from `first`).
fn filter_sql(filter: &EventFilter, params: &mut Vec<Value>) -> String {
    let mut sql = String::new();
    let mut list = |items: &[String], expr: &str, params: &mut Vec<Value>| {
        if items.is_empty() {
            return;
        }
        let marks: Vec<String> = items
            .iter()
            .map(|item| {
                params.push(Value::Text(item.clone()));
                format!("?{}", params.len())
            })
            .collect();
        sql.push_str(&format!(" AND {expr} IN ({})", marks.join(", ")));
    };
    list(
        &filter.categories,
        "substr(stream_id, 1, instr(stream_id || '-', '-') - 1)",
        params,
    );
    list(&filter.event_types, "event_type", params);
    sql
}

pub(crate) fn all_page(
    conn: &Connection,
    from: Position,
    direction: Direction,
    filter: &EventFilter,
    max: usize,
) -> Result<AllPage, StoreError> {
    // Positions are dense and assigned in commit order by the single writer, so every position
    // up to the head read here is committed: the window below never outruns what is visible.
    let head = head(conn)?.get();
    let scan = MAX_SCAN_PER_PAGE as u64;
    match direction {
        Direction::Forward => {
            let start = from.get().max(1);
            if start > head {
                return Ok(AllPage {
                    events: Vec::new(),
                    next: Position(start),
                    at_end: true,
                });
            }
            let window_end = start.saturating_add(scan).min(head + 1);
            let mut params = vec![
                Value::Integer(to_i64(start)),
                Value::Integer(to_i64(window_end)),
                Value::Integer(to_i64(max as u64)),
            ];
            let conditions = filter_sql(filter, &mut params);
            let sql = format!(
                "{SELECT_EVENT} WHERE position >= ?1 AND position < ?2{conditions} \
                 ORDER BY position LIMIT ?3"
            );
            let events = collect(conn, &sql, &params, max.min(MAX_SCAN_PER_PAGE))?;
            let next = match events.last() {
                Some(last) if events.len() == max => last.position.get() + 1,
                _ => window_end,
            };
            Ok(AllPage {
                events,
                next: Position(next),
                at_end: next == head + 1,
            })
        }
        Direction::Backward => {
            if from == Position::START || head == 0 {
                return Ok(AllPage {
                    events: Vec::new(),
                    next: Position::START,
                    at_end: true,
                });
            }
            let top = from.get().min(head);
            let window_low = top.saturating_sub(scan) + 1;
            let mut params = vec![
                Value::Integer(to_i64(top)),
                Value::Integer(to_i64(window_low)),
                Value::Integer(to_i64(max as u64)),
            ];
            let conditions = filter_sql(filter, &mut params);
            let sql = format!(
                "{SELECT_EVENT} WHERE position <= ?1 AND position >= ?2{conditions} \
                 ORDER BY position DESC LIMIT ?3"
            );
            let events = collect(conn, &sql, &params, max.min(MAX_SCAN_PER_PAGE))?;
            let next = match events.last() {
                Some(last) if events.len() == max => last.position.get() - 1,
                _ => window_low - 1,
            };
            Ok(AllPage {
                events,
                next: Position(next),
                at_end: next == 0,
            })
        }
    }
}
