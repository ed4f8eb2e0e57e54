//! An event store server that EventStoreDB/KurrentDB gRPC clients use unmodified, over any
//! Sirenia store.
//!
//! It serves the part of the v20+ client protocol that event-stream clients use:
//! `ServerFeatures.GetSupportedMethods` and the `Streams` service (`Read` for stream and `$all`
//! reads and catch-up subscriptions, `Append`, `BatchAppend`, `Delete`, `Tombstone`). Clients
//! that see `BatchAppend` advertised (the Node client does) send all their appends over one
//! call, each answered by correlation id; each is one store append, run concurrently with the
//! others. Streams written through the Sirenia library and through this server are the same
//! streams.
//!
//! How the protocol maps onto Sirenia's model:
//! - **revisions** are the same numbers; an expected revision `r` is the expected version
//!   `r + 1`;
//! - **positions**: an event's commit and prepare positions are both its Sirenia position;
//!   forward `$all` reads include the position given, backward ones start before it, and
//!   subscriptions start after it;
//! - **custom metadata**: a JSON object maps to [`Metadata`](sirenia_core::Metadata)
//!   (`$correlationId` and `$causationId` to the correlation and causation ids, other keys to
//!   the user map) and reads back as compact JSON; other bytes are kept exactly (see
//!   [`metadata_from_custom`]);
//! - **filters** on `$all` (stream-name or event-type prefixes or a regular expression) are
//!   applied by the server; filtered subscriptions send a checkpoint every window of examined
//!   events and when they catch up;
//! - **soft delete and tombstone** are Sirenia's stream lifecycle: a soft-deleted stream reads
//!   as not found until an append recreates it (revisions go on); a tombstoned one answers
//!   `FAILED_PRECONDITION` with `exception: stream-deleted`;
//! - **not served**: persistent subscriptions, projections, the users, operations and gossip
//!   services and stream metadata (`$$` streams: writing one answers
//!   UNIMPLEMENTED; reading one finds nothing, as on a server where none was set); unknown
//!   methods answer UNIMPLEMENTED.
//!
//! Security: plain HTTP/2 without users by default (the clients' `tls=false`); TLS with a PEM
//! certificate and key, and HTTP basic authentication against configured users, as options
//! ([`ServeOptions`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = sirenia_core::InMemoryStore::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! println!("clients connect to esdb://{}?tls=false", listener.local_addr()?);
//! // Serves until the future given resolves: here at once; `sirenia serve` waits for Ctrl-C.
//! sirenia_grpc::serve(store, listener, sirenia_grpc::ServeOptions::default(), async {}).await?;
//! # Ok(()) }
//! ```

// `tonic::Status` is what every handler returns; boxing it in the helpers would only add
// conversions at each call.
#![allow(clippy::result_large_err)]

mod auth;
mod batch;
mod convert;
mod filter;
mod streams;

use std::future::Future;
use std::time::Duration;

use sirenia_core::EventStore;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

pub use auth::{BasicAuth, User};
pub use batch::{
    BATCH_CHANNEL_CAPACITY, MAX_BATCH_APPENDS_IN_FLIGHT, MAX_BATCH_APPENDS_OPEN,
    MAX_BATCH_BYTES_OPEN,
};
pub use convert::{
    CAUSATION_ID_KEY, CORRELATION_ID_KEY, RAW_METADATA_BASE64_KEY, RAW_METADATA_KEY,
    custom_from_metadata, metadata_from_custom,
};
pub use filter::{
    DEFAULT_CHECKPOINT_WINDOW, MAX_FILTER_EXPRESSION_BYTES, MAX_FILTER_PREFIXES,
    MAX_FILTER_REGEX_SIZE,
};
pub use streams::{READ_CHANNEL_CAPACITY, StreamsService};

/// The server version announced to clients. Clients pick calls by version and by the methods
/// listed; this is a version whose protocol the server follows.
pub const PROTOCOL_VERSION: &str = "24.10.0";
/// The interval of HTTP/2 keep-alive pings to idle clients.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most calls one connection may have open at once (HTTP/2 streams: reads, subscriptions,
/// appends in progress); a client opening more waits for one to end.
pub const MAX_CONCURRENT_CALLS_PER_CONNECTION: u32 = 1_024;
/// The largest gRPC message the server accepts: a `BatchAppend` request as the Node client
/// packs it (events up to 3 MiB, then one more event of the largest size Sirenia stores), with
/// room for framing.
pub const MAX_MESSAGE_BYTES: usize = 3 * 1024 * 1024
    + sirenia_core::limits::MAX_EVENT_BYTES
    + sirenia_core::limits::MAX_METADATA_BYTES
    + 64 * 1024;

