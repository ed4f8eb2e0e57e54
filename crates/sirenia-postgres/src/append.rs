//! Appends: the planner that picks how an append is done, the binding of its parameters, and
//! the check of which JSON payloads `jsonb` can store.
//!
//! A write of events to one stream, outside a caller's transaction, is tried as one plain
//! `INSERT` at a revision the client picks ([`Shape`]); everything else, and a one-statement
//! append that did not append, is one call of the append function. A conflict or a stored event
//! id then falls back to looking the ids and versions up and deciding each write in request
//! order as the port says. The versions this process saw its streams reach are remembered for
//! the next one-statement append.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use deadpool_postgres::GenericClient;
use sirenia_core::lifecycle::{StreamInfo, append_target};
use sirenia_core::store::{WriteDisposition, classify_write, validate_append};
use sirenia_core::{
    AppendResult, ExpectedVersion, JSON_CONTENT_TYPE, Metadata, Position, RecordedEvent,
    StoreError, StreamAppended, StreamId, StreamWrite,
};
use tokio_postgres::Row;

use crate::read::{decode_event, decode_stream_info};
use crate::sql::SingleEventColumns;
use crate::{
    MAX_APPEND_ATTEMPTS, MAX_CACHED_VERSIONS, MAX_REVISION_RACES, PostgresStore, corrupt, pg_error,
    to_i64,
};

/// Where an append runs, which decides whether it may take the one-statement path and whether
/// calls of the append function need a savepoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendContext {
    /// On a pooled connection of the store's, each statement its own transaction.
    Autocommit,
    /// Inside a caller's transaction: a failed statement would abort the whole transaction, so
    /// every call of the append function runs under a savepoint.
    CallersTransaction,
}

/// Which one-statement append a write takes, by what this process knows of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// The revision is known: the stream's remembered version for `Any`, `StreamExists` (a
    /// version above 0) or the same `Exact` one; 0 for `NoStream` and `Exact(0)`. The INSERT
    /// alone: a revision taken meanwhile, or a fence, refuses it on the key.
    Known(u64),
    /// `Exact(n)`, n > 0, not the remembered version: revision n - 1 must be an event.
    Exact(u64),
    /// Nothing remembered: the revision after the stream's last event (which must exist for
    /// `StreamExists`).
    Computed { must_exist: bool },
}

impl Shape {
    /// The shape of a write expecting `expected`, given the version this process remembers
    /// its stream reached (if any).
    fn of(expected: ExpectedVersion, remembered: Option<u64>) -> Self {
        match (expected, remembered) {
            (ExpectedVersion::NoStream | ExpectedVersion::Exact(0), _) => Shape::Known(0),
            (ExpectedVersion::Any, Some(v)) => Shape::Known(v),
            (ExpectedVersion::StreamExists, Some(v)) if v > 0 => Shape::Known(v),
            (ExpectedVersion::Exact(n), Some(v)) if n == v => Shape::Known(n),
            (ExpectedVersion::Exact(n), _) => Shape::Exact(n),
            (ExpectedVersion::Any, None) => Shape::Computed { must_exist: false },
            (ExpectedVersion::StreamExists, _) => Shape::Computed { must_exist: true },
        }
    }
}

/// Why an attempt (the one statement, or one call of the append function) did not append.
enum AttemptError {
    /// Write `index` (0-based) found the stream at `actual`.
    Conflict { index: usize, actual: u64 },
    /// An event id is already stored.
    DuplicateId,
    /// Not decided: the one-statement path was not taken, or did not append without saying
    /// why (an expectation its statement checks, or a position past the range): decide with
    /// the append function.
    Undecided,
    /// A revision the attempt inserted at was taken, by a concurrent append or by the fence of
    /// a deleted or tombstoned stream: decide again.
    RevisionTaken,
    /// Write `index` (0-based) is to a tombstoned stream.
    Tombstoned { index: usize },
    /// Anything else: the append fails with it.
    Store(StoreError),
}

/// An expectation as the append statements' parameters: a kind (0 any, 1 no stream, 2 stream
/// exists, 3 exact) and the exact version.
fn expectation_params(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(v) => (3, to_i64(v)),
    }
}

/// Events as the append statements' per-event array parameters, in order.
struct EventArrays<'a> {
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    content_types: Vec<&'a str>,
    json: Vec<Option<&'a str>>,
    raw: Vec<Option<&'a [u8]>>,
    metadata: Vec<Option<String>>,
}

