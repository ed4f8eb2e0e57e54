//! The single writer: group commit.
//!
//! One thread owns the write connection. It takes every append queued (waiting up to
//! `GROUP_LINGER` for the rest of a group when fewer are queued than the last group held; at
//! most `MAX_GROUP_APPENDS` appends and `MAX_GROUP_EVENTS` events), runs them in one
//! transaction, commits once (one sync), and only then answers each caller. There are no
//! savepoints: each append is decided before any of its events is inserted, so a refusal fails
//! only that caller and leaves nothing behind. An append is first decided on its expectations
//! alone, relying on the unique index to catch a stored event id; when an expectation fails
//! (nothing inserted yet) or the index catches an id (the rows that append inserted, the newest
//! of the open transaction, are deleted), it is decided again with every id looked up first (a
//! repeat, a reuse or a conflict, as the port says). Any SQLite error other than a caller's own
//! rejection rolls the group back, answers every caller in it with an error and disables writes
//! until the store is reopened: nothing is acknowledged that was not committed and synced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, ErrorCode};
use sirenia_core::lifecycle::{StreamInfo, StreamStatus, append_target};
use sirenia_core::store::{WriteDisposition, classify_write};
use sirenia_core::{
    AppendResult, Position, RecordedEvent, StoreError, StreamAppended, StreamId, StreamWrite,
    Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::read::{self, SELECT_EVENT, decode_row, to_i64};
use crate::sqlite_error;

/// Most appends committed together.
pub const MAX_GROUP_APPENDS: usize = 1_024;
/// Most events committed together (a single larger append still commits alone).
pub const MAX_GROUP_EVENTS: usize = 50_000;
/// How long the writer waits for the rest of a group: when fewer appends are queued than the
/// last group held, their writers are likely about to send them (they were just answered), and
/// sharing the next sync beats syncing twice. A lone writer (last group of one) never waits.
pub(crate) const GROUP_LINGER: std::time::Duration = std::time::Duration::from_micros(100);

/// One queued append and where its answer goes.
pub(crate) struct WriteRequest {
    pub(crate) writes: Vec<StreamWrite>,
    pub(crate) events: usize,
    /// An import: the `recorded_at` of each event, in order across the writes.
    pub(crate) recorded_at: Option<Vec<Timestamp>>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

enum ApplyError {
    /// The caller's request is refused; the rest of the group goes on.
    Rejected(StoreError),
    /// An event id is already stored, or an expectation failed: decide again, looking every
    /// id up first.
    DecideWithLookups,
    /// SQLite failed: the whole group fails and writes are disabled.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Sqlite(e)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IdCheck {
    /// Rely on the unique index to notice reused ids (no lookups).
    ByUniqueIndex,
    /// Look every id up first, as the port's idempotency rules are written.
    ByLookup,
}

/// Counters of what the writer committed.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) events: AtomicU64,
}

pub(crate) struct Writer {
    conn: Connection,
    counters: Arc<Counters>,
    head: u64,
    clock: Timestamp,
    /// The latest `recorded_at` an import wrote in the open group.
    imported_clock: Timestamp,
    disabled: Option<String>,
    head_tx: watch::Sender<Position>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        head_tx: watch::Sender<Position>,
        counters: Arc<Counters>,
    ) -> Result<Self, StoreError> {
        let head: i64 = conn
            .query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(sqlite_error)?;
        let clock: i64 = conn
            .query_row(
                "SELECT coalesce(max(recorded_at), 0) FROM events",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite_error)?;
        let head = u64::try_from(head).map_err(|_| corrupt("negative position"))?;
        head_tx.send_replace(Position(head));
        Ok(Writer {
            conn,
            counters,
            head,
            clock: Timestamp::from_micros(u64::try_from(clock).unwrap_or(0)),
            imported_clock: Timestamp::EPOCH,
            disabled: None,
            head_tx,
        })
    }

    /// Serves `requests` until every sender is gone.
    pub(crate) fn run(mut self, mut requests: mpsc::Receiver<WriteRequest>) {
        let mut group: Vec<WriteRequest> = Vec::with_capacity(MAX_GROUP_APPENDS);
        let mut carry: Option<WriteRequest> = None;
        let mut last_group = 1usize;
        loop {
            let first = match carry.take() {
                Some(r) => r,
                None => match requests.blocking_recv() {
                    Some(r) => r,
                    None => return,
                },
            };
            let mut events = first.events;
            group.push(first);
            let linger_until = std::time::Instant::now() + GROUP_LINGER;
            while group.len() < MAX_GROUP_APPENDS {
                match requests.try_recv() {
                    Ok(r) if events + r.events > MAX_GROUP_EVENTS => {
                        carry = Some(r);
                        break;
                    }
                    Ok(r) => {
                        events += r.events;
                        group.push(r);
                    }
                    Err(mpsc::error::TryRecvError::Empty)
                        if group.len() < last_group && std::time::Instant::now() < linger_until =>
                    {
                        std::thread::yield_now();
                    }
                    Err(_) => break,
                }
            }
            last_group = group.len();
            self.commit_group(&mut group);
        }
    }

    /// Runs one transaction-control statement (prepared once).
    fn control(&self, sql: &str) -> Result<(), rusqlite::Error> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn commit_group(&mut self, group: &mut Vec<WriteRequest>) {
        if let Some(reason) = &self.disabled {
            for request in group.drain(..) {
                let _ = request.reply.send(Err(StoreError::WritesDisabled {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        let now = Timestamp::now().max(self.clock);
        self.imported_clock = Timestamp::EPOCH;
        let start_head = self.head;
        let mut results = Vec::with_capacity(group.len());
        match self.run_group(group, now, &mut results) {
            Ok(()) => {
                self.clock = now.max(self.imported_clock);
                let appended = results.iter().filter(|r| r.is_ok()).count() as u64;
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters.appends.fetch_add(appended, Ordering::Relaxed);
                self.counters
                    .events
                    .fetch_add(self.head - start_head, Ordering::Relaxed);
                if self.head != start_head {
                    self.head_tx.send_replace(Position(self.head));
                }
                for (request, result) in group.drain(..).zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                // Whatever happened, nothing of this group is acknowledged, and nothing after
                // it is attempted: the file's state is unknown until it is reopened.
                let _ = self.conn.execute_batch("ROLLBACK");
                self.head = start_head;
                let reason = format!("a write to the store file failed: {e}");
                self.disabled = Some(reason.clone());
                for (i, request) in group.drain(..).enumerate() {
                    let error = if i == 0 {
                        StoreError::backend(reason.clone(), e.to_string())
                    } else {
                        StoreError::Backend {
                            message: reason.clone(),
                            source: None,
                        }
                    };
                    let _ = request.reply.send(Err(error));
                }
            }
        }
    }

    fn run_group(
        &mut self,
        group: &[WriteRequest],
        now: Timestamp,
        results: &mut Vec<Result<AppendResult, StoreError>>,
    ) -> Result<(), rusqlite::Error> {
        self.control("BEGIN IMMEDIATE")?;
        for request in group {
            let stamps = request.recorded_at.as_deref();
            let outcome = match self.apply(&request.writes, now, IdCheck::ByUniqueIndex, stamps) {
                Err(ApplyError::DecideWithLookups) => {
                    self.apply(&request.writes, now, IdCheck::ByLookup, stamps)
                }
                other => other,
            };
            match outcome {
                Ok(result) => results.push(Ok(result)),
                Err(ApplyError::Rejected(e)) => results.push(Err(e)),
                Err(ApplyError::DecideWithLookups) => {
                    // Checking ids by lookup looks every id up before inserting; a duplicate here means
                    // the index and the lookups disagree.
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                        Some("event id index disagrees with its lookup".to_owned()),
                    ));
                }
                Err(ApplyError::Sqlite(e)) => return Err(e),
            }
        }
        self.control("COMMIT")
    }

    /// One append, without savepoints: every write is decided before anything is inserted, so
    /// a refusal leaves nothing behind; the one failure possible while inserting, a stored event
    /// id caught by the unique index (`IdCheck::ByUniqueIndex`), is undone by deleting the rows
    /// this append inserted (the newest of the open transaction).
    fn apply(
        &mut self,
        writes: &[StreamWrite],
        now: Timestamp,
        id_check: IdCheck,
        recorded_at: Option<&[Timestamp]>,
    ) -> Result<AppendResult, ApplyError> {
        let mut plan = Vec::with_capacity(writes.len());
        for write in writes {
            if id_check == IdCheck::ByLookup
                && let WriteDisposition::Repeat(original) = self.classify(write)?
            {
                plan.push(Err(original));
                continue;
            }
            let (current, info) = self.stream(&write.stream)?;
            let visible = match &info {
                Some(info) => append_target(&write.stream, Some(info)),
                None => Ok(current),
            };
            if !matches!(visible, Ok(v) if write.expected.is_satisfied_by(v)) {
                // A retry of an append that succeeded finds the stream moved on: that is a
                // repeat, not a conflict; and a stored id in an earlier write of this append
                // is refused before this write's expectation. Decide as the port says: ids
                // first, write by write.
                if id_check == IdCheck::ByUniqueIndex {
                    return Err(ApplyError::DecideWithLookups);
                }
                return Err(ApplyError::Rejected(match visible {
                    Err(e) => e,
                    Ok(actual) => StoreError::Conflict {
                        stream: write.stream.clone(),
                        expected: write.expected,
                        actual,
                    },
                }));
            }
            let recreates =
                info.is_some_and(|i| i.status == StreamStatus::Deleted) && !write.events.is_empty();
            plan.push(Ok((current.unwrap_or(0), recreates)));
        }
        let head_before = self.head;
        let mut streams = Vec::with_capacity(writes.len());
        let mut recreated = Vec::new();
        let mut offset = 0usize;
        for (write, planned) in writes.iter().zip(plan) {
            let stamps = recorded_at.map(|r| &r[offset..offset + write.events.len()]);
            offset += write.events.len();
            match planned {
                Err(original) => streams.push(original),
                Ok((first_revision, recreates)) => match self.insert(write, first_revision, now) {
                    Ok(appended) => {
                        if let (Some(stamps), Some(first)) = (stamps, appended.first_position) {
                            self.restamp(first, stamps)?;
                        }
                        if recreates {
                            recreated.push(&write.stream);
                        }
                        streams.push(appended);
                    }
                    // Undo what this append inserted before refusing it (or deciding again).
                    Err(e @ (ApplyError::DecideWithLookups | ApplyError::Rejected(_))) => {
                        self.conn
                            .prepare_cached("DELETE FROM events WHERE position > ?1")?
                            .execute([to_i64(head_before)])?;
                        self.head = head_before;
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        // Only once every write is in: a refusal above leaves no record changed.
        for stream in recreated {
            self.conn
                .prepare_cached("UPDATE stream_lifecycle SET status = ?2 WHERE stream_id = ?1")?
                .execute(rusqlite::params![
                    stream.as_str(),
                    StreamStatus::Active.code()
                ])?;
        }
        Ok(AppendResult { streams })
    }

    /// An import keeps each event's original `recorded_at`.
    fn restamp(&mut self, first: Position, stamps: &[Timestamp]) -> Result<(), ApplyError> {
        let mut stmt = self
            .conn
            .prepare_cached("UPDATE events SET recorded_at = ?2 WHERE position = ?1")?;
        for (i, stamp) in stamps.iter().enumerate() {
            stmt.execute(rusqlite::params![
                to_i64(first.0 + i as u64),
                to_i64(stamp.as_micros())
            ])?;
            // Later appends are stamped no earlier than what the log already holds.
            self.imported_clock = self.imported_clock.max(*stamp);
        }
        Ok(())
    }

    fn classify(&self, write: &StreamWrite) -> Result<WriteDisposition, ApplyError> {
        let mut found = Vec::with_capacity(write.events.len());
        {
            let mut stmt = self
                .conn
                .prepare_cached(&format!("{SELECT_EVENT} WHERE event_id = ?1"))?;
            for event in &write.events {
                let mut rows = stmt.query([event.id.as_uuid().as_bytes().as_slice()])?;
                let stored = match rows.next()? {
                    Some(row) => Some(decode_row(row, &mut None).map_err(ApplyError::Rejected)?),
                    None => None,
                };
                found.push(stored);
            }
        }
        let refs: Vec<Option<&RecordedEvent>> = found.iter().map(Option::as_ref).collect();
        classify_write(write, &refs).map_err(ApplyError::Rejected)
    }

    /// The stream's version from its events and its record (see [`read::decode_stream`]).
    fn stream(&self, stream: &StreamId) -> Result<(Option<u64>, Option<StreamInfo>), ApplyError> {
        let mut stmt = self.conn.prepare_cached(read::SELECT_STREAM)?;
        let mut rows = stmt.query([stream.as_str()])?;
        match rows.next()? {
            Some(row) => read::decode_stream(row).map_err(ApplyError::Rejected),
            None => Ok((None, None)),
        }
    }

    fn insert(
        &mut self,
        write: &StreamWrite,
        first_revision: u64,
        now: Timestamp,
    ) -> Result<StreamAppended, ApplyError> {
        let first_position = self.head + 1;
        let recorded_at = to_i64(now.as_micros());
        let mut done = 0usize;
        while done < write.events.len() {
            // The largest power of two that fits what is left, up to INSERT_CHUNK rows.
            let left = write.events.len() - done;
            let rows = if left >= INSERT_CHUNK {
                INSERT_CHUNK
            } else {
                1 << (usize::BITS - 1 - left.leading_zeros())
            };
            let chunk = &write.events[done..done + rows];
            let mut stmt = self.conn.prepare_cached(insert_sql(rows))?;
            stmt.raw_bind_parameter(1, write.stream.as_str())?;
            stmt.raw_bind_parameter(2, recorded_at)?;
            stmt.raw_bind_parameter(3, to_i64(self.head + 1))?;
            stmt.raw_bind_parameter(4, to_i64(first_revision + done as u64))?;
            for (r, event) in chunk.iter().enumerate() {
                let base = SHARED_PARAMS + 1 + r * ROW_PARAMS;
                let metadata = if event.metadata.is_empty() {
                    None
                } else {
                    // Validated before it was queued: a map of JSON values always encodes.
                    Some(event.metadata.to_json().map_err(|e| {
                        ApplyError::Rejected(StoreError::InvalidAppend(
                            sirenia_core::InvalidAppend::BadMetadata(e.to_string()),
                        ))
                    })?)
                };
                stmt.raw_bind_parameter(base, event.id.as_uuid().as_bytes().as_slice())?;
                stmt.raw_bind_parameter(base + 1, event.event_type.as_str())?;
                stmt.raw_bind_parameter(base + 2, event.schema_version)?;
                stmt.raw_bind_parameter(base + 3, event.content_type.as_str())?;
                stmt.raw_bind_parameter(base + 4, event.data.as_ref())?;
                stmt.raw_bind_parameter(base + 5, metadata)?;
            }
            match stmt.raw_execute() {
                Ok(_) => {
                    self.head += rows as u64;
                    done += rows;
                }
                Err(e) if is_duplicate_event_id(&e) => return Err(ApplyError::DecideWithLookups),
                Err(e) => return Err(ApplyError::Sqlite(e)),
            }
        }
        let count = write.events.len() as u64;
        Ok(StreamAppended {
            stream: write.stream.clone(),
            first_revision,
            version: first_revision + count,
            first_position: (count > 0).then_some(Position(first_position)),
            last_position: (count > 0).then_some(Position(self.head)),
        })
    }
}

/// Most rows one `INSERT` statement carries.
const INSERT_CHUNK: usize = 64;
/// Parameters every row of a write shares: stream id, recorded_at, first position, first
/// revision (each row adds its offset to the last two in the SQL).
const SHARED_PARAMS: usize = 4;
/// Parameters of each row: event id, type, schema version, content type, data, metadata.
const ROW_PARAMS: usize = 6;

/// The `INSERT` of `rows` events of one write (`rows` is a power of two up to
/// [`INSERT_CHUNK`]). The text is built once per size: the prepared-statement cache keys on it.
fn insert_sql(rows: usize) -> &'static str {
    use std::sync::OnceLock;
    const SIZES: usize = INSERT_CHUNK.trailing_zeros() as usize + 1;
    static SQL: OnceLock<[String; SIZES]> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        std::array::from_fn(|k| {
            let rows = 1usize << k;
            let mut sql = String::from(
                "INSERT INTO events (position, stream_id, revision, event_id, event_type, \
                 schema_version, content_type, data, metadata, recorded_at) VALUES ",
            );
            for r in 0..rows {
                let b = SHARED_PARAMS + 1 + r * ROW_PARAMS;
                if r > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(?3 + {r}, ?1, ?4 + {r}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?2)",
                    b,
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5
                ));
            }
            sql
        })
    });
    debug_assert!(rows.is_power_of_two() && rows <= INSERT_CHUNK);
    &all[rows.trailing_zeros() as usize]
}

fn is_duplicate_event_id(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(err, Some(message)) => {
            err.code == ErrorCode::ConstraintViolation && message.contains("event_id")
        }
        _ => false,
    }
}

fn corrupt(message: &str) -> StoreError {
    StoreError::Corrupt {
        message: message.to_owned(),
    }
}
