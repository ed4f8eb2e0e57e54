//! The suite catches broken stores: each mutant below breaks one guarantee of the port on top of
//! the in-memory store, and the cases that guard that guarantee must fail on it. The unbroken
//! wrapper must pass every case, so the failures come from the mutations alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::panic::AssertUnwindSafe;

use sirenia_core::limits::MAX_EVENTS_PER_APPEND;
use sirenia_core::{
    AllPage, AppendResult, Direction, EventFilter, EventId, EventStore, ExpectedVersion,
    InMemoryStore, Limit, Metadata, Position, RecordedEvent, StoreError, StreamId, StreamWrite,
};
use sirenia_testkit::conformance;

#[global_allocator]
static ALLOCATOR: sirenia_testkit::alloc::CountingAllocator =
    sirenia_testkit::alloc::CountingAllocator;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    None,
    IgnoreExpectedVersion,
    ConflictWithoutActual,
    NonAtomic,
    FreshIdsOnRepeat,
    AcceptReusedIds,
    SplitOversizedAppends,
    MisreportPositions,
    BackwardReadsForward,
    IgnoreFilter,
    DropEvents,
    DropMetadata,
    NoLiveWakeup,
    UnboundedReads,
    LifecycleNotStored,
}

#[derive(Clone)]
struct Broken {
    inner: InMemoryStore,
    mutation: Mutation,
}

fn fresh_ids(writes: &mut [StreamWrite]) {
    for event in writes.iter_mut().flat_map(|w| w.events.iter_mut()) {
        event.id = EventId::new();
    }
}

impl EventStore for Broken {
    fn capabilities(&self) -> sirenia_core::Capabilities {
        self.inner.capabilities()
    }
    async fn append(&self, mut writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        match self.mutation {
            Mutation::IgnoreExpectedVersion => {
                for w in &mut writes {
                    w.expected = ExpectedVersion::Any;
                }
            }
            Mutation::NonAtomic => {
                let mut streams = Vec::new();
                for w in writes {
                    streams.extend(self.inner.append(vec![w]).await?.streams);
                }
                return Ok(AppendResult { streams });
            }
            Mutation::FreshIdsOnRepeat => {
                let first = writes.iter().flat_map(|w| w.events.first()).next();
                if let Some(first) = first
                    && self.inner.event_by_id(first.id).await?.is_some()
                {
                    fresh_ids(&mut writes);
                }
            }
            _ => {}
        }
        let result = self.inner.append(writes.clone()).await;
        match (self.mutation, result) {
            (
                Mutation::ConflictWithoutActual,
                Err(StoreError::Conflict {
                    stream, expected, ..
                }),
            ) => Err(StoreError::Conflict {
                stream,
                expected,
                actual: None,
            }),
            (Mutation::AcceptReusedIds, Err(StoreError::EventIdReused { .. })) => {
                fresh_ids(&mut writes);
                self.inner.append(writes).await
            }
            (
                Mutation::SplitOversizedAppends,
                Err(StoreError::LimitExceeded {
                    limit: Limit::EventsPerAppend,
                    ..
                }),
            ) => {
                let mut last = None;
                for w in writes {
                    for chunk in w.events.chunks(MAX_EVENTS_PER_APPEND) {
                        let write = StreamWrite::new(
                            w.stream.clone(),
                            ExpectedVersion::Any,
                            chunk.to_vec(),
                        );
                        last = Some(self.inner.append(vec![write]).await?);
                    }
                }
                Ok(last.expect("at least one chunk"))
            }
            (Mutation::MisreportPositions, Ok(mut r)) => {
                for s in &mut r.streams {
                    s.last_position = s.first_position;
                }
                Ok(r)
            }
            (_, result) => result,
        }
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn stream_info(
        &self,
        stream: &StreamId,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        self.inner.stream_info(stream).await
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: sirenia_core::StreamChange,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        if self.mutation == Mutation::LifecycleNotStored {
            // Answers as if the change were made, and keeps nothing.
            let current = self.inner.stream_info(stream).await?;
            return Ok(
                sirenia_core::lifecycle::decide_change(stream, current, change)?.or(current),
            );
        }
        self.inner.change_stream(stream, change).await
    }

    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.event_by_id(id).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (direction, max) = match self.mutation {
            Mutation::BackwardReadsForward => (Direction::Forward, max),
            Mutation::UnboundedReads => (direction, usize::MAX),
            _ => (direction, max),
        };
        let mut page = self
            .inner
            .read_stream_page(stream, from, direction, max)
            .await?;
        if self.mutation == Mutation::DropMetadata {
            for e in &mut page {
                e.metadata = Metadata::default();
            }
        }
        Ok(page)
    }

    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        let all = EventFilter::all();
        let filter = if self.mutation == Mutation::IgnoreFilter {
            &all
        } else {
            filter
        };
        let mut page = self
            .inner
            .read_all_page(from, direction, filter, max)
            .await?;
        if self.mutation == Mutation::DropEvents {
            page.events.retain(|e| e.position.get() % 5 != 0);
        }
        Ok(page)
    }

    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        if self.mutation == Mutation::NoLiveWakeup {
            std::future::pending::<()>().await;
        }
        self.inner.wait_for_events(from).await
    }
}

