//! The accounts read model (`id`, `owner`, `balance`, `status`): a document projection, so it
//! is written once and kept by whichever store the service runs on, in the store's own
//! database. Its documents and the projection's checkpoint commit together, so it is exact
//! after any crash. Several service instances on one PostgreSQL run one active projector (the
//! others stand by); every instance reads the documents and waits on the stored checkpoint,
//! woken by the store's projection notifications.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sirenia::projection::{
    HandlerError, ProjectionError, ProjectionOptions, ProjectionStatus, Projector,
};
use sirenia::transactional::{DocumentProjection, Documents};
use sirenia::{AnyStore, EventFilter, JsonCodec, Position, RecordedEvent, StoreAdmin, StoreError};
use tokio::sync::watch;

use crate::account::{Account, AccountEvent};

/// The read model's name; readers look up its active version under it.
pub const PROJECTION: &str = "bank-accounts";
/// The version of the read model this build keeps: a build that changes the documents or the
/// way events fold into them bumps it, builds its documents beside the previous version's
/// (blue/green) and switches readers over once it has caught up. Version 1 was a table of
/// the store's own SQL; version 2 is documents.
pub const VERSION: &str = "2";
/// Longest wait of `GET /accounts?min_position=`.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Most accounts one `GET /accounts` returns.
pub const MAX_LIST: u32 = 1_000;

/// One account of the read model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    /// The account id.
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// Its balance in minor units.
    pub balance: i64,
    /// `open` or `closed`.
    pub status: String,
}

/// The collection of read-model version `version`.
fn collection(version: &str) -> String {
    format!("{PROJECTION}@{version}")
}

/// The projection (checkpoint) name of read-model version `version`.
fn projection_name(version: &str) -> String {
    format!("{PROJECTION}@{version}")
}

/// The account id of an event's stream (`account-<id>`).
fn account_id(event: &RecordedEvent) -> &str {
    let stream = event.stream_id.as_str();
    stream.split_once('-').map_or(stream, |(_, id)| id)
}

/// Folds account events into one document per account.
struct Accounts {
    codec: JsonCodec<AccountEvent>,
    collection: String,
}

impl DocumentProjection for Accounts {
    fn collections(&self) -> Vec<String> {
        vec![self.collection.clone()]
    }

    async fn apply(
        &mut self,
        docs: &mut Documents<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let lag = sirenia::Timestamp::now()
            .as_micros()
            .saturating_sub(event.recorded_at.as_micros());
        // Microseconds stay far below 2^53, where f64 is exact.
        #[allow(clippy::cast_precision_loss)]
        metrics::histogram!(crate::observe::DELIVERY_SECONDS, "projection" => PROJECTION)
            .record(lag as f64 / 1e6);
        let id = account_id(event);
        let collection = self.collection.as_str();
        for change in self.codec.decode(event)? {
            let row = docs.get::<AccountRow>(collection, id).await?;
            let updated = match (change, row) {
                (AccountEvent::Opened { owner }, None) => AccountRow {
                    id: id.to_owned(),
                    owner,
                    balance: 0,
                    status: "open".to_owned(),
                },
                // Opened twice cannot happen (the aggregate refuses it); keep the first.
                (AccountEvent::Opened { .. }, Some(_)) => continue,
                // Events of an account the read model never saw opened change nothing.
                (_, None) => continue,
                (AccountEvent::Deposited { amount }, Some(mut row)) => {
                    row.balance = row
                        .balance
                        .checked_add(i64::try_from(amount)?)
                        .ok_or("balance overflow")?;
                    row
                }
                (AccountEvent::Withdrawn { amount }, Some(mut row)) => {
                    row.balance = row
                        .balance
                        .checked_sub(i64::try_from(amount)?)
                        .ok_or("balance overflow")?;
                    row
                }
                (AccountEvent::Closed, Some(mut row)) => {
                    row.status = "closed".to_owned();
                    row
                }
            };
            docs.put(collection, id, &updated)?;
        }
        Ok(())
    }
}

fn options() -> ProjectionOptions {
    ProjectionOptions {
        filter: EventFilter::category(<Account as sirenia::Aggregate>::CATEGORY),
        ..ProjectionOptions::default()
    }
}

/// The running read model: the projector task and how to query it.
pub struct ReadModel {
    store: AnyStore,
    status: watch::Receiver<ProjectionStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReadModel {
    /// Starts the projection of this build's version on `store` in a task of its own (it waits
    /// as a standby while another instance holds the projection). Once it has caught up it
    /// becomes the version readers use.
    pub fn start(store: &AnyStore) -> Result<Self, ProjectionError> {
        let name = projection_name(VERSION);
        let accounts = Accounts {
            codec: JsonCodec::new(),
            collection: collection(VERSION),
        };
        let target = store.document_projection(&name, accounts);
        let mut projector = Projector::new(name, store.clone(), target, options())?;
        let status = projector.status();
        let promote_store = store.clone();
        let task = tokio::spawn(async move {
            // Retry after a storage failure; a fault stops it (its status says why).
            loop {
                let promote = promote_store.set_active_version(PROJECTION, VERSION);
                match projector
                    .run_blue_green(promote, std::future::pending())
                    .await
                {
                    Ok(()) => return,
                    Err(ProjectionError::Faulted(failed)) => {
                        tracing::error!(position = %failed.position, error = %failed.error,
                            "the accounts read model is faulted");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the accounts projection failed; restarting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(ReadModel {
            store: store.clone(),
            status,
            task,
        })
    }

    /// The version readers use: the one last switched to, else this build's.
    pub async fn active_version(&self) -> Result<String, StoreError> {
        Ok(self
            .store
            .active_version(PROJECTION)
            .await?
            .unwrap_or_else(|| VERSION.to_owned()))
    }

    /// This instance's projector status (a standby reports `stopped`).
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// The stored checkpoint: the next position the projection will read, whichever instance
    /// runs it.
    pub async fn checkpoint(&self) -> Result<Position, StoreError> {
        let name = projection_name(&self.active_version().await?);
        Ok(self.store.checkpoint(&name).await?.next)
    }

    /// Waits until the projection has processed `position`, at most [`MAX_WAIT`]; `false` if
    /// it had not by then.
    pub async fn wait_for(&self, position: Position) -> Result<bool, StoreError> {
        let active = self.active_version().await?;
        // This instance's status speaks for readers only when they read its version.
        if active == VERSION && self.status.borrow().has_processed(position) {
            return Ok(true);
        }
        let name = projection_name(&active);
        self.store
            .wait_for_checkpoint(&name, position, MAX_WAIT)
            .await
    }

    /// Accounts ordered by id, after `after`, at most `limit`.
    pub async fn list(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<AccountRow>, StoreError> {
        let version = self.active_version().await?;
        let limit = usize::try_from(limit.min(MAX_LIST)).unwrap_or(usize::MAX);
        let documents = self
            .store
            .documents(&collection(&version), after.as_deref(), limit)
            .await?;
        documents
            .into_iter()
            .map(|d| {
                serde_json::from_value(d.body).map_err(|e| StoreError::Corrupt {
                    message: format!("account document {:?}: {e}", d.id),
                })
            })
            .collect()
    }
}
