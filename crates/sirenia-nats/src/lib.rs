//! Sirenia and NATS JetStream: an outbox relay publishing committed events, and an inbound
//! consumer turning integration events into local effects exactly once.
//!
//! **Outbox.** [`NatsOutbox`] is a projection target (the shared at-least-once path with a
//! [`JetStreamPublisher`]): run it in a
//! [`Projector`](sirenia_core::projection::Projector) with a filter, and every committed event
//! the filter accepts is published to `<prefix>.<category>.<event type>` with headers for its
//! id, stream, revision, position, type and correlation and causation ids. The message id
//! (`Nats-Msg-Id`) is the event id, so JetStream drops a re-publication within the stream's
//! duplicate window. The relay stores its checkpoint (in the store, through a
//! [`CheckpointStore`]) only after JetStream acknowledged a page: after a crash it publishes the
//! unacknowledged tail again, and the broker de-duplicates it.
//!
//! **Inbound.** [`Inbound`] pulls from a durable JetStream consumer and hands each message to a
//! handler with a [`IncomingEvent::command_id`] derived from the event's id: run the local
//! command with it and the repository's command-id idempotency stores the de-duplication with
//! the effect, in the same append. A message is acknowledged after its handler succeeded and
//! redelivered otherwise.
//!
//! ```no_run
//! use sirenia_core::StoreAdmin;
//! use sirenia_core::projection::{ProjectionOptions, Projector};
//! use sirenia_nats::OutboxOptions;
//!
//! # async fn run(store: sirenia_sqlite::SqliteStore) -> Result<(), Box<dyn std::error::Error>> {
//! let outbox = sirenia_nats::outbox(
//!     "nats://127.0.0.1:4222",
//!     "outbox",
//!     store.checkpoints(),
//!     OutboxOptions::default(),
//! )
//! .await?;
//! let mut relay = Projector::new("outbox", store, outbox, ProjectionOptions::default())?;
//! relay.run(std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use sirenia_core::projection::{ApplyError, AtLeastOnce, CheckpointStore, Handler, HandlerError};
use sirenia_core::{RecordedEvent, StoreError};
use uuid::Uuid;

/// Header: the event id (also the message id).
pub const EVENT_ID: &str = "Sirenia-Event-Id";
/// Header: the event's stream.
pub const STREAM: &str = "Sirenia-Stream";
/// Header: the event's revision in its stream.
pub const REVISION: &str = "Sirenia-Revision";
/// Header: the event's position in the global log.
pub const POSITION: &str = "Sirenia-Position";
/// Header: the event type.
pub const EVENT_TYPE: &str = "Sirenia-Event-Type";
/// Header: the payload's content type.
pub const CONTENT_TYPE: &str = "Sirenia-Content-Type";
/// Header: when the event was recorded (RFC 3339).
pub const RECORDED_AT: &str = "Sirenia-Recorded-At";
/// Header: the correlation id, if any.
pub const CORRELATION_ID: &str = "Sirenia-Correlation-Id";
/// Header: the causation id, if any.
pub const CAUSATION_ID: &str = "Sirenia-Causation-Id";
/// Deliveries of an inbound event whose handler keeps failing, before it is dropped (and
/// logged as an error).
pub const MAX_DELIVERIES: i64 = 10;
/// JetStream's de-duplication header.
const MSG_ID: &str = "Nats-Msg-Id";

/// Why NATS could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// What the client said.
        message: String,
    },
    /// A JetStream request failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn js_error(e: impl std::fmt::Display) -> NatsError {
    NatsError::JetStream(e.to_string())
}

/// Where the outbox publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxOptions {
    /// The JetStream stream (created if missing, capturing `<prefix>.>`).
    pub stream: String,
    /// The subject prefix.
    pub prefix: String,
    /// How long JetStream remembers message ids to drop re-publications. Must exceed the
    /// longest outage after which a relay publishes its tail again.
    pub duplicate_window: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            stream: "SIRENIA".to_owned(),
            prefix: "sirenia".to_owned(),
            duplicate_window: Duration::from_secs(600),
        }
    }
}

