//! `sirenia`: inspect, follow, export, import and copy Sirenia event stores.
//!
//! ```text
//! sirenia --store bank-data/bank.db streams
//! sirenia --store postgresql://localhost/app read account-42 --json
//! sirenia --store bank-data/bank.db tail --category account --follow
//! sirenia --store bank-data/bank.db projections status
//! sirenia --store bank-data/bank.db export log.ndjson
//! sirenia --store bank-data/bank.db copy --to postgresql://localhost/app
//! sirenia --store bank-data/bank.db --upcasters upcasters.json read account-42
//! sirenia --store bank-data/bank.db truncate account-42 --before 100
//! sirenia --store bank-data/bank.db serve --listen 127.0.0.1:2113
//! ```
//!
//! `serve` runs an event store server that EventStoreDB/KurrentDB gRPC clients use unmodified
//! (`esdb://127.0.0.1:2113?tls=false`); see the `sirenia-grpc` crate.
//!
//! `--store` (or `SIRENIA_STORE`) is a file path (the embedded store) or a `postgres://` URL.
//! Long operations show a progress bar with rate and ETA on a terminal; output stays plain
//! otherwise.

mod line;

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sirenia::projection::ProjectionRequest;
use sirenia::store::import_batches;
use sirenia::{
    AnyStore, EventFilter, EventStore, ExpectedVersion, OpenOptions, ReadAll, ReadStream,
    RecordedEvent, StoreAdmin, StoreError, StreamChange, StreamId, StreamStatus, Subscribe,
    SubscriptionItem, Upcasters, is_postgres_url,
};

use crate::line::Line;

/// Inspect, follow, export, import and copy Sirenia event stores.
#[derive(Parser, Debug)]
#[command(name = "sirenia", version)]
struct Cli {
    /// The store: a file path (embedded store) or a postgres:// URL.
    #[arg(long, env = "SIRENIA_STORE", global = true)]
    store: Option<String>,
    /// PostgreSQL schema of the store's tables.
    #[arg(
        long,
        env = "SIRENIA_PG_SCHEMA",
        default_value = "sirenia",
        global = true
    )]
    pg_schema: String,
    /// A JSON file of upcast rules: `read` and `tail` show events as today's code reads them
    /// (export, import and copy always keep the stored form).
    #[arg(long, env = "SIRENIA_UPCASTERS", global = true)]
    upcasters: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Streams with their event counts, grouped by category.
    Streams {
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// One JSON object per stream.
        #[arg(long)]
        json: bool,
    },
    /// The events of one stream.
    Read {
        /// The stream id.
        stream: String,
        /// One JSON line per event.
        #[arg(long)]
        json: bool,
    },
    /// The global log from a position, optionally filtered, optionally following new events.
    Tail {
        /// Only these categories (repeatable).
        #[arg(long)]
        category: Vec<String>,
        /// Only these event types (repeatable).
        #[arg(long = "type")]
        event_type: Vec<String>,
        /// First position to show.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep following new events (until interrupted).
        #[arg(long)]
        follow: bool,
        /// One JSON line per event.
        #[arg(long)]
        json: bool,
    },
    /// Projections recorded in the store.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Writes the whole log to FILE as NDJSON (ids, order, metadata and timestamps kept).
    Export {
        /// The file to write.
        file: PathBuf,
    },
    /// Appends the events of an NDJSON export to the store, keeping ids, order, metadata and
    /// timestamps. The file is checked whole before anything is written; importing it again
    /// writes nothing.
    Import {
        /// The file to read.
        file: PathBuf,
    },
    /// Soft-deletes a stream: it reads as missing until an append recreates it (revisions go
    /// on); the global log keeps its events.
    Delete {
        /// The stream id.
        stream: String,
        /// Only if the stream is at this version.
        #[arg(long)]
        expected: Option<u64>,
    },
    /// Tombstones a stream: it can never be read or written again.
    Tombstone {
        /// The stream id.
        stream: String,
        /// Only if the stream is at this version.
        #[arg(long)]
        expected: Option<u64>,
    },
    /// Hides a stream's events before a revision from stream reads (aggregates then load from
    /// a snapshot at or after it).
    Truncate {
        /// The stream id.
        stream: String,
        /// The first revision that stays readable.
        #[arg(long)]
        before: u64,
    },
    /// Serves the store over the EventStoreDB/KurrentDB gRPC client protocol (streams, `$all`,
    /// catch-up subscriptions, delete and tombstone) until interrupted. Insecure (plain HTTP/2,
    /// no users) unless TLS or users are given.
    Serve {
        /// The address to listen on (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:2113")]
        listen: std::net::SocketAddr,
        /// A user allowed in with basic authentication, as `name:password` (repeat the flag for
        /// more users; the password may hold any character, `:` and `,` included; none: no
        /// authentication).
        #[arg(long = "user")]
        users: Vec<String>,
        /// The server's TLS certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The server's TLS private key (PEM); needs --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Copies the whole log into another store (for example embedded → PostgreSQL).
    Copy {
        /// The target store: a file path or a postgres:// URL.
        #[arg(long)]
        to: String,
        /// PostgreSQL schema of the target.
        #[arg(long, default_value = "sirenia")]
        to_pg_schema: String,
    },
}

