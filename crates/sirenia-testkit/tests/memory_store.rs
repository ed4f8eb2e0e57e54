//! The in-memory store against the whole conformance suite and the oracle property test.

use sirenia_core::InMemoryStore;

async fn make_store() -> InMemoryStore {
    InMemoryStore::new()
}

sirenia_testkit::conformance_tests!(make_store);
