//! The `Streams` service: read and subscribe, append, delete, tombstone.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use sirenia_core::limits::DEFAULT_PAGE_SIZE;
use sirenia_core::{
    Direction, EventFilter, EventStore, ExpectedVersion, Position, ReadAll, ReadStream,
    RecordedEvent, StoreError, StreamChange, StreamId, StreamStatus, StreamWrite, Subscribe,
    SubscriptionItem,
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::convert::{
    self, ALL_STREAM, METADATA_STREAM_PREFIX, current_revision, stream_identifier,
};
use crate::filter::LogFilter;
use crate::proto::client::{Empty, StreamIdentifier};
use crate::proto::streams::read_req::options::{
    self as read_options, AllOptions, StreamOptions, all_options, stream_options,
};
use crate::proto::streams::read_resp::{self, ReadEvent, read_event};
use crate::proto::streams::{
    AppendReq, AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq,
    ReadResp, TombstoneReq, TombstoneResp, append_req, append_resp, delete_req, delete_resp,
    streams_server, tombstone_req, tombstone_resp,
};

/// Responses buffered per read before the reader waits for the client.
pub const READ_CHANNEL_CAPACITY: usize = 64;

/// The server's shutdown signal, if it has one.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stopping(Option<watch::Receiver<bool>>);

impl Stopping {
    /// Resolves once the server starts shutting down (or is gone); never without a signal.
    pub(crate) async fn wait(&self) {
        match self.0.clone() {
            None => std::future::pending().await,
            Some(mut rx) => {
                let _ = rx.wait_for(|down| *down).await;
            }
        }
    }

    /// Whether the server has started shutting down.
    fn started(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }
}

/// Where a read's responses go, and whether the server is shutting down.
struct Responses {
    tx: mpsc::Sender<Result<ReadResp, Status>>,
    stopping: Stopping,
}

/// The `event_store.client.streams.Streams` service over any Sirenia store.
#[derive(Clone, Debug)]
pub struct StreamsService<S> {
    store: S,
    stopping: Stopping,
}

impl<S: EventStore> StreamsService<S> {
    /// The service over `store`; reads and subscriptions run until their clients leave.
    pub fn new(store: S) -> Self {
        StreamsService {
            store,
            stopping: Stopping::default(),
        }
    }

    /// The service over `store`; reads and subscriptions end with UNAVAILABLE once `shutdown`
    /// holds `true` (or its sender is dropped), so a graceful shutdown does not wait for
    /// subscribers to leave.
    pub fn with_shutdown(store: S, shutdown: watch::Receiver<bool>) -> Self {
        StreamsService {
            store,
            stopping: Stopping(Some(shutdown)),
        }
    }
}

/// Where a read starts in a stream.
#[derive(Debug, Clone, Copy)]
enum Revision {
    Start,
    End,
    At(u64),
}

/// Where a read starts in the log.
#[derive(Debug, Clone, Copy)]
enum LogPoint {
    Start,
    End,
    At(u64),
}

/// What a read asks for, validated before anything is sent.
#[derive(Debug)]
enum Plan {
    ReadStream {
        stream: StreamId,
        from: Revision,
        direction: Direction,
        count: u64,
    },
    ReadAll {
        from: LogPoint,
        direction: Direction,
        count: u64,
        filter: Option<LogFilter>,
    },
    SubscribeStream {
        stream: StreamId,
        from: Revision,
    },
    SubscribeAll {
        from: LogPoint,
        filter: Option<LogFilter>,
    },
}

fn parse_read(request: ReadReq) -> Result<(Plan, bool), Status> {
    let options = request
        .options
        .ok_or_else(|| Status::invalid_argument("the read has no options"))?;
    let structured_ids = matches!(
        options
            .uuid_option
            .as_ref()
            .and_then(|o| o.content.as_ref()),
        Some(read_options::uuid_option::Content::Structured(_))
    );
    let direction = match read_options::ReadDirection::try_from(options.read_direction) {
        Ok(read_options::ReadDirection::Forwards) => Direction::Forward,
        Ok(read_options::ReadDirection::Backwards) => Direction::Backward,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown read direction {}",
                options.read_direction
            )));
        }
    };
    let filter = match &options.filter_option {
        Some(read_options::FilterOption::Filter(filter)) => Some(LogFilter::parse(filter)?),
        Some(read_options::FilterOption::NoFilter(_)) | None => None,
    };
    let subscribe = match options.count_option {
        Some(read_options::CountOption::Count(count)) => Some(count),
        Some(read_options::CountOption::Subscription(_)) => None,
        None => {
            return Err(Status::invalid_argument(
                "the read has neither count nor subscription",
            ));
        }
    };
    if subscribe.is_none() && direction == Direction::Backward {
        return Err(Status::invalid_argument(
            "a subscription reads forwards only",
        ));
    }
    let plan = match options.stream_option {
        Some(read_options::StreamOption::Stream(StreamOptions {
            stream_identifier,
            revision_option,
        })) => {
            let stream = convert::stream_id(stream_identifier.as_ref())?;
            if filter.is_some() {
                return Err(Status::invalid_argument("filters apply to $all only"));
            }
            let from = match revision_option {
                Some(stream_options::RevisionOption::Start(_)) => Revision::Start,
                Some(stream_options::RevisionOption::End(_)) => Revision::End,
                Some(stream_options::RevisionOption::Revision(r)) => Revision::At(r),
                None => return Err(Status::invalid_argument("the read names no revision")),
            };
            match subscribe {
                Some(count) => Plan::ReadStream {
                    stream,
                    from,
                    direction,
                    count,
                },
                None => Plan::SubscribeStream { stream, from },
            }
        }
        Some(read_options::StreamOption::All(AllOptions { all_option })) => {
            let from = match all_option {
                Some(all_options::AllOption::Start(_)) => LogPoint::Start,
                Some(all_options::AllOption::End(_)) => LogPoint::End,
                Some(all_options::AllOption::Position(p)) => LogPoint::At(p.commit_position),
                None => return Err(Status::invalid_argument("the read names no position")),
            };
            match subscribe {
                Some(count) => Plan::ReadAll {
                    from,
                    direction,
                    count,
                    filter,
                },
                None => Plan::SubscribeAll { from, filter },
            }
        }
        None => {
            return Err(Status::invalid_argument(
                "the read names neither a stream nor $all",
            ));
        }
    };
    Ok((plan, structured_ids))
}

