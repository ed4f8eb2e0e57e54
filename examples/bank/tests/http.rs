//! The service over real HTTP on a random port, on the embedded store and on PostgreSQL: every
//! endpoint and error code, `If-Match` races, idempotent replays, metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, Server, get, open_account, post, send};
use serde_json::{Value, json};

/// One test per backend for each scenario.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    account_lifecycle,
    reads_by_version_and_time,
    events_paging_and_metadata,
    if_match_conflicts,
    if_match_races_keep_every_acknowledged_operation,
    idempotent_replays,
    concurrent_repeats_of_one_key_append_once,
    error_answers,
    health_and_metrics,
    read_model_lists_accounts,
    transfers_complete_or_fail_and_conserve_money,
);

/// Polls a transfer until it leaves `pending`.
async fn settled(addr: std::net::SocketAddr, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let t = get(addr, &format!("/transfers/{id}")).await;
        assert_eq!(t.status, 200, "{}", String::from_utf8_lossy(&t.body));
        let body = t.json();
        if body["status"] != "pending" {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "transfer {id} still pending"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn transfer(addr: std::net::SocketAddr, from: &str, to: &str, amount: u64) -> String {
    let r = post(
        addr,
        "/transfers",
        &json!({ "from": from, "to": to, "amount": amount }),
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/transfers/{id}").as_str())
    );
    id
}

async fn balance(addr: std::net::SocketAddr, id: &str) -> u64 {
    get(addr, &format!("/accounts/{id}")).await.json()["balance"]
        .as_u64()
        .unwrap()
}

async fn transfers_complete_or_fail_and_conserve_money(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let a = open_account(addr, "A").await;
    let b = open_account(addr, "B").await;
    let closed = open_account(addr, "C").await;
    send(
        addr,
        "POST",
        &format!("/accounts/{closed}/close"),
        &[],
        None,
    )
    .await;
    post(
        addr,
        &format!("/accounts/{a}/deposits"),
        &json!({ "amount": 100 }),
        &[],
    )
    .await;

    let ok = transfer(addr, &a, &b, 30).await;
    let t = settled(addr, &ok).await;
    assert_eq!(
        t,
        json!({ "id": ok, "from": a, "to": b, "amount": 30, "status": "completed", "reason": null })
    );
    assert_eq!((balance(addr, &a).await, balance(addr, &b).await), (70, 30));

    let poor = transfer(addr, &b, &a, 31).await;
    let t = settled(addr, &poor).await;
    assert_eq!(
        (t["status"].as_str(), t["reason"].as_str()),
        (Some("failed"), Some("insufficient_funds"))
    );

    // To a closed or missing account: accepted, then refunded and failed.
    let to_closed = transfer(addr, &a, &closed, 20).await;
    let t = settled(addr, &to_closed).await;
    assert_eq!(
        (t["status"].as_str(), t["reason"].as_str()),
        (Some("failed"), Some("account_closed"))
    );
    let missing = uuid::Uuid::now_v7().to_string();
    let to_missing = transfer(addr, &a, &missing, 20).await;
    let t = settled(addr, &to_missing).await;
    assert_eq!(
        (t["status"].as_str(), t["reason"].as_str()),
        (Some("failed"), Some("account_not_found"))
    );
    assert_eq!(
        (balance(addr, &a).await, balance(addr, &b).await),
        (70, 30),
        "refunded"
    );

    // Bad requests.
    for (body, status, code) in [
        (
            json!({ "from": a, "to": a, "amount": 1 }),
            422,
            "same_account",
        ),
        (
            json!({ "from": a, "to": b, "amount": 0 }),
            422,
            "invalid_amount",
        ),
        (
            json!({ "from": "x", "to": b, "amount": 1 }),
            400,
            "invalid_id",
        ),
        (json!({ "from": a, "to": b }), 400, "invalid_request"),
        (
            json!({ "from": a, "to": b, "amount": 1, "memo": "x" }),
            400,
            "invalid_request",
        ),
    ] {
        let r = post(addr, "/transfers", &body, &[]).await;
        assert_eq!((r.status, r.error().as_str()), (status, code), "{body}");
    }
    let r = get(addr, &format!("/transfers/{}", uuid::Uuid::now_v7())).await;
    assert_eq!((r.status, r.error()), (404, "transfer_not_found".into()));
    let r = get(addr, "/transfers/nope").await;
    assert_eq!(r.status, 400);
    // An idempotent transfer request runs once.
    let key = [("Idempotency-Key", "tr-1")];
    let body = json!({ "from": a, "to": b, "amount": 5 });
    let first = post(addr, "/transfers", &body, &key).await;
    let again = post(addr, "/transfers", &body, &key).await;
    assert_eq!(first.json(), again.json());
    settled(addr, first.json()["id"].as_str().unwrap()).await;
    assert_eq!((balance(addr, &a).await, balance(addr, &b).await), (65, 35));
}

async fn read_model_lists_accounts(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let mut ids = Vec::new();
    for owner in ["Ada", "Grace", "Edsger"] {
        ids.push(open_account(addr, owner).await);
    }
    post(
        addr,
        &format!("/accounts/{}/deposits", ids[0]),
        &json!({ "amount": 70 }),
        &[],
    )
    .await;
    post(
        addr,
        &format!("/accounts/{}/withdrawals", ids[0]),
        &json!({ "amount": 20 }),
        &[],
    )
    .await;
    let closed = send(
        addr,
        "POST",
        &format!("/accounts/{}/close", ids[2]),
        &[],
        None,
    )
    .await;
    let position = closed.json()["position"].as_u64().unwrap();
    let list = get(addr, &format!("/accounts?min_position={position}")).await;
    assert_eq!(list.status, 200, "{}", String::from_utf8_lossy(&list.body));
    let rows = list.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(
        row(&ids[0]),
        json!({ "id": ids[0], "owner": "Ada", "balance": 50, "status": "open" })
    );
    assert_eq!(row(&ids[1])["balance"], 0);
    assert_eq!(row(&ids[2])["status"], "closed");
    // Paging by id.
    let mut sorted = ids.clone();
    sorted.sort();
    let first = get(addr, &format!("/accounts?min_position={position}&limit=2"))
        .await
        .json();
    assert_eq!(first.as_array().unwrap().len(), 2);
    assert_eq!(first[0]["id"], sorted[0]);
    let rest = get(addr, &format!("/accounts?after={}&limit=2", sorted[1]))
        .await
        .json();
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["id"], sorted[2]);
    for bad in [
        "limit=0",
        "limit=1001",
        "min_position=-1",
        "min_position=x",
        "colour=red",
    ] {
        let r = get(addr, &format!("/accounts?{bad}")).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_query".into()),
            "{bad}"
        );
    }
    // A position the log has not reached: 503 after the wait.
    let r = get(
        addr,
        &format!("/accounts?min_position={}", position * 1000 + 1_000_000),
    )
    .await;
    assert_eq!((r.status, r.error()), (503, "not_caught_up".into()));
}

