//! The store's administration, beside the port: importing a log with its original timestamps,
//! projection requests (rebuild, replay parked events) for a projector in whichever process,
//! the projections and parked events recorded in the schema, the read-model version readers
//! should use (blue/green), the snapshot and checkpoint stores kept in the schema, and dropping
//! the schema. Inherent methods of [`PostgresStore`].

use sirenia_core::{AppendResult, StoreError};

use crate::{
    PostgresCheckpoints, PostgresSnapshots, PostgresStore, pg_error, pool_error, projection, schema,
};

impl PostgresStore {
    /// Appends one batch of an import (see [`sirenia_core::store::import_batches`]): like an
    /// append, in one transaction, and each event keeps its original `recorded_at`.
    /// Re-importing a batch that is already stored writes nothing (event ids are idempotent).
    pub async fn import(
        &self,
        batch: sirenia_core::store::ImportBatch,
    ) -> Result<AppendResult, StoreError> {
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

    /// Asks the running projector of `name` (in whichever process) to carry out `request`.
    pub async fn request_projection(
        &self,
        name: &str,
        request: sirenia_core::projection::ProjectionRequest,
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

    /// The request for `name` its projector has not taken yet.
    pub async fn pending_request(
        &self,
        name: &str,
    ) -> Result<Option<sirenia_core::projection::ProjectionRequest>, StoreError> {
        let s = schema::quote(&self.shared.schema);
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT kind FROM {s}.projection_requests WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(pg_error)?;
        Ok(row
            .and_then(|r| sirenia_core::projection::ProjectionRequest::parse(r.get::<_, &str>(0))))
    }

    /// Every projection recorded in the schema: checkpoint, fault and parked count.
    pub async fn projections(
        &self,
    ) -> Result<Vec<sirenia_core::projection::StoredProjection>, StoreError> {
        projection::stored_projections(self).await
    }

    /// The events projection `name` parked.
    pub async fn parked(
        &self,
        name: &str,
    ) -> Result<Vec<sirenia_core::projection::FailedEvent>, StoreError> {
        projection::stored_parked(self, name).await
    }

    /// Records that readers of read model `name` should use `version` from now on: the switch
    /// of a blue/green rebuild (see `Projector::run_blue_green`).
    pub async fn set_active_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
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
    pub async fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
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

    /// Aggregate snapshots kept in this schema (for `Repository::with_snapshots`).
    pub fn snapshots(&self) -> PostgresSnapshots {
        PostgresSnapshots::new(self)
    }

    /// Checkpoints kept in this database, for an at-least-once projection
    /// ([`AtLeastOnce`](sirenia_core::projection::AtLeastOnce)) into a sink elsewhere.
    pub fn checkpoints(&self) -> PostgresCheckpoints {
        PostgresCheckpoints::new(self)
    }

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