fn content(content: read_resp::Content) -> ReadResp {
    ReadResp {
        content: Some(content),
    }
}

fn event_response(event: &RecordedEvent, structured_ids: bool) -> ReadResp {
    content(read_resp::Content::Event(ReadEvent {
        event: Some(convert::recorded(event, structured_ids)),
        link: None,
        position: Some(read_event::Position::CommitPosition(event.position.get())),
    }))
}

fn checkpoint(position: Position) -> ReadResp {
    content(read_resp::Content::Checkpoint(read_resp::Checkpoint {
        commit_position: position.get(),
        prepare_position: position.get(),
    }))
}

/// Sends `response`; `false` once the client has gone or the server is shutting down.
async fn send(out: &Responses, response: ReadResp) -> bool {
    tokio::select! {
        sent = out.tx.send(Ok(response)) => sent.is_ok(),
        () = out.stopping.wait() => false,
    }
}

/// Waits for `future` unless the client goes or the server shuts down first (`None`).
async fn unless_gone<T>(out: &Responses, future: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        value = future => Some(value),
        () = out.tx.closed() => None,
        () = out.stopping.wait() => None,
    }
}

fn page_size(count: u64) -> usize {
    usize::try_from(count).map_or(DEFAULT_PAGE_SIZE, |c| c.clamp(1, DEFAULT_PAGE_SIZE))
}

