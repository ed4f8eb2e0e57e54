//! # sirenia-testkit
//!
//! What every Sirenia store and every Sirenia user tests with:
//!
//! - [`conformance`]: one `pub async fn` per guarantee of the store port, listed once in
//!   [`for_each_conformance_case!`]. A store's integration test runs them all with
//!   [`conformance_tests!`], which also runs the [`oracle`] property test (random operation
//!   sequences compared with the in-memory store);
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

/// Expands to one `#[test]` per conformance case (named as the case, made from the list in
/// [`for_each_conformance_case!`]) plus the oracle property test, each on a fresh store from
/// `$make_store` (an `async fn() -> impl EventStore` returning an empty store), and installs
/// [`alloc::CountingAllocator`] as the binary's global allocator.
///
/// Use it once per test binary (it defines the global allocator).
#[macro_export]
macro_rules! conformance_tests {
    ($make_store:expr) => {
        #[global_allocator]
        static SIRENIA_TESTKIT_ALLOCATOR: $crate::alloc::CountingAllocator =
            $crate::alloc::CountingAllocator;

        $crate::for_each_conformance_case!($crate::conformance_tests!(@cases $make_store;));

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
    };
}
