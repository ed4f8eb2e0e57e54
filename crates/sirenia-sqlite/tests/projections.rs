//! The projection conformance suite on the embedded store: a document read model in the
//! store's file, exactly once under SIGKILL of projector processes (which open the file
//! read-only beside the writer), complete under concurrent writers, poison events parked or
//! faulted and replayed, rebuilds, blue/green, and a standby process taking over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sirenia_sqlite::{SqliteOptions, SqliteStore};

async fn fresh() -> (SqliteStore, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    (store, path.to_str().unwrap().to_owned(), dir)
}

/// A projector child opens the file read-only, as a projection process beside the writer.
async fn reopen(location: String) -> SqliteStore {
    SqliteStore::open_read_only(&location, SqliteOptions::default())
        .await
        .unwrap()
}

sirenia_testkit::projection_conformance_tests!(fresh, reopen);
