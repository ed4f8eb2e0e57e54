//! Process deadlines: a process waiting on a deadline across a restart fires once, even with
//! two keepers running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sirenia_core::process::{DeadlineKeeper, ProcessManager};
use sirenia_core::{Aggregate, DomainEvent, InMemoryStore, Repository, Timestamp};

#[derive(Default)]
struct Reminder {
    at: Option<Timestamp>,
    fired: bool,
}

#[derive(Clone, Debug)]
enum ReminderCommand {
    Schedule(Timestamp),
    Fire,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum ReminderEvent {
    Scheduled { at: Timestamp },
    Fired,
}

impl DomainEvent for ReminderEvent {}

#[derive(Debug, thiserror::Error)]
#[error("already fired")]
struct AlreadyFired;

impl Aggregate for Reminder {
    const CATEGORY: &'static str = "reminder";
    type Command = ReminderCommand;
    type Event = ReminderEvent;
    type Error = AlreadyFired;

    fn apply(&mut self, event: &ReminderEvent) {
        match event {
            ReminderEvent::Scheduled { at } => self.at = Some(*at),
            ReminderEvent::Fired => self.fired = true,
        }
    }

    fn handle(&self, command: ReminderCommand) -> Result<Vec<ReminderEvent>, AlreadyFired> {
        match command {
            ReminderCommand::Schedule(at) => Ok(vec![ReminderEvent::Scheduled { at }]),
            ReminderCommand::Fire if self.fired => Err(AlreadyFired),
            ReminderCommand::Fire => Ok(vec![ReminderEvent::Fired]),
        }
    }
}

impl ProcessManager for Reminder {
    fn deadline(event: &ReminderEvent) -> Option<Timestamp> {
        match event {
            ReminderEvent::Scheduled { at } => Some(*at),
            ReminderEvent::Fired => None,
        }
    }

    fn is_final(event: &ReminderEvent) -> bool {
        *event == ReminderEvent::Fired
    }

    fn on_deadline(&self) -> Option<ReminderCommand> {
        (!self.fired).then_some(ReminderCommand::Fire)
    }
}

async fn fired(repo: &Repository<Reminder, InMemoryStore>) -> bool {
    repo.load("r1").await.unwrap().state.fired
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_across_a_restart_fires_once() {
    let repo = Arc::new(Repository::<Reminder, _>::new(InMemoryStore::new()));
    let at = Timestamp::from_micros(Timestamp::now().as_micros() + 400_000);
    repo.execute("r1", ReminderCommand::Schedule(at))
        .await
        .unwrap();

    // A keeper that stops (the process restarts) before the deadline.
    let first = tokio::spawn(DeadlineKeeper::new(repo.clone()).run());
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.abort();
    assert!(!fired(&repo).await, "fired early");

    // After the restart, two keepers (two instances) wait on the same deadline.
    let second = tokio::spawn(DeadlineKeeper::new(repo.clone()).run());
    let third = tokio::spawn(DeadlineKeeper::new(repo.clone()).run());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fired(&repo).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the deadline never fired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give both keepers time to act again, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.abort();
    third.abort();
    let loaded = repo.load("r1").await.unwrap();
    assert_eq!(loaded.version, 2, "scheduled once, fired once");
    // A later keeper finds nothing pending.
    let late = tokio::spawn(DeadlineKeeper::new(repo.clone()).run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    late.abort();
    assert_eq!(repo.load("r1").await.unwrap().version, 2);
}
