//! Aggregate snapshots in the store's file (table `snapshots`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use sirenia_core::snapshot::{BoxFuture, Snapshot, SnapshotStore};
use sirenia_core::{StoreError, StreamId, Timestamp};

use crate::projection::open_connection;
use crate::read::to_i64;
use crate::sqlite_error;

/// Snapshots kept in the embedded store's file: see [`StoreAdmin::snapshots`](sirenia_core::StoreAdmin::snapshots).
pub struct SqliteSnapshots {
    path: PathBuf,
    synchronous: &'static str,
    /// A connection kept between calls (taken out while a call uses it).
    conn: Mutex<Option<Connection>>,
}

impl SqliteSnapshots {
    pub(crate) fn new(path: &Path, synchronous: &'static str) -> Self {
        SqliteSnapshots {
            path: path.to_owned(),
            synchronous,
            conn: Mutex::new(None),
        }
    }

    async fn with<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let cached = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let (path, synchronous) = (self.path.clone(), self.synchronous);
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let conn = match cached {
                Some(c) => c,
                None => match open_connection(&path, synchronous) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = f(&conn);
            (Some(conn), result)
        })
        .await
        .map_err(|e| StoreError::backend("a snapshot task failed", e))?;
        if let Some(conn) = conn {
            *self
                .conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
        }
        result
    }
}

impl SnapshotStore for SqliteSnapshots {
    fn save(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.with(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO snapshots
                   (stream_id, version, schema_version, data, taken_at, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    snapshot.stream.as_str(),
                    to_i64(snapshot.version),
                    snapshot.schema_version,
                    snapshot.data.as_ref(),
                    to_i64(snapshot.taken_at.as_micros()),
                    to_i64(snapshot.recorded_at.as_micros()),
                ])
            })
            .map(|_| ())
            .map_err(sqlite_error)
        }))
    }

    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let stream = stream.clone();
        Box::pin(self.with(move |conn| {
            query_one(
                conn,
                "SELECT version, schema_version, data, taken_at, recorded_at FROM snapshots
                 WHERE stream_id = ?1 AND version <= ?2 ORDER BY version DESC LIMIT 1",
                stream,
                to_i64(version),
            )
        }))
    }

    fn load_at<'a>(
        &'a self,
        stream: &'a StreamId,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let stream = stream.clone();
        Box::pin(self.with(move |conn| {
            query_one(
                conn,
                "SELECT version, schema_version, data, taken_at, recorded_at FROM snapshots
                 WHERE stream_id = ?1 AND recorded_at > 0 AND recorded_at <= ?2
                 ORDER BY version DESC LIMIT 1",
                stream,
                to_i64(at.as_micros()),
            )
        }))
    }
}

/// The snapshot `sql` (bound to `stream` and `bound`) selects, if any.
fn query_one(
    conn: &Connection,
    sql: &str,
    stream: StreamId,
    bound: i64,
) -> Result<Option<Snapshot>, StoreError> {
    type Row = (i64, u16, Vec<u8>, i64, i64);
    let row: Option<Row> = conn
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_row(params![stream.as_str(), bound], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
        })
        .map_err(sqlite_error)?;
    let micros = |v: i64| Timestamp::from_micros(u64::try_from(v).unwrap_or(0));
    Ok(row.map(
        |(version, schema_version, data, taken_at, recorded_at)| Snapshot {
            stream,
            version: u64::try_from(version).unwrap_or(0),
            schema_version,
            data: data.into(),
            taken_at: micros(taken_at),
            recorded_at: micros(recorded_at),
        },
    ))
}
