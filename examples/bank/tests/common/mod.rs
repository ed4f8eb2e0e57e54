//! Shared by the service's test binaries: a server on a random port over either store, a raw
//! HTTP/1.1 client (so malformed requests can be sent as they are), and the service binary as
//! a child process.

#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sirenia::postgres::{PostgresOptions, PostgresStore};
use sirenia::{AnyStore, EventStore, Position, SqliteStore};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub use sirenia::testkit::postgres::{DropSchema as SchemaGuard, url as postgres_url};

/// Where a store lives, cleaned up when dropped.
pub enum Place {
    File(tempfile::TempDir),
    Schema(SchemaGuard),
}

impl Place {
    pub fn new(backend: Backend) -> Place {
        match backend {
            Backend::Sqlite => Place::File(tempfile::tempdir().unwrap()),
            Backend::Postgres => Place::Schema(SchemaGuard(
                sirenia::testkit::postgres::fresh_schema("bank_t"),
            )),
        }
    }

    /// The `--store` argument of the service for this place.
    pub fn location(&self) -> String {
        match self {
            Place::File(dir) => dir.path().join("bank.db").display().to_string(),
            Place::Schema(_) => postgres_url(),
        }
    }

    pub fn schema(&self) -> Option<&str> {
        match self {
            Place::Schema(g) => Some(&g.0),
            Place::File(_) => None,
        }
    }

    /// Opens the store. Fails loudly when PostgreSQL is unreachable.
    pub async fn open(&self) -> AnyStore {
        match self {
            Place::File(dir) => {
                AnyStore::from(SqliteStore::open(dir.path().join("bank.db")).await.unwrap())
            }
            Place::Schema(guard) => {
                let options = PostgresOptions {
                    schema: guard.0.clone(),
                    pool_size: 8,
                    ..PostgresOptions::default()
                };
                AnyStore::from(
                    PostgresStore::connect_with(&postgres_url(), options)
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "PostgreSQL at {} is needed by this test: {e}",
                                postgres_url()
                            )
                        }),
                )
            }
        }
    }
}

/// The service in this process on a random port.
pub struct Server {
    pub addr: SocketAddr,
    pub store: AnyStore,
    task: tokio::task::JoinHandle<()>,
    // Last: the store's file or schema goes after everything using it.
    _place: Place,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        let place = Place::new(backend);
        let store = place.open().await;
        let app = bank::App::new(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, bank::router(app)).await;
        });
        Server {
            addr,
            store,
            task,
            _place: place,
        }
    }

    /// A second instance of the service on the same PostgreSQL schema as `self` (its own
    /// connections, projector and listener).
    pub async fn another_instance(&self) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let store = match &self._place {
            Place::Schema(_) => self._place.open().await,
            Place::File(_) => panic!("only PostgreSQL takes several instances"),
        };
        let app = bank::App::new(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, bank::router(app)).await;
        });
        (addr, task)
    }

    pub async fn head(&self) -> Position {
        self.store.head_position().await.unwrap()
    }

    /// How many events the whole log holds.
    pub async fn event_count(&self) -> usize {
        use futures_util::TryStreamExt;
        let events: Vec<_> = self
            .store
            .read_all(sirenia::ReadAll::forward())
            .try_collect()
            .await
            .unwrap();
        events.len()
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` code of an error answer.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends `request` as raw bytes on a new connection and reads the answer until the server
/// closes it. `None` if the server could not be reached or closed without answering.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    // The server may answer and stop reading early (a body too large): keep what it said.
    let _ = stream.write_all(request).await;
    let _ = stream.flush().await;
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("the server neither answered nor closed within 30 s");
    if read.is_err() && bytes.is_empty() {
        return None;
    }
    parse_reply(&bytes)
}

fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?, 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = decoded;
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// A well-formed request with `Connection: close`.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
        .await
        .unwrap_or_else(|| panic!("no answer to {method} {path}"))
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], None).await
}

/// POST `body` as JSON with `headers` (Content-Type is added).
pub async fn post(addr: SocketAddr, path: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let body = serde_json::to_vec(body).unwrap();
    send(addr, "POST", path, &all, Some(&body)).await
}

/// Opens an account and returns its id.
pub async fn open_account(addr: SocketAddr, owner: &str) -> String {
    let reply = post(
        addr,
        "/accounts",
        &serde_json::json!({ "owner": owner }),
        &[],
    )
    .await;
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// The service binary as a child process.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl Process {
    /// Starts `bank` on `place` and waits for it to print its address.
    pub async fn start(place: &Place) -> Process {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bank"));
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--store")
            .arg(place.location())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(schema) = place.schema() {
            command.arg("--pg-schema").arg(schema);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the service did not start within 60 s")
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Process { child, addr }
    }
}
