//! Process managers (sagas): business processes that span aggregates.
//!
//! A process is an event-sourced aggregate of its own ([`ProcessManager`]): its stream records
//! what it was asked, what it decided and what came of each step. A [`ProcessRunner`] follows
//! the process category of the log (as an at-least-once projection) and hands each new process
//! event to a [`Reactor`], which carries out the step the event calls for — commands to other
//! aggregates, with command ids derived from the event so a repeat appends nothing — and
//! returns the command that records the outcome on the process, run with a command id derived
//! from the same event. A restart therefore resumes exactly where the process was: a step whose
//! outcome was recorded is never repeated, and a step whose outcome was not is repeated
//! idempotently.
//!
//! Deadlines: a process event may ask to be woken at a time ([`ProcessManager::deadline`]). A
//! [`DeadlineKeeper`] rebuilds the pending deadlines from the log whenever it starts (so they
//! survive restarts) and, when one passes, runs [`ProcessManager::on_deadline`] on the process
//! with a command id derived from the process and the deadline: it fires once.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use uuid::Uuid;

use crate::aggregate::{Aggregate, CommandContext, Repository};
use crate::error::{CommandError, StoreError};
use crate::event::RecordedEvent;
use crate::id::{EventId, Position, StreamId, Timestamp};
use crate::projection::{Handler, HandlerError};
use crate::store::{EventFilter, EventStore, Subscribe, SubscriptionItem};

/// A process: an aggregate whose events drive other aggregates.
pub trait ProcessManager: Aggregate
where
    Self::Command: Clone,
{
    /// When `event` asks the process to be woken (for example, to give up and compensate).
    fn deadline(event: &Self::Event) -> Option<Timestamp> {
        let _ = event;
        None
    }

    /// Whether `event` ends the process: its pending deadline is dropped.
    fn is_final(event: &Self::Event) -> bool {
        let _ = event;
        false
    }

    /// The command to run on the process when its deadline passes.
    fn on_deadline(&self) -> Option<Self::Command> {
        None
    }
}

/// Carries out the step a process event calls for.
pub trait Reactor<P: ProcessManager>: Send + Sync + 'static
where
    P::Command: Clone,
{
    /// Runs the step `event` (recorded on process `id`, whose state after it is `state`) calls
    /// for and returns the command that records its outcome on the process, if any. Use
    /// [`step_command_id`] for the commands it sends, so a repeat appends nothing. An error is
    /// operational (retried with back-off); a business refusal is an outcome to record.
    fn react(
        &self,
        id: &str,
        state: &P,
        event: &P::Event,
        recorded: &RecordedEvent,
    ) -> impl Future<Output = Result<Option<P::Command>, HandlerError>> + Send;
}

/// Namespace of the command ids a process derives from its events.
const STEPS: Uuid = Uuid::from_u128(0x3a4f_0c51_8e1d_4b7a_9d42_6f0e_1c2b_7d01);

/// The id of the command a process issues as step `step` of its event `event`: the same for
/// every delivery of that event.
pub fn step_command_id(event: &RecordedEvent, step: &str) -> Uuid {
    let mut name = event.id.as_uuid().as_bytes().to_vec();
    name.extend_from_slice(step.as_bytes());
    Uuid::new_v5(&STEPS, &name)
}

/// The aggregate id of a process stream (`<category>-<id>`).
fn process_id(stream: &StreamId) -> &str {
    stream.as_str().split_once('-').map_or("", |(_, id)| id)
}

/// Follows the process category and runs the reactor on each process event: a [`Handler`],
/// to run in an at-least-once projection over `EventFilter::category(P::CATEGORY)`.
pub struct ProcessRunner<P: ProcessManager, S, R>
where
    P::Command: Clone,
{
    processes: Arc<Repository<P, S>>,
    reactor: R,
}

