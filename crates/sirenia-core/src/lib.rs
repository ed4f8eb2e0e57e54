//! # sirenia-core
//!
//! The I/O-free heart of Sirenia: identifiers and envelopes, the [`EventStore`] port, the event
//! [codec] with its upcasters, [aggregates](Aggregate) and the [`Repository`] that runs
//! commands, errors, [limits], and the [`InMemoryStore`] every other store is measured against.
//!
//! ## A first aggregate
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use sirenia_core::{
//!     Aggregate, DomainEvent, EventStore, InMemoryStore, ReadStream, Repository,
//! };
//! use futures_util::TryStreamExt;
//!
//! #[derive(Default)]
//! struct Counter {
//!     value: u64,
//! }
//!
//! #[derive(Clone)]
//! enum CounterCommand {
//!     Add(u64),
//! }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum CounterEvent {
//!     Added { by: u64 },
//! }
//! impl DomainEvent for CounterEvent {}
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("counter would overflow")]
//! struct Overflow;
//!
//! impl Aggregate for Counter {
//!     const CATEGORY: &'static str = "counter";
//!     type Command = CounterCommand;
//!     type Event = CounterEvent;
//!     type Error = Overflow;
//!
//!     fn apply(&mut self, event: &CounterEvent) {
//!         match event {
//!             CounterEvent::Added { by } => self.value += by,
//!         }
//!     }
//!
//!     fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, Overflow> {
//!         match command {
//!             CounterCommand::Add(by) => {
//!                 self.value.checked_add(by).ok_or(Overflow)?;
//!                 Ok(vec![CounterEvent::Added { by }])
//!             }
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = InMemoryStore::new();
//! let counters = Repository::<Counter, _>::new(store.clone());
//!
//! let done = counters.execute("7", CounterCommand::Add(5)).await?;
//! assert_eq!((done.state.value, done.version), (5, 1));
//! counters.execute("7", CounterCommand::Add(2)).await?;
//! assert_eq!(counters.load("7").await?.state.value, 7);
//!
//! // The events, as stored, read back from the stream `counter-7`.
//! let stream = counters.stream_id("7")?;
//! let events: Vec<_> = store.read_stream(&stream, ReadStream::forward()).try_collect().await?;
//! assert_eq!(events.len(), 2);
//! assert_eq!(events[1].event_type, "Added");
//! assert_eq!(events[1].data, br#"{"by":2}"#.as_slice());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Guarantees of every store
//!
//! - An append of several stream writes commits all or none; a version mismatch is
//!   [`StoreError::Conflict`] with what was expected and what was found.
//! - Re-appending the same event ids with the same content at the same place writes nothing and
//!   returns the original result, so a retry after an unknown outcome is safe.
//! - Positions increase strictly in commit order; a reader never sees an event appear below a
//!   position it has already seen.
//! - Reads and subscriptions are paged streams: memory is bounded by one page.

pub mod admin;
pub mod aggregate;
pub mod codec;
pub mod error;
pub mod event;
pub mod id;
pub mod lifecycle;
pub mod limits;
pub mod memory;
mod memory_admin;
mod paging;
pub mod process;
pub mod projection;
pub mod snapshot;
pub mod store;
pub mod transactional;
pub mod upcasting;
pub mod wrapper;

pub use admin::{Capabilities, Document, StoreAdmin};
pub use aggregate::{Aggregate, CommandContext, Executed, Loaded, Repository, RetryBackoff};
pub use codec::{DomainEvent, EncodedEvent, Envelope, JsonCodec, RawEvent, Upcasters};
pub use error::{
    BoxError, CodecError, CommandError, ExistingEvent, InvalidAppend, InvalidStreamId,
    InvalidTimestamp, Limit, LoadError, StoreError,
};
pub use event::{JSON_CONTENT_TYPE, Metadata, NewEvent, RecordedEvent};
pub use id::{EventId, ExpectedVersion, Position, StreamId, Timestamp};
pub use lifecycle::{StreamChange, StreamInfo, StreamStatus};
pub use memory::InMemoryStore;
pub use memory_admin::MemoryBackend;
pub use store::{
    AllPage, AppendResult, Direction, EventFilter, EventStore, EventStream, ReadAll, ReadStream,
    StreamAppended, StreamWrite, Subscribe, Subscription, SubscriptionItem,
};

pub use uuid::Uuid;
pub use wrapper::StoreWrapper;
