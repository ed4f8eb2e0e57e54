//! The admin port ([`StoreAdmin`]) of the PostgreSQL store: imports, the projections' records
//! and requests, read-model versions and documents, snapshots and checkpoints, all in the
//! store's schema.

use std::sync::Arc;

use serde_json::Value;
use sirenia_core::admin::check_documents_limit;
use sirenia_core::projection::{Checkpoint, FailedEvent, ProjectionRequest, StoredProjection};
use sirenia_core::snapshot::SnapshotStore;
use sirenia_core::store::ImportBatch;
use sirenia_core::{AppendResult, Document, StoreAdmin, StoreError};
use tokio::sync::watch;

use crate::projection::{self, PostgresBackend};
use crate::{PostgresSnapshots, PostgresStore};

impl StoreAdmin for PostgresStore {
    type Backend = PostgresBackend<()>;

    fn projection_backend(&self) -> PostgresBackend<()> {
        PostgresBackend::new(self, ())
    }

    fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        Arc::new(PostgresSnapshots::new(self))
    }

    async fn import(&self, batch: ImportBatch) -> Result<AppendResult, StoreError> {
        PostgresStore::import(self, batch).await
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

    async fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> Result<(), StoreError> {
        PostgresStore::request_projection(self, name, request).await
    }

    async fn pending_request(&self, name: &str) -> Result<Option<ProjectionRequest>, StoreError> {
        projection::stored_request(self, name).await
    }

    async fn set_active_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
        PostgresStore::set_active_version(self, name, version).await
    }

    async fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        PostgresStore::active_version(self, name).await
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