/// The generated protocol messages and services, in modules named after their packages.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
pub mod proto {
    /// `event_store.*`.
    pub mod event_store {
        /// `event_store.client`: messages shared by the services.
        pub mod client {
            tonic::include_proto!("event_store.client");

            /// `event_store.client.streams`.
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }

            /// `event_store.client.server_features`.
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
        }
    }

    /// `google.rpc`: the error status `BatchAppend` answers with.
    pub mod google {
        /// `google.rpc`.
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }

    pub use client::{server_features, streams};
    pub use event_store::client;
}

/// The server's options.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Users allowed in with HTTP basic authentication; empty: no authentication (insecure
    /// mode).
    pub users: Vec<User>,
    /// TLS: the server's certificate chain and private key, PEM.
    pub tls: Option<TlsIdentity>,
}

/// A certificate chain and private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain.
    pub certificate_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

/// Why the server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS identity was refused.
    #[error("TLS set-up failed: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The server failed.
    #[error("the server failed: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// The `ServerFeatures` service: the methods this server supports.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerFeaturesService;

const STREAMS_SERVICE: &str = "event_store.client.streams.streams";
const FEATURES_SERVICE: &str = "event_store.client.server_features.serverfeatures";

#[tonic::async_trait]
impl proto::server_features::server_features_server::ServerFeatures for ServerFeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<proto::client::Empty>,
    ) -> Result<Response<proto::server_features::SupportedMethods>, Status> {
        let method = |service: &str, name: &str| proto::server_features::SupportedMethod {
            method_name: name.to_owned(),
            service_name: service.to_owned(),
            features: Vec::new(),
        };
        Ok(Response::new(proto::server_features::SupportedMethods {
            methods: vec![
                method(STREAMS_SERVICE, "read"),
                method(STREAMS_SERVICE, "append"),
                method(STREAMS_SERVICE, "batchappend"),
                method(STREAMS_SERVICE, "delete"),
                method(STREAMS_SERVICE, "tombstone"),
                method(FEATURES_SERVICE, "getsupportedmethods"),
            ],
            event_store_server_version: PROTOCOL_VERSION.to_owned(),
        }))
    }
}

/// Serves `store` on `listener` until `shutdown` resolves. Then reads and subscriptions in
/// progress end with UNAVAILABLE (clients resubscribe elsewhere or later), appends in progress
/// finish, and the function returns once every connection has closed.
pub async fn serve<S: EventStore>(
    store: S,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    use proto::server_features::server_features_server::ServerFeaturesServer;
    use proto::streams::streams_server::StreamsServer;

    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_CONCURRENT_CALLS_PER_CONNECTION));
    if let Some(tls) = &options.tls {
        // tonic's server TLS uses the process-wide rustls provider; choose ring unless the
        // application already chose (with both providers compiled in, rustls cannot).
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let identity = tonic::transport::Identity::from_pem(&tls.certificate_pem, &tls.key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(ServeError::Tls)?;
    }
    let auth = BasicAuth::new(options.users);
    let (stopping, stop_signal) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let streams = StreamsServer::new(StreamsService::with_shutdown(store, stop_signal))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let streams = tonic_interceptor(streams, auth);
    builder
        .add_service(ServerFeaturesServer::new(ServerFeaturesService))
        .add_service(streams)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(ServeError::Transport)
}

/// Accepted connections with Nagle's algorithm off: responses are many small HTTP/2 frames,
/// and holding them back for an acknowledgement would add the peer's delayed-ACK time to
/// every call.
fn incoming(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures_util::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

fn tonic_interceptor<T>(
    service: T,
    auth: BasicAuth,
) -> tonic::service::interceptor::InterceptedService<T, BasicAuth> {
    tonic::service::interceptor::InterceptedService::new(service, auth)
}
