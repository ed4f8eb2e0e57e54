//! Named limits. Every store enforces them before any I/O, with [`StoreError::LimitExceeded`]
//! naming the [`Limit`] that was hit.
//!
//! [`StoreError::LimitExceeded`]: crate::StoreError::LimitExceeded
//! [`Limit`]: crate::Limit

/// Longest stream id, in bytes of UTF-8.
pub const MAX_STREAM_ID_BYTES: usize = 255;
/// Longest event type name, in bytes of UTF-8.
pub const MAX_EVENT_TYPE_BYTES: usize = 255;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 128;
/// Most stream writes in one append.
pub const MAX_STREAMS_PER_APPEND: usize = 100;
/// Most events in one append, over all its stream writes.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;
/// Largest payload of one event, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Largest encoded metadata of one event, in bytes (its compact JSON form).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest append: payloads plus metadata of all its events, in bytes.
pub const MAX_APPEND_BYTES: usize = 32 * 1024 * 1024;
/// Events a store reads per page when a read does not say otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 512;
/// Most events one page read may return.
pub const MAX_PAGE_SIZE: usize = 10_000;
/// Page fetches a read keeps in flight or buffered ahead of its consumer (memory stays bounded
/// by this many pages plus the one being consumed).
pub const READ_AHEAD_PAGES: usize = 2;
/// Most events one filtered page of the global log examines before it returns (possibly empty),
/// so that a selective filter never holds a store's lock or a query for long.
pub const MAX_SCAN_PER_PAGE: usize = 65_536;
/// How many times the repository retries a command after a concurrency conflict, by default.
pub const DEFAULT_COMMAND_RETRIES: u32 = 5;
/// Most retries the repository may be configured to make.
pub const MAX_COMMAND_RETRIES: u32 = 100;
/// Most steps an upcaster chain may take on one event (guards against cycles).
pub const MAX_UPCAST_STEPS: usize = 64;
/// Most events a command may produce.
pub const MAX_EVENTS_PER_COMMAND: usize = 1_000;
