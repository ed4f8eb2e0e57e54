//! Given/when/then tests for aggregates, with no store involved.
//!
//! ```
//! # use sirenia_core::{Aggregate, DomainEvent};
//! # use serde::{Deserialize, Serialize};
//! use sirenia_testkit::fixture::AggregateFixture;
//! # #[derive(Default, Debug)] struct Light { on: bool }
//! # #[derive(Debug, Clone)] enum Switch { On }
//! # #[derive(Debug, PartialEq, Serialize, Deserialize)] enum Lit { TurnedOn }
//! # impl DomainEvent for Lit {}
//! # #[derive(Debug, PartialEq, thiserror::Error)] #[error("already on")] struct AlreadyOn;
//! # impl Aggregate for Light {
//! #     const CATEGORY: &'static str = "light";
//! #     type Command = Switch; type Event = Lit; type Error = AlreadyOn;
//! #     fn apply(&mut self, _: &Lit) { self.on = true; }
//! #     fn handle(&self, _: Switch) -> Result<Vec<Lit>, AlreadyOn> {
//! #         if self.on { Err(AlreadyOn) } else { Ok(vec![Lit::TurnedOn]) }
//! #     }
//! # }
//! AggregateFixture::<Light>::given_no_events()
//!     .when(Switch::On)
//!     .then_expect_events([Lit::TurnedOn]);
//! AggregateFixture::<Light>::given([Lit::TurnedOn])
//!     .when(Switch::On)
//!     .then_expect_error(AlreadyOn);
//! ```

use std::fmt::{Debug, Write};

use sirenia_core::{Aggregate, JsonCodec, NewEvent, Position, RecordedEvent, StreamId, Timestamp};

/// The "given" part: the aggregate's history.
pub struct AggregateFixture<A: Aggregate> {
    given: Vec<A::Event>,
    codec: JsonCodec<A::Event>,
}

impl<A> AggregateFixture<A>
where
    A: Aggregate,
    A::Event: Debug + PartialEq,
    A::Error: Debug,
{
    /// An aggregate with no history.
    pub fn given_no_events() -> Self {
        Self::given([])
    }

    /// An aggregate whose history is `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        AggregateFixture {
            given: events.into_iter().collect(),
            codec: JsonCodec::new(),
        }
    }

    /// Uses `codec` (with upcasters) for the storage round trip every event is put through.
    pub fn with_codec(mut self, codec: JsonCodec<A::Event>) -> Self {
        self.codec = codec;
        self
    }

    /// Runs `command` on the state the history builds. Each given event is first put through the
    /// codec (encode, then decode), as it would be stored and loaded, so an event that does not
    /// survive storage fails the test here rather than in production.
    #[track_caller]
    pub fn when(self, command: A::Command) -> AggregateVerdict<A>
    where
        A::Command: Debug,
    {
        let mut state = A::default();
        let mut given = Vec::with_capacity(self.given.len());
        for event in self.given {
            if let Err(e) = codec_round_trip(&self.codec, &event) {
                panic!("given event does not survive storage: {e}");
            }
            state.apply(&event);
            given.push(event);
        }
        let command_text = format!("{command:#?}");
        let result = state.handle(command);
        AggregateVerdict {
            given,
            command: command_text,
            result,
            codec: self.codec,
        }
    }
}

fn recorded(new: NewEvent) -> RecordedEvent {
    let stream = StreamId::new("fixture-0").unwrap_or_else(|e| unreachable!("{e}"));
    RecordedEvent::from_new(new, stream, 0, Position(1), Timestamp::EPOCH)
}

/// The "then" part: what the command did.
pub struct AggregateVerdict<A: Aggregate> {
    given: Vec<A::Event>,
    command: String,
    result: Result<Vec<A::Event>, A::Error>,
    codec: JsonCodec<A::Event>,
}

