//! Shared by the PostgreSQL test binaries: a fresh schema per store, dropped afterwards.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use sirenia_postgres::{PostgresOptions, PostgresStore};
use sirenia_testkit::Guarded;

/// The database the tests use: `SIRENIA_TEST_POSTGRES_URL`, or the local server's `test`.
pub(crate) fn url() -> String {
    std::env::var("SIRENIA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// Drops its schema when dropped.
pub(crate) struct SchemaGuard {
    pub(crate) schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Drop runs outside any async context here: use a small runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A fresh, empty store in a schema of its own. Fails loudly when PostgreSQL is unreachable.
pub(crate) async fn fresh_store() -> Guarded<PostgresStore, SchemaGuard> {
    let schema = format!("sirenia_t_{}", uuid::Uuid::now_v7().simple());
    let options = PostgresOptions {
        schema: schema.clone(),
        pool_size: 8,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&url(), options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed by this test: {e}", url()));
    Guarded::new(store, SchemaGuard { schema })
}