async fn account_lifecycle(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let opened = post(addr, "/accounts", &json!({ "owner": "Ada" }), &[]).await;
    assert_eq!(opened.status, 201);
    let body = opened.json();
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(body["version"], 1);
    assert!(body["position"].as_u64().unwrap() >= 1);
    assert_eq!(
        opened.header("location").unwrap(),
        format!("/accounts/{id}")
    );

    let path = |op: &str| format!("/accounts/{id}/{op}");
    let deposit = post(addr, &path("deposits"), &json!({ "amount": 1000 }), &[]).await;
    assert_eq!(deposit.status, 200);
    let d = deposit.json();
    assert_eq!(
        (d["id"].as_str(), d["version"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    assert_eq!(d["balance"], 1000);
    assert!(d["position"].as_u64() > body["position"].as_u64());

    let overdraft = post(addr, &path("withdrawals"), &json!({ "amount": 1001 }), &[]).await;
    assert_eq!(
        (overdraft.status, overdraft.error()),
        (422, "insufficient_funds".into())
    );
    let withdrawn = post(addr, &path("withdrawals"), &json!({ "amount": 400 }), &[]).await;
    assert_eq!(
        (withdrawn.status, withdrawn.json()["balance"].clone()),
        (200, json!(600))
    );

    let not_zero = send(addr, "POST", &path("close"), &[], None).await;
    assert_eq!(
        (not_zero.status, not_zero.error()),
        (422, "balance_not_zero".into())
    );
    post(addr, &path("withdrawals"), &json!({ "amount": 600 }), &[]).await;
    let closed = send(addr, "POST", &path("close"), &[], None).await;
    assert_eq!(
        closed.status,
        200,
        "{}",
        String::from_utf8_lossy(&closed.body)
    );
    assert_eq!(closed.json()["version"], 5);

    for op in ["deposits", "withdrawals"] {
        let r = post(addr, &path(op), &json!({ "amount": 1 }), &[]).await;
        assert_eq!(
            (r.status, r.error()),
            (422, "account_closed".into()),
            "{op}"
        );
    }
    let again = send(addr, "POST", &path("close"), &[], None).await;
    assert_eq!(
        (again.status, again.error()),
        (422, "account_closed".into())
    );

    let state = get(addr, &format!("/accounts/{id}")).await;
    assert_eq!(state.status, 200);
    assert_eq!(state.header("etag"), Some("\"5\""));
    assert_eq!(
        state.json(),
        json!({ "id": id, "owner": "Ada", "balance": 0, "status": "closed", "version": 5 })
    );

    // Unknown accounts are 404 on every route; malformed ids are 400.
    let unknown = uuid::Uuid::now_v7();
    for (method, route) in [
        ("GET", format!("/accounts/{unknown}")),
        ("GET", format!("/accounts/{unknown}/events")),
        ("POST", format!("/accounts/{unknown}/close")),
    ] {
        let r = send(addr, method, &route, &[], None).await;
        assert_eq!(
            (r.status, r.error()),
            (404, "account_not_found".into()),
            "{route}"
        );
    }
    for op in ["deposits", "withdrawals"] {
        let r = post(
            addr,
            &format!("/accounts/{unknown}/{op}"),
            &json!({"amount": 5}),
            &[],
        )
        .await;
        assert_eq!((r.status, r.error()), (404, "account_not_found".into()));
        let r = post(
            addr,
            &format!("/accounts/not-a-uuid/{op}"),
            &json!({"amount": 5}),
            &[],
        )
        .await;
        assert_eq!((r.status, r.error()), (400, "invalid_id".into()));
    }
    let r = get(addr, "/accounts/12345").await;
    assert_eq!((r.status, r.error()), (400, "invalid_id".into()));
}

async fn reads_by_version_and_time(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let id = open_account(addr, "Grace").await;
    for amount in [100, 20, 3] {
        post(
            addr,
            &format!("/accounts/{id}/deposits"),
            &json!({ "amount": amount }),
            &[],
        )
        .await;
    }
    let at = |v: u64| format!("/accounts/{id}?version={v}");
    let v2 = get(addr, &at(2)).await;
    assert_eq!((v2.status, v2.json()["balance"].clone()), (200, json!(100)));
    assert_eq!(v2.json()["version"], 2);
    assert_eq!(v2.header("etag"), Some("\"2\""));
    assert_eq!(get(addr, &at(4)).await.json()["balance"], 123);
    let beyond = get(addr, &at(5)).await;
    assert_eq!(
        (beyond.status, beyond.error()),
        (404, "version_not_found".into())
    );
    assert_eq!(get(addr, &at(0)).await.status, 404);
    for bad in [
        "version=-1",
        "version=abc",
        "version=1&as_of=2026-01-01T00:00:00Z",
        "colour=red",
    ] {
        let r = get(addr, &format!("/accounts/{id}?{bad}")).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_query".into()),
            "{bad}"
        );
    }

    // As of the instant each event was recorded: the state right after it.
    let events = get(addr, &format!("/accounts/{id}/events")).await.json();
    let events = events.as_array().unwrap();
    let mut expected = 0;
    for (i, event) in events.iter().enumerate() {
        expected += event["data"]["amount"].as_u64().unwrap_or(0);
        let recorded_at = event["recorded_at"].as_str().unwrap();
        let r = get(addr, &format!("/accounts/{id}?as_of={recorded_at}")).await;
        assert_eq!(r.status, 200, "{recorded_at}");
        // Several events may share a microsecond: as of it, all of them are in.
        let version = r.json()["version"].as_u64().unwrap();
        assert!(version > i as u64);
        if version == i as u64 + 1 {
            assert_eq!(r.json()["balance"], expected);
        }
    }
    let before = sirenia::Timestamp::parse_rfc3339(events[0]["recorded_at"].as_str().unwrap())
        .unwrap()
        .as_micros()
        - 1;
    let before = sirenia::Timestamp::from_micros(before).to_string();
    let r = get(addr, &format!("/accounts/{id}?as_of={before}")).await;
    assert_eq!((r.status, r.error()), (404, "account_not_found".into()));
    let r = get(addr, &format!("/accounts/{id}?as_of=yesterday")).await;
    assert_eq!((r.status, r.error()), (400, "invalid_query".into()));
}

async fn events_paging_and_metadata(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let id = open_account(addr, "Edsger").await;
    for amount in 1..=4 {
        let r = post(
            addr,
            &format!("/accounts/{id}/deposits"),
            &json!({ "amount": amount }),
            &[("X-Correlation-Id", &format!("corr-{amount}"))],
        )
        .await;
        assert_eq!(
            r.header("x-correlation-id"),
            Some(format!("corr-{amount}").as_str())
        );
    }
    let all = get(addr, &format!("/accounts/{id}/events")).await.json();
    let all = all.as_array().unwrap().clone();
    assert_eq!(all.len(), 5);
    for (i, event) in all.iter().enumerate() {
        assert_eq!(event["revision"], i);
        assert_eq!(event["schema_version"], 1);
        assert!(event["position"].as_u64().unwrap() >= 1);
        assert!(event["recorded_at"].as_str().unwrap().ends_with('Z'));
        let causation = event["metadata"]["causation_id"].as_str().unwrap();
        assert!(!causation.is_empty());
    }
    assert_eq!(all[0]["type"], "AccountOpened");
    assert_eq!(all[0]["data"], json!({ "owner": "Edsger" }));
    assert_eq!(all[3]["type"], "MoneyDeposited");
    assert_eq!(all[3]["data"], json!({ "amount": 3 }));
    assert_eq!(all[3]["metadata"]["correlation_id"], "corr-3");

    let page = get(addr, &format!("/accounts/{id}/events?from=2&limit=2"))
        .await
        .json();
    assert_eq!(page.as_array().unwrap(), &all[2..4].to_vec());
    let tail = get(addr, &format!("/accounts/{id}/events?from=4&limit=1000"))
        .await
        .json();
    assert_eq!(tail.as_array().unwrap(), &all[4..].to_vec());
    let past = get(addr, &format!("/accounts/{id}/events?from=99")).await;
    assert_eq!((past.status, past.json()), (200, json!([])));
    for bad in [
        "limit=0",
        "limit=1001",
        "from=-1",
        "from=x",
        "limit=1.5",
        "size=3",
    ] {
        let r = get(addr, &format!("/accounts/{id}/events?{bad}")).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_query".into()),
            "{bad}"
        );
    }
}

async fn if_match_conflicts(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let id = open_account(addr, "Barbara").await;
    let deposit = |version: &'static str| {
        let path = format!("/accounts/{id}/deposits");
        async move {
            post(
                addr,
                &path,
                &json!({ "amount": 10 }),
                &[("If-Match", version)],
            )
            .await
        }
    };
    let ok = deposit("\"1\"").await;
    assert_eq!((ok.status, ok.json()["version"].clone()), (200, json!(2)));
    let stale = deposit("\"1\"").await;
    assert_eq!(stale.status, 412);
    let body = stale.json();
    assert_eq!(
        (
            body["error"].as_str(),
            body["expected"].as_u64(),
            body["actual"].as_u64()
        ),
        (Some("version_conflict"), Some(1), Some(2))
    );
    assert!(body["message"].is_string());
    assert_eq!(deposit("W/\"2\"").await.status, 200);
    for bad in ["\"x\"", "\"\"", "*", "\"-1\""] {
        let r = deposit(bad).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_header".into()),
            "{bad}"
        );
    }
    let close = send(
        addr,
        "POST",
        &format!("/accounts/{id}/close"),
        &[("If-Match", "\"1\"")],
        None,
    )
    .await;
    assert_eq!(close.status, 412);
    // If-Match on an account that does not exist: it is not there.
    let unknown = uuid::Uuid::now_v7();
    let r = post(
        addr,
        &format!("/accounts/{unknown}/deposits"),
        &json!({ "amount": 1 }),
        &[("If-Match", "\"3\"")],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        get(addr, &format!("/accounts/{id}")).await.json()["balance"],
        20
    );
}