impl<'a> EventArrays<'a> {
    /// The columns of `n` events.
    fn new(events: impl Iterator<Item = &'a sirenia_core::NewEvent>, n: usize) -> Self {
        let mut columns = EventArrays {
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            content_types: Vec::with_capacity(n),
            json: Vec::with_capacity(n),
            raw: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
        };
        for event in events {
            columns.ids.push(*event.id.as_uuid());
            columns.types.push(event.event_type.as_str());
            columns.versions.push(i32::from(event.schema_version));
            columns.content_types.push(event.content_type.as_str());
            let (text, bytes) = payload_columns(event);
            columns.json.push(text);
            columns.raw.push(bytes);
            columns.metadata.push(metadata_json(&event.metadata));
        }
        columns
    }

    /// The arrays, as statement parameters.
    fn arrays(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.ids,
            &self.types,
            &self.versions,
            &self.content_types,
            &self.json,
            &self.raw,
            &self.metadata,
        ]
    }
}

/// One event's columns, for a single-event INSERT.
struct SingleEvent<'a> {
    id: uuid::Uuid,
    event_type: &'a str,
    version: i32,
    content_type: &'a str,
    json: Option<&'a str>,
    raw: &'a [u8],
    metadata: Option<String>,
}

impl<'a> SingleEvent<'a> {
    fn new(event: &'a sirenia_core::NewEvent) -> Self {
        SingleEvent {
            id: *event.id.as_uuid(),
            event_type: &event.event_type,
            version: i32::from(event.schema_version),
            content_type: &event.content_type,
            json: storable_json(&event.content_type, &event.data),
            raw: &event.data,
            metadata: metadata_json(&event.metadata),
        }
    }

    /// Parameter 7: the payload, as JSON text for `data` or as bytes for `data_bytes`.
    fn payload(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match &self.json {
            Some(text) => text,
            None => &self.raw,
        }
    }

    /// The columns this event fills, which pick one of a shape's four single-event statements
    /// and how many parameters it takes (parameter 8, the metadata, only when there is some).
    fn columns(&self) -> SingleEventColumns {
        match (self.json.is_some(), self.metadata.is_some()) {
            (true, false) => SingleEventColumns::Json,
            (true, true) => SingleEventColumns::JsonAndMetadata,
            (false, false) => SingleEventColumns::Bytes,
            (false, true) => SingleEventColumns::BytesAndMetadata,
        }
    }
}

/// An event's payload as its two columns: JSON text for `jsonb`, or bytes for `bytea`.
fn payload_columns(event: &sirenia_core::NewEvent) -> (Option<&str>, Option<&[u8]>) {
    match storable_json(&event.content_type, &event.data) {
        Some(text) => (Some(text), None),
        None => (None, Some(event.data.as_ref())),
    }
}

/// An event's metadata as the JSON text stored (`None`: empty). Validated before any I/O, so
/// it encodes.
fn metadata_json(metadata: &Metadata) -> Option<String> {
    if metadata.is_empty() {
        return None;
    }
    Some(
        metadata
            .to_json()
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| "{}".to_owned()),
    )
}

/// Whether `event` can go into a `jsonb` column as it is.
fn storable_json<'a>(content_type: &str, data: &'a [u8]) -> Option<&'a str> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    // jsonb refuses U+0000; such payloads keep their bytes.
    if text.contains("\\u0000") {
        return None;
    }
    // A full parse: it refuses what jsonb refuses too (lone surrogates, out-of-range numbers).
    serde_json::from_str::<ValidJson>(text).ok()?;
    Some(text)
}

/// What parsing a JSON text into a `serde_json::Value` checks (every string decoded, escapes
/// and surrogate pairs included; every number parsed; the same depth limit), without building
/// the value: nothing is allocated per append for a check whose result is a yes or a no.
struct ValidJson;

impl<'de> serde::Deserialize<'de> for ValidJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValidJson)
    }
}

