//! The file format: forward-only migrations, identified by SQLite's `application_id` and
//! numbered by `user_version`.

use rusqlite::{Connection, TransactionBehavior};
use sirenia_core::StoreError;

use crate::sqlite_error;

/// `application_id` of a Sirenia file ("SIRE").
pub(crate) const APPLICATION_ID: i32 = 0x5349_5245;

/// Each entry moves the schema one version forward; the index + 1 is the version it makes.
/// Never edit an entry once released: add a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the event log. `position` is the rowid: dense, assigned by the single writer in
    // commit order. Categories are derived from `stream_id` when filtering.
    "CREATE TABLE events (
        position       INTEGER PRIMARY KEY,
        stream_id      TEXT    NOT NULL,
        revision       INTEGER NOT NULL,
        event_id       BLOB    NOT NULL,
        event_type     TEXT    NOT NULL,
        schema_version INTEGER NOT NULL,
        content_type   TEXT    NOT NULL,
        data           BLOB    NOT NULL,
        metadata       BLOB,
        recorded_at    INTEGER NOT NULL
     ) STRICT;
     CREATE UNIQUE INDEX events_stream_revision ON events (stream_id, revision);
     CREATE UNIQUE INDEX events_event_id ON events (event_id);",
    // 2: projections. A checkpoint per projection name (the next position to read) with the
    // event it is faulted on, if any; parked (dead-letter) events per projection; the version
    // of each read model readers should use (blue/green); operators' requests (rebuild, replay
    // parked events) for the running projector; aggregate snapshots.
    "CREATE TABLE projections (
        name          TEXT    PRIMARY KEY,
        next_position INTEGER NOT NULL,
        fault         TEXT,
        updated_at    INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE parked_events (
        name       TEXT    NOT NULL,
        position   INTEGER NOT NULL,
        event_id   BLOB    NOT NULL,
        stream_id  TEXT    NOT NULL,
        event_type TEXT    NOT NULL,
        error      TEXT    NOT NULL,
        attempts   INTEGER NOT NULL,
        parked_at  INTEGER NOT NULL,
        PRIMARY KEY (name, position)
     ) STRICT;
     CREATE TABLE projection_versions (
        name       TEXT    PRIMARY KEY,
        version    TEXT    NOT NULL,
        updated_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE projection_requests (
        name         TEXT    PRIMARY KEY,
        kind         TEXT    NOT NULL,
        requested_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE snapshots (
        stream_id      TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        schema_version INTEGER NOT NULL,
        data           BLOB    NOT NULL,
        taken_at       INTEGER NOT NULL,
        recorded_at    INTEGER NOT NULL,
        PRIMARY KEY (stream_id, version)
     ) STRICT;",
    // 3: stream lifecycle (soft delete, tombstone, truncate-before), only for streams that had
    // a lifecycle change. The version stays derived from the events.
    "CREATE TABLE stream_lifecycle (
        stream_id     TEXT    PRIMARY KEY,
        start         INTEGER NOT NULL,
        readable_from INTEGER NOT NULL,
        status        INTEGER NOT NULL
     ) STRICT;",
    // 4: document read models (`DocumentProjection`): JSON documents by collection and id,
    // written by the projection that owns the collection, with its checkpoint.
    "CREATE TABLE documents (
        collection TEXT NOT NULL,
        id         TEXT NOT NULL,
        body       TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (collection, id)
     ) STRICT, WITHOUT ROWID;",
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Checks that `conn` is a Sirenia file this build understands (or an empty file) and brings it
/// to [`SCHEMA_VERSION`] in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found = check(conn)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)?;
    for migration in &MIGRATIONS[found..] {
        tx.execute_batch(migration).map_err(sqlite_error)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sqlite_error)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION as i64)
        .map_err(sqlite_error)?;
    tx.commit().map_err(sqlite_error)
}

/// The schema version of the file, after checking it is a Sirenia file this build can use.
pub(crate) fn check(conn: &Connection) -> Result<usize, StoreError> {
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(sqlite_error)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sqlite_error)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(sqlite_error)?;
    if application_id != APPLICATION_ID && (application_id != 0 || tables != 0) {
        return Err(StoreError::Incompatible {
            message: "the file is a SQLite database but not a Sirenia store".to_owned(),
        });
    }
    let version = usize::try_from(version).map_err(|_| StoreError::Corrupt {
        message: format!("negative schema version {version}"),
    })?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Incompatible {
            message: format!(
                "the file has schema version {version}, written by a newer Sirenia; this build \
                 reads up to version {SCHEMA_VERSION}"
            ),
        });
    }
    Ok(version)
}