/// Many clients race on one account, half with `If-Match` (retrying on 412 after re-reading),
/// half without (the service retries); the balance is exactly the sum of what was
/// acknowledged.
async fn if_match_races_keep_every_acknowledged_operation(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let id = open_account(addr, "Alan").await;
    post(
        addr,
        &format!("/accounts/{id}/deposits"),
        &json!({ "amount": 1_000_000 }),
        &[],
    )
    .await;
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut net: i64 = 0;
            let mut conflicts = 0;
            for i in 0..12u64 {
                let withdraw = (client + i) % 3 == 0;
                let (op, amount) = if withdraw {
                    ("withdrawals", 7)
                } else {
                    ("deposits", 11)
                };
                let path = format!("/accounts/{id}/{op}");
                loop {
                    let reply = if client % 2 == 0 {
                        let version = get(addr, &format!("/accounts/{id}"))
                            .await
                            .header("etag")
                            .unwrap()
                            .to_owned();
                        post(
                            addr,
                            &path,
                            &json!({ "amount": amount }),
                            &[("If-Match", &version)],
                        )
                        .await
                    } else {
                        post(addr, &path, &json!({ "amount": amount }), &[]).await
                    };
                    match reply.status {
                        200 => {
                            net += if withdraw { -amount } else { amount };
                            break;
                        }
                        412 | 409 => conflicts += 1,
                        other => panic!(
                            "unexpected {other}: {}",
                            String::from_utf8_lossy(&reply.body)
                        ),
                    }
                }
            }
            (net, conflicts)
        }));
    }
    let mut net = 0i64;
    for task in tasks {
        net += task.await.unwrap().0;
    }
    let state = get(addr, &format!("/accounts/{id}")).await.json();
    assert_eq!(state["balance"].as_i64().unwrap(), 1_000_000 + net);
    assert_eq!(state["version"].as_u64().unwrap(), 2 + 8 * 12);
}

