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

/// A welcome process, started by `UserJoined` events of `user-*` streams and correlated by the
/// user's id.
#[derive(Default)]
struct Welcome {
    started: u32,
}

#[derive(Clone, Debug)]
struct Start;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum WelcomeEvent {
    Started,
}

impl DomainEvent for WelcomeEvent {}

impl Aggregate for Welcome {
    const CATEGORY: &'static str = "welcome";
    type Command = Start;
    type Event = WelcomeEvent;
    type Error = std::convert::Infallible;

    fn apply(&mut self, _: &WelcomeEvent) {
        self.started += 1;
    }

    // Deliberately not idempotent itself: only the trigger's command ids keep it to once.
    fn handle(&self, _: Start) -> Result<Vec<WelcomeEvent>, std::convert::Infallible> {
        Ok(vec![WelcomeEvent::Started])
    }
}

impl ProcessManager for Welcome {}

struct ByUser;

impl sirenia_core::process::ProcessStarter<Welcome> for ByUser {
    fn correlate(&self, event: &sirenia_core::RecordedEvent) -> Option<(String, Start)> {
        (event.event_type == "UserJoined").then(|| {
            let user = event
                .stream_id
                .as_str()
                .trim_start_matches("user-")
                .to_owned();
            (user, Start)
        })
    }
}

#[tokio::test]
async fn a_process_started_by_an_event_starts_once_however_often_it_is_delivered() {
    use sirenia_core::projection::{AtLeastOnce, MemoryCheckpoints, ProjectionOptions, Projector};
    use sirenia_core::{EventFilter, EventStore, ExpectedVersion, NewEvent, StreamId, StreamWrite};

    let store = InMemoryStore::new();
    for user in ["ada", "alan"] {
        store
            .append(vec![StreamWrite::new(
                StreamId::new(format!("user-{user}")).unwrap(),
                ExpectedVersion::Any,
                vec![
                    NewEvent::json("UserJoined", &serde_json::json!({})),
                    NewEvent::json("UserRenamed", &serde_json::json!({})),
                ],
            )])
            .await
            .unwrap();
    }
    let welcomes = Arc::new(Repository::<Welcome, _>::new(store.clone()));
    // Three deliveries of the same events: fresh checkpoints each time, as after losing them.
    for _ in 0..3 {
        let trigger = sirenia_core::process::ProcessTrigger::new(welcomes.clone(), ByUser);
        let target = AtLeastOnce::new("welcome-trigger", trigger, MemoryCheckpoints::new());
        let options = ProjectionOptions {
            filter: EventFilter::category("user"),
            ..ProjectionOptions::default()
        };
        let mut projector =
            Projector::new("welcome-trigger", store.clone(), target, options).unwrap();
        projector.catch_up(|_| {}).await.unwrap();
    }
    for user in ["ada", "alan"] {
        let loaded = welcomes.load(user).await.unwrap();
        assert_eq!((loaded.version, loaded.state.started), (1, 1), "{user}");
    }
}