fn make(mutation: Mutation) -> Broken {
    Broken {
        inner: InMemoryStore::new(),
        mutation,
    }
}

/// Defines `run_named`, which runs the case called `name` on `store`, from the suite's list.
macro_rules! dispatcher {
    ($($case:ident),* $(,)?) => {
        async fn run_named(name: &str, store: &Broken) {
            match name {
                $(stringify!($case) => conformance::$case(store).await,)*
                other => panic!("unknown case {other}"),
            }
        }
    };
}

sirenia_testkit::for_each_conformance_case!(dispatcher!());

/// Whether case `name` passes on a store with `mutation`.
fn passes(mutation: Mutation, name: &'static str) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        sirenia_testkit::run_case(name, async move {
            let store = make(mutation);
            run_named(name, &store).await;
        })
    }))
    .is_ok()
}

#[track_caller]
fn assert_caught(mutation: Mutation, cases: &[&'static str]) {
    for case in cases {
        assert!(
            conformance::CASES.contains(case),
            "{case} is not a conformance case"
        );
        assert!(
            !passes(mutation, case),
            "case {case} passed on a store broken by {mutation:?}: it does not guard its guarantee"
        );
    }
}

#[test]
fn the_unbroken_wrapper_passes_every_case() {
    for case in conformance::CASES {
        assert!(
            passes(Mutation::None, case),
            "case {case} failed on the unbroken wrapper"
        );
    }
}

#[test]
fn ignoring_expected_versions_is_caught() {
    assert_caught(
        Mutation::IgnoreExpectedVersion,
        &[
            "expected_no_stream",
            "expected_stream_exists",
            "expected_exact",
            "multi_stream_append_is_atomic",
            "empty_write_checks_expectation_only",
            "concurrent_writers_one_winner_per_round",
        ],
    );
}

#[test]
fn conflicts_without_the_actual_version_are_caught() {
    assert_caught(
        Mutation::ConflictWithoutActual,
        &[
            "expected_no_stream",
            "expected_exact",
            "multi_stream_append_is_atomic",
            "concurrent_writers_one_winner_per_round",
        ],
    );
}

#[test]
fn non_atomic_multi_stream_appends_are_caught() {
    assert_caught(
        Mutation::NonAtomic,
        &[
            "multi_stream_append_is_atomic",
            "empty_write_checks_expectation_only",
        ],
    );
}

#[test]
fn lost_idempotency_is_caught() {
    assert_caught(Mutation::FreshIdsOnRepeat, &["idempotent_reappend"]);
    assert_caught(Mutation::AcceptReusedIds, &["reused_event_id_is_rejected"]);
}

#[test]
fn unenforced_limits_are_caught() {
    assert_caught(Mutation::SplitOversizedAppends, &["limits_are_enforced"]);
}

#[test]
fn misreported_positions_are_caught() {
    assert_caught(
        Mutation::MisreportPositions,
        &[
            "append_result_matches_stored_events",
            "positions_follow_commit_order",
            "subscription_catch_up_then_live",
        ],
    );
}

#[test]
fn broken_reads_are_caught() {
    assert_caught(Mutation::BackwardReadsForward, &["read_stream_paging"]);
    assert_caught(
        Mutation::IgnoreFilter,
        &[
            "read_all_filters_and_directions",
            "subscription_catch_up_then_live",
        ],
    );
    assert_caught(Mutation::DropMetadata, &["metadata_and_payload_round_trip"]);
    assert_caught(
        Mutation::DropEvents,
        &[
            "positions_follow_commit_order",
            "multi_stream_append_is_atomic",
            "subscription_catch_up_then_live",
            "subscription_sees_concurrent_writers_in_order",
        ],
    );
}

#[test]
fn unbounded_reads_are_caught() {
    assert_caught(
        Mutation::UnboundedReads,
        &["large_stream_reads_in_bounded_memory"],
    );
}

#[test]
fn unkept_lifecycle_changes_are_caught() {
    assert_caught(
        Mutation::LifecycleNotStored,
        &[
            "soft_delete_hides_and_recreation_continues_revisions",
            "tombstone_refuses_reads_writes_and_changes",
            "truncate_hides_older_revisions_from_stream_reads",
        ],
    );
}

#[test]
fn missing_live_wakeups_are_caught() {
    assert_caught(Mutation::NoLiveWakeup, &["subscription_catch_up_then_live"]);
}

fn oracle_passes<F, Fut>(make_store: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Broken>,
{
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        sirenia_testkit::oracle::check_against_oracle(make_store, 64)
    }))
    .is_ok()
}

#[test]
fn the_oracle_property_catches_mutants() {
    assert!(
        oracle_passes(|| async { make(Mutation::None) }),
        "the unbroken wrapper agrees"
    );
    for mutation in [
        Mutation::IgnoreExpectedVersion,
        Mutation::ConflictWithoutActual,
        Mutation::NonAtomic,
        Mutation::FreshIdsOnRepeat,
        Mutation::AcceptReusedIds,
        Mutation::BackwardReadsForward,
        Mutation::IgnoreFilter,
        Mutation::DropEvents,
        Mutation::DropMetadata,
        Mutation::LifecycleNotStored,
    ] {
        assert!(
            !oracle_passes(move || async move { make(mutation) }),
            "the oracle property test missed {mutation:?}"
        );
    }
}