impl<S: EventStore> StreamsService<S> {
    async fn run(&self, plan: Plan, structured_ids: bool, tx: &Responses) -> Result<(), Status> {
        match plan {
            Plan::ReadStream {
                stream,
                from,
                direction,
                count,
            } => {
                self.read_stream(stream, from, direction, count, structured_ids, tx)
                    .await
            }
            Plan::ReadAll {
                from,
                direction,
                count,
                filter,
            } => {
                self.read_all(from, direction, count, filter, structured_ids, tx)
                    .await
            }
            Plan::SubscribeStream { stream, from } => {
                self.subscribe_stream(stream, from, structured_ids, tx)
                    .await
            }
            Plan::SubscribeAll { from, filter } => {
                self.subscribe_all(from, filter, structured_ids, tx).await
            }
        }
    }

    async fn read_stream(
        &self,
        stream: StreamId,
        from: Revision,
        direction: Direction,
        count: u64,
        structured_ids: bool,
        tx: &Responses,
    ) -> Result<(), Status> {
        let info = self
            .store
            .stream_info(&stream)
            .await
            .map_err(convert::status)?;
        let version = match info {
            Some(info) if info.status == StreamStatus::Tombstoned => {
                return Err(convert::stream_deleted(&stream));
            }
            Some(info) => info.visible_version(),
            None => None,
        };
        let Some(version) = version else {
            send(
                tx,
                content(read_resp::Content::StreamNotFound(
                    read_resp::StreamNotFound {
                        stream_identifier: Some(stream_identifier(&stream)),
                    },
                )),
            )
            .await;
            return Ok(());
        };
        if count == 0 {
            return Ok(());
        }
        let from = match (from, direction) {
            (Revision::Start, _) => 0,
            (Revision::End, Direction::Forward) => version,
            (Revision::End, Direction::Backward) => u64::MAX,
            (Revision::At(r), _) => r,
        };
        let mut events = self.store.read_stream(
            &stream,
            ReadStream {
                direction,
                from,
                limit: Some(count),
                page_size: page_size(count),
            },
        );
        while let Some(event) = events.next().await {
            let event = event.map_err(convert::status)?;
            if !send(tx, event_response(&event, structured_ids)).await {
                break;
            }
        }
        Ok(())
    }

    async fn read_all(
        &self,
        from: LogPoint,
        direction: Direction,
        count: u64,
        filter: Option<LogFilter>,
        structured_ids: bool,
        tx: &Responses,
    ) -> Result<(), Status> {
        if count == 0 {
            return Ok(());
        }
        // Forward reads include the event at the position given; backward reads start
        // before it, as EventStoreDB's do.
        let from = match (from, direction) {
            (LogPoint::Start, _) => Position::START,
            (LogPoint::End, _) => Position::END,
            (LogPoint::At(p), Direction::Forward) => Position(p),
            (LogPoint::At(0), Direction::Backward) => return Ok(()),
            (LogPoint::At(p), Direction::Backward) => Position(p - 1),
        };
        // A filtered read examines events it does not send: full pages, however few it wants.
        let (limit, page) = match filter {
            Some(_) => (None, DEFAULT_PAGE_SIZE),
            None => (Some(count), page_size(count)),
        };
        let mut events = self.store.read_all(ReadAll {
            direction,
            from,
            filter: EventFilter::all(),
            limit,
            page_size: page,
        });
        let mut sent = 0u64;
        while sent < count {
            let Some(Some(event)) = unless_gone(tx, events.next()).await else {
                break;
            };
            let event = event.map_err(convert::status)?;
            if filter.as_ref().is_some_and(|f| !f.matches(&event)) {
                continue;
            }
            if !send(tx, event_response(&event, structured_ids)).await {
                break;
            }
            sent += 1;
        }
        Ok(())
    }