impl<P: ProcessManager, S: EventStore, R: Reactor<P>> ProcessRunner<P, S, R>
where
    P::Command: Clone,
{
    /// Runs `reactor` for the processes in `processes`.
    pub fn new(processes: Arc<Repository<P, S>>, reactor: R) -> Self {
        ProcessRunner { processes, reactor }
    }

    /// The filter of the projection this runner belongs in.
    pub fn filter() -> EventFilter {
        EventFilter::category(P::CATEGORY)
    }
}

impl<P: ProcessManager, S: EventStore, R: Reactor<P>> Handler for ProcessRunner<P, S, R>
where
    P::Command: Clone + Send + Sync,
{
    async fn handle(&mut self, recorded: &RecordedEvent) -> Result<(), HandlerError> {
        let id = process_id(&recorded.stream_id).to_owned();
        let mut events = Vec::new();
        self.processes
            .codec()
            .decode_with(recorded, |e| events.push(e))?;
        // Delivered again (at least once) after its outcomes were recorded: no step may run
        // again. Re-deciding one now could give another answer (a refused debit may succeed
        // later) that the process, having moved on, would never record. Checked before the
        // process is loaded: an old event must not need the process's old state.
        let mut pending = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            // One id per decoded event: an upcaster may split a stored event in several.
            let outcome_id = step_command_id(
                recorded,
                &format!("sirenia.outcome.{}.{index}", P::CATEGORY),
            );
            let recorded_already = self
                .processes
                .store()
                .event_by_id(EventId::derived(outcome_id, 0))
                .await?
                .is_some();
            if !recorded_already {
                pending.push((outcome_id, event));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        // The process as it was right after this event.
        let state = self
            .processes
            .load_version(&id, recorded.revision + 1)
            .await?
            .state;
        for (outcome_id, event) in pending {
            let Some(outcome) = self.reactor.react(&id, &state, &event, recorded).await? else {
                continue;
            };
            let context = CommandContext::new()
                .command_id(outcome_id)
                .causation_id(recorded.id.to_string());
            let context = match &recorded.metadata.correlation_id {
                Some(c) => context.correlation_id(c.clone()),
                None => context,
            };
            match self.processes.execute_with(&id, outcome, &context).await {
                Ok(_) => {}
                // The process refused the outcome (it moved on, say after its deadline):
                // nothing to record, and nothing to retry.
                Err(CommandError::Rejected(e)) => {
                    tracing::info!(process = %id, error = %e, "a process refused a step's outcome");
                }
                Err(e) => return Err(Box::new(e)),
            }
        }
        Ok(())
    }
}

/// Maps events of other streams to the processes they start or advance: the process's id is
/// the correlation, taken from the event.
pub trait ProcessStarter<P: ProcessManager>: Send + Sync + 'static
where
    P::Command: Clone,
{
    /// The process id and the command for it that `event` calls for, if any.
    fn correlate(&self, event: &RecordedEvent) -> Option<(String, P::Command)>;
}

/// Runs a [`ProcessStarter`] over the events it follows: a [`Handler`], to run in an
/// at-least-once projection over the categories that start processes. Each command carries an
/// id derived from the triggering event, so a redelivery starts nothing twice.
pub struct ProcessTrigger<P: ProcessManager, S, T>
where
    P::Command: Clone,
{
    processes: Arc<Repository<P, S>>,
    starter: T,
}

impl<P: ProcessManager, S: EventStore, T: ProcessStarter<P>> ProcessTrigger<P, S, T>
where
    P::Command: Clone,
{
    /// Starts processes in `processes` as `starter` says.
    pub fn new(processes: Arc<Repository<P, S>>, starter: T) -> Self {
        ProcessTrigger { processes, starter }
    }
}

impl<P: ProcessManager, S: EventStore, T: ProcessStarter<P>> Handler for ProcessTrigger<P, S, T>
where
    P::Command: Clone + Send + Sync,
{
    async fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let Some((id, command)) = self.starter.correlate(event) else {
            return Ok(());
        };
        // Distinct per process type and process: several triggers may react to one event.
        let mut context = CommandContext::new()
            .command_id(step_command_id(
                event,
                &format!("sirenia.trigger.{}.{id}", P::CATEGORY),
            ))
            .causation_id(event.id.to_string());
        if let Some(c) = &event.metadata.correlation_id {
            context = context.correlation_id(c.clone());
        }
        match self.processes.execute_with(&id, command, &context).await {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(e)) => {
                tracing::info!(process = %id, error = %e, "a process refused its trigger");
                Ok(())
            }
            Err(e) => Err(Box::new(e)),
        }
    }
}