#[derive(Subcommand, Debug)]
enum ProjectionsCommand {
    /// Each projection's checkpoint, state, lag and parked events.
    Status {
        /// One JSON object per projection.
        #[arg(long)]
        json: bool,
    },
    /// The events projection NAME parked.
    Parked {
        /// The projection's name.
        name: String,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Asks the running projector of NAME to empty its read model and replay the log, and
    /// follows its progress until it has caught up.
    Rebuild {
        /// The projection's name.
        name: String,
        /// Only ask; do not wait.
        #[arg(long)]
        no_wait: bool,
    },
    /// Asks the running projector of NAME to apply its parked events again, and waits for it.
    ReplayParked {
        /// The projection's name.
        name: String,
        /// Only ask; do not wait.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("no store given: use --store PATH_OR_URL or set SIRENIA_STORE")]
    NoStore,
    #[error(
        "no store at {0} (the embedded store is created by writing to it, not by this command)"
    )]
    NoStoreAt(String),
    #[error("no stream {0}")]
    NoStream(String),
    #[error("no projection {0} is recorded in this store")]
    NoProjection(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("invalid stream id: {0}")]
    StreamId(#[from] sirenia::InvalidStreamId),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {source}")]
    Line {
        path: String,
        line: usize,
        source: line::LineError,
    },
    #[error("{path}, line {line}: {message}")]
    Invalid {
        path: String,
        line: u64,
        message: String,
    },
    #[error("writing the output failed: {0}")]
    Output(std::io::Error),
    #[error("{path}: {source}")]
    Upcasters {
        path: String,
        source: sirenia::CodecError,
    },
    #[error("--user {0:?}: expected name:password")]
    User(String),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Serve(#[from] sirenia_grpc::ServeError),
}

/// Whether a command writes to the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads only: an embedded store is opened read-only, so this works beside a running
    /// service that holds the file for writing.
    Read,
    /// Writes: an embedded store is opened (and created if missing) for writing, which fails
    /// clearly while another process holds it.
    Write,
}

async fn open(location: &str, schema: &str, access: Access) -> Result<AnyStore, CliError> {
    let read_only = access == Access::Read;
    if read_only && !is_postgres_url(location) && !Path::new(location).exists() {
        return Err(CliError::NoStoreAt(location.to_owned()));
    }
    let options = OpenOptions {
        read_only,
        postgres_schema: Some(schema.to_owned()),
    };
    Ok(AnyStore::open_with(location, options).await?)
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = if len.is_some() {
        "{msg} [{bar:40}] {pos}/{len} events, {per_sec}, ETA {eta}"
    } else {
        "{msg} {spinner} {pos} events, {per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// How many events the log holds, when the store can tell cheaply (dense positions).
async fn log_length(store: &AnyStore) -> Result<Option<u64>, CliError> {
    Ok(store
        .dense_positions()
        .then_some(store.head_position().await?.0))
}

fn out() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::new(std::io::stdout().lock())
}

fn pretty(event: &RecordedEvent) -> String {
    let data = if event.content_type.starts_with("application/json") {
        String::from_utf8_lossy(&event.data).into_owned()
    } else {
        format!("<{} bytes of {}>", event.data.len(), event.content_type)
    };
    format!(
        "{:>8}  {:<32} r{:<6} {}  {}  {}",
        event.position.0,
        event.stream_id.as_str(),
        event.revision,
        event.recorded_at,
        event.event_type,
        data
    )
}

fn print_event(w: &mut impl Write, event: &RecordedEvent, json: bool) -> Result<(), CliError> {
    let text = if json {
        serde_json::to_string(&Line::from_event(event))
            .map_err(|e| CliError::Output(std::io::Error::other(e)))?
    } else {
        pretty(event)
    };
    writeln!(w, "{text}").map_err(CliError::Output)
}

async fn streams(store: &AnyStore, category: Option<String>, json: bool) -> Result<(), CliError> {
    let filter = category.map_or_else(EventFilter::all, EventFilter::category);
    let bar = progress(log_length(store).await?, "scanning");
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut events = store.read_all(ReadAll::forward().filter(filter).page_size(5_000));
    while let Some(event) = events.next().await {
        let event = event?;
        bar.inc(1);
        let version = event.revision + 1;
        let entry = counts
            .entry(event.stream_id.category().to_owned())
            .or_default()
            .entry(event.stream_id.as_str().to_owned())
            .or_default();
        *entry = (*entry).max(version);
    }
    bar.finish_and_clear();
    let mut w = out();
    for (category, streams) in &counts {
        if json {
            for (stream, events) in streams {
                let line = serde_json::json!({
                    "stream": stream, "category": category, "events": events,
                });
                writeln!(w, "{line}").map_err(CliError::Output)?;
            }
            continue;
        }
        let total: u64 = streams.values().sum();
        writeln!(w, "{category}  ({} streams, {total} events)", streams.len())
            .map_err(CliError::Output)?;
        for (stream, events) in streams {
            writeln!(w, "  {stream:<48} {events:>10}").map_err(CliError::Output)?;
        }
    }
    w.flush().map_err(CliError::Output)
}

async fn read(
    store: &AnyStore,
    upcasters: &Upcasters,
    stream: &str,
    json: bool,
) -> Result<(), CliError> {
    let stream = StreamId::new(stream)?;
    if store.stream_version(&stream).await?.is_none() {
        return Err(CliError::NoStream(stream.to_string()));
    }
    let mut events = upcasters.read_stream(store, &stream, ReadStream::forward());
    let mut w = out();
    while let Some(event) = events.next().await {
        print_event(&mut w, &event?, json)?;
    }
    w.flush().map_err(CliError::Output)
}

async fn tail(
    store: &AnyStore,
    upcasters: &Upcasters,
    filter: EventFilter,
    from: u64,
    follow: bool,
    json: bool,
) -> Result<(), CliError> {
    let from = sirenia::Position(from.max(1));
    if !follow {
        let mut events = upcasters.read_all(store, ReadAll::forward().from(from).filter(filter));
        let mut w = out();
        while let Some(event) = events.next().await {
            print_event(&mut w, &event?, json)?;
        }
        return w.flush().map_err(CliError::Output);
    }
    let mut subscription = upcasters.subscribe(store, Subscribe::from(from).filter(filter));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let item = tokio::select! {
            item = subscription.next() => item,
            _ = &mut interrupted => return Ok(()),
        };
        match item {
            None => return Ok(()),
            Some(item) => match item? {
                SubscriptionItem::Event(event) => {
                    // Line by line, flushed: a pipe sees each event as it comes.
                    let mut w = std::io::stdout().lock();
                    print_event(&mut w, &event, json)?;
                    w.flush().map_err(CliError::Output)?;
                }
                SubscriptionItem::CaughtUp { .. } => {}
            },
        }
    }
}

async fn projections(store: &AnyStore, command: ProjectionsCommand) -> Result<(), CliError> {
    let mut w = out();
    match command {
        ProjectionsCommand::Status { json } => {
            let head = store.head_position().await?;
            let dense = store.dense_positions();
            for p in store.projections().await? {
                let state = if p.fault.is_some() {
                    "faulted"
                } else if p.next > head {
                    "caught-up"
                } else {
                    "behind"
                };
                let lag = dense.then(|| head.0.saturating_sub(p.next.0.saturating_sub(1)));
                if json {
                    let line = serde_json::json!({
                        "name": p.name, "next_position": p.next.0, "state": state,
                        "lag_events": lag, "parked": p.parked, "fault": p.fault,
                    });
                    writeln!(w, "{line}").map_err(CliError::Output)?;
                } else {
                    let lag = lag.map_or_else(|| "-".to_owned(), |l| l.to_string());
                    writeln!(
                        w,
                        "{:<32} next {:>12}  {:<9}  lag {:>8}  parked {}",
                        p.name, p.next.0, state, lag, p.parked
                    )
                    .map_err(CliError::Output)?;
                    if let Some(fault) = p.fault {
                        writeln!(
                            w,
                            "    faulted on position {} ({} in {}): {}",
                            fault.position, fault.event_type, fault.stream, fault.error
                        )
                        .map_err(CliError::Output)?;
                    }
                }
            }
        }
        ProjectionsCommand::Parked { name, json } => {
            for e in store.parked(&name).await? {
                if json {
                    let line = serde_json::to_string(&e)
                        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
                    writeln!(w, "{line}").map_err(CliError::Output)?;
                } else {
                    writeln!(
                        w,
                        "{:>12}  {}  {}  {}  after {} attempts: {}",
                        e.position.0, e.stream, e.event_type, e.event_id, e.attempts, e.error
                    )
                    .map_err(CliError::Output)?;
                }
            }
        }
        ProjectionsCommand::Rebuild { name, no_wait } => {
            request(store, &name, ProjectionRequest::Rebuild, no_wait).await?;
        }
        ProjectionsCommand::ReplayParked { name, no_wait } => {
            request(store, &name, ProjectionRequest::ReplayParked, no_wait).await?;
            if !no_wait {
                let left = store.parked(&name).await?.len();
                writeln!(w, "{name}: {left} event(s) still parked").map_err(CliError::Output)?;
            }
        }
    }
    w.flush().map_err(CliError::Output)
}

/// How often a waiting command looks at the projector's progress.
const REQUEST_WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Records `request` for the projector of `name`; unless `no_wait`, waits until the projector
/// has taken it and (for a rebuild) caught up with the head as it was when asked.
async fn request(
    store: &AnyStore,
    name: &str,
    request: ProjectionRequest,
    no_wait: bool,
) -> Result<(), CliError> {
    let known = store
        .projections()
        .await?
        .into_iter()
        .any(|p| p.name == name);
    if !known {
        return Err(CliError::NoProjection(name.to_owned()));
    }
    let head = store.head_position().await?;
    store.request_projection(name, request).await?;
    if no_wait {
        return Ok(());
    }
    let dense = store.dense_positions();
    let bar = progress(
        (dense && request == ProjectionRequest::Rebuild).then_some(head.0),
        &format!("{} {name}", request.as_str()),
    );
    bar.set_message(format!(
        "waiting for the projector of {name} (it must be running)"
    ));
    loop {
        tokio::time::sleep(REQUEST_WAIT_POLL).await;
        if store.pending_request(name).await?.is_some() {
            continue;
        }
        bar.set_message(format!("{} {name}", request.as_str()));
        if request == ProjectionRequest::ReplayParked {
            break;
        }
        let next = store
            .projections()
            .await?
            .into_iter()
            .find(|p| p.name == name)
            .map_or(sirenia::Position(1), |p| p.next);
        bar.set_position(next.0.saturating_sub(1).min(head.0));
        if next > head {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

async fn export(store: &AnyStore, file: &Path) -> Result<(), CliError> {
    let file_error = |source| CliError::File {
        path: file.display().to_string(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(file).map_err(file_error)?);
    let bar = progress(log_length(store).await?, "exporting");
    let mut events = store.read_all(ReadAll::forward().page_size(5_000));
    while let Some(event) = events.next().await {
        print_event(&mut w, &event?, true)?;
        bar.inc(1);
    }
    w.flush().map_err(file_error)?;
    w.get_ref().sync_all().map_err(file_error)?;
    bar.finish_and_clear();
    Ok(())
}

/// Events per import chunk held in memory.
const IMPORT_CHUNK: usize = 10_000;

/// Appends `events` (in log order) to `target`, `IMPORT_CHUNK` at a time.
async fn import_events<I>(target: &AnyStore, events: I, bar: &ProgressBar) -> Result<(), CliError>
where
    I: Iterator<Item = Result<RecordedEvent, CliError>>,
{
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
    let mut events = events.peekable();
    while events.peek().is_some() {
        chunk.clear();
        while chunk.len() < IMPORT_CHUNK
            && let Some(event) = events.next()
        {
            chunk.push(event?);
        }
        let n = chunk.len() as u64;
        for batch in import_batches(chunk.drain(..)) {
            target.import(batch).await?;
        }
        bar.inc(n);
    }
    Ok(())
}

fn lines(file: &Path) -> Result<impl Iterator<Item = Result<RecordedEvent, CliError>>, CliError> {
    let path = file.display().to_string();
    let reader =
        std::io::BufReader::new(std::fs::File::open(file).map_err(|source| CliError::File {
            path: path.clone(),
            source,
        })?);
    Ok(reader
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(move |(i, l)| {
            let text = l.map_err(|source| CliError::File {
                path: path.clone(),
                source,
            })?;
            Line::parse(&text).map_err(|source| CliError::Line {
                path: path.clone(),
                line: i + 1,
                source,
            })
        }))
}

/// Checks a whole export file and counts its events: a bad line stops an import before the
/// store is even opened.
fn check_file(file: &Path) -> Result<u64, CliError> {
    let path = file.display().to_string();
    let invalid = |line: u64, message: String| CliError::Invalid {
        path: path.clone(),
        line,
        message,
    };
    let mut count = 0u64;
    let mut next_revision: std::collections::HashMap<String, u64> = Default::default();
    let mut ids = std::collections::HashSet::new();
    let mut chunk = Vec::new();
    for event in lines(file)? {
        let event = event?;
        count += 1;
        // Each stream's revisions run on without gaps; ids are unique.
        let expected = next_revision
            .entry(event.stream_id.as_str().to_owned())
            .or_insert(event.revision);
        if event.revision != *expected {
            return Err(invalid(
                count,
                format!(
                    "{} jumps from revision {} to {}",
                    event.stream_id, expected, event.revision
                ),
            ));
        }
        *expected += 1;
        if !ids.insert(event.id) {
            return Err(invalid(
                count,
                format!("event id {} appears twice", event.id),
            ));
        }
        chunk.push(event);
        if chunk.len() >= IMPORT_CHUNK {
            check_batches(std::mem::take(&mut chunk), count, &invalid)?;
        }
    }
    check_batches(chunk, count, &invalid)?;
    Ok(count)
}

/// The limits every append checks, on the batches an import will append.
fn check_batches(
    events: Vec<RecordedEvent>,
    line: u64,
    invalid: &dyn Fn(u64, String) -> CliError,
) -> Result<(), CliError> {
    for batch in import_batches(events) {
        sirenia::store::validate_append(&batch.writes)
            .map_err(|e| invalid(line, format!("in the events up to here: {e}")))?;
        sirenia::store::check_import_timestamps(&batch.recorded_at)
            .map_err(|e| invalid(line, format!("in the events up to here: {e}")))?;
    }
    Ok(())
}

async fn import(store: &AnyStore, file: &Path, count: u64) -> Result<(), CliError> {
    let bar = progress(Some(count), "importing");
    import_events(store, lines(file)?, &bar).await?;
    bar.finish_and_clear();
    Ok(())
}

async fn copy(store: &AnyStore, to: &str, schema: &str) -> Result<(), CliError> {
    let target = open(to, schema, Access::Write).await?;
    let bar = progress(log_length(store).await?, "copying");
    let mut events = store.read_all(ReadAll::forward().page_size(5_000));
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
    loop {
        let next = events.next().await;
        let done = next.is_none();
        if let Some(event) = next {
            chunk.push(event?);
        }
        if chunk.len() >= IMPORT_CHUNK || (done && !chunk.is_empty()) {
            let n = chunk.len() as u64;
            for batch in import_batches(chunk.drain(..)) {
                target.import(batch).await?;
            }
            bar.inc(n);
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let location = cli.store.ok_or(CliError::NoStore)?;
    let upcasters = match &cli.upcasters {
        None => Upcasters::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
                path: path.display().to_string(),
                source,
            })?;
            Upcasters::from_rules_json(&text).map_err(|source| CliError::Upcasters {
                path: path.display().to_string(),
                source,
            })?
        }
    };
    let (access, checked) = match &cli.command {
        Command::Import { file } => (Access::Write, check_file(file)?),
        Command::Delete { .. }
        | Command::Tombstone { .. }
        | Command::Truncate { .. }
        | Command::Serve { .. } => (Access::Write, 0),
        _ => (Access::Read, 0),
    };
    let store = open(&location, &cli.pg_schema, access).await?;
    match cli.command {
        Command::Streams { category, json } => streams(&store, category, json).await,
        Command::Read { stream, json } => read(&store, &upcasters, &stream, json).await,
        Command::Tail {
            category,
            event_type,
            from,
            follow,
            json,
        } => {
            let filter = EventFilter {
                categories: category,
                event_types: event_type,
            };
            tail(&store, &upcasters, filter, from, follow, json).await
        }
        Command::Delete { stream, expected } => {
            let change = StreamChange::Delete {
                expected: expected.map_or(ExpectedVersion::Any, ExpectedVersion::Exact),
            };
            change_stream(&store, &stream, change).await
        }
        Command::Tombstone { stream, expected } => {
            let change = StreamChange::Tombstone {
                expected: expected.map_or(ExpectedVersion::Any, ExpectedVersion::Exact),
            };
            change_stream(&store, &stream, change).await
        }
        Command::Truncate { stream, before } => {
            change_stream(&store, &stream, StreamChange::TruncateBefore { before }).await
        }
        Command::Projections { command } => projections(&store, command).await,
        Command::Export { file } => export(&store, &file).await,
        Command::Import { file } => import(&store, &file, checked).await,
        Command::Copy { to, to_pg_schema } => copy(&store, &to, &to_pg_schema).await,
        Command::Serve {
            listen,
            users,
            tls_cert,
            tls_key,
        } => serve(store, listen, users, tls_cert.zip(tls_key)).await,
    }
}

/// Runs the gRPC server until Ctrl-C or SIGTERM; prints the address it listens on.
async fn serve(
    store: AnyStore,
    listen: std::net::SocketAddr,
    users: Vec<String>,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<(), CliError> {
    let users = users
        .into_iter()
        .map(|u| sirenia_grpc::User::parse(&u).ok_or(CliError::User(u)))
        .collect::<Result<Vec<_>, _>>()?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CliError::File {
            path: path.display().to_string(),
            source,
        })
    };
    let tls = match tls {
        None => None,
        Some((cert, key)) => Some(sirenia_grpc::TlsIdentity {
            certificate_pem: read(&cert)?,
            key_pem: read(&key)?,
        }),
    };
    let scheme = if tls.is_some() {
        "tls=true"
    } else {
        "tls=false"
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| CliError::Listen {
            address: listen,
            source,
        })?;
    let address = listener.local_addr().map_err(|source| CliError::Listen {
        address: listen,
        source,
    })?;
    let mut err = std::io::stderr();
    let _ = writeln!(err, "sirenia: serving esdb://{address}?{scheme}");
    let options = sirenia_grpc::ServeOptions { users, tls };
    sirenia_grpc::serve(store, listener, options, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Applies a lifecycle change and says what the stream is now.
async fn change_stream(
    store: &AnyStore,
    stream: &str,
    change: StreamChange,
) -> Result<(), CliError> {
    let stream = StreamId::new(stream)?;
    let info = store.change_stream(&stream, change).await?;
    let mut w = out();
    match info {
        None => writeln!(w, "{stream}: no such stream; nothing changed"),
        Some(info) => writeln!(
            w,
            "{stream}: {}, version {}, readable from revision {}",
            match info.status {
                StreamStatus::Active => "active",
                StreamStatus::Deleted => "deleted",
                StreamStatus::Tombstoned => "tombstoned",
            },
            info.version,
            info.readable_from
        ),
    }
    .map_err(CliError::Output)?;
    w.flush().map_err(CliError::Output)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sirenia: {e}");
            ExitCode::FAILURE
        }
    }
}