    /// A subscription to one stream reads the stream by revision (revisions are dense, so no
    /// event can be passed over) and waits on the log's wake-ups between reads.
    async fn subscribe_stream(
        &self,
        stream: StreamId,
        from: Revision,
        structured_ids: bool,
        tx: &Responses,
    ) -> Result<(), Status> {
        let version = self
            .store
            .stream_version(&stream)
            .await
            .map_err(convert::status)?;
        let mut next = match from {
            Revision::Start => 0,
            Revision::End => version.unwrap_or(0),
            Revision::At(r) => r.saturating_add(1),
        };
        if !send(tx, confirmation()).await {
            return Ok(());
        }
        let mut caught_up = false;
        loop {
            // Every event committed below this bound is visible to the read that follows, and
            // any later one wakes the wait below.
            let head = self.store.head_position().await.map_err(convert::status)?;
            let page = self
                .store
                .read_stream_page(&stream, next, Direction::Forward, DEFAULT_PAGE_SIZE)
                .await
                .map_err(convert::status)?;
            let full = page.len() == DEFAULT_PAGE_SIZE;
            for event in &page {
                if !send(tx, event_response(event, structured_ids)).await {
                    return Ok(());
                }
                next = event.revision + 1;
            }
            if full {
                continue;
            }
            if !caught_up {
                caught_up = true;
                if !send(
                    tx,
                    content(read_resp::Content::CaughtUp(read_resp::CaughtUp {})),
                )
                .await
                {
                    return Ok(());
                }
            }
            match unless_gone(tx, self.store.wait_for_events(head.next())).await {
                None => return Ok(()),
                Some(result) => result.map_err(convert::status)?,
            }
        }
    }

