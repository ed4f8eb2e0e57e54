//! The store's administration, beside the port: its [`StoreAdmin`] implementation (importing
//! a log with its original timestamps, projection requests for a projector in whichever
//! process, the projections, parked events and documents recorded in the schema, the
//! read-model version readers should use, the snapshot and checkpoint stores kept in the
//! schema) and dropping the schema.

use std::sync::Arc;

use serde_json::Value;
use sirenia_core::admin::check_documents_limit;
use sirenia_core::projection::{Checkpoint, FailedEvent, ProjectionRequest, StoredProjection};
use sirenia_core::snapshot::SnapshotStore;
use sirenia_core::store::ImportBatch;
use sirenia_core::{AppendResult, Document, StoreAdmin, StoreError};
use tokio::sync::watch;

use crate::projection::{self, PostgresBackend};
use crate::{PostgresSnapshots, PostgresStore, pg_error, pool_error, schema};

impl StoreAdmin for PostgresStore {
    type Backend = PostgresBackend<()>;

    fn projection_backend(&self) -> PostgresBackend<()> {
        PostgresBackend::new(self, ())
    }

    fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        Arc::new(PostgresSnapshots::new(self))
    }

    /// Appends one batch of an import (see [`sirenia_core::store::import_batches`]): like an
    /// append, in one transaction, and each event keeps its original `recorded_at`.
    /// Re-importing a batch that is already stored writes nothing (event ids are idempotent).
    async fn import(&self, batch: ImportBatch) -> Result<AppendResult, StoreError> {
        sirenia_core::store::validate_import(&batch)?;
        let mut client = self.client().await?;
        let mut tx = client.transaction().await.map_err(pg_error)?;
        // Stamped by event id, only the rows this transaction inserted (their positions carry
        // its transaction id): events already stored (a repeated import) keep theirs.
        let ids: Vec<uuid::Uuid> = batch
            .writes
            .iter()
            .flat_map(|w| w.events.iter().map(|e| *e.id.as_uuid()))
            .collect();
        let stamps: Vec<std::time::SystemTime> = batch
            .recorded_at
            .iter()
            .map(|t| t.to_system_time())
            .collect();
        let result = self.append_in_transaction(&mut tx, batch.writes).await?;
        let s = schema::quote(&self.shared.schema);
        tx.execute(
            &format!(
                "UPDATE {s}.events SET recorded_at = t.ts
                 FROM unnest($1::uuid[], $2::timestamptz[]) AS t(id, ts)
                 WHERE event_id = t.id
                   AND ({s}.events.position >> 20) = pg_current_xact_id()::text::bigint"
            ),
            &[&ids, &stamps],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        self.announce();
        Ok(result)
    }

    async fn projections(&self) -> Result<Vec<StoredProjection>, StoreError> {
        projection::stored_projections(self).await
    }

    async fn checkpoint(&self, name: &str) -> Result<Checkpoint, StoreError> {
        projection::stored_checkpoint(self, name).await
    }

    async fn parked(&self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        projection::stored_parked(self, name).await
    }

    /// Asks the running projector of `name` (in whichever process) to carry out `request`.
    async fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> Result<(), StoreError> {
        let s = schema::quote(&self.shared.schema);
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {s}.projection_requests (name, kind) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, requested_at = now()"
                ),
                &[&name, &request.as_str()],
            )
            .await
            .map(|_| ())
            .map_err(pg_error)
    }

    async fn pending_request(&self, name: &str) -> Result<Option<ProjectionRequest>, StoreError> {
        projection::stored_request(self, name).await
    }

    /// Records that readers of read model `name` should use `version` from now on: the switch
    /// of a blue/green rebuild (see `Projector::run_blue_green`).
    async fn set_active_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let s = schema::quote(&self.shared.schema);
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO {s}.projection_versions (name, version, updated_at)
                     VALUES ($1, $2, now())
                     ON CONFLICT (name) DO UPDATE SET version = excluded.version,
                       updated_at = now()"
                ),
                &[&name, &version],
            )
            .await
            .map(|_| ())
            .map_err(pg_error)
    }

    /// The version of read model `name` readers should use, if one was set.
    async fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        let s = schema::quote(&self.shared.schema);
        Ok(self
            .client()
            .await?
            .query_opt(
                &format!("SELECT version FROM {s}.projection_versions WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(pg_error)?
            .map(|r| r.get(0)))
    }

    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        projection::stored_document(self, collection, id).await
    }

    async fn documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        check_documents_limit(limit)?;
        projection::stored_documents(self, collection, after, limit).await
    }

    fn projection_changes(&self) -> watch::Receiver<u64> {
        PostgresStore::projection_changes(self)
    }
}

impl PostgresStore {
    /// Drops the schema and everything in it. For tests and tear-down.
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        if let Ok(mut versions) = self.shared.versions.lock() {
            versions.clear();
        }
        let client = self.shared.pool.get().await.map_err(pool_error)?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                schema::quote(&self.shared.schema)
            ))
            .await
            .map_err(pg_error)
    }
}
