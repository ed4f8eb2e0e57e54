//! The embedded store against the whole conformance suite and the oracle property test.

#![allow(clippy::expect_used)]

use sirenia_sqlite::SqliteStore;
use sirenia_testkit::Guarded;
use tempfile::TempDir;

/// A fresh store in its own temporary directory, deleted with the last handle.
async fn make_store() -> Guarded<SqliteStore, TempDir> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .expect("open a fresh store");
    Guarded::new(store, dir)
}

sirenia_testkit::conformance_tests!(make_store);
