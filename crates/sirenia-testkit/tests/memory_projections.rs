//! The projection conformance suite's in-process cases on the in-memory store (its admin port
//! and `MemoryBackend`); the process cases need a store that outlives a process.

use sirenia_core::InMemoryStore;

async fn fresh() -> (InMemoryStore, String, ()) {
    (InMemoryStore::new(), String::new(), ())
}

sirenia_testkit::projection_conformance_tests!(fresh, in_process_only);
