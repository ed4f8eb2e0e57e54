//! The in-memory store against the whole conformance suite and the oracle property test.

use sirenia_core::InMemoryStore;

async fn make_store() -> InMemoryStore {
    InMemoryStore::new()
}

sirenia_testkit::conformance_tests!(make_store);

#[tokio::test]
async fn memory_snapshots_pass_the_snapshot_cases() {
    let snapshots = sirenia_core::snapshot::MemorySnapshots::new();
    sirenia_testkit::snapshots::snapshot_store_cases(&snapshots).await;
    sirenia_testkit::snapshots::snapshot_repository_cases(
        InMemoryStore::new(),
        std::sync::Arc::new(sirenia_core::snapshot::MemorySnapshots::new()),
    )
    .await;
}
