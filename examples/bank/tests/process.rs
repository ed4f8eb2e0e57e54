//! The service binary as a child process: killed with SIGKILL under load and restarted, it has
//! lost no acknowledged operation; SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, Place, Process, get, post};
use serde_json::json;

/// Acknowledged deposits before the kill, across all clients.
const ACKNOWLEDGED_BEFORE_KILL: usize = 150;
/// Concurrent clients.
const CLIENTS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_9_under_load_loses_no_acknowledged_operation() {
    kill_9_under_load(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kill_9_under_load_loses_no_acknowledged_operation() {
    kill_9_under_load(Backend::Postgres).await;
}

/// Kill-and-restart rounds per store.
const ROUNDS: u64 = 3;

/// Every deposit has a unique amount (and an idempotency key naming it), so the events after
/// each restart tell exactly which requests took effect.
async fn kill_9_under_load(backend: Backend) {
    let place = Place::new(backend);
    let mut process = Process::start(&place).await;
    let opened = post(process.addr, "/accounts", &json!({ "owner": "Crash" }), &[]).await;
    assert_eq!(opened.status, 201);
    let id = opened.json()["id"].as_str().unwrap().to_owned();
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let sent = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    for round in 0..ROUNDS {
        load_then_kill(&mut process, &id, round, &acknowledged, &sent).await;
        process = Process::start(&place).await;
        let acknowledged = acknowledged.lock().unwrap().clone();
        let sent = sent.lock().unwrap().clone();
        check(process.addr, &id, &acknowledged, &sent).await;
    }
}

async fn load_then_kill(
    process: &mut Process,
    id: &str,
    round: u64,
    acknowledged: &Arc<Mutex<BTreeSet<u64>>>,
    sent: &Arc<Mutex<BTreeSet<u64>>>,
) {
    let addr = process.addr;
    let before = acknowledged.lock().unwrap().len();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (id, acknowledged, sent) = (id.to_owned(), acknowledged.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                // Unique across clients and rounds.
                let amount = 1 + client + CLIENTS * (i * ROUNDS + round);
                sent.lock().unwrap().insert(amount);
                let key = format!("dep-{amount}");
                let body = serde_json::to_vec(&json!({ "amount": amount })).unwrap();
                let request = format!(
                    "POST /accounts/{id}/deposits HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                );
                let mut bytes = request.into_bytes();
                bytes.extend_from_slice(&body);
                // Once the server is gone, connecting fails: the client stops. Contention
                // (409) is retried with the same key.
                loop {
                    match common::raw(addr, &bytes).await {
                        Some(reply) if reply.status == 200 => {
                            acknowledged.lock().unwrap().insert(amount);
                            break;
                        }
                        Some(reply) if reply.status == 409 => {}
                        Some(reply) => panic!(
                            "unexpected {}: {}",
                            reply.status,
                            String::from_utf8_lossy(&reply.body)
                        ),
                        None => return,
                    }
                }
            }
        }));
    }
    // Kill once enough deposits were acknowledged, while the clients keep sending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acknowledged.lock().unwrap().len() < before + ACKNOWLEDGED_BEFORE_KILL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "too few acknowledgements"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    process.child.start_kill().unwrap();
    process.child.wait().await.unwrap();
    for client in clients {
        client.await.unwrap();
    }
}