async fn idempotent_replays(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    // Opening with a key: the repeat answers with the same account and opens nothing.
    let first = post(
        addr,
        "/accounts",
        &json!({ "owner": "Ada" }),
        &[("Idempotency-Key", "open-1")],
    )
    .await;
    let head = server.head().await;
    let repeat = post(
        addr,
        "/accounts",
        &json!({ "owner": "Ada" }),
        &[("Idempotency-Key", "open-1")],
    )
    .await;
    assert_eq!((first.status, repeat.status), (201, 201));
    assert_eq!(first.json(), repeat.json());
    assert_eq!(first.header("location"), repeat.header("location"));
    assert_eq!(repeat.header("idempotent-replayed"), Some("true"));
    assert_eq!(server.head().await, head, "a replay appended something");
    let id = first.json()["id"].as_str().unwrap().to_owned();

    let deposits = format!("/accounts/{id}/deposits");
    let key = [("Idempotency-Key", "dep-1")];
    let one = post(addr, &deposits, &json!({ "amount": 50 }), &key).await;
    let head = server.head().await;
    let two = post(addr, &deposits, &json!({ "amount": 50 }), &key).await;
    assert_eq!((one.status, two.status), (200, 200));
    assert_eq!(one.json(), two.json());
    assert_eq!(server.head().await, head);
    // Same JSON, other formatting: still the same request.
    let spaced = send(
        addr,
        "POST",
        &deposits,
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "dep-1"),
        ],
        Some(b"{ \"amount\" :  50 }"),
    )
    .await;
    assert_eq!((spaced.status, spaced.json()), (200, one.json()));
    // Same key, another body or another route: refused, nothing appended.
    let other = post(addr, &deposits, &json!({ "amount": 51 }), &key).await;
    assert_eq!(
        (other.status, other.error()),
        (422, "idempotency_key_reused".into())
    );
    let other_route = post(
        addr,
        &format!("/accounts/{id}/withdrawals"),
        &json!({ "amount": 50 }),
        &key,
    )
    .await;
    assert_eq!(other_route.error(), "idempotency_key_reused");
    assert_eq!(server.head().await, head);

    // An error answer is replayed too, even once the request would now succeed.
    let withdraw = format!("/accounts/{id}/withdrawals");
    let wkey = [("Idempotency-Key", "wd-1")];
    let refused = post(addr, &withdraw, &json!({ "amount": 80 }), &wkey).await;
    assert_eq!(
        (refused.status, refused.error()),
        (422, "insufficient_funds".into())
    );
    post(addr, &deposits, &json!({ "amount": 100 }), &[]).await;
    let replayed = post(addr, &withdraw, &json!({ "amount": 80 }), &wkey).await;
    assert_eq!((replayed.status, replayed.json()), (422, refused.json()));
    assert_eq!(
        get(addr, &format!("/accounts/{id}")).await.json()["balance"],
        150
    );

    let close_key = [("Idempotency-Key", "close-1")];
    let r = send(
        addr,
        "POST",
        &format!("/accounts/{id}/close"),
        &close_key,
        None,
    )
    .await;
    assert_eq!(r.error(), "balance_not_zero");

    // A malformed request with a key is refused and stores nothing: the corrected request
    // with the same key then runs. A deeply nested body is no different.
    let before = server.event_count().await;
    let fixed_key = [("Idempotency-Key", "typo-1")];
    let typo = post(addr, &deposits, &json!({ "amonut": 5 }), &fixed_key).await;
    assert_eq!(typo.status, 400);
    let deep = format!("{{\"amount\": {}1{}}}", "[".repeat(120), "]".repeat(120));
    for _ in 0..2 {
        let r = send(
            addr,
            "POST",
            &deposits,
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", "deep-1"),
            ],
            Some(deep.as_bytes()),
        )
        .await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(
        server.event_count().await,
        before,
        "a malformed request stored something"
    );
    let fixed = post(addr, &deposits, &json!({ "amount": 5 }), &fixed_key).await;
    assert_eq!(
        fixed.status,
        200,
        "{}",
        String::from_utf8_lossy(&fixed.body)
    );

    for bad in ["", &"k".repeat(201), "tab\there", "naïve"] {
        let r = post(
            addr,
            &deposits,
            &json!({ "amount": 1 }),
            &[("Idempotency-Key", bad)],
        )
        .await;
        assert_eq!(r.status, 400, "{bad:?}");
    }
}

