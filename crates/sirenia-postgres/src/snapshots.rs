//! Aggregate snapshots in the store's schema (table `snapshots`).

use sirenia_core::snapshot::{BoxFuture, Snapshot, SnapshotStore};
use sirenia_core::{StoreError, StreamId, Timestamp};

use crate::schema::quote;
use crate::{PostgresStore, pg_error, to_i64};

/// Snapshots kept in the PostgreSQL schema: see [`PostgresStore::snapshots`].
pub struct PostgresSnapshots {
    store: PostgresStore,
    save: String,
    load: String,
}

impl PostgresSnapshots {
    pub(crate) fn new(store: &PostgresStore) -> Self {
        let s = quote(store.schema());
        PostgresSnapshots {
            store: store.clone(),
            save: format!(
                "INSERT INTO {s}.snapshots (stream_id, version, schema_version, data, taken_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (stream_id, version) DO UPDATE SET
                   schema_version = excluded.schema_version, data = excluded.data,
                   taken_at = excluded.taken_at"
            ),
            load: format!(
                "SELECT version, schema_version, data, taken_at FROM {s}.snapshots
                 WHERE stream_id = $1 AND version <= $2 ORDER BY version DESC LIMIT 1"
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
        Box::pin(async move {
            let client = self.store.client().await?;
            let statement = client.prepare_cached(&self.load).await.map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&stream.as_str(), &to_i64(version)])
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| {
                let version: i64 = r.get(0);
                let schema_version: i32 = r.get(1);
                let data: Vec<u8> = r.get(2);
                let taken_at: i64 = r.get(3);
                Snapshot {
                    stream: stream.clone(),
                    version: u64::try_from(version).unwrap_or(0),
                    // A schema version beyond u16 is one this build cannot read: it is ignored.
                    schema_version: u16::try_from(schema_version).unwrap_or(u16::MAX),
                    data: data.into(),
                    taken_at: Timestamp::from_micros(u64::try_from(taken_at).unwrap_or(0)),
                }
            }))
        })
    }
}
