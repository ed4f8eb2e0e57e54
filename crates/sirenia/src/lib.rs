//! # Sirenia
//!
//! Event sourcing and CQRS for Rust. Every state change is an immutable event in a stream;
//! current state is the replay of those events through an [`Aggregate`]; one global log orders
//! every event in commit order, and never skips one.
//!
//! This crate is the entry point: it re-exports [`sirenia_core`] (the model, the [`EventStore`]
//! port, the codec, aggregates and the [`InMemoryStore`]) and, behind features, the stores and
//! tools around it:
//!
//! | feature   | what it adds |
//! |-----------|--------------|
//! | `sqlite`  | `sirenia::sqlite` and `SqliteStore`: the embedded single-file store (the default choice) |
//! | `postgres` | `sirenia::postgres` and `PostgresStore`: many application instances on one PostgreSQL |
//! | `nats`    | `sirenia::nats`: the outbox relay to NATS JetStream and the inbound consumer |
//! | `metrics` | `sirenia::Metered`: append counts, latency and conflicts through the `metrics` facade, and tracing spans |
//! | `testkit` | `sirenia::testkit`: the store conformance suite and given/when/then fixtures |
//!
//! [`AnyStore`] holds whichever store a program chose at run time (`AnyStore::open` takes a
//! file path or a `postgres://` URL).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sirenia::{Aggregate, DomainEvent, InMemoryStore, Repository};
//!
//! #[derive(Default)]
//! struct Door { open: bool }
//!
//! #[derive(Clone)]
//! enum DoorCommand { Open }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum DoorEvent { Opened }
//! impl DomainEvent for DoorEvent {}
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("the door is already open")]
//! struct AlreadyOpen;
//!
//! impl Aggregate for Door {
//!     const CATEGORY: &'static str = "door";
//!     type Command = DoorCommand;
//!     type Event = DoorEvent;
//!     type Error = AlreadyOpen;
//!     fn apply(&mut self, _: &DoorEvent) { self.open = true; }
//!     fn handle(&self, _: DoorCommand) -> Result<Vec<DoorEvent>, AlreadyOpen> {
//!         if self.open { Err(AlreadyOpen) } else { Ok(vec![DoorEvent::Opened]) }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let doors = Repository::<Door, _>::new(InMemoryStore::new());
//! doors.execute("front", DoorCommand::Open).await?;
//! assert!(doors.load("front").await?.state.open);
//! assert!(doors.execute("front", DoorCommand::Open).await.is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub use sirenia_core::*;

mod any;
pub use any::{AnyBackend, AnyCheckpoints, AnyStore, OpenOptions, is_postgres_url};

/// Metrics and tracing around any store.
#[cfg(feature = "metrics")]
pub mod metered;
#[cfg(feature = "metrics")]
pub use metered::Metered;

/// The embedded single-file store.
#[cfg(feature = "sqlite")]
pub use sirenia_sqlite as sqlite;
#[cfg(feature = "sqlite")]
pub use sirenia_sqlite::SqliteStore;

/// The PostgreSQL store.
#[cfg(feature = "postgres")]
pub use sirenia_postgres as postgres;
#[cfg(feature = "postgres")]
pub use sirenia_postgres::PostgresStore;

/// The outbox relay to NATS JetStream and the inbound consumer.
#[cfg(feature = "nats")]
pub use sirenia_nats as nats;

/// The store conformance suite and given/when/then fixtures.
#[cfg(feature = "testkit")]
pub use sirenia_testkit as testkit;