/// Every acknowledged deposit is stored exactly once, nothing unsent is, and the balance is
/// their sum.
async fn check(
    addr: std::net::SocketAddr,
    id: &str,
    acknowledged: &BTreeSet<u64>,
    sent: &BTreeSet<u64>,
) {
    let mut stored = Vec::new();
    let mut from = 0;
    let mut last_position = 0;
    loop {
        let page = get(
            addr,
            &format!("/accounts/{id}/events?from={from}&limit=1000"),
        )
        .await;
        assert_eq!(page.status, 200);
        let events = page.json().as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        from += events.len();
        last_position = events.last().unwrap()["position"].as_u64().unwrap();
        stored.extend(
            events
                .iter()
                .filter(|e| e["type"] == "MoneyDeposited")
                .map(|e| e["data"]["amount"].as_u64().unwrap()),
        );
    }
    let stored_set: BTreeSet<u64> = stored.iter().copied().collect();
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "a deposit was applied twice"
    );
    let lost: Vec<_> = acknowledged.difference(&stored_set).collect();
    assert!(lost.is_empty(), "acknowledged deposits lost: {lost:?}");
    assert!(stored_set.is_subset(sent), "a deposit nobody sent");
    let state = get(addr, &format!("/accounts/{id}")).await.json();
    assert_eq!(
        state["balance"].as_u64().unwrap(),
        stored.iter().sum::<u64>()
    );
    // The read model, kept by a projection killed along with the service, agrees exactly.
    let list = get(addr, &format!("/accounts?min_position={last_position}")).await;
    assert_eq!(list.status, 200, "{}", String::from_utf8_lossy(&list.body));
    let row = list.json()[0].clone();
    assert_eq!(
        (row["id"].as_str(), row["balance"].as_u64()),
        (Some(id), state["balance"].as_u64())
    );
    // Repeating an acknowledged request replays its answer and appends nothing.
    let last = *acknowledged.iter().next_back().unwrap();
    let again = post(
        addr,
        &format!("/accounts/{id}/deposits"),
        &json!({ "amount": last }),
        &[("Idempotency-Key", &format!("dep-{last}"))],
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let after = get(addr, &format!("/accounts/{id}")).await.json();
    assert_eq!(after["version"], state["version"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_cleanly() {
    let place = Place::new(Backend::Sqlite);
    let mut process = Process::start(&place).await;
    let opened = post(process.addr, "/accounts", &json!({ "owner": "Term" }), &[]).await;
    assert_eq!(opened.status, 201);
    let pid = process.child.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), process.child.wait())
        .await
        .expect("the service did not stop within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    // The file was released: a new instance opens it and finds the account.
    let restarted = Process::start(&place).await;
    let id = opened.json()["id"].as_str().unwrap().to_owned();
    let state = get(restarted.addr, &format!("/accounts/{id}")).await;
    assert_eq!(state.status, 200);
}

/// Transfers requested.
const TRANSFERS: usize = 200;
/// Accounts they move money between.
const ACCOUNTS: usize = 8;
/// Kill-and-restart rounds while transfers run.
const TRANSFER_KILLS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_transfers_survive_kill_9() {
    transfers_survive_kill_9(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transfers_survive_kill_9() {
    transfers_survive_kill_9(Backend::Postgres).await;
}

/// 200 concurrent transfers (some to a closed or a missing account) while the service — which
/// also runs the transfer processes — is killed with SIGKILL and restarted: afterwards every
/// transfer completed or failed with a reason, money is conserved, and each debit, credit and
/// refund was applied once.
async fn transfers_survive_kill_9(backend: Backend) {
    let place = Place::new(backend);
    let mut process = Process::start(&place).await;
    let addr = Arc::new(Mutex::new(process.addr));
    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        let id = common::open_account(process.addr, &format!("owner-{i}")).await;
        let r = post(
            process.addr,
            &format!("/accounts/{id}/deposits"),
            &json!({ "amount": 1000 }),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        accounts.push(id);
    }
    let closed = common::open_account(process.addr, "closed").await;
    assert_eq!(
        common::send(
            process.addr,
            "POST",
            &format!("/accounts/{closed}/close"),
            &[],
            None
        )
        .await
        .status,
        200
    );
    let missing = uuid::Uuid::now_v7().to_string();
    let total = 1000 * ACCOUNTS as u64;

    // Each transfer is requested with an idempotency key and retried until accepted.
    let mut clients = Vec::new();
    for i in 0..TRANSFERS {
        let from = accounts[i % ACCOUNTS].clone();
        let to = match i % 20 {
            7 => closed.clone(),
            13 => missing.clone(),
            _ => accounts[(i * 7 + 3) % ACCOUNTS].clone(),
        };
        let to = if to == from {
            accounts[(i + 1) % ACCOUNTS].clone()
        } else {
            to
        };
        let amount = 1 + (i as u64 * 37) % 300;
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let key = format!("transfer-{i}");
            let body =
                serde_json::to_vec(&json!({ "from": from, "to": to, "amount": amount })).unwrap();
            loop {
                let target = *addr.lock().unwrap();
                let request = format!(
                    "POST /transfers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                );
                let mut bytes = request.into_bytes();
                bytes.extend_from_slice(&body);
                match common::raw(target, &bytes).await {
                    Some(r) if r.status == 202 => {
                        return r.json()["id"].as_str().unwrap().to_owned();
                    }
                    Some(r) if r.status == 409 || r.status >= 500 => {}
                    Some(r) => panic!(
                        "unexpected {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ),
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for round in 0..TRANSFER_KILLS {
        tokio::time::sleep(Duration::from_millis(150 + 100 * round as u64)).await;
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
        process = Process::start(&place).await;
        *addr.lock().unwrap() = process.addr;
    }
    let mut ids = Vec::new();
    for client in clients {
        ids.push(client.await.unwrap());
    }
    let current = *addr.lock().unwrap();

    // Every transfer settles.
    let mut debited = 0u64;
    let mut credited = 0u64;
    let mut refunded = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let body = loop {
            let body = get(current, &format!("/transfers/{id}")).await.json();
            if body["status"] != "pending" {
                break body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "transfer {id} still pending"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match (body["status"].as_str(), body["reason"].as_str()) {
            (Some("completed"), None) => {
                debited += 1;
                credited += 1;
            }
            (Some("failed"), Some("insufficient_funds")) => {}
            (Some("failed"), Some("account_closed" | "account_not_found")) => {
                debited += 1;
                refunded += 1;
            }
            other => panic!("transfer {id} ended as {other:?}"),
        }
    }
    // Money is conserved; each step was applied once.
    let mut sum = 0u64;
    let (mut withdrawals, mut deposits) = (0u64, 0u64);
    for id in accounts.iter().chain([&closed]) {
        sum += get(current, &format!("/accounts/{id}")).await.json()["balance"]
            .as_u64()
            .unwrap();
        let events = get(current, &format!("/accounts/{id}/events?limit=1000"))
            .await
            .json();
        for e in events.as_array().unwrap() {
            match e["type"].as_str() {
                Some("MoneyWithdrawn") => withdrawals += 1,
                Some("MoneyDeposited") => deposits += 1,
                _ => {}
            }
        }
    }
    assert_eq!(sum, total, "money was created or lost");
    assert_eq!(withdrawals, debited, "a debit was applied twice or lost");
    assert_eq!(
        deposits - ACCOUNTS as u64,
        credited + refunded,
        "a credit or refund was applied twice or lost"
    );
}
