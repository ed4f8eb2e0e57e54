//! A generated corpus of bad requests (bad JSON, out-of-range and mistyped amounts, bad owners,
//! unknown fields, wrong content types, oversized bodies, bad ids, odd headers, bad queries,
//! unknown routes, raw protocol garbage) gets 4xx answers only, and changes nothing stored.
//!
//! The corpus is drawn from a fixed seed: every run sends the same requests.
//! `BANK_MALFORMED_CASES` sets how many (default 400 per store).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Server, get, open_account, post, raw};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

/// One bad request, as raw bytes.
#[derive(Debug, Clone)]
struct Bad {
    what: String,
    bytes: Vec<u8>,
    /// Whether the answer comes from the service (a JSON error body); the HTTP parser answers
    /// protocol garbage itself.
    json_answer: bool,
}

fn request(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: bank\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn json_headers() -> Vec<(String, String)> {
    vec![("Content-Type".into(), "application/json".into())]
}

/// JSON values that are not an amount (an integer from 1 to 10^12).
fn bad_amount() -> impl Strategy<Value = Value> {
    prop_oneof![
        (i64::MIN..=0).prop_map(Value::from),
        (1_000_000_000_001u64..=u64::MAX).prop_map(Value::from),
        (-1e6f64..1e6)
            .prop_filter("not whole", |f| f.fract() != 0.0)
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        prop::collection::vec(any::<u32>(), 0..3).prop_map(|v| json!(v)),
        Just(json!({ "amount": 5 })),
    ]
}

/// JSON values that are not an owner (a string of 1 to 100 characters, not blank, without
/// control characters).
fn bad_owner() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("")),
        "[ \t]{1,5}".prop_map(Value::from),
        "[a-z]{101,150}".prop_map(Value::from),
        "[a-z]{0,5}[\u{0}-\u{1f}][a-z]{0,5}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!(["Ada"])),
    ]
}

/// Text that is not JSON.
fn not_json() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "\\{\"amount\": [0-9]{1,5}".prop_map(String::into_bytes),
        "\\{\"owner\": \"[a-z]{1,5}".prop_map(String::into_bytes),
        Just(b"{\"amount\": 1e400}".to_vec()),
        Just(b"{'amount': 5}".to_vec()),
        Just(b"{\"amount\": 5,}".to_vec()),
    ]
    .prop_filter("must not parse", |b| {
        serde_json::from_slice::<Value>(b).is_err()
    })
}

/// Paths that are not a valid account id (percent-encoded, so any text fits).
fn bad_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,40}",
        "[0-9a-f]{32}x",
        any::<String>().prop_filter("not empty", |s| !s.is_empty()),
    ]
    .prop_filter("not a uuid", |s| uuid::Uuid::parse_str(s).is_err())
    .prop_map(|s| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>())
}

