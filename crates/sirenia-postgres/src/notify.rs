//! Wake-ups: the `LISTEN` task that hears other processes' appends, the notifier task that
//! tells them of this process's, and [`PostgresStore::announce`], which wakes this process's
//! subscriptions at once and asks the notifier to notify. A notification carries no payload
//! and only wakes waiting subscriptions early (they poll by position regardless); it is sent
//! after commit from a connection of its own, at most one per [`NOTIFY_COALESCE`], and
//! committed without waiting for the WAL flush. A projection commit notifies on the same
//! channel inside its own transaction, so other processes' waits on its checkpoint wake too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::connect::Connector;
use crate::{NOTIFY_COALESCE, PostgresStore};

impl PostgresStore {
    /// Wakes subscriptions after a commit: this process's at once, other processes' through a
    /// notification. [`append`](sirenia_core::EventStore::append) does it; call it after committing a
    /// transaction that used [`append_in_transaction`](Self::append_in_transaction).
    pub fn announce(&self) {
        self.shared.wake_tx.send_modify(|n| *n = n.wrapping_add(1));
        self.shared.announce.notify_one();
    }
}

/// Sends one payload-free notification per burst of appends, on a connection of its own and
/// outside the appends' transactions (a notifying transaction serializes commits).
pub(crate) async fn run_notifier(
    connector: Connector,
    config: tokio_postgres::Config,
    channel: String,
    announce: Arc<tokio::sync::Notify>,
) {
    // A notification is only a wake-up (readers poll by position), so its commit need not
    // wait for the WAL to reach disk: a synced commit here would compete with the appends'
    // own commits for every flush.
    let sql = format!("NOTIFY {channel}");
    loop {
        let Ok(driven) = connector.connect(&config, None).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if driven
            .client
            .batch_execute("SET synchronous_commit = off")
            .await
            .is_err()
        {
            driven.driver.abort();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            announce.notified().await;
            if driven.client.batch_execute(&sql).await.is_err() {
                break;
            }
            // Appends during this pause share the next notification.
            tokio::time::sleep(NOTIFY_COALESCE).await;
        }
        driven.driver.abort();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps a `LISTEN` connection open and bumps `wake` on every notification (and on every
/// reconnect, since notifications may have been missed meanwhile).
pub(crate) async fn run_listener(
    connector: Connector,
    config: tokio_postgres::Config,
    channel: String,
    wake: Arc<watch::Sender<u64>>,
) {
    loop {
        if let Ok(mut driven) = connector.connect(&config, Some(wake.clone())).await {
            if driven
                .client
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .is_ok()
            {
                wake.send_modify(|n| *n = n.wrapping_add(1));
                let _ = (&mut driven.ended).await;
            }
            driven.driver.abort();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Passes every wake-up heard by the listener (another process's append or projection commit)
/// on to the admin port's projection notifications, until the store is dropped.
pub(crate) async fn forward_wakes(
    mut wake: watch::Receiver<u64>,
    changes: Arc<watch::Sender<u64>>,
) {
    while wake.changed().await.is_ok() {
        changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}
