//! # sirenia-testkit
//!
//! What every Sirenia store and every Sirenia user tests with:
//!
//! - [`conformance`]: one `pub async fn` per guarantee of the store port. A store's integration
//!   test runs them all with [`conformance_tests!`], which also runs the [`oracle`] property test
//!   (random operation sequences compared with the in-memory store);
//! - [`fixture`]: given/when/then tests for aggregates;
//! - [`alloc`]: the counting allocator behind the bounded-memory case;
//! - [`Guarded`]: a store that cleans up after itself (temporary files, throwaway schemas).
//!
//! A store's whole conformance test is one file:
//!
//! ```
//! // tests/conformance.rs of a store crate (here: the in-memory store)
//! use sirenia_core::InMemoryStore;
//!
//! async fn make_store() -> InMemoryStore {
//!     InMemoryStore::new() // an empty store each call
//! }
//! sirenia_testkit::conformance_tests!(make_store);
//! # fn main() {}
//! ```
//!
//! It is a test harness: assertions panic with a message naming the broken guarantee.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::Duration;

pub mod alloc;
pub mod conformance;
pub mod fixture;
pub mod guard;
pub mod oracle;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod projections;
pub mod snapshots;

pub use fixture::{AggregateFixture, AggregateVerdict};
pub use guard::Guarded;

/// The longest one conformance case may run before it fails.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one case on its own multi-threaded runtime (two workers, timers on), failing it if it
/// takes longer than [`CASE_TIMEOUT`].
pub fn run_case(name: &str, case: impl Future<Output = ()> + Send) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
            panic!("conformance case {name} did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

/// Expands to one `#[test]` per conformance case plus the oracle property test, each on a fresh
/// store from `$make_store` (an `async fn() -> impl EventStore` returning an empty store), and
/// installs [`alloc::CountingAllocator`] as the binary's global allocator.
///
/// Use it once per test binary (it defines the global allocator).
#[macro_export]
macro_rules! conformance_tests {
    ($make_store:expr) => {
        #[global_allocator]
        static SIRENIA_TESTKIT_ALLOCATOR: $crate::alloc::CountingAllocator =
            $crate::alloc::CountingAllocator;

        $crate::conformance_tests!(@cases $make_store;
            expected_any,
            expected_no_stream,
            expected_stream_exists,
            expected_exact,
            append_result_matches_stored_events,
            multi_stream_append_is_atomic,
            empty_write_checks_expectation_only,
            idempotent_reappend,
            reused_event_id_is_rejected,
            positions_follow_commit_order,
            read_stream_paging,
            read_all_filters_and_directions,
            limits_are_enforced,
            metadata_and_payload_round_trip,
            concurrent_writers_one_winner_per_round,
            subscription_catch_up_then_live,
            subscription_sees_concurrent_writers_in_order,
            large_stream_reads_in_bounded_memory,
            soft_delete_hides_and_recreation_continues_revisions,
            tombstone_refuses_reads_writes_and_changes,
            truncate_hides_older_revisions_from_stream_reads,
        );

        #[test]
        fn oracle_property() {
            $crate::oracle::check_against_oracle($make_store, $crate::oracle::DEFAULT_CASES);
        }
    };
    (@cases $make_store:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case(stringify!($case), async {
                    let store = ($make_store)().await;
                    $crate::conformance::$case(&store).await;
                });
            }
        )*

        #[test]
        fn every_conformance_case_runs() {
            let ran: &[&str] = &[$(stringify!($case)),*];
            assert_eq!(ran, $crate::conformance::CASES, "the macro runs every listed case");
        }
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` case in the suite is listed in `CASES` (and so run by the macro,
    /// whose own test compares its list with `CASES`).
    #[test]
    fn cases_list_names_every_case() {
        let source = include_str!("conformance.rs");
        let defined: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter_map(|rest| rest.split(['<', '(']).next())
            .collect();
        let helpers = ["read_stream_all", "read_category"];
        let cases: Vec<&str> = defined
            .into_iter()
            .filter(|name| !helpers.contains(name))
            .collect();
        assert_eq!(cases, crate::conformance::CASES);
    }
}
