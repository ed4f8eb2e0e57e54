//! PostgreSQL for tests (feature `postgres`): the database URL and a schema that is dropped
//! when its guard is.

/// The database tests use: `SIRENIA_TEST_POSTGRES_URL`, or the local server's `test` database.
pub fn url() -> String {
    std::env::var("SIRENIA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema name with `prefix`, unique across processes and runs.
pub fn fresh_schema(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Drops the schema it names (and everything in it) when dropped, on a thread and runtime of
/// its own, so it works inside and outside async code. A failure to drop is ignored: the test
/// has already passed or failed.
#[derive(Debug)]
pub struct DropSchema(pub String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
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