fn corpus(account: &str) -> impl Strategy<Value = Bad> {
    let account = account.to_owned();
    let op_path = {
        let account = account.clone();
        prop_oneof![Just("deposits"), Just("withdrawals")]
            .prop_map(move |op| format!("/accounts/{account}/{op}"))
    };
    let any_post_path = {
        let account = account.clone();
        prop_oneof![
            Just("/accounts".to_owned()),
            Just(format!("/accounts/{account}/deposits")),
            Just(format!("/accounts/{account}/withdrawals")),
        ]
    };
    prop_oneof![
        // Bodies that are not JSON.
        (any_post_path.clone(), not_json()).prop_map(|(path, body)| Bad {
            what: format!("not JSON to {path}"),
            bytes: request("POST", &path, &json_headers(), &body),
            json_answer: true,
        }),
        // Amounts that are not amounts, and unknown fields beside good ones.
        (op_path.clone(), bad_amount()).prop_map(|(path, amount)| {
            let body = serde_json::to_vec(&json!({ "amount": amount })).unwrap();
            Bad {
                what: format!("amount {amount} to {path}"),
                bytes: request("POST", &path, &json_headers(), &body),
                json_answer: true,
            }
        }),
        (op_path.clone(), "[a-z_]{1,10}")
            .prop_filter("unknown", |(_, f)| f != "amount")
            .prop_map(|(path, field)| {
                let body = format!("{{\"amount\": 5, \"{field}\": 1}}").into_bytes();
                Bad {
                    what: format!("unknown field {field}"),
                    bytes: request("POST", &path, &json_headers(), &body),
                    json_answer: true,
                }
            }),
        // Owners that are not owners.
        bad_owner().prop_map(|owner| {
            let body = serde_json::to_vec(&json!({ "owner": owner })).unwrap();
            Bad {
                what: format!("owner {owner}"),
                bytes: request("POST", "/accounts", &json_headers(), &body),
                json_answer: true,
            }
        }),
        // Good bodies with a wrong or missing content type.
        (
            any_post_path.clone(),
            prop_oneof![
                Just(None),
                Just(Some("text/plain")),
                Just(Some("application/xml")),
                Just(Some("application/jsonx")),
                Just(Some("multipart/form-data")),
            ]
        )
            .prop_map(|(path, content_type)| {
                let headers: Vec<(String, String)> = content_type
                    .map(|c| vec![("Content-Type".to_owned(), c.to_owned())])
                    .unwrap_or_default();
                let body = if path == "/accounts" {
                    b"{\"owner\": \"Ada\"}".to_vec()
                } else {
                    b"{\"amount\": 5}".to_vec()
                };
                Bad {
                    what: format!("content type {content_type:?} to {path}"),
                    bytes: request("POST", &path, &headers, &body),
                    json_answer: true,
                }
            }),
        // Bodies over the limit.
        (any_post_path.clone(), 65_537usize..200_000).prop_map(|(path, size)| Bad {
            what: format!("{size}-byte body to {path}"),
            bytes: request("POST", &path, &json_headers(), &vec![b' '; size]),
            json_answer: true,
        }),
        // Ids that are not ids.
        (
            bad_id(),
            prop_oneof![
                Just("deposits"),
                Just("withdrawals"),
                Just("close"),
                Just("")
            ]
        )
            .prop_map(|(id, op)| {
                let (method, path) = if op.is_empty() {
                    ("GET", format!("/accounts/{id}"))
                } else {
                    ("POST", format!("/accounts/{id}/{op}"))
                };
                Bad {
                    what: format!("{method} {path}"),
                    bytes: request(method, &path, &json_headers(), b"{\"amount\": 5}"),
                    json_answer: true,
                }
            }),
        // Odd headers on otherwise good requests.
        (
            op_path.clone(),
            prop_oneof![
                "[a-z\"]{1,6}".prop_map(|v| ("If-Match".to_owned(), v)),
                Just(("If-Match".to_owned(), "\"-1\"".to_owned())),
                Just((
                    "If-Match".to_owned(),
                    "\"99999999999999999999999\"".to_owned()
                )),
                "[a-z]{201,260}".prop_map(|v| ("Idempotency-Key".to_owned(), v)),
                "[a-z]{201,260}".prop_map(|v| ("X-Correlation-Id".to_owned(), v)),
                Just(("Idempotency-Key".to_owned(), "\u{e9}t\u{e9}".to_owned())),
            ]
        )
            .prop_filter("If-Match must not parse", |(_, (name, value))| {
                name != "If-Match" || value.trim_matches('"').parse::<u64>().is_err()
            })
            .prop_map(|(path, header)| {
                let mut headers = json_headers();
                headers.push(header.clone());
                Bad {
                    what: format!("header {header:?} on {path}"),
                    bytes: request("POST", &path, &headers, b"{\"amount\": 5}"),
                    json_answer: true,
                }
            }),
        // Bad query strings.
        prop_oneof![
            "version=[a-z-]{1,5}",
            "as_of=[a-z0-9]{1,10}",
            "limit=(0|1001|-1|x)",
            "from=(-1|x|1\\.5)",
            "x[a-z]{1,5}=1",
        ]
        .prop_filter("must not be a known good parameter", |q| {
            !q.starts_with("version=") || q["version=".len()..].parse::<u64>().is_err()
        })
        .prop_map({
            let account = account.clone();
            move |q| {
                let path = if q.starts_with("limit") || q.starts_with("from") {
                    format!("/accounts/{account}/events?{q}")
                } else {
                    format!("/accounts/{account}?{q}")
                };
                Bad {
                    what: format!("GET {path}"),
                    bytes: request("GET", &path, &[], b""),
                    json_answer: true,
                }
            }
        }),
        // Unknown routes and methods.
        (
            prop_oneof![
                Just("GET"),
                Just("PUT"),
                Just("DELETE"),
                Just("PATCH"),
                Just("POST")
            ],
            "/[a-z]{1,8}(/[a-z]{1,8})?"
        )
            .prop_filter("unknown", |(_, p)| p != "/accounts"
                && p != "/health"
                && p != "/metrics")
            .prop_map(|(method, path)| Bad {
                what: format!("{method} {path}"),
                bytes: request(method, &path, &json_headers(), b"{}"),
                json_answer: true,
            }),
        // Not HTTP at all.
        prop::collection::vec(any::<u8>(), 1..200)
            .prop_filter("not a request line", |b| !b.starts_with(b"GET ")
                && !b.starts_with(b"POST "))
            .prop_map(|mut bytes| {
                bytes.extend_from_slice(b"\r\n\r\n");
                Bad {
                    what: "garbage".to_owned(),
                    bytes,
                    json_answer: false,
                }
            }),
    ]
}

fn cases() -> usize {
    std::env::var("BANK_MALFORMED_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

async fn bad_requests_change_nothing(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let account = open_account(addr, "Target").await;
    post(
        addr,
        &format!("/accounts/{account}/deposits"),
        &json!({ "amount": 100 }),
        &[],
    )
    .await;
    let state = get(addr, &format!("/accounts/{account}")).await.json();
    let events = server.event_count().await;

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = corpus(&account);
    for _ in 0..cases() {
        let bad = strategy.new_tree(&mut runner).unwrap().current();
        match raw(addr, &bad.bytes).await {
            Some(reply) => {
                assert!(
                    (400..500).contains(&reply.status),
                    "{}: got {} {}",
                    bad.what,
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                );
                if bad.json_answer {
                    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
                        panic!(
                            "{}: {} answer is not JSON ({e}): {:?}",
                            bad.what,
                            reply.status,
                            String::from_utf8_lossy(&reply.body)
                        )
                    });
                    assert!(
                        body["error"].is_string() && body["message"].is_string(),
                        "{}",
                        bad.what
                    );
                }
            }
            // The HTTP parser may just close on garbage; the service must answer the rest.
            None => assert!(!bad.json_answer, "{}: no answer", bad.what),
        }
    }
    assert_eq!(
        server.event_count().await,
        events,
        "a bad request changed the store"
    );
    assert_eq!(
        get(addr, &format!("/accounts/{account}")).await.json(),
        state
    );
    assert_eq!(
        get(addr, "/health").await.status,
        200,
        "the service still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_requests_get_4xx_and_change_nothing() {
    bad_requests_change_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_requests_get_4xx_and_change_nothing() {
    bad_requests_change_nothing(Backend::Postgres).await;
}
