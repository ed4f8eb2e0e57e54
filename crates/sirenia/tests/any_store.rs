//! `AnyStore` delegates every port method: the whole conformance suite through it.

use sirenia::{AnyStore, InMemoryStore};

async fn make_store() -> AnyStore {
    AnyStore::from(InMemoryStore::new())
}

sirenia_testkit::conformance_tests!(make_store);
