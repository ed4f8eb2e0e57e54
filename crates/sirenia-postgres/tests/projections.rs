//! The projection conformance suite on PostgreSQL: a document read model in the store's
//! schema, exactly once under SIGKILL of projector processes, complete under concurrent
//! writers, poison events parked or faulted and replayed, rebuilds, blue/green, and a standby
//! process (waiting on the advisory lock) taking over. Each case runs in a fresh schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sirenia_postgres::{PostgresOptions, PostgresStore};
use sirenia_testkit::postgres::{DropSchema, fresh_schema, url};

async fn open(schema: &str) -> PostgresStore {
    let options = PostgresOptions {
        schema: schema.to_owned(),
        pool_size: 4,
        ..PostgresOptions::default()
    };
    PostgresStore::connect_with(&url(), options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed by this test: {e}", url()))
}

async fn fresh() -> (PostgresStore, String, DropSchema) {
    let schema = fresh_schema("sirenia_p");
    let store = open(&schema).await;
    (store, schema.clone(), DropSchema(schema))
}

async fn reopen(schema: String) -> PostgresStore {
    open(&schema).await
}

sirenia_testkit::projection_conformance_tests!(fresh, reopen);
