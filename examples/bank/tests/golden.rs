//! Golden files: the stored JSON of every schema version the bank's events have had
//! (`tests/golden/<aggregate>-v<N>.ndjson`), loaded through today's codec. A change to an
//! event that would strand stored events fails here; the fix is an upcaster, and a new golden
//! file for the new version beside the old ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bank::account::AccountEvent;
use bank::transfer::TransferEvent;
use sirenia::{DomainEvent, JsonCodec, NewEvent, RecordedEvent, StreamId, Timestamp};

fn recorded(line: &str, n: u64) -> RecordedEvent {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let mut event = NewEvent::json(v["type"].as_str().unwrap(), &v["data"]);
    event.schema_version = u16::try_from(v["schema_version"].as_u64().unwrap()).unwrap();
    RecordedEvent::from_new(
        event,
        StreamId::new("golden-1").unwrap(),
        n,
        sirenia::Position(n + 1),
        Timestamp::from_micros(1_700_000_000_000_000),
    )
}

fn decode_all<E: DomainEvent + std::fmt::Debug>(file: &str) -> Vec<E> {
    let codec = JsonCodec::<E>::new();
    let text = std::fs::read_to_string(format!(
        "{}/tests/golden/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    text.lines()
        .enumerate()
        .flat_map(|(i, line)| {
            codec
                .decode(&recorded(line, i as u64))
                .unwrap_or_else(|e| panic!("{file} line {}: {e}", i + 1))
        })
        .collect()
}

#[test]
fn account_events_of_every_version_still_load() {
    assert_eq!(
        decode_all::<AccountEvent>("account-v1.ndjson"),
        vec![
            AccountEvent::Opened {
                owner: "Ada Lovelace".into()
            },
            AccountEvent::Deposited {
                amount: 1_000_000_000_000
            },
            AccountEvent::Withdrawn { amount: 1 },
            AccountEvent::Closed,
        ]
    );
}

#[test]
fn transfer_events_of_every_version_still_load() {
    assert_eq!(
        decode_all::<TransferEvent>("transfer-v1.ndjson"),
        vec![
            TransferEvent::Requested {
                from: "01a206cd-e40c-75ed-bbdc-62d6b86814ea".into(),
                to: "01a206cd-e40c-75ed-bbdc-62d6b86814eb".into(),
                amount: 250
            },
            TransferEvent::Debited,
            TransferEvent::DebitFailed {
                reason: "insufficient_funds".into()
            },
            TransferEvent::Credited,
            TransferEvent::CreditFailed {
                reason: "account_closed".into()
            },
            TransferEvent::Refunded,
        ]
    );
}

/// The current code writes what the newest golden file holds: new events are written at the
/// current version only, in the shape the golden files record.
#[test]
fn new_events_are_written_as_the_golden_files_say() {
    let codec = JsonCodec::<AccountEvent>::new();
    let event = codec
        .to_new_event(
            &AccountEvent::Opened {
                owner: "Ada Lovelace".into(),
            },
            sirenia::EventId::new(),
            sirenia::Metadata::default(),
        )
        .unwrap();
    let golden = std::fs::read_to_string(format!(
        "{}/tests/golden/account-v1.ndjson",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let first: serde_json::Value = serde_json::from_str(golden.lines().next().unwrap()).unwrap();
    assert_eq!(event.event_type, first["type"]);
    assert_eq!(
        u64::from(event.schema_version),
        first["schema_version"].as_u64().unwrap()
    );
    let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
    assert_eq!(data, first["data"]);
}