impl<'de> serde::de::Visitor<'de> for ValidJson {
    type Value = ValidJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_i64<E>(self, _: i64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_u64<E>(self, _: u64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_f64<E>(self, _: f64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_str<E>(self, _: &str) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_unit<E>(self) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ValidJson, A::Error> {
        while seq.next_element::<ValidJson>()?.is_some() {}
        Ok(ValidJson)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ValidJson, A::Error> {
        while map.next_entry::<ValidJson, ValidJson>()?.is_some() {}
        Ok(ValidJson)
    }
}

impl PostgresStore {
    /// Appends within the caller's transaction: the events commit (and become visible) with
    /// it, together with whatever else it writes. A failure rolls back only the append (a
    /// savepoint), leaving the caller's transaction usable.
    pub async fn append_in_transaction(
        &self,
        tx: &mut deadpool_postgres::Transaction<'_>,
        writes: Vec<StreamWrite>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(&writes)?;
        self.append_with_fallbacks(&*tx, &writes, AppendContext::CallersTransaction)
            .await
    }

    /// Appends `writes` by one call of the append function. Inside a caller's transaction the
    /// call runs under a savepoint, so a refused call leaves the transaction usable for the
    /// fallback and after.
    async fn append_by_function(
        &self,
        client: &impl GenericClient,
        writes: &[&StreamWrite],
        context: AppendContext,
    ) -> Result<AppendResult, AttemptError> {
        if context == AppendContext::Autocommit {
            return self.call_append_function(client, writes).await;
        }
        let store = |e| AttemptError::Store(pg_error(e));
        client
            .batch_execute("SAVEPOINT sirenia_append")
            .await
            .map_err(store)?;
        let result = self.call_append_function(client, writes).await;
        let end = if result.is_ok() {
            "RELEASE SAVEPOINT sirenia_append"
        } else {
            "ROLLBACK TO SAVEPOINT sirenia_append; RELEASE SAVEPOINT sirenia_append"
        };
        client.batch_execute(end).await.map_err(store)?;
        result
    }

    /// One write with events in one plain INSERT (outside a caller's transaction), at the
    /// revision its [`Shape`] picks. `Undecided` when it did not append (an expectation the
    /// statement checks, a position past the range), `RevisionTaken` when the revision was
    /// taken (by a concurrent append, or by a fence of a deleted or tombstoned stream): the
    /// append function then decides.
    async fn append_in_one_statement(
        &self,
        client: &impl GenericClient,
        write: &StreamWrite,
    ) -> Result<AppendResult, AttemptError> {
        let count = write.events.len() as u64;
        let sql = &self.shared.sql;
        let shape = Shape::of(write.expected, self.remembered_version(&write.stream));
        // Parameter 2: the revision (known, exact) or the expectation's kind (computed).
        let revision: i64;
        let kind: i32;
        let second: &(dyn tokio_postgres::types::ToSql + Sync) = match shape {
            Shape::Known(v) | Shape::Exact(v) => {
                revision = to_i64(v);
                &revision
            }
            Shape::Computed { must_exist } => {
                kind = if must_exist { 2 } else { 0 };
                &kind
            }
        };
        let stream = write.stream.as_str();
        // Parameters 3 on: the event's columns (one event: 7 or 8 in all, see
        // `SingleEvent::columns`), or arrays of them (9 in all).
        let rows = if let [event] = write.events.as_slice() {
            let one = SingleEvent::new(event);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                &stream,
                second,
                &one.id,
                &one.event_type,
                &one.version,
                &one.content_type,
                one.payload(),
                &one.metadata,
            ];
            let columns = one.columns();
            let statement = sql.single_event_append(shape, columns);
            Self::query_prepared(client, statement, &params[..columns.parameters()]).await
        } else {
            let columns = EventArrays::new(write.events.iter(), write.events.len());
            let [a, b, c, d, e, f, g] = columns.arrays();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] =
                [&stream, second, a, b, c, d, e, f, g];
            Self::query_prepared(client, sql.several_events_append(shape), &params).await
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let e = attempt_error(e);
                if matches!(e, AttemptError::RevisionTaken) && shape != Shape::Known(0) {
                    self.mark_contended(&write.stream);
                }
                return Err(e);
            }
        };
        if rows.len() as u64 != count {
            return Err(AttemptError::Undecided);
        }
        let mut first = i64::MAX;
        let mut base = i64::MAX;
        for row in &rows {
            first = first.min(row.get(0));
            base = base.min(row.get(1));
        }
        let first =
            u64::try_from(first).map_err(|_| AttemptError::Store(corrupt("revision", first)))?;
        let base =
            u64::try_from(base).map_err(|_| AttemptError::Store(corrupt("position", base)))?;
        Ok(AppendResult {
            streams: vec![StreamAppended {
                stream: write.stream.clone(),
                first_revision: first,
                version: first + count,
                first_position: Some(Position(base)),
                last_position: Some(Position(base + count - 1)),
            }],
        })
    }

    /// Runs `sql` (prepared once per connection) with `params`.
    async fn query_prepared(
        client: &impl GenericClient,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = client.prepare_cached(sql).await?;
        client.query(&statement, params).await
    }

    /// The version this process last saw `stream` reach (a lower bound of its version:
    /// revisions are never removed), if it remembers one.
    fn remembered_version(&self, stream: &StreamId) -> Option<u64> {
        self.shared
            .versions
            .lock()
            .ok()
            .and_then(|v| v.get(stream.as_str()).copied().flatten())
    }

    /// Marks `stream` contended: other processes (or tasks) append to it too, so the version
    /// this one remembers is likely stale, and appending at it would cost a refused INSERT.
    fn mark_contended(&self, stream: &StreamId) {
        if let Ok(mut versions) = self.shared.versions.lock() {
            versions.insert(stream.as_str().to_owned(), None);
        }
    }

    /// Remembers the versions an append reached, or forgets the streams of one that failed.
    pub(crate) fn remember_versions(&self, writes: &[StreamWrite], result: Option<&AppendResult>) {
        let Ok(mut versions) = self.shared.versions.lock() else {
            return;
        };
        match result {
            Some(result) => {
                if versions.len() + result.streams.len() > MAX_CACHED_VERSIONS {
                    versions.clear();
                }
                for appended in result.streams.iter().filter(|a| a.version > 0) {
                    // A contended stream (`None`) stays so.
                    match versions.get_mut(appended.stream.as_str()) {
                        Some(Some(v)) => *v = appended.version,
                        Some(None) => {}
                        None => {
                            versions.insert(
                                appended.stream.as_str().to_owned(),
                                Some(appended.version),
                            );
                        }
                    }
                }
            }
            None => {
                for write in writes {
                    if let Some(Some(_)) = versions.get(write.stream.as_str()) {
                        versions.remove(write.stream.as_str());
                    }
                }
            }
        }
    }

    /// One call of the append function: `writes` as arrays (per write its stream, expectation
    /// and event count; per event its write, its index in the write and its columns), answered
    /// with the first position and each write's first revision.
    async fn call_append_function(
        &self,
        client: &impl GenericClient,
        writes: &[&StreamWrite],
    ) -> Result<AppendResult, AttemptError> {
        let mut streams = Vec::with_capacity(writes.len());
        let mut kinds = Vec::with_capacity(writes.len());
        let mut expected = Vec::with_capacity(writes.len());
        let mut counts = Vec::with_capacity(writes.len());
        let total: usize = writes.iter().map(|w| w.events.len()).sum();
        let mut write_of = Vec::with_capacity(total);
        let mut index = Vec::with_capacity(total);
        for (w, write) in writes.iter().enumerate() {
            streams.push(write.stream.as_str());
            let (kind, version) = expectation_params(write.expected);
            kinds.push(kind);
            expected.push(version);
            counts.push(write.events.len() as i64);
            for i in 0..write.events.len() {
                write_of.push(i32::try_from(w + 1).unwrap_or(i32::MAX));
                index.push(i as i64);
            }
        }
        let columns = EventArrays::new(writes.iter().flat_map(|w| w.events.iter()), total);
        let statement = client
            .prepare_cached(&self.shared.sql.append_function)
            .await
            .map_err(|e| AttemptError::Store(pg_error(e)))?;
        let row = client
            .query_one(
                &statement,
                &[
                    &[
                        &streams as &(dyn tokio_postgres::types::ToSql + Sync),
                        &kinds,
                        &expected,
                        &counts,
                        &write_of,
                        &index,
                    ][..],
                    &columns.arrays()[..],
                ]
                .concat(),
            )
            .await;
        let row = match row {
            Ok(row) => row,
            Err(e) => return Err(attempt_error(e)),
        };
        let base: i64 = row.get(0);
        let firsts: Vec<i64> = row.get(1);
        let mut position =
            u64::try_from(base).map_err(|_| AttemptError::Store(corrupt("base", base)))?;
        let mut result = Vec::with_capacity(writes.len());
        for (write, first) in writes.iter().zip(firsts) {
            let first =
                u64::try_from(first).map_err(|_| AttemptError::Store(corrupt("version", first)))?;
            let count = write.events.len() as u64;
            result.push(StreamAppended {
                stream: write.stream.clone(),
                first_revision: first,
                version: first + count,
                first_position: (count > 0).then_some(Position(position)),
                last_position: (count > 0).then_some(Position(position + count - 1)),
            });
            position += count;
        }
        Ok(AppendResult { streams: result })
    }

    /// Appends `writes` on `client`: in one statement when it is one write with events outside
    /// a caller's transaction, otherwise (or when that did not decide) by the append function.
    /// A conflict or a stored event id then falls back to looking the ids and versions up and
    /// deciding each write in request order as the port says, again while appends race.
    pub(crate) async fn append_with_fallbacks(
        &self,
        client: &impl GenericClient,
        writes: &[StreamWrite],
        context: AppendContext,
    ) -> Result<AppendResult, StoreError> {
        let first = match (writes, context) {
            ([one], AppendContext::Autocommit) if !one.events.is_empty() => {
                self.append_in_one_statement(client, one).await
            }
            _ => Err(AttemptError::Undecided),
        };
        let first = match first {
            Err(AttemptError::Undecided | AttemptError::RevisionTaken) => {
                self.shared.by_function.fetch_add(1, Ordering::Relaxed);
                let all: Vec<&StreamWrite> = writes.iter().collect();
                self.append_by_function(client, &all, context).await
            }
            other => {
                if other.is_ok() {
                    self.shared.one_statement.fetch_add(1, Ordering::Relaxed);
                }
                other
            }
        };
        match first {
            Ok(result) => return Ok(result),
            Err(AttemptError::Store(e)) => return Err(e),
            Err(
                AttemptError::Conflict { .. }
                | AttemptError::DuplicateId
                | AttemptError::Undecided
                | AttemptError::RevisionTaken
                | AttemptError::Tombstoned { .. },
            ) => {}
        }
        // Rare paths: a conflict may be a repeat of an append that succeeded, and a stored id
        // may be a repeat or a reuse. Decide every write in request order as the port says (ids
        // first, then the expectation), with the stored events and current versions in hand.
        let mut last_conflict = None;
        let (mut id_races, mut revision_races) = (0, 0);
        while id_races < MAX_APPEND_ATTEMPTS && revision_races < MAX_REVISION_RACES {
            let ids: Vec<uuid::Uuid> = writes
                .iter()
                .flat_map(|w| w.events.iter().map(|e| *e.id.as_uuid()))
                .collect();
            let names: Vec<&str> = writes.iter().map(|w| w.stream.as_str()).collect();
            let statement = client
                .prepare_cached(&self.shared.sql.events_by_ids)
                .await
                .map_err(pg_error)?;
            let rows = client.query(&statement, &[&ids]).await.map_err(pg_error)?;
            let mut stored = HashMap::with_capacity(rows.len());
            for row in &rows {
                let event = decode_event(row)?;
                stored.insert(event.id, event);
            }
            let statement = client
                .prepare_cached(&self.shared.sql.streams_info)
                .await
                .map_err(pg_error)?;
            let mut records: HashMap<String, StreamInfo> = HashMap::new();
            for row in client
                .query(&statement, &[&names])
                .await
                .map_err(pg_error)?
            {
                if let Some(info) = decode_stream_info(&row)? {
                    records.insert(row.get(4), info);
                }
            }
            let mut outcome: Vec<Option<StreamAppended>> = Vec::with_capacity(writes.len());
            let mut new = Vec::new();
            for write in writes {
                let found: Vec<Option<&RecordedEvent>> =
                    write.events.iter().map(|e| stored.get(&e.id)).collect();
                match classify_write(write, &found)? {
                    WriteDisposition::Repeat(original) => outcome.push(Some(original)),
                    WriteDisposition::New => {
                        let current =
                            append_target(&write.stream, records.get(write.stream.as_str()))?;
                        if !write.expected.is_satisfied_by(current) {
                            return Err(StoreError::Conflict {
                                stream: write.stream.clone(),
                                expected: write.expected,
                                actual: current,
                            });
                        }
                        outcome.push(None);
                        new.push(write);
                    }
                }
            }
            if new.is_empty() {
                return Ok(AppendResult {
                    streams: outcome.into_iter().flatten().collect(),
                });
            }
            match self.append_by_function(client, &new, context).await {
                Ok(result) => {
                    let mut appended = result.streams.into_iter();
                    let streams = outcome
                        .into_iter()
                        .map(|o| o.or_else(|| appended.next()))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| corrupt("append", "result count"))?;
                    return Ok(AppendResult { streams });
                }
                // A concurrent append changed a stream or stored one of these ids meanwhile:
                // decide again.
                Err(AttemptError::Conflict { index, actual }) => {
                    let write = new.get(index).ok_or_else(|| corrupt("conflict", index))?;
                    last_conflict = Some(StoreError::Conflict {
                        stream: write.stream.clone(),
                        expected: write.expected,
                        actual: (actual > 0).then_some(actual),
                    });
                    id_races += 1;
                }
                Err(AttemptError::DuplicateId | AttemptError::Undecided) => id_races += 1,
                // Someone else's append went through: the next round sees it.
                Err(AttemptError::RevisionTaken) => revision_races += 1,
                Err(AttemptError::Tombstoned { index }) => {
                    let write = new.get(index).ok_or_else(|| corrupt("tombstone", index))?;
                    return Err(StoreError::StreamTombstoned {
                        stream: write.stream.clone(),
                    });
                }
                Err(AttemptError::Store(e)) => return Err(e),
            }
        }
        if let Some(conflict) = last_conflict {
            return Err(conflict);
        }
        let message = if revision_races >= MAX_REVISION_RACES {
            "concurrent appends kept taking the same revisions"
        } else {
            "concurrent appends kept racing on the same event ids"
        };
        Err(StoreError::Backend {
            message: message.to_owned(),
            source: None,
        })
    }
}

