//! Shared by the PostgreSQL test binaries: a fresh schema per store, dropped afterwards.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use sirenia_postgres::{PostgresOptions, PostgresStore};
use sirenia_testkit::Guarded;

pub(crate) use sirenia_testkit::postgres::url;

/// Drops its schema when dropped.
pub(crate) use sirenia_testkit::postgres::DropSchema as SchemaGuard;

/// A fresh, empty store in a schema of its own. Fails loudly when PostgreSQL is unreachable.
pub(crate) async fn fresh_store() -> Guarded<PostgresStore, SchemaGuard> {
    let schema = sirenia_testkit::postgres::fresh_schema("sirenia_t");
    let options = PostgresOptions {
        schema: schema.clone(),
        pool_size: 8,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&url(), options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed by this test: {e}", url()));
    Guarded::new(store, SchemaGuard(schema))
}