/// How long the deadline keeper waits before firing again after a transient failure.
pub const DEADLINE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the deadline keeper looks at the clock while a deadline is pending.
pub const DEADLINE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Wakes processes whose deadlines passed. Pending deadlines are rebuilt from the log on
/// every start, so they survive restarts; each fires with a command id derived from the
/// process and the deadline, so it takes effect once however often it fires.
pub struct DeadlineKeeper<P: ProcessManager, S>
where
    P::Command: Clone,
{
    processes: Arc<Repository<P, S>>,
}

impl<P: ProcessManager, S: EventStore> DeadlineKeeper<P, S>
where
    P::Command: Clone + Send + Sync,
{
    /// A keeper for the processes in `processes`.
    pub fn new(processes: Arc<Repository<P, S>>) -> Self {
        DeadlineKeeper { processes }
    }

    /// Follows the log and fires deadlines until an error (store failure) stops it.
    pub async fn run(self) -> Result<(), StoreError> {
        let store = self.processes.store().clone();
        let mut pending: BTreeMap<String, Timestamp> = BTreeMap::new();
        let mut subscription = store
            .subscribe(Subscribe::from(Position(1)).filter(EventFilter::category(P::CATEGORY)));
        let mut ticker = tokio::time::interval(DEADLINE_POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut caught_up = false;
        loop {
            tokio::select! {
                item = subscription.next() => {
                    let Some(item) = item else { return Ok(()) };
                    match item? {
                        SubscriptionItem::Event(recorded) => {
                            let id = process_id(&recorded.stream_id).to_owned();
                            let mut events = Vec::new();
                            if self.processes.codec().decode_with(&recorded, |e| events.push(e)).is_err() {
                                continue;
                            }
                            for event in &events {
                                if P::is_final(event) {
                                    pending.remove(&id);
                                } else if let Some(at) = P::deadline(event) {
                                    pending.insert(id.clone(), at);
                                }
                            }
                        }
                        SubscriptionItem::CaughtUp { .. } => caught_up = true,
                    }
                }
                _ = ticker.tick(), if caught_up => {
                    let now = Timestamp::now();
                    let due: Vec<(String, Timestamp)> = pending
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(id, at)| (id.clone(), *at))
                        .collect();
                    for (id, at) in due {
                        pending.remove(&id);
                        if !self.fire(&id, at).await? {
                            // Not done (a transient failure): try again a little later.
                            let retry =
                                u64::try_from(DEADLINE_RETRY.as_micros()).unwrap_or(u64::MAX);
                            let later =
                                Timestamp::from_micros(now.as_micros().saturating_add(retry));
                            pending.entry(id).or_insert(later);
                        }
                    }
                }
            }
        }
    }

    /// Fires the deadline of process `id`; `Ok(false)` when it should be tried again.
    async fn fire(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let state = match self.processes.load(id).await {
            Ok(loaded) => loaded.state,
            Err(e) => {
                tracing::warn!(process = %id, error = %e, "cannot load a process for its deadline");
                return Ok(false);
            }
        };
        let Some(command) = state.on_deadline() else {
            return Ok(true);
        };
        let mut name = id.as_bytes().to_vec();
        name.extend_from_slice(&at.as_micros().to_be_bytes());
        let context = CommandContext::new().command_id(Uuid::new_v5(&STEPS, &name));
        match self.processes.execute_with(id, command, &context).await {
            Ok(_) | Err(CommandError::Rejected(_)) => Ok(true),
            Err(CommandError::Store(e)) => Err(e),
            Err(e) => {
                tracing::warn!(process = %id, error = %e, "a deadline's command failed; retrying");
                Ok(false)
            }
        }
    }
}
