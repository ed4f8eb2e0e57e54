//! Aggregate snapshots in the store's schema (table `snapshots`).

use sirenia_core::snapshot::{BoxFuture, Snapshot, SnapshotStore};
use sirenia_core::{StoreError, StreamId, Timestamp};

use crate::schema::quote;
use crate::{PostgresStore, pg_error, to_i64};

/// Snapshots kept in the PostgreSQL schema: see [`StoreAdmin::snapshots`](sirenia_core::StoreAdmin::snapshots).
pub struct PostgresSnapshots {
    store: PostgresStore,
    save: String,
    load: String,
    load_at: String,
}

impl PostgresSnapshots {
    pub(crate) fn new(store: &PostgresStore) -> Self {
        let s = quote(store.schema());
        PostgresSnapshots {
            store: store.clone(),
            save: format!(
                "INSERT INTO {s}.snapshots
                   (stream_id, version, schema_version, data, taken_at, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (stream_id, version) DO UPDATE SET
                   schema_version = excluded.schema_version, data = excluded.data,
                   taken_at = excluded.taken_at, recorded_at = excluded.recorded_at"
            ),
            load: format!(
                "SELECT version, schema_version, data, taken_at, recorded_at FROM {s}.snapshots
                 WHERE stream_id = $1 AND version <= $2 ORDER BY version DESC LIMIT 1"
            ),
            load_at: format!(
                "SELECT version, schema_version, data, taken_at, recorded_at FROM {s}.snapshots
                 WHERE stream_id = $1 AND recorded_at > 0 AND recorded_at <= $2
                 ORDER BY version DESC LIMIT 1"
            ),
        }
    }
}

impl SnapshotStore for PostgresSnapshots {
    fn save(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.store.client().await?;
            let statement = client.prepare_cached(&self.save).await.map_err(pg_error)?;
            client
                .execute(
                    &statement,
                    &[
                        &snapshot.stream.as_str(),
                        &to_i64(snapshot.version),
                        &i32::from(snapshot.schema_version),
                        &snapshot.data.as_ref(),
                        &to_i64(snapshot.taken_at.as_micros()),
                        &to_i64(snapshot.recorded_at.as_micros()),
                    ],
                )
                .await
                .map(|_| ())
                .map_err(pg_error)
        })
    }

    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(self.query_one(&self.load, stream, to_i64(version)))
    }

    fn load_at<'a>(
        &'a self,
        stream: &'a StreamId,
        at: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        Box::pin(self.query_one(&self.load_at, stream, to_i64(at.as_micros())))
    }
}

impl PostgresSnapshots {
    /// The snapshot `sql` (bound to `stream` and `bound`) selects, if any.
    async fn query_one(
        &self,
        sql: &str,
        stream: &StreamId,
        bound: i64,
    ) -> Result<Option<Snapshot>, StoreError> {
        let client = self.store.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&stream.as_str(), &bound])
            .await
            .map_err(pg_error)?;
        let micros = |v: i64| Timestamp::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(row.map(|r| {
            let version: i64 = r.get(0);
            let schema_version: i32 = r.get(1);
            Snapshot {
                stream: stream.clone(),
                version: u64::try_from(version).unwrap_or(0),
                // A schema version beyond u16 is one this build cannot read: it is ignored.
                schema_version: u16::try_from(schema_version).unwrap_or(u16::MAX),
                data: r.get::<_, Vec<u8>>(2).into(),
                taken_at: micros(r.get(3)),
                recorded_at: micros(r.get(4)),
            }
        }))
    }
}
