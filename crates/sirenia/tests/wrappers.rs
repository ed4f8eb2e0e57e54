//! Every wrapper reports the wrapped store's capabilities and forwards its admin port:
//! `AnyStore`, `Metered`, the testkit's `Guarded`, and stacks of them, over each store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sirenia::projection::{ProjectionOptions, Projector};
use sirenia::{
    AnyStore, Capabilities, EventStore, ExpectedVersion, InMemoryStore, Metered, NewEvent,
    StoreAdmin, StreamId, StreamWrite,
};
use sirenia_testkit::Guarded;

/// `store`'s capabilities, and the same through every wrapper and stack of wrappers.
fn through_wrappers<S: EventStore>(store: &S, any: &AnyStore) -> Vec<(&'static str, Capabilities)> {
    vec![
        ("store", store.capabilities()),
        ("AnyStore", any.capabilities()),
        ("Metered<store>", Metered::new(store.clone()).capabilities()),
        (
            "Guarded<store>",
            Guarded::new(store.clone(), ()).capabilities(),
        ),
        (
            "Metered<AnyStore>",
            Metered::new(any.clone()).capabilities(),
        ),
        (
            "Metered<Guarded<AnyStore>>",
            Metered::new(Guarded::new(any.clone(), ())).capabilities(),
        ),
        (
            "Guarded<Metered<store>>",
            Guarded::new(Metered::new(store.clone()), ()).capabilities(),
        ),
    ]
}

fn assert_all(expected: Capabilities, seen: &[(&str, Capabilities)]) {
    for (wrapper, capabilities) in seen {
        assert_eq!(
            *capabilities, expected,
            "{wrapper} reports other capabilities"
        );
    }
}

/// A document projection run through `Metered<Guarded<AnyStore>>` commits in the wrapped
/// store, and the wrapper's admin port reads it back and waits on its checkpoint.
async fn admin_port_is_forwarded(any: AnyStore) {
    let wrapped = Metered::new(Guarded::new(any.clone(), ()));
    wrapped
        .append(vec![StreamWrite::new(
            StreamId::new("acct-1").unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::json("Added", &serde_json::json!({"amount": 3}))],
        )])
        .await
        .unwrap();
    struct Count;
    impl sirenia::transactional::DocumentProjection for Count {
        fn collections(&self) -> Vec<String> {
            vec!["counts".to_owned()]
        }
        async fn apply(
            &mut self,
            docs: &mut sirenia::transactional::Documents<'_>,
            event: &sirenia::RecordedEvent,
        ) -> Result<(), sirenia::projection::HandlerError> {
            let n: u64 = docs.get("counts", "all").await?.unwrap_or(0);
            docs.put("counts", "all", &(n + 1))?;
            let _ = event;
            Ok(())
        }
    }
    let target = wrapped.document_projection("count", Count);
    let mut projector = Projector::new(
        "count",
        wrapped.clone(),
        target,
        ProjectionOptions::default(),
    )
    .unwrap();
    let head = wrapped.head_position().await.unwrap();
    projector.catch_up(|_| {}).await.unwrap();
    assert!(
        wrapped
            .wait_for_checkpoint("count", head, std::time::Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(
        any.document("counts", "all").await.unwrap(),
        Some(serde_json::json!(1))
    );
    let listed = wrapped.projections().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_through_every_wrapper() {
    let store = InMemoryStore::new();
    let any = AnyStore::from(store.clone());
    let expected = store.capabilities();
    assert!(expected.dense_positions);
    assert!(!expected.durable);
    assert_all(expected, &through_wrappers(&store, &any));
    admin_port_is_forwarded(any).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_through_every_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let store = sirenia::SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    let any = AnyStore::from(store.clone());
    let expected = store.capabilities();
    assert!(expected.dense_positions && expected.durable && expected.cross_process_locking);
    assert!(!expected.multi_process_writers);
    let seen = through_wrappers(&store, &any);
    assert_all(expected, &seen);
    // The read-ahead branch depends on it: a wrapper that lost it would read slower, not wrong.
    assert!(Guarded::new(store.clone(), ()).dense_positions());
    admin_port_is_forwarded(any).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_through_every_wrapper() {
    let schema = sirenia_testkit::postgres::fresh_schema("sirenia_w");
    let _guard = sirenia_testkit::postgres::DropSchema(schema.clone());
    let url = sirenia_testkit::postgres::url();
    let any = AnyStore::open_with(
        &url,
        sirenia::OpenOptions {
            postgres_schema: Some(schema),
            ..sirenia::OpenOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed by this test: {e}"));
    let AnyStore::Postgres(store) = any.clone() else {
        panic!("a postgres:// URL opens PostgreSQL");
    };
    let expected = store.capabilities();
    assert!(expected.multi_process_writers && expected.durable && !expected.dense_positions);
    assert_all(expected, &through_wrappers(&store, &any));
    admin_port_is_forwarded(any).await;
}
