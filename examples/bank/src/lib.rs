//! Sirenia's reference service: bank accounts over HTTP.
//!
//! The binary (`cargo run --release -p bank`) serves [`router`] on the embedded store, or on
//! PostgreSQL when `--store` is a `postgres://` URL. The domain is [`account::Account`], an
//! event-sourced aggregate with pure decisions; run it through a [`sirenia::Repository`] on any
//! store:
//!
//! ```
//! use bank::account::{Account, AccountCommand};
//! use sirenia::{InMemoryStore, Repository};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let accounts = Repository::<Account, _>::new(InMemoryStore::new());
//! accounts.execute("42", AccountCommand::Open { owner: "Ada".into() }).await?;
//! let done = accounts.execute("42", AccountCommand::Deposit { amount: 500 }).await?;
//! assert_eq!((done.state.balance, done.version), (500, 2));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod account;
pub mod error;
pub mod extract;
pub mod http;
pub mod idempotency;
pub mod observe;
pub mod operation;
pub mod outcome;
pub mod read_model;
#[cfg(test)]
mod roundtrips;
pub mod transfer;

// The accounts read model keeps balances in signed 64-bit columns: every balance must fit.
const _: () = assert!(account::MAX_BALANCE <= i64::MAX as u64);

pub use http::{App, router};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