/// What an attempt's failed statement means: the append function's refusals (`SR001`, a write
/// whose expectation failed and the version found; `SR002`, a write to a tombstoned stream), a
/// position past the range, a revision or an event id already taken; anything else fails the
/// append.
fn attempt_error(e: tokio_postgres::Error) -> AttemptError {
    if let Some(db) = e.as_db_error() {
        if db.code().code() == "SR001" {
            let detail = db.detail().unwrap_or_default();
            let parsed = detail
                .split_once(':')
                .and_then(|(i, v)| Some((i.parse::<usize>().ok()?, v.parse::<u64>().ok()?)));
            if let Some((i, actual)) = parsed {
                return AttemptError::Conflict {
                    index: i.saturating_sub(1),
                    actual,
                };
            }
        }
        if db.code().code() == "SR002"
            && let Some(Ok(i)) = db.detail().map(str::parse::<usize>)
        {
            return AttemptError::Tombstoned {
                index: i.saturating_sub(1),
            };
        }
        // The plain-SQL path's position overflows past the position range (see `Sql`).
        if db.code() == &tokio_postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE {
            return AttemptError::Undecided;
        }
        // A revision taken by a concurrent append, or a fence: decide again.
        if db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("events_stream_revision")
        {
            return AttemptError::RevisionTaken;
        }
        if db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("events_event_id")
        {
            return AttemptError::DuplicateId;
        }
    }
    AttemptError::Store(pg_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check refuses exactly what a parse into a `Value` refuses, so that a payload goes to
    /// `jsonb` or to `bytea` as it did when the check built the value.
    #[test]
    fn the_payload_check_agrees_with_a_full_parse() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let cases = [
            r#"{"account":"acc-1","amount":1250,"note":"x"}"#.to_owned(),
            r#"{"a":[1,-2,3.5e10,true,false,null,{"b":"\n\"\u00e9\ud83d\ude00"}]}"#.to_owned(),
            r#""\ud800""#.to_owned(),
            r#""\udc00 alone""#.to_owned(),
            r#"{"\ud800":1}"#.to_owned(),
            r#""\x""#.to_owned(),
            "1e400".to_owned(),
            "-1e400".to_owned(),
            "18446744073709551616".to_owned(),
            "1.5".to_owned(),
            r#"{"a":1,"a":2}"#.to_owned(),
            r#"{"a":1} trailing"#.to_owned(),
            r#"{"a":1,}"#.to_owned(),
            "[1,2".to_owned(),
            "".to_owned(),
            "nul".to_owned(),
            "\"tab\there\"".to_owned(),
            deep(100),
            deep(127),
            deep(128),
            deep(129),
            deep(1000),
        ];
        for text in &cases {
            assert_eq!(
                serde_json::from_str::<ValidJson>(text).is_ok(),
                serde_json::from_str::<serde_json::Value>(text).is_ok(),
                "{text:.60}"
            );
        }
        assert!(storable_json(JSON_CONTENT_TYPE, br#"{"a":1}"#).is_some());
        assert!(storable_json(JSON_CONTENT_TYPE, br#""\ud800""#).is_none());
        assert!(storable_json(JSON_CONTENT_TYPE, br#""\u0000""#).is_none());
        assert!(storable_json("application/octet-stream", br#"{"a":1}"#).is_none());
    }
}