impl<A> AggregateVerdict<A>
where
    A: Aggregate,
    A::Event: Debug + PartialEq,
    A::Error: Debug,
{
    fn report(&self, problem: &str, expected: &str) -> String {
        let mut out = format!("given/when/then failed: {problem}\n  given:\n");
        if self.given.is_empty() {
            out.push_str("    (no events)\n");
        }
        for (i, e) in self.given.iter().enumerate() {
            let _ = writeln!(out, "    {i}: {e:?}");
        }
        let _ = writeln!(out, "  when:\n    {}", self.command.replace('\n', "\n    "));
        let _ = writeln!(out, "  expected:\n    {}", expected.replace('\n', "\n    "));
        let actual = match &self.result {
            Ok(events) if events.is_empty() => "no events".to_owned(),
            Ok(events) => events
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i}: {e:?}"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("error {e:?}"),
        };
        let _ = writeln!(out, "  actual:\n    {}", actual.replace('\n', "\n    "));
        out
    }

    /// Asserts that the command produced exactly `expected`, and that each produced event
    /// survives storage (encode, decode) unchanged.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let expected_text = if expected.is_empty() {
            "no events".to_owned()
        } else {
            expected
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{i}: {e:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        match &self.result {
            Ok(events) if *events == expected => {
                for event in events {
                    if let Err(e) = codec_round_trip(&self.codec, event) {
                        panic!(
                            "{}",
                            self.report(
                                &format!("produced event does not survive storage: {e}"),
                                &expected_text
                            )
                        );
                    }
                }
            }
            Ok(_) => panic!("{}", self.report("the events differ", &expected_text)),
            Err(_) => panic!(
                "{}",
                self.report("the command was rejected", &expected_text)
            ),
        }
    }

    /// Asserts that the command was rejected with `expected`.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        let expected_text = format!("error {expected:?}");
        match &self.result {
            Err(e) if *e == expected => {}
            Err(_) => panic!("{}", self.report("the error differs", &expected_text)),
            Ok(_) => panic!(
                "{}",
                self.report("the command was accepted", &expected_text)
            ),
        }
    }

    /// Asserts that the command was rejected with an error `check` accepts.
    #[track_caller]
    pub fn then_expect_error_matching(
        self,
        description: &str,
        check: impl FnOnce(&A::Error) -> bool,
    ) {
        let expected_text = format!("an error that {description}");
        match &self.result {
            Err(e) if check(e) => {}
            Err(_) => panic!("{}", self.report("the error differs", &expected_text)),
            Ok(_) => panic!(
                "{}",
                self.report("the command was accepted", &expected_text)
            ),
        }
    }

    /// The raw result, for checks of your own.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

/// Encodes and decodes `event`; `Err` describes how it failed to come back unchanged.
fn codec_round_trip<E: sirenia_core::DomainEvent + PartialEq + Debug>(
    codec: &JsonCodec<E>,
    event: &E,
) -> Result<(), String> {
    let new = codec
        .to_new_event(event, sirenia_core::EventId::new(), Default::default())
        .map_err(|e| e.to_string())?;
    let decoded = codec.decode(&recorded(new)).map_err(|e| e.to_string())?;
    match decoded.as_slice() {
        [one] if one == event => Ok(()),
        other => Err(format!("{event:?} loads as {other:?}")),
    }
}

/// The restorability check for snapshots: for every history `histories` generates, the state
/// replayed from the events, encoded as a snapshot and decoded again, equals the replayed state
/// — at every prefix of the history. Run it from a `#[test]` with a strategy of event lists;
/// `SIRENIA_PROPTEST_CASES` sets the number of histories (64 by default). Panics with the
/// smallest failing history.
pub fn check_snapshot_restorability<A, G>(histories: G)
where
    A: sirenia_core::snapshot::Snapshotted + PartialEq + std::fmt::Debug,
    A::Event: std::fmt::Debug,
    G: proptest::strategy::Strategy<Value = Vec<A::Event>>,
{
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let cases = std::env::var("SIRENIA_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let result = runner.run(&histories, |events| {
        let mut state = A::default();
        for (i, event) in events.iter().enumerate() {
            state.apply(event);
            let encoded = serde_json::to_vec(&state)
                .map_err(|e| TestCaseError::fail(format!("after {} events: {e}", i + 1)))?;
            let restored: A = serde_json::from_slice(&encoded)
                .map_err(|e| TestCaseError::fail(format!("after {} events: {e}", i + 1)))?;
            if restored != state {
                return Err(TestCaseError::fail(format!(
                    "after {} events the restored state {restored:?} differs from the replayed \
                     {state:?}",
                    i + 1
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("snapshot restorability: {e}");
    }
}