    async fn subscribe_all(
        &self,
        from: LogPoint,
        filter: Option<LogFilter>,
        structured_ids: bool,
        tx: &Responses,
    ) -> Result<(), Status> {
        let from = match from {
            LogPoint::Start => Position::START,
            LogPoint::At(p) => Position(p).next(),
            LogPoint::End => {
                let head = self.store.head_position().await.map_err(convert::status)?;
                head.next()
            }
        };
        let mut subscription = self.store.subscribe(Subscribe {
            from,
            filter: EventFilter::all(),
            page_size: DEFAULT_PAGE_SIZE,
        });
        if !send(tx, confirmation()).await {
            return Ok(());
        }
        let mut examined = 0u64;
        let mut last = None;
        loop {
            let item = match unless_gone(tx, subscription.next()).await {
                None | Some(None) => return Ok(()),
                Some(Some(item)) => item.map_err(convert::status)?,
            };
            match item {
                SubscriptionItem::Event(event) => {
                    let position = event.position;
                    let passes = filter.as_ref().is_none_or(|f| f.matches(&event));
                    if passes && !send(tx, event_response(&event, structured_ids)).await {
                        return Ok(());
                    }
                    if let Some(filter) = &filter {
                        examined += 1;
                        last = Some(position);
                        if examined >= filter.checkpoint_interval {
                            examined = 0;
                            if !send(tx, checkpoint(position)).await {
                                return Ok(());
                            }
                        }
                    }
                }
                SubscriptionItem::CaughtUp { head } => {
                    if filter.is_some() {
                        examined = 0;
                        // Everything up to here was examined: the client's start, the last
                        // event seen, or the head, whichever is latest.
                        let start = Position(from.get().saturating_sub(1));
                        let at = last.map_or(head, |l: Position| l.max(head)).max(start);
                        if !send(tx, checkpoint(at)).await {
                            return Ok(());
                        }
                    }
                    if !send(
                        tx,
                        content(read_resp::Content::CaughtUp(read_resp::CaughtUp {})),
                    )
                    .await
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn confirmation() -> ReadResp {
    content(read_resp::Content::Confirmation(
        read_resp::SubscriptionConfirmation {
            subscription_id: Uuid::now_v7().to_string(),
        },
    ))
}

type ReadResponses = Pin<Box<dyn Stream<Item = Result<ReadResp, Status>> + Send>>;

/// An `expected_stream_revision` oneof as an expected version. Append, delete and tombstone
/// carry the same oneof as three generated types, hence a macro.
macro_rules! expected_version {
    ($option:expr, $($kind:ident)::+) => {
        match $option {
            Some($($kind)::+::Revision(r)) => convert::exact_revision(r),
            Some($($kind)::+::NoStream(_)) => Ok(ExpectedVersion::NoStream),
            Some($($kind)::+::Any(_)) => Ok(ExpectedVersion::Any),
            Some($($kind)::+::StreamExists(_)) => Ok(ExpectedVersion::StreamExists),
            None => Err(Status::invalid_argument(
                "the expected stream revision is missing",
            )),
        }
    };
}

fn wrong_expected_version(
    expected: ExpectedVersion,
    actual: Option<u64>,
) -> append_resp::WrongExpectedVersion {
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption, CurrentRevisionOption2060, ExpectedRevisionOption,
        ExpectedRevisionOption2060,
    };
    let (current, current_legacy) = match current_revision(actual) {
        Some(r) => (
            CurrentRevisionOption::CurrentRevision(r),
            CurrentRevisionOption2060::CurrentRevision2060(r),
        ),
        None => (
            CurrentRevisionOption::CurrentNoStream(Empty {}),
            CurrentRevisionOption2060::NoStream2060(Empty {}),
        ),
    };
    let (expected, expected_legacy) = match expected {
        ExpectedVersion::Exact(v) => {
            let r = v.saturating_sub(1);
            (
                ExpectedRevisionOption::ExpectedRevision(r),
                Some(ExpectedRevisionOption2060::ExpectedRevision2060(r)),
            )
        }
        ExpectedVersion::Any => (
            ExpectedRevisionOption::ExpectedAny(Empty {}),
            Some(ExpectedRevisionOption2060::Any2060(Empty {})),
        ),
        ExpectedVersion::StreamExists => (
            ExpectedRevisionOption::ExpectedStreamExists(Empty {}),
            Some(ExpectedRevisionOption2060::StreamExists2060(Empty {})),
        ),
        ExpectedVersion::NoStream => (ExpectedRevisionOption::ExpectedNoStream(Empty {}), None),
    };
    append_resp::WrongExpectedVersion {
        current_revision_option_20_6_0: Some(current_legacy),
        expected_revision_option_20_6_0: expected_legacy,
        current_revision_option: Some(current),
        expected_revision_option: Some(expected),
    }
}

/// A stream that may be written or deleted: any but `$all` and the `$$` metadata streams.
pub(crate) fn writable(stream: StreamId) -> Result<StreamId, Status> {
    if stream.as_str() == ALL_STREAM {
        return Err(Status::invalid_argument(
            "$all cannot be written or deleted",
        ));
    }
    if stream.as_str().starts_with(METADATA_STREAM_PREFIX) {
        // Writing one would look like it worked and change nothing.
        return Err(Status::unimplemented(
            "stream metadata ($$ streams) is not supported; Sirenia's stream lifecycle is \
             soft delete, tombstone and truncate",
        ));
    }
    Ok(stream)
}

impl<S: EventStore> StreamsService<S> {
    /// Delete or tombstone: checks the stream, then applies the change.
    async fn change(
        &self,
        identifier: Option<StreamIdentifier>,
        expected: Result<ExpectedVersion, Status>,
        tombstone: bool,
    ) -> Result<(), Status> {
        let stream = writable(convert::stream_id(identifier.as_ref())?)?;
        let expected = expected?;
        let change = if tombstone {
            StreamChange::Tombstone { expected }
        } else {
            StreamChange::Delete { expected }
        };
        self.store
            .change_stream(&stream, change)
            .await
            .map(drop)
            .map_err(convert::status)
    }
}

#[tonic::async_trait]
impl<S: EventStore> streams_server::Streams for StreamsService<S> {
    type ReadStream = ReadResponses;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let (plan, structured_ids) = parse_read(request.into_inner())?;
        let (tx, rx) = mpsc::channel(READ_CHANNEL_CAPACITY);
        let out = Responses {
            tx,
            stopping: self.stopping.clone(),
        };
        let service = self.clone();
        tokio::spawn(async move {
            match service.run(plan, structured_ids, &out).await {
                Err(status) => {
                    let _ = out.tx.try_send(Err(status));
                }
                Ok(()) if out.stopping.started() => {
                    let _ = out
                        .tx
                        .try_send(Err(Status::unavailable("the server is shutting down")));
                }
                Ok(()) => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type BatchAppendStream = Pin<Box<dyn Stream<Item = Result<BatchAppendResp, Status>> + Send>>;

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let (tx, rx) = mpsc::channel(crate::batch::BATCH_CHANNEL_CAPACITY);
        tokio::spawn(crate::batch::run(
            self.store.clone(),
            request.into_inner(),
            tx,
            self.stopping.clone(),
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let mut messages = request.into_inner();
        let options = match messages.message().await?.and_then(|m| m.content) {
            Some(append_req::Content::Options(options)) => options,
            _ => {
                return Err(Status::invalid_argument(
                    "an append starts with its options",
                ));
            }
        };
        let stream = writable(convert::stream_id(options.stream_identifier.as_ref())?)?;
        let expected = expected_version!(
            options.expected_stream_revision,
            append_req::options::ExpectedStreamRevision
        )?;
        let mut events = convert::Proposed::default();
        while let Some(message) = messages.message().await? {
            let proposed = match message.content {
                Some(append_req::Content::ProposedMessage(proposed)) => proposed,
                Some(append_req::Content::Options(_)) => {
                    return Err(Status::invalid_argument(
                        "an append has one options message",
                    ));
                }
                None => return Err(Status::invalid_argument("an append message is empty")),
            };
            events.push(
                proposed.id.as_ref(),
                proposed.metadata,
                &proposed.custom_metadata,
                proposed.data,
            )?;
        }
        let write = StreamWrite::new(stream, expected, events.into_events());
        let result = match self.store.append(vec![write]).await {
            Ok(result) => result,
            Err(StoreError::Conflict {
                expected, actual, ..
            }) => {
                return Ok(Response::new(AppendResp {
                    result: Some(append_resp::Result::WrongExpectedVersion(
                        wrong_expected_version(expected, actual),
                    )),
                }));
            }
            Err(e) => return Err(convert::status(e)),
        };
        let written = result.streams.first();
        let current = match written.and_then(|s| current_revision(Some(s.version))) {
            Some(r) => append_resp::success::CurrentRevisionOption::CurrentRevision(r),
            None => append_resp::success::CurrentRevisionOption::NoStream(Empty {}),
        };
        let position = match result.last_position() {
            Some(p) => append_resp::success::PositionOption::Position(append_resp::Position {
                commit_position: p.get(),
                prepare_position: p.get(),
            }),
            None => append_resp::success::PositionOption::NoPosition(Empty {}),
        };
        Ok(Response::new(AppendResp {
            result: Some(append_resp::Result::Success(append_resp::Success {
                current_revision_option: Some(current),
                position_option: Some(position),
            })),
        }))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("the delete has no options"))?;
        let expected = expected_version!(
            options.expected_stream_revision,
            delete_req::options::ExpectedStreamRevision
        );
        self.change(options.stream_identifier, expected, false)
            .await?;
        Ok(Response::new(DeleteResp {
            position_option: Some(delete_resp::PositionOption::NoPosition(Empty {})),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("the tombstone has no options"))?;
        let expected = expected_version!(
            options.expected_stream_revision,
            tombstone_req::options::ExpectedStreamRevision
        );
        self.change(options.stream_identifier, expected, true)
            .await?;
        Ok(Response::new(TombstoneResp {
            position_option: Some(tombstone_resp::PositionOption::NoPosition(Empty {})),
        }))
    }
}