/// A subject token: NATS reserves `.`, `*`, `>` and white space.
fn token(text: &str) -> String {
    let token: String = text
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

/// The subject an event is published to.
pub fn subject(prefix: &str, event: &RecordedEvent) -> String {
    format!(
        "{prefix}.{}.{}",
        token(event.stream_id.category()),
        token(&event.event_type)
    )
}

/// The headers an event is published with.
pub fn headers(event: &RecordedEvent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = event.id.to_string();
    headers.insert(MSG_ID, id.as_str());
    headers.insert(EVENT_ID, id.as_str());
    headers.insert(STREAM, event.stream_id.as_str());
    headers.insert(REVISION, event.revision.to_string().as_str());
    headers.insert(POSITION, event.position.0.to_string().as_str());
    headers.insert(EVENT_TYPE, event.event_type.as_str());
    headers.insert(CONTENT_TYPE, event.content_type.as_str());
    headers.insert(RECORDED_AT, event.recorded_at.to_string().as_str());
    // Metadata is free text: a value with control characters (say CR LF, which would start a
    // header of its own) is left out rather than published.
    let safe = |v: &str| !v.chars().any(char::is_control);
    if let Some(c) = event.metadata.correlation_id.as_deref().filter(|c| safe(c)) {
        headers.insert(CORRELATION_ID, c);
    }
    if let Some(c) = event.metadata.causation_id.as_deref().filter(|c| safe(c)) {
        headers.insert(CAUSATION_ID, c);
    }
    headers
}

async fn connect(url: &str) -> Result<async_nats::Client, NatsError> {
    async_nats::connect(url)
        .await
        .map_err(|e| NatsError::Connect {
            url: url.to_owned(),
            message: e.to_string(),
        })
}

/// Publishes committed events to JetStream: the outbox relay's [`Handler`], run as an
/// at-least-once projection ([`AtLeastOnce`]) whose checkpoint is stored after JetStream
/// acknowledged a page.
pub struct JetStreamPublisher {
    context: jetstream::Context,
    prefix: String,
}

impl JetStreamPublisher {
    /// Connects to `url` and makes sure the JetStream stream exists.
    pub async fn connect(url: &str, options: OutboxOptions) -> Result<Self, NatsError> {
        let context = jetstream::new(connect(url).await?);
        context
            .get_or_create_stream(stream::Config {
                name: options.stream.clone(),
                subjects: vec![format!("{}.>", options.prefix)],
                duplicate_window: options.duplicate_window,
                ..stream::Config::default()
            })
            .await
            .map_err(js_error)?;
        Ok(JetStreamPublisher {
            context,
            prefix: options.prefix,
        })
    }
}

/// The outbox relay's projection target: [`JetStreamPublisher`] on the shared at-least-once
/// path, with its checkpoint, fault and parked events in `C`.
pub type NatsOutbox<C> = AtLeastOnce<JetStreamPublisher, C>;

/// The outbox relay named `name` (its checkpoint name in `checkpoints`), publishing to the
/// JetStream server at `url`.
pub async fn outbox<C: CheckpointStore>(
    url: &str,
    name: &str,
    checkpoints: C,
    options: OutboxOptions,
) -> Result<NatsOutbox<C>, NatsError> {
    let publisher = JetStreamPublisher::connect(url, options).await?;
    Ok(AtLeastOnce::new(name, publisher, checkpoints))
}

fn unavailable(e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Backend {
        message: format!("publishing to NATS JetStream failed: {e}"),
        source: None,
    }
}

impl Handler for JetStreamPublisher {
    async fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event))
            .await
            .map_err(|e| Box::new(e) as HandlerError)
    }

    /// Publishes the page, then waits for JetStream to acknowledge all of it. A failure is
    /// the broker being unavailable: the page is published again (the broker drops repeats).
    async fn handle_batch(&mut self, events: &[RecordedEvent]) -> Result<(), ApplyError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let ack = self
                .context
                .publish_with_headers(
                    subject(&self.prefix, event),
                    headers(event),
                    event.data.clone(),
                )
                .await
                .map_err(|e| unavailable(&e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }
}

/// An integration event received from JetStream.
#[derive(Debug)]
pub struct IncomingEvent {
    /// The event's id: `Sirenia-Event-Id`, else `Nats-Msg-Id` (if a UUID), else derived from
    /// the stream and sequence JetStream stored the message at.
    pub event_id: Uuid,
    /// The subject it was published to.
    pub subject: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its payload.
    pub payload: bytes::Bytes,
}

