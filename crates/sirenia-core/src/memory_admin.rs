//! The in-memory store's admin port: projections' checkpoints, faults, parked events and
//! requests, read-model versions and documents, kept beside its events, and
//! [`MemoryBackend`], its transactional projection backend. One instance per projection name
//! runs at a time within the process (an async mutex per name).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::{OwnedMutexGuard, watch};

use crate::admin::{Document, StoreAdmin, check_documents_limit};
use crate::error::StoreError;
use crate::id::Position;
use crate::memory::InMemoryStore;
use crate::projection::{ApplyError, Checkpoint, FailedEvent, ProjectionRequest, StoredProjection};
use crate::snapshot::{MemorySnapshots, SnapshotStore};
use crate::store::{AppendResult, ImportBatch, validate_import};
use crate::transactional::{Bookkeeping, DocumentWrite, ProjectionBackend, Work};

/// What the admin port keeps for an in-memory store.
pub(crate) struct MemoryRecords {
    records: Mutex<Records>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    changes: watch::Sender<u64>,
    snapshots: Arc<MemorySnapshots>,
}

impl Default for MemoryRecords {
    fn default() -> Self {
        MemoryRecords {
            records: Mutex::default(),
            locks: Mutex::default(),
            changes: watch::channel(0).0,
            snapshots: Arc::new(MemorySnapshots::default()),
        }
    }
}

#[derive(Default)]
struct Records {
    checkpoints: BTreeMap<String, Checkpoint>,
    parked: BTreeMap<String, BTreeMap<Position, FailedEvent>>,
    requests: BTreeMap<String, ProjectionRequest>,
    versions: BTreeMap<String, String>,
    documents: BTreeMap<String, BTreeMap<String, Value>>,
}

impl MemoryRecords {
    fn records(&self) -> MutexGuard<'_, Records> {
        // The records stay consistent under a panic: every change is made whole under the lock.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn checkpoint(&self, name: &str) -> Checkpoint {
        self.records()
            .checkpoints
            .get(name)
            .cloned()
            .unwrap_or(Checkpoint {
                next: Position(1),
                fault: None,
            })
    }

    fn parked(&self, name: &str) -> Vec<FailedEvent> {
        self.records()
            .parked
            .get(name)
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn document(&self, collection: &str, id: &str) -> Option<Value> {
        self.records()
            .documents
            .get(collection)
            .and_then(|c| c.get(id))
            .cloned()
    }

    fn commit(&self, name: &str, work: Work) -> Result<(), ApplyError> {
        // Decode every document first, so a bad one changes nothing.
        let mut documents = Vec::with_capacity(work.documents.len());
        for write in work.documents {
            documents.push(match write {
                DocumentWrite::Put {
                    collection,
                    id,
                    body,
                } => {
                    let value = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                        message: format!("document {id:?} of {collection:?} is not JSON: {e}"),
                    })?;
                    (collection, Some(id), Some(value))
                }
                DocumentWrite::Delete { collection, id } => (collection, Some(id), None),
                DocumentWrite::Clear { collection } => (collection, None, None),
            });
        }
        let moved = !work.bookkeeping.is_empty();
        {
            let mut records = self.records();
            for (collection, id, value) in documents {
                let docs = records.documents.entry(collection).or_default();
                match (id, value) {
                    (Some(id), Some(value)) => {
                        docs.insert(id, value);
                    }
                    (Some(id), None) => {
                        docs.remove(&id);
                    }
                    (None, _) => docs.clear(),
                }
            }
            for change in work.bookkeeping {
                apply_bookkeeping(&mut records, name, change);
            }
        }
        if moved {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }
}

