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
    sirenia_testkit::snapshots::lifecycle_repository_cases(
        InMemoryStore::new(),
        std::sync::Arc::new(sirenia_core::snapshot::MemorySnapshots::new()),
    )
    .await;
}

#[test]
fn tally_snapshots_restore_the_replayed_state() {
    use proptest::prelude::*;
    use sirenia_testkit::snapshots::{Tally, TallyEvent};
    sirenia_testkit::fixture::check_snapshot_restorability::<Tally, _>(proptest::collection::vec(
        any::<i32>().prop_map(|n| TallyEvent::Added(n.into())),
        0..40,
    ));
}

/// The check fails for a state whose snapshot loses something.
#[test]
#[should_panic(expected = "snapshot restorability")]
fn a_snapshot_that_loses_state_fails_the_restorability_check() {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use sirenia_core::{Aggregate, DomainEvent};

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Forgetful {
        total: i64,
        #[serde(skip)]
        seen: u32,
    }
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Seen(i64);
    impl DomainEvent for Seen {}
    impl Aggregate for Forgetful {
        const CATEGORY: &'static str = "forgetful";
        type Command = ();
        type Event = Seen;
        type Error = std::convert::Infallible;
        fn apply(&mut self, Seen(n): &Seen) {
            self.total += n;
            self.seen += 1;
        }
        fn handle(&self, (): ()) -> Result<Vec<Seen>, std::convert::Infallible> {
            Ok(vec![])
        }
    }
    impl sirenia_core::snapshot::Snapshotted for Forgetful {}
    sirenia_testkit::fixture::check_snapshot_restorability::<Forgetful, _>(
        proptest::collection::vec(any::<i32>().prop_map(|n| Seen(n.into())), 1..10),
    );
}

/// Time travel: loading as of version N, with snapshots every k events, gives exactly the
/// state of the first N events replayed (property test).
#[test]
fn time_travel_equals_replaying_the_first_n_events() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use sirenia_core::Repository;
    use sirenia_core::snapshot::{MemorySnapshots, SnapshotPolicy};
    use sirenia_testkit::snapshots::{AddAmount, Tally, TallyEvent};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 32,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = (
        proptest::collection::vec(-1000i64..1000, 0..60),
        1u64..12,
        any::<prop::sample::Index>(),
    );
    runner
        .run(&strategy, |(amounts, every, index)| {
            runtime.block_on(async {
                let store = InMemoryStore::new();
                let snapshots = std::sync::Arc::new(MemorySnapshots::new());
                let repo = Repository::<Tally, _>::new(store)
                    .with_snapshots(snapshots.clone(), SnapshotPolicy::Every(every));
                for amount in &amounts {
                    repo.execute("t", AddAmount(*amount)).await.unwrap();
                }
                // Background snapshots: give them a moment, whichever have landed are used.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                let n = index.index(amounts.len() + 1) as u64;
                let loaded = repo.load_version("t", n).await.unwrap();
                let mut expected = Tally::default();
                for amount in &amounts[..usize::try_from(n).unwrap()] {
                    sirenia_core::Aggregate::apply(&mut expected, &TallyEvent::Added(*amount));
                }
                prop_assert_eq!(loaded.version, n);
                prop_assert_eq!(loaded.state, expected);
                Ok(())
            })
        })
        .unwrap();
}