/// Namespace of the command ids derived from inbound event ids.
const INBOUND: Uuid = Uuid::from_u128(0x7c1e_5d0a_2b9f_4e61_8a3c_0f4d_6e2b_9a01);

impl IncomingEvent {
    /// The command id to run this event's local effect with: the same on every redelivery,
    /// so the repository applies it once.
    pub fn command_id(&self) -> Uuid {
        Uuid::new_v5(&INBOUND, self.event_id.as_bytes())
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(async_nats::HeaderValue::as_str)
    }
}

/// What an inbound consumer does with each event.
pub trait InboundHandler: Send {
    /// Applies the event's effect, idempotently (see [`IncomingEvent::command_id`]). An error
    /// leaves the message unacknowledged: it is redelivered.
    fn handle(
        &mut self,
        event: &IncomingEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A durable JetStream pull consumer feeding an [`InboundHandler`].
pub struct Inbound {
    consumer: jetstream::consumer::Consumer<pull::Config>,
}

impl Inbound {
    /// Connects to `url` and creates (or finds) durable consumer `durable` on JetStream stream
    /// `stream`, for subjects matching `filter_subject` (empty: all). Unacknowledged messages
    /// are redelivered after `ack_wait`.
    pub async fn connect(
        url: &str,
        stream: &str,
        durable: &str,
        filter_subject: &str,
        ack_wait: Duration,
    ) -> Result<Self, NatsError> {
        let context = jetstream::new(connect(url).await?);
        let stream = context.get_stream(stream).await.map_err(js_error)?;
        let consumer = stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    filter_subject: filter_subject.to_owned(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(js_error)?;
        Ok(Inbound { consumer })
    }

    /// Feeds messages to `handler` until `shutdown` resolves or the connection fails.
    pub async fn run<H: InboundHandler>(
        &self,
        handler: &mut H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NatsError> {
        let mut messages = self.consumer.messages().await.map_err(js_error)?;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                () = &mut shutdown => return Ok(()),
            };
            let Some(message) = message else {
                return Ok(());
            };
            let message = message.map_err(js_error)?;
            let headers = message.headers.clone().unwrap_or_default();
            let id_header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| Uuid::parse_str(v.as_str()).ok())
            };
            let event_id = match id_header(EVENT_ID).or_else(|| id_header(MSG_ID)) {
                Some(id) => id,
                None => {
                    let info = message.info().map_err(js_error)?;
                    let name = format!("{}:{}", info.stream, info.stream_sequence);
                    Uuid::new_v5(&INBOUND, name.as_bytes())
                }
            };
            let event = IncomingEvent {
                event_id,
                subject: message.subject.to_string(),
                headers,
                payload: message.payload.clone(),
            };
            match handler.handle(&event).await {
                Ok(()) => message.ack().await.map_err(js_error)?,
                Err(e) => {
                    let delivered = message.info().map_or(1, |i| i.delivered);
                    if delivered >= MAX_DELIVERIES {
                        // A poison message: stop redelivering it, loudly.
                        tracing::error!(event_id = %event.event_id, error = %e, delivered,
                            "an inbound event failed on every delivery; it is dropped");
                        message
                            .ack_with(jetstream::AckKind::Term)
                            .await
                            .map_err(js_error)?;
                    } else {
                        tracing::warn!(event_id = %event.event_id, error = %e, delivered,
                            "an inbound event failed; it will be redelivered");
                        // Back off: 200 ms, doubling with each delivery, at most 30 s.
                        let shift = u32::try_from(delivered.clamp(1, 8) - 1).unwrap_or(7);
                        let delay = (Duration::from_millis(200) * (1u32 << shift))
                            .min(Duration::from_secs(30));
                        message
                            .ack_with(jetstream::AckKind::Nak(Some(delay)))
                            .await
                            .map_err(js_error)?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::token;

    #[test]
    fn subject_tokens_have_no_reserved_characters() {
        assert_eq!(token("Account.Opened v2"), "Account_Opened_v2");
        assert_eq!(token("a*b>c"), "a_b_c");
        assert_eq!(token(""), "_");
    }
}
