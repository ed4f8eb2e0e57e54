//! The protocol's edges, with a raw gRPC client: malformed or unsupported calls get the right
//! status codes and change nothing while the server goes on serving; basic authentication; TLS.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use sirenia::{EventStore, InMemoryStore, Position, ReadAll};
use sirenia_grpc::proto::client::{Empty, StreamIdentifier, Uuid as ProtoUuid, uuid};
use sirenia_grpc::proto::streams::read_req::options::{
    self as read_options, AllOptions, FilterOptions, StreamOptions, all_options, filter_options,
    stream_options,
};
use sirenia_grpc::proto::streams::streams_client::StreamsClient;
use sirenia_grpc::proto::streams::{
    AppendReq, DeleteReq, ReadReq, ReadResp, append_req, append_resp, delete_req, read_resp,
};
use sirenia_grpc::{ServeOptions, TlsIdentity, User};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(30);

struct Server {
    port: u16,
    _stop: oneshot::Sender<()>,
}

async fn start(store: InMemoryStore, options: ServeOptions) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        sirenia_grpc::serve(store, listener, options, async {
            let _ = stopped.await;
        })
        .await
        .expect("the server failed");
    });
    Server { port, _stop: stop }
}

async fn client(port: u16) -> StreamsClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    StreamsClient::new(channel)
}

fn stream(name: &[u8]) -> Option<StreamIdentifier> {
    Some(StreamIdentifier {
        stream_name: Bytes::copy_from_slice(name),
    })
}

fn options(name: &[u8]) -> AppendReq {
    AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: stream(name),
            expected_stream_revision: Some(append_req::options::ExpectedStreamRevision::Any(
                Empty {},
            )),
        })),
    }
}

fn proposed(id: &str, event_type: Option<&str>, data: Vec<u8>) -> AppendReq {
    let mut metadata = std::collections::HashMap::new();
    if let Some(t) = event_type {
        metadata.insert("type".to_owned(), t.to_owned());
    }
    metadata.insert(
        "content-type".to_owned(),
        "application/octet-stream".to_owned(),
    );
    AppendReq {
        content: Some(append_req::Content::ProposedMessage(
            append_req::ProposedMessage {
                id: Some(ProtoUuid {
                    value: Some(uuid::Value::String(id.to_owned())),
                }),
                metadata,
                custom_metadata: Bytes::new(),
                data: Bytes::from(data),
            },
        )),
    }
}

fn new_id() -> String {
    ::uuid::Uuid::new_v4().to_string()
}

async fn append(
    client: &mut StreamsClient<Channel>,
    messages: Vec<AppendReq>,
) -> Result<append_resp::Result, tonic::Status> {
    let response = client
        .append(tokio_stream::iter(messages))
        .await?
        .into_inner();
    Ok(response.result.expect("an append result"))
}

fn read_request(option: read_options::StreamOption, filter: Option<FilterOptions>) -> ReadReq {
    ReadReq {
        options: Some(sirenia_grpc::proto::streams::read_req::Options {
            stream_option: Some(option),
            read_direction: read_options::ReadDirection::Forwards as i32,
            resolve_links: false,
            count_option: Some(read_options::CountOption::Count(100)),
            filter_option: Some(match filter {
                Some(f) => read_options::FilterOption::Filter(f),
                None => read_options::FilterOption::NoFilter(Empty {}),
            }),
            uuid_option: None,
            control_option: None,
        }),
    }
}

/// The first status a read ends with (reads may fail before or after the stream opens).
async fn read_status(client: &mut StreamsClient<Channel>, request: ReadReq) -> Code {
    match client.read(request).await {
        Err(status) => status.code(),
        Ok(response) => {
            let mut responses = response.into_inner();
            loop {
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Code::Ok,
                    Err(status) => return status.code(),
                }
            }
        }
    }
}