fn apply_bookkeeping(records: &mut Records, name: &str, change: Bookkeeping) {
    match change {
        Bookkeeping::Checkpoint(next) => {
            let checkpoint = records.checkpoints.entry(name.to_owned()).or_default();
            // Never backwards (a reset removes it instead).
            checkpoint.next = checkpoint.next.max(next);
            checkpoint.fault = None;
        }
        Bookkeeping::Park(failed) => {
            records
                .parked
                .entry(name.to_owned())
                .or_default()
                .insert(failed.position, failed);
        }
        Bookkeeping::Unpark(position) => {
            if let Some(parked) = records.parked.get_mut(name) {
                parked.remove(&position);
            }
        }
        Bookkeeping::Fault(failed) => {
            let checkpoint = records
                .checkpoints
                .entry(name.to_owned())
                .or_insert_with(|| Checkpoint {
                    next: failed.position,
                    fault: None,
                });
            checkpoint.fault = Some(failed);
        }
        Bookkeeping::Reset => {
            records.checkpoints.remove(name);
            records.parked.remove(name);
        }
        Bookkeeping::FinishRequest(request) => {
            if records.requests.get(name) == Some(&request) {
                records.requests.remove(name);
            }
        }
    }
}

/// The in-memory store's [`ProjectionBackend`]: see [`InMemoryStore`]'s [`StoreAdmin`].
pub struct MemoryBackend {
    records: Arc<MemoryRecords>,
    held: Option<(String, OwnedMutexGuard<()>)>,
}

impl ProjectionBackend for MemoryBackend {
    async fn lock(&mut self, name: &str) -> Result<(), StoreError> {
        if let Some((held, _)) = &self.held {
            if held == name {
                return Ok(());
            }
            return Err(StoreError::InvalidOptions {
                message: format!("this backend already holds the lock of projection {held}"),
            });
        }
        let mutex = self
            .records
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let guard = mutex.lock_owned().await;
        self.held = Some((name.to_owned(), guard));
        Ok(())
    }

    async fn checkpoint(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        Ok(self.records.checkpoint(name))
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        Ok(self.records.parked(name))
    }

    async fn pending_request(
        &mut self,
        name: &str,
    ) -> Result<Option<ProjectionRequest>, StoreError> {
        Ok(self.records.records().requests.get(name).copied())
    }

    async fn document(&mut self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.records.document(collection, id))
    }

    async fn commit(&mut self, name: &str, work: Work) -> Result<(), ApplyError> {
        self.records.commit(name, work)
    }
}

impl StoreAdmin for InMemoryStore {
    type Backend = MemoryBackend;

    fn projection_backend(&self) -> MemoryBackend {
        MemoryBackend {
            records: self.admin_records().clone(),
            held: None,
        }
    }

    fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        self.admin_records().snapshots.clone()
    }

    async fn import(&self, batch: ImportBatch) -> Result<AppendResult, StoreError> {
        validate_import(&batch)?;
        self.append_stamped(batch.writes, Some(&batch.recorded_at))
    }

    async fn projections(&self) -> Result<Vec<StoredProjection>, StoreError> {
        let records = self.admin_records().records();
        Ok(records
            .checkpoints
            .iter()
            .map(|(name, checkpoint)| StoredProjection {
                name: name.clone(),
                next: checkpoint.next,
                fault: checkpoint.fault.clone(),
                parked: records.parked.get(name).map_or(0, |p| p.len() as u64),
            })
            .collect())
    }

    async fn checkpoint(&self, name: &str) -> Result<Checkpoint, StoreError> {
        Ok(self.admin_records().checkpoint(name))
    }

    async fn parked(&self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        Ok(self.admin_records().parked(name))
    }

    async fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> Result<(), StoreError> {
        self.admin_records()
            .records()
            .requests
            .insert(name.to_owned(), request);
        Ok(())
    }

    async fn pending_request(&self, name: &str) -> Result<Option<ProjectionRequest>, StoreError> {
        Ok(self.admin_records().records().requests.get(name).copied())
    }

    async fn set_active_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.admin_records()
            .records()
            .versions
            .insert(name.to_owned(), version.to_owned());
        Ok(())
    }

    async fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.admin_records().records().versions.get(name).cloned())
    }

    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.admin_records().document(collection, id))
    }

    async fn documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        check_documents_limit(limit)?;
        let records = self.admin_records().records();
        let Some(docs) = records.documents.get(collection) else {
            return Ok(Vec::new());
        };
        let range = match after {
            Some(after) => {
                docs.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => docs.range::<str, _>(..),
        };
        Ok(range
            .take(limit)
            .map(|(id, body)| Document {
                id: id.clone(),
                body: body.clone(),
            })
            .collect())
    }

    fn projection_changes(&self) -> watch::Receiver<u64> {
        self.admin_records().changes.subscribe()
    }
}