async fn concurrent_repeats_of_one_key_append_once(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let id = open_account(addr, "Ken").await;
    let before = server.event_count().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let path = format!("/accounts/{id}/deposits");
        tasks.push(tokio::spawn(async move {
            post(
                addr,
                &path,
                &json!({ "amount": 5 }),
                &[("Idempotency-Key", "same")],
            )
            .await
        }));
    }
    let mut bodies = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        bodies.push(reply.json());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    let state = get(addr, &format!("/accounts/{id}")).await.json();
    assert_eq!(
        (state["balance"].as_u64(), state["version"].as_u64()),
        (Some(5), Some(2))
    );
    // One deposit event and one stored answer.
    assert_eq!(server.event_count().await - before, 2);
}

/// A request (path, headers, body) and the status and error code it must get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

async fn error_answers(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let id = open_account(addr, "Niklaus").await;
    let deposits = format!("/accounts/{id}/deposits");
    let before = server.event_count().await;
    let json_type = ("Content-Type", "application/json");

    let cases: Vec<Case<'_>> = vec![
        (
            "/accounts",
            vec![json_type],
            b"{\"owner\": ".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "/accounts",
            vec![json_type],
            b"not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "/accounts",
            vec![json_type],
            b"{\"owner\": 5}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/accounts",
            vec![json_type],
            b"{}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/accounts",
            vec![json_type],
            b"[]".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/accounts",
            vec![json_type],
            b"{\"owner\":\"a\",\"x\":1}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/accounts",
            vec![json_type],
            b"{\"owner\": \"\"}".to_vec(),
            422,
            "invalid_owner",
        ),
        (
            "/accounts",
            vec![json_type],
            b"{\"owner\": \"   \"}".to_vec(),
            422,
            "invalid_owner",
        ),
        (
            "/accounts",
            vec![],
            b"{\"owner\": \"a\"}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "/accounts",
            vec![("Content-Type", "text/plain")],
            b"{\"owner\":\"a\"}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": 0}".to_vec(),
            422,
            "invalid_amount",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": -5}".to_vec(),
            422,
            "invalid_amount",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": 1000000000001}".to_vec(),
            422,
            "invalid_amount",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": 99999999999999999999999999}".to_vec(),
            422,
            "invalid_amount",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": 1e400}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": 2.5}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": \"10\"}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": null}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            &deposits,
            vec![json_type],
            b"{\"amount\": 5, \"amount\": 6}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            &deposits,
            vec![json_type, ("X-Correlation-Id", "")],
            b"{\"amount\": 5}".to_vec(),
            400,
            "invalid_header",
        ),
    ];
    for (path, headers, body, status, code) in cases {
        let r = send(addr, "POST", path, &headers, Some(&body)).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (status, code),
            "{path} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(r.json()["message"].is_string());
    }
    let owner = "x".repeat(101);
    let r = post(addr, "/accounts", &json!({ "owner": owner }), &[]).await;
    assert_eq!((r.status, r.error()), (422, "invalid_owner".into()));
    let r = post(addr, "/accounts", &json!({ "owner": "é".repeat(100) }), &[]).await;
    assert_eq!(
        r.status, 201,
        "100 characters are allowed, whatever their bytes"
    );
    let before = before + 1;

    // Too large: answered whole with 413, even when the client sends it all.
    let big = vec![b' '; 64 * 1024 + 1];
    let r = send(addr, "POST", &deposits, &[json_type], Some(&big)).await;
    assert_eq!((r.status, r.error()), (413, "payload_too_large".into()));
    let huge = vec![b'7'; 3 * 1024 * 1024];
    let r = send(addr, "POST", "/accounts", &[json_type], Some(&huge)).await;
    assert_eq!((r.status, r.error()), (413, "payload_too_large".into()));

    // The framework's own answers are JSON too.
    let r = get(addr, "/nowhere").await;
    assert_eq!((r.status, r.error()), (404, "not_found".into()));
    let r = send(addr, "DELETE", &format!("/accounts/{id}"), &[], None).await;
    assert_eq!((r.status, r.error()), (405, "method_not_allowed".into()));
    let r = get(addr, &format!("/accounts/{id}/deposits")).await;
    assert_eq!(r.status, 405);
    let r = send(
        addr,
        "POST",
        &format!("/accounts/{id}/close"),
        &[json_type],
        Some(b"{\"a\":1}"),
    )
    .await;
    assert_eq!((r.status, r.error()), (400, "invalid_request".into()));

    // A correlation id is echoed, or made.
    let r = get(addr, "/health").await;
    assert!(!r.header("x-correlation-id").unwrap().is_empty());
    let r = send(
        addr,
        "GET",
        "/health",
        &[("X-Correlation-Id", "abc-123")],
        None,
    )
    .await;
    assert_eq!(r.header("x-correlation-id"), Some("abc-123"));

    assert_eq!(
        server.event_count().await,
        before,
        "a refused request changed the store"
    );
    assert_eq!(
        get(addr, &format!("/accounts/{id}")).await.json()["balance"],
        0
    );
}