fn all_from_start() -> read_options::StreamOption {
    read_options::StreamOption::All(AllOptions {
        all_option: Some(all_options::AllOption::Start(Empty {})),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_get_status_codes_and_change_nothing() {
    let store = InMemoryStore::new();
    let server = start(store.clone(), ServeOptions::default()).await;
    let mut c = client(server.port).await;

    // A subscriber that must keep being served through everything below.
    let mut watcher = client(server.port).await;
    let mut subscription = watcher
        .read(ReadReq {
            options: Some(sirenia_grpc::proto::streams::read_req::Options {
                stream_option: Some(all_from_start()),
                read_direction: 0,
                resolve_links: false,
                count_option: Some(read_options::CountOption::Subscription(
                    read_options::SubscriptionOptions {},
                )),
                filter_option: None,
                uuid_option: None,
                control_option: None,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let first: ReadResp = subscription.message().await.unwrap().unwrap();
    assert!(matches!(
        first.content,
        Some(read_resp::Content::Confirmation(_))
    ));

    // Appends.
    let cases: Vec<(&str, Vec<AppendReq>)> = vec![
        ("no messages", vec![]),
        (
            "events before options",
            vec![proposed(&new_id(), Some("T"), vec![1])],
        ),
        ("options twice", vec![options(b"s-1"), options(b"s-1")]),
        (
            "a stream name that is not UTF-8",
            vec![options(b"s-\xff"), proposed(&new_id(), Some("T"), vec![])],
        ),
        (
            "an empty stream name",
            vec![options(b""), proposed(&new_id(), Some("T"), vec![])],
        ),
        (
            "$all",
            vec![options(b"$all"), proposed(&new_id(), Some("T"), vec![])],
        ),
        (
            "an event without type",
            vec![options(b"s-1"), proposed(&new_id(), None, vec![])],
        ),
        (
            "a malformed id",
            vec![options(b"s-1"), proposed("not-a-uuid", Some("T"), vec![])],
        ),
        (
            "an event over the size limit",
            vec![
                options(b"s-1"),
                proposed(
                    &new_id(),
                    Some("T"),
                    vec![7; sirenia::limits::MAX_EVENT_BYTES + 1],
                ),
            ],
        ),
        (
            "a type over the limit",
            vec![
                options(b"s-1"),
                proposed(&new_id(), Some(&"t".repeat(300)), vec![]),
            ],
        ),
        (
            "custom metadata over the limit",
            vec![options(b"s-1"), {
                let mut m = proposed(&new_id(), Some("T"), vec![]);
                if let Some(append_req::Content::ProposedMessage(p)) = &mut m.content {
                    p.custom_metadata =
                        Bytes::from(vec![b' '; sirenia::limits::MAX_METADATA_BYTES + 1]);
                }
                m
            }],
        ),
        (
            "a good event followed by a bad one",
            vec![
                options(b"s-1"),
                proposed(&new_id(), Some("T"), vec![1]),
                proposed(&new_id(), None, vec![]),
            ],
        ),
    ];
    for (case, messages) in cases {
        let status = append(&mut c, messages).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    }
    let no_expectation = AppendReq {
        content: Some(append_req::Content::Options(append_req::Options {
            stream_identifier: stream(b"s-1"),
            expected_stream_revision: None,
        })),
    };
    let status = append(&mut c, vec![no_expectation]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let metadata = vec![
        options(b"$$s-1"),
        proposed(&new_id(), Some("$metadata"), b"{}".to_vec()),
    ];
    let status = append(&mut c, metadata).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unimplemented,
        "stream metadata: {status:?}"
    );

    // Reads.
    assert_eq!(
        read_status(&mut c, ReadReq { options: None }).await,
        Code::InvalidArgument
    );
    let mut bad_direction = read_request(all_from_start(), None);
    bad_direction.options.as_mut().unwrap().read_direction = 7;
    assert_eq!(
        read_status(&mut c, bad_direction).await,
        Code::InvalidArgument
    );
    let bad_regex = FilterOptions {
        filter: Some(filter_options::Filter::EventType(
            filter_options::Expression {
                regex: "(unclosed".to_owned(),
                prefix: vec![],
            },
        )),
        window: None,
        checkpoint_interval_multiplier: 1,
    };
    assert_eq!(
        read_status(&mut c, read_request(all_from_start(), Some(bad_regex))).await,
        Code::InvalidArgument
    );
    let no_revision = read_options::StreamOption::Stream(StreamOptions {
        stream_identifier: stream(b"s-1"),
        revision_option: None,
    });
    assert_eq!(
        read_status(&mut c, read_request(no_revision, None)).await,
        Code::InvalidArgument
    );
    let mut backward_subscription = read_request(all_from_start(), None);
    let o = backward_subscription.options.as_mut().unwrap();
    o.read_direction = read_options::ReadDirection::Backwards as i32;
    o.count_option = Some(read_options::CountOption::Subscription(
        read_options::SubscriptionOptions {},
    ));
    assert_eq!(
        read_status(&mut c, backward_subscription).await,
        Code::InvalidArgument
    );

    // Delete without an expectation; deleting $all.
    let delete = |name: &[u8], expected| DeleteReq {
        options: Some(delete_req::Options {
            stream_identifier: stream(name),
            expected_stream_revision: expected,
        }),
    };
    assert_eq!(
        c.delete(delete(b"s-1", None)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let any = Some(delete_req::options::ExpectedStreamRevision::Any(Empty {}));
    assert_eq!(
        c.delete(delete(b"$all", any)).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Methods the server does not have.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for path in [
        "/event_store.client.projections.Projections/Create",
        "/event_store.client.persistent_subscriptions.PersistentSubscriptions/Create",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<Empty, Empty, _>(
                Request::new(Empty {}),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic::codec::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }

    // Nothing was written, and the server still serves: an append goes through and the
    // subscriber sees exactly it.
    assert_eq!(store.head_position().await.unwrap(), Position::START);
    let id = new_id();
    let result = append(
        &mut c,
        vec![options(b"s-1"), proposed(&id, Some("T"), vec![1, 2])],
    )
    .await
    .unwrap();
    assert!(matches!(result, append_resp::Result::Success(_)));
    let mut seen = None;
    while seen.is_none() {
        let message = tokio::time::timeout(WAIT, subscription.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(read_resp::Content::Event(e)) = message.content {
            seen = e.event;
        }
    }
    let seen = seen.unwrap();
    assert_eq!(seen.stream_identifier, stream(b"s-1"));
    assert_eq!(seen.data, Bytes::from_static(&[1, 2]));
    assert_eq!(seen.id.unwrap().value, Some(uuid::Value::String(id)));
    let log: Vec<_> =
        futures_util::StreamExt::collect::<Vec<_>>(store.read_all(ReadAll::forward())).await;
    assert_eq!(log.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_ids_are_sent_when_asked_for() {
    let store = InMemoryStore::new();
    let server = start(store.clone(), ServeOptions::default()).await;
    let mut c = client(server.port).await;
    let id = ::uuid::Uuid::new_v4();
    append(
        &mut c,
        vec![
            options(b"s-1"),
            proposed(&id.to_string(), Some("T"), vec![]),
        ],
    )
    .await
    .unwrap();
    let mut request = read_request(
        read_options::StreamOption::Stream(StreamOptions {
            stream_identifier: stream(b"s-1"),
            revision_option: Some(stream_options::RevisionOption::Start(Empty {})),
        }),
        None,
    );
    request.options.as_mut().unwrap().uuid_option = Some(read_options::UuidOption {
        content: Some(read_options::uuid_option::Content::Structured(Empty {})),
    });
    let mut responses = c.read(request).await.unwrap().into_inner();
    let message = responses.message().await.unwrap().unwrap();
    let Some(read_resp::Content::Event(event)) = message.content else {
        panic!("expected an event, got {message:?}");
    };
    let Some(uuid::Value::Structured(s)) = event.event.unwrap().id.unwrap().value else {
        panic!("expected a structured id");
    };
    let (high, low) = id.as_u64_pair();
    assert_eq!(
        (s.most_significant_bits, s.least_significant_bits),
        (high as i64, low as i64)
    );
}

fn credentials(name: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_authentication_admits_only_configured_users() {
    let options = ServeOptions {
        users: vec![User::parse("admin:changeit").unwrap()],
        tls: None,
    };
    let server = start(InMemoryStore::new(), options).await;
    let mut c = client(server.port).await;
    let read = |header: Option<String>| {
        let mut request = Request::new(read_request(all_from_start(), None));
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        request
    };
    for header in [
        None,
        Some(credentials("admin", "wrong")),
        Some(credentials("root", "changeit")),
        Some("Bearer x".to_owned()),
    ] {
        let status = c.read(read(header.clone())).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{header:?}");
    }
    let mut responses = c
        .read(read(Some(credentials("admin", "changeit"))))
        .await
        .unwrap()
        .into_inner();
    assert!(
        responses.message().await.unwrap().is_none(),
        "an empty log reads as nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certificate_pem = certified.cert.pem();
    let serve_options = ServeOptions {
        users: vec![],
        tls: Some(TlsIdentity {
            certificate_pem: certificate_pem.clone().into_bytes(),
            key_pem: certified.key_pair.serialize_pem().into_bytes(),
        }),
    };
    let store = InMemoryStore::new();
    let server = start(store, serve_options).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(certificate_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", server.port))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = StreamsClient::new(channel);
    let result = append(
        &mut c,
        vec![options(b"s-1"), proposed(&new_id(), Some("T"), vec![])],
    )
    .await
    .unwrap();
    assert!(matches!(result, append_resp::Result::Success(_)));
    // A plain-text client is refused.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut c = StreamsClient::new(channel);
        assert!(
            append(
                &mut c,
                vec![options(b"s-1"), proposed(&new_id(), Some("T"), vec![])]
            )
            .await
            .is_err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_subscriptions_and_returns() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(sirenia_grpc::serve(
        InMemoryStore::new(),
        listener,
        ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut c = client(port).await;
    let mut request = read_request(all_from_start(), None);
    request.options.as_mut().unwrap().count_option = Some(read_options::CountOption::Subscription(
        read_options::SubscriptionOptions {},
    ));
    let mut subscription = c.read(request).await.unwrap().into_inner();
    let confirmation = subscription.message().await.unwrap().unwrap();
    assert!(matches!(
        confirmation.content,
        Some(read_resp::Content::Confirmation(_))
    ));
    let caught_up = subscription.message().await.unwrap().unwrap();
    assert!(matches!(
        caught_up.content,
        Some(read_resp::Content::CaughtUp(_))
    ));

    stop.send(()).unwrap();
    let end = tokio::time::timeout(WAIT, subscription.message())
        .await
        .expect("the subscription did not end on shutdown");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    tokio::time::timeout(WAIT, server)
        .await
        .expect("serve did not return after shutdown")
        .unwrap()
        .unwrap();
}

fn batch_options(
    name: &[u8],
    expected: sirenia_grpc::proto::streams::batch_append_req::options::ExpectedStreamPosition,
    deadline: Option<prost_types::Timestamp>,
) -> sirenia_grpc::proto::streams::batch_append_req::Options {
    sirenia_grpc::proto::streams::batch_append_req::Options {
        stream_identifier: stream(name),
        expected_stream_position: Some(expected),
        deadline,
    }
}

fn batch_event(
    event_type: &str,
) -> sirenia_grpc::proto::streams::batch_append_req::ProposedMessage {
    sirenia_grpc::proto::streams::batch_append_req::ProposedMessage {
        id: Some(ProtoUuid {
            value: Some(uuid::Value::String(new_id())),
        }),
        metadata: [
            ("type".to_owned(), event_type.to_owned()),
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
        ]
        .into(),
        custom_metadata: Bytes::new(),
        data: Bytes::from_static(b"x"),
    }
}

fn correlation(n: u8) -> Option<ProtoUuid> {
    Some(ProtoUuid {
        value: Some(uuid::Value::String(
            ::uuid::Uuid::from_bytes([n; 16]).to_string(),
        )),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_runs_many_appends_on_one_call() {
    use sirenia_grpc::proto::client::WrongExpectedVersion;
    use sirenia_grpc::proto::client::wrong_expected_version::CurrentStreamRevisionOption;
    use sirenia_grpc::proto::streams::batch_append_req::options::ExpectedStreamPosition as E;
    use sirenia_grpc::proto::streams::{BatchAppendReq, batch_append_resp};

    let store = InMemoryStore::new();
    let server = start(store.clone(), ServeOptions::default()).await;
    let mut c = client(server.port).await;
    sirenia::EventStore::append(
        &store,
        vec![sirenia::StreamWrite::new(
            sirenia::StreamId::new("gone-1").unwrap(),
            sirenia::ExpectedVersion::Any,
            vec![sirenia::NewEvent::json("X", &serde_json::json!({}))],
        )],
    )
    .await
    .unwrap();
    sirenia::EventStore::tombstone_stream(
        &store,
        &sirenia::StreamId::new("gone-1").unwrap(),
        sirenia::ExpectedVersion::Any,
    )
    .await
    .unwrap();
    let past = prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    };
    let request = |n: u8, options, events: Vec<&str>, is_final| BatchAppendReq {
        correlation_id: correlation(n),
        options,
        proposed_messages: events.into_iter().map(batch_event).collect(),
        is_final,
    };
    let requests = vec![
        // 1: one append in two requests, interleaved with 2.
        request(
            1,
            Some(batch_options(b"b-1", E::NoStream(()), None)),
            vec!["A", "B"],
            false,
        ),
        request(
            2,
            Some(batch_options(b"b-2", E::Any(()), None)),
            vec!["C"],
            true,
        ),
        request(1, None, vec!["D"], true),
        // 3: a conflict: b-2 has one event, not three.
        request(
            3,
            Some(batch_options(b"b-2", E::StreamPosition(2), None)),
            vec!["E"],
            true,
        ),
        // 4: no options in its first request.
        request(4, None, vec!["F"], true),
        // 5: a tombstoned stream.
        request(
            5,
            Some(batch_options(b"gone-1", E::Any(()), None)),
            vec!["G"],
            true,
        ),
        // 6: a deadline long gone.
        request(
            6,
            Some(batch_options(b"b-3", E::Any(()), Some(past))),
            vec!["H"],
            true,
        ),
        // 7: continues b-1 after 1, at an exact position.
        request(
            7,
            Some(batch_options(b"b-1", E::StreamPosition(2), None)),
            vec!["I"],
            true,
        ),
    ];
    // 7 must follow 1's write: send the first three, wait for two answers, then the rest.
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let mut responses = c
        .batch_append(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let mut requests = requests.into_iter();
    for r in requests.by_ref().take(3) {
        sender.send(r).await.unwrap();
    }
    let mut answers = std::collections::HashMap::new();
    let mut received = 0;
    while answers.len() < 2 {
        let r = tokio::time::timeout(WAIT, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        received += 1;
        answers.insert(format!("{:?}", r.correlation_id), r);
    }
    for r in requests {
        sender.send(r).await.unwrap();
    }
    drop(sender);
    while let Some(r) = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap()
    {
        received += 1;
        answers.insert(format!("{:?}", r.correlation_id), r);
    }
    assert_eq!(received, 7, "one answer per append, no more");
    assert_eq!(answers.len(), 7);
    let answer = |n: u8| answers[&format!("{:?}", correlation(n))].clone();
    // Every answer names its stream (clients read it), and echoes the expectation.
    assert_eq!(answer(1).stream_identifier, stream(b"b-1"));
    assert_eq!(
        answer(1).expected_stream_position,
        Some(batch_append_resp::ExpectedStreamPosition::NoStream(()))
    );
    assert!(answer(4).stream_identifier.is_some());
    let Some(batch_append_resp::Result::Success(first)) = answer(1).result else {
        panic!("1 failed");
    };
    let Some(batch_append_resp::Result::Success(last)) = answer(7).result else {
        panic!("7 failed");
    };
    use batch_append_resp::success::PositionOption;
    let (Some(PositionOption::Position(p1)), Some(PositionOption::Position(p7))) =
        (first.position_option, last.position_option)
    else {
        panic!("appends with events have positions");
    };
    assert!(p1.commit_position < p7.commit_position);
    let result = |n: u8| {
        answers[&format!("{:?}", correlation(n))]
            .result
            .clone()
            .unwrap()
    };
    let success_revision = |n: u8| match result(n) {
        batch_append_resp::Result::Success(s) => s.current_revision_option,
        other => panic!("{n}: expected success, got {other:?}"),
    };
    use batch_append_resp::success::CurrentRevisionOption::CurrentRevision;
    assert_eq!(success_revision(1), Some(CurrentRevision(2)));
    assert_eq!(success_revision(2), Some(CurrentRevision(0)));
    assert_eq!(success_revision(7), Some(CurrentRevision(3)));
    let error = |n: u8| match result(n) {
        batch_append_resp::Result::Error(e) => e,
        other => panic!("{n}: expected an error, got {other:?}"),
    };
    let conflict = error(3);
    assert_eq!(conflict.code, Code::FailedPrecondition as i32);
    let detail = conflict.details.unwrap();
    assert!(
        detail
            .type_url
            .ends_with("/event_store.client.WrongExpectedVersion")
    );
    let detail = <WrongExpectedVersion as prost::Message>::decode(detail.value.as_slice()).unwrap();
    assert_eq!(
        detail.current_stream_revision_option,
        Some(CurrentStreamRevisionOption::CurrentStreamRevision(0))
    );
    assert_eq!(error(4).code, Code::InvalidArgument as i32);
    assert!(
        error(5)
            .details
            .unwrap()
            .type_url
            .ends_with("/event_store.client.StreamDeleted")
    );
    assert!(
        error(6)
            .details
            .unwrap()
            .type_url
            .ends_with("/event_store.client.Timeout")
    );

    // What was stored: 1 and 7 in b-1 in order, 2 in b-2, nothing else.
    let types = |name: &str| {
        let store = store.clone();
        let name = name.to_owned();
        async move {
            futures_util::StreamExt::collect::<Vec<_>>(sirenia::EventStore::read_stream(
                &store,
                &sirenia::StreamId::new(name).unwrap(),
                sirenia::ReadStream::forward(),
            ))
            .await
            .into_iter()
            .map(|e| e.unwrap().event_type)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(types("b-1").await, ["A", "B", "D", "I"]);
    assert_eq!(types("b-2").await, ["C"]);
    assert!(types("b-3").await.is_empty());

    // A request without a correlation id ends the call.
    let bad = BatchAppendReq {
        correlation_id: None,
        options: None,
        proposed_messages: vec![],
        is_final: true,
    };
    let mut responses = c
        .batch_append(tokio_stream::iter(vec![bad]))
        .await
        .unwrap()
        .into_inner();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_append_limits() {
    use sirenia::limits::{MAX_APPEND_BYTES, MAX_EVENT_BYTES};
    use sirenia_grpc::proto::streams::batch_append_req::options::ExpectedStreamPosition as E;
    use sirenia_grpc::proto::streams::{BatchAppendReq, batch_append_resp};

    let store = InMemoryStore::new();
    let server = start(store.clone(), ServeOptions::default()).await;
    let mut c = client(server.port).await;
    let megabyte = Bytes::from(vec![7u8; MAX_EVENT_BYTES]);
    let big = |n: usize| {
        (0..n)
            .map(|_| {
                let mut e = batch_event("Big");
                e.data = megabyte.clone();
                e
            })
            .collect::<Vec<_>>()
    };
    let request = |n: u8, first: bool, events, is_final| BatchAppendReq {
        correlation_id: correlation(n),
        options: first.then(|| batch_options(b"big-1", E::Any(()), None)),
        proposed_messages: events,
        is_final,
    };
    // 1: three largest events in one request (as the Node client packs them) go through.
    // 2: an append growing past the append-size limit is refused with its detail.
    let past_limit = MAX_APPEND_BYTES / MAX_EVENT_BYTES / 3 + 1;
    let mut requests = vec![request(1, true, big(3), true)];
    for i in 0..past_limit {
        requests.push(request(2, i == 0, big(3), i + 1 == past_limit));
    }
    let mut responses = c
        .batch_append(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut results = std::collections::HashMap::new();
    while let Some(r) = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap()
    {
        results.insert(format!("{:?}", r.correlation_id), r.result.unwrap());
    }
    assert!(matches!(
        results[&format!("{:?}", correlation(1))],
        batch_append_resp::Result::Success(_)
    ));
    let batch_append_resp::Result::Error(refused) = &results[&format!("{:?}", correlation(2))]
    else {
        panic!("an append past the size limit was written");
    };
    assert!(
        refused
            .details
            .as_ref()
            .unwrap()
            .type_url
            .ends_with("/event_store.client.MaximumAppendSizeExceeded")
    );
    let stored = futures_util::StreamExt::collect::<Vec<_>>(sirenia::EventStore::read_stream(
        &store,
        &sirenia::StreamId::new("big-1").unwrap(),
        sirenia::ReadStream::forward(),
    ))
    .await;
    assert_eq!(stored.len(), 3);

    // Appends left open past the call's byte budget end the call.
    let per_append = sirenia_grpc::MAX_BATCH_BYTES_OPEN / 3 / MAX_EVENT_BYTES + 1;
    let mut requests = Vec::new();
    for n in 10..13u8 {
        for i in 0..per_append.div_ceil(3) {
            requests.push(request(n, i == 0, big(3), false));
        }
    }
    let mut responses = c
        .batch_append(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("bytes of appends open"),
        "{status:?}"
    );
}
