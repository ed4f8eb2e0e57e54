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

/// A stock of items; taking more than there is is refused.
#[derive(Default)]
struct Stock {
    items: u32,
}

#[derive(Clone, Debug)]
enum StockCommand {
    Add(u32),
    Take(u32),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum StockEvent {
    Added(u32),
    Taken(u32),
}

impl DomainEvent for StockEvent {}

#[derive(Debug, thiserror::Error)]
#[error("not enough stock")]
struct OutOfStock;

impl Aggregate for Stock {
    const CATEGORY: &'static str = "stock";
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = OutOfStock;

    fn apply(&mut self, event: &StockEvent) {
        match event {
            StockEvent::Added(n) => self.items += n,
            StockEvent::Taken(n) => self.items -= n,
        }
    }

    fn handle(&self, command: StockCommand) -> Result<Vec<StockEvent>, OutOfStock> {
        match command {
            StockCommand::Add(n) => Ok(vec![StockEvent::Added(n)]),
            StockCommand::Take(n) if n > self.items => Err(OutOfStock),
            StockCommand::Take(n) => Ok(vec![StockEvent::Taken(n)]),
        }
    }
}

/// An order process: placed → reserved or rejected.
#[derive(Default)]
struct Order {
    state: u8,
}

#[derive(Clone, Debug)]
enum OrderCommand {
    Place,
    Reserved,
    Rejected,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum OrderEvent {
    Placed,
    Reserved,
    Rejected,
}

impl DomainEvent for OrderEvent {}

#[derive(Debug, thiserror::Error)]
#[error("out of order")]
struct OutOfOrder;

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OutOfOrder;

    fn apply(&mut self, event: &OrderEvent) {
        self.state = match event {
            OrderEvent::Placed => 1,
            OrderEvent::Reserved | OrderEvent::Rejected => 2,
        };
    }

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OutOfOrder> {
        match (command, self.state) {
            (OrderCommand::Place, 0) => Ok(vec![OrderEvent::Placed]),
            (OrderCommand::Reserved, 1) => Ok(vec![OrderEvent::Reserved]),
            (OrderCommand::Rejected, 1) => Ok(vec![OrderEvent::Rejected]),
            _ => Err(OutOfOrder),
        }
    }
}

impl ProcessManager for Order {}

struct Reserve {
    stock: Arc<Repository<Stock, InMemoryStore>>,
}

impl sirenia_core::process::Reactor<Order> for Reserve {
    async fn react(
        &self,
        _id: &str,
        _state: &Order,
        event: &OrderEvent,
        recorded: &sirenia_core::RecordedEvent,
    ) -> Result<Option<OrderCommand>, sirenia_core::projection::HandlerError> {
        if *event != OrderEvent::Placed {
            return Ok(None);
        }
        let context = sirenia_core::CommandContext::new()
            .command_id(sirenia_core::process::step_command_id(recorded, "reserve"));
        Ok(Some(
            match self
                .stock
                .execute_with("s1", StockCommand::Take(5), &context)
                .await
            {
                Ok(_) => OrderCommand::Reserved,
                Err(sirenia_core::CommandError::Rejected(_)) => OrderCommand::Rejected,
                Err(e) => return Err(Box::new(e)),
            },
        ))
    }
}

/// A step refused (out of stock), its outcome recorded, then delivered again after the stock
/// was filled: the step must not run again — the process has moved on and would never record
/// what a second run did (the stock would lose items to a rejected order).
#[tokio::test]
async fn a_step_whose_outcome_was_recorded_does_not_run_again_on_redelivery() {
    use futures_util::TryStreamExt;
    use sirenia_core::projection::Handler;
    use sirenia_core::{EventStore, ReadStream, StreamId};

    let store = InMemoryStore::new();
    let orders = Arc::new(Repository::<Order, _>::new(store.clone()));
    let stock = Arc::new(Repository::<Stock, _>::new(store.clone()));
    orders.execute("o1", OrderCommand::Place).await.unwrap();
    let placed: Vec<sirenia_core::RecordedEvent> = store
        .read_stream(&StreamId::new("order-o1").unwrap(), ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    let mut runner = sirenia_core::process::ProcessRunner::new(
        orders.clone(),
        Reserve {
            stock: stock.clone(),
        },
    );
    runner.handle(&placed[0]).await.unwrap();
    assert_eq!(orders.load("o1").await.unwrap().version, 2, "rejected");
    stock.execute("s1", StockCommand::Add(10)).await.unwrap();
    // Delivered again, as after a crash before the checkpoint moved.
    runner.handle(&placed[0]).await.unwrap();
    let left = stock.load("s1").await.unwrap();
    assert_eq!(
        (left.state.items, left.version),
        (10, 1),
        "the refused step ran again"
    );
    let order = orders.load("o1").await.unwrap();
    assert_eq!((order.state.state, order.version), (2, 2));
}