async fn health_and_metrics(backend: Backend) {
    let server = Server::start(backend).await;
    let addr = server.addr;
    let r = get(addr, "/health").await;
    assert_eq!((r.status, r.json()), (200, json!({ "status": "ok" })));
    let id = open_account(addr, "Donald").await;
    post(
        addr,
        &format!("/accounts/{id}/withdrawals"),
        &json!({ "amount": 5 }),
        &[],
    )
    .await;
    post(
        addr,
        &format!("/accounts/{id}/deposits"),
        &json!({ "amount": 5 }),
        &[("If-Match", "\"9\"")],
    )
    .await;
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    for needle in [
        "sirenia_appends_total{outcome=\"ok\"}",
        "sirenia_events_appended_total",
        "sirenia_append_duration_seconds_bucket",
        "sirenia_head_position",
        "bank_commands_total{command=\"open\",outcome=\"ok\"}",
        "bank_commands_total{command=\"withdraw\",outcome=\"rejected\"}",
        "bank_commands_total{command=\"deposit\",outcome=\"conflict\"}",
        "bank_http_requests_total{status=\"201\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let _: Value = json!(null);
}

/// Two instances of the service on one PostgreSQL: writes through either are seen by both,
/// their If-Match and idempotency checks hold across them, one runs the read model and the
/// other waits on its checkpoint, and transfers settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_postgres() {
    let first = Server::start(Backend::Postgres).await;
    let (second, task) = first.another_instance().await;
    let a = first.addr;
    let id = open_account(a, "Shared").await;
    let r = post(
        second,
        &format!("/accounts/{id}/deposits"),
        &json!({ "amount": 70 }),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let state = get(a, &format!("/accounts/{id}")).await;
    assert_eq!(
        (state.json()["balance"].as_u64(), state.header("etag")),
        (Some(70), Some("\"2\""))
    );
    // If-Match across instances.
    let stale = post(
        second,
        &format!("/accounts/{id}/withdrawals"),
        &json!({ "amount": 1 }),
        &[("If-Match", "\"1\"")],
    )
    .await;
    assert_eq!(stale.status, 412);
    // The same idempotency key through both instances: one effect.
    let key = [("Idempotency-Key", "shared-1")];
    let one = post(
        a,
        &format!("/accounts/{id}/withdrawals"),
        &json!({ "amount": 5 }),
        &key,
    )
    .await;
    let two = post(
        second,
        &format!("/accounts/{id}/withdrawals"),
        &json!({ "amount": 5 }),
        &key,
    )
    .await;
    assert_eq!((one.status, one.json()), (two.status, two.json()));
    // The read model, whichever instance runs it.
    let position = one.json()["position"].as_u64().unwrap();
    for addr in [a, second] {
        let list = get(addr, &format!("/accounts?min_position={position}")).await;
        assert_eq!(list.status, 200, "{}", String::from_utf8_lossy(&list.body));
        assert_eq!(list.json()[0]["balance"], 65);
    }
    let other = open_account(second, "Other").await;
    let t = transfer(second, &id, &other, 15).await;
    assert_eq!(settled(a, &t).await["status"], "completed");
    assert_eq!(
        (balance(a, &id).await, balance(second, &other).await),
        (50, 15)
    );
    task.abort();
}
