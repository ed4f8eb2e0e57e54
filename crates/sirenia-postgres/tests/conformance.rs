//! The PostgreSQL store against the whole conformance suite and the oracle property test.

mod common;

async fn make_store()
-> sirenia_testkit::Guarded<sirenia_postgres::PostgresStore, common::SchemaGuard> {
    common::fresh_store().await
}

sirenia_testkit::conformance_tests!(make_store);
