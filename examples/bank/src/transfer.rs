//! Transfers: a process manager moving money between two accounts.
//!
//! `TransferRequested` → debit the source → credit the destination → completed. If the debit
//! is refused (insufficient funds, closed or missing source) the transfer fails with that
//! reason and nothing moved; if the credit is refused (destination closed or missing) the
//! source is refunded and the transfer fails with the reason. Every step is a command with an
//! id derived from the process event that called for it, so a restart repeats nothing: money is
//! conserved at every moment once processes settle.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sirenia::process::{ProcessManager, Reactor, step_command_id};
use sirenia::projection::HandlerError;
use sirenia::{Aggregate, CommandContext, CommandError, DomainEvent, RecordedEvent, Repository};

use crate::account::{Account, AccountCommand, AccountError};
use crate::http::Store;

/// Where a transfer is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Not requested.
    #[default]
    Unknown,
    /// Under way.
    Pending,
    /// The money moved.
    Completed,
    /// It did not, see the reason (after a refund if the source had been debited).
    Failed,
}

/// A transfer, as its events make it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Its status.
    pub status: TransferStatus,
    /// Source account id.
    pub from: String,
    /// Destination account id.
    pub to: String,
    /// Amount in minor units.
    pub amount: u64,
    /// Whether the source was debited (and not refunded).
    pub debited: bool,
    /// Why it failed.
    pub reason: Option<String>,
}

/// What a transfer is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferCommand {
    /// Start it.
    Request {
        /// Source account id.
        from: String,
        /// Destination account id.
        to: String,
        /// Amount in minor units.
        amount: u64,
    },
    /// The source was debited.
    RecordDebited,
    /// The source refused the debit.
    RecordDebitFailed {
        /// Why.
        reason: String,
    },
    /// The destination was credited.
    RecordCredited,
    /// The destination refused the credit.
    RecordCreditFailed {
        /// Why.
        reason: String,
    },
    /// The source got its money back.
    RecordRefunded,
}

/// What happened to a transfer. The serde names are the stored event types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferEvent {
    /// Asked for.
    #[serde(rename = "TransferRequested")]
    Requested {
        /// Source account id.
        from: String,
        /// Destination account id.
        to: String,
        /// Amount in minor units.
        amount: u64,
    },
    /// The source was debited.
    #[serde(rename = "TransferSourceDebited")]
    Debited,
    /// The debit was refused: the transfer failed, nothing moved.
    #[serde(rename = "TransferDebitFailed")]
    DebitFailed {
        /// Why.
        reason: String,
    },
    /// The destination was credited: the transfer completed.
    #[serde(rename = "TransferCompleted")]
    Credited,
    /// The credit was refused: the source is to be refunded.
    #[serde(rename = "TransferCreditFailed")]
    CreditFailed {
        /// Why.
        reason: String,
    },
    /// The source was refunded: the transfer failed.
    #[serde(rename = "TransferSourceRefunded")]
    Refunded,
}

impl DomainEvent for TransferEvent {}

/// Why a transfer refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Requested twice.
    #[error("the transfer already exists")]
    AlreadyExists,
    /// A step's outcome does not fit where the transfer is.
    #[error("the transfer is not waiting for that")]
    OutOfOrder,
    /// From and to are the same account.
    #[error("a transfer needs two different accounts")]
    SameAccount,
    /// The amount breaks the accounts' amount rule ([`crate::account::check_amount`]).
    #[error("amount must be an integer from 1 to {max}", max = crate::account::MAX_AMOUNT)]
    InvalidAmount(u64),
}

impl TransferError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TransferError::AlreadyExists => "transfer_exists",
            TransferError::OutOfOrder => "out_of_order",
            TransferError::SameAccount => "same_account",
            TransferError::InvalidAmount(_) => "invalid_amount",
        }
    }
}

/// Where the transfer is in its steps.
#[derive(PartialEq, Eq)]
enum Step {
    None,
    Requested,
    Debited,
    CreditFailed,
    Done,
}

impl Transfer {
    fn step(&self) -> Step {
        match (self.status, self.debited, &self.reason) {
            (TransferStatus::Unknown, ..) => Step::None,
            (TransferStatus::Pending, false, _) => Step::Requested,
            (TransferStatus::Pending, true, None) => Step::Debited,
            (TransferStatus::Pending, true, Some(_)) => Step::CreditFailed,
            _ => Step::Done,
        }
    }
}

impl Aggregate for Transfer {
    const CATEGORY: &'static str = "transfer";
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;

    fn apply(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::Requested { from, to, amount } => {
                self.status = TransferStatus::Pending;
                self.from.clone_from(from);
                self.to.clone_from(to);
                self.amount = *amount;
            }
            TransferEvent::Debited => self.debited = true,
            TransferEvent::DebitFailed { reason } => {
                self.status = TransferStatus::Failed;
                self.reason = Some(reason.clone());
            }
            TransferEvent::Credited => self.status = TransferStatus::Completed,
            TransferEvent::CreditFailed { reason } => self.reason = Some(reason.clone()),
            TransferEvent::Refunded => {
                self.debited = false;
                self.status = TransferStatus::Failed;
            }
        }
    }

    fn handle(&self, command: TransferCommand) -> Result<Vec<TransferEvent>, TransferError> {
        let step = self.step();
        let event = match (command, step) {
            (TransferCommand::Request { from, to, amount }, Step::None) => {
                if from == to {
                    return Err(TransferError::SameAccount);
                }
                crate::account::check_amount(amount)
                    .map_err(|_| TransferError::InvalidAmount(amount))?;
                TransferEvent::Requested { from, to, amount }
            }
            (TransferCommand::Request { .. }, _) => return Err(TransferError::AlreadyExists),
            (TransferCommand::RecordDebited, Step::Requested) => TransferEvent::Debited,
            (TransferCommand::RecordDebitFailed { reason }, Step::Requested) => {
                TransferEvent::DebitFailed { reason }
            }
            (TransferCommand::RecordCredited, Step::Debited) => TransferEvent::Credited,
            (TransferCommand::RecordCreditFailed { reason }, Step::Debited) => {
                TransferEvent::CreditFailed { reason }
            }
            (TransferCommand::RecordRefunded, Step::CreditFailed) => TransferEvent::Refunded,
            _ => return Err(TransferError::OutOfOrder),
        };
        Ok(vec![event])
    }
}

impl ProcessManager for Transfer {
    fn is_final(event: &TransferEvent) -> bool {
        matches!(
            event,
            TransferEvent::Credited | TransferEvent::DebitFailed { .. } | TransferEvent::Refunded
        )
    }
}

/// Runs the transfer steps against the accounts.
pub struct TransferSteps {
    accounts: Arc<Repository<Account, Store>>,
}

impl TransferSteps {
    /// Steps on `accounts`.
    pub fn new(accounts: Arc<Repository<Account, Store>>) -> Self {
        TransferSteps { accounts }
    }

    /// Runs `command` on account `id` as step `step` of `recorded`: `Ok(Ok(()))` when done,
    /// `Ok(Err(code))` when the account refused it, `Err` when it could not be tried.
    async fn step(
        &self,
        id: &str,
        command: AccountCommand,
        recorded: &RecordedEvent,
        step: &str,
    ) -> Result<Result<(), String>, HandlerError> {
        let mut context = CommandContext::new()
            .command_id(step_command_id(recorded, step))
            .causation_id(recorded.id.to_string());
        if let Some(c) = &recorded.metadata.correlation_id {
            context = context.correlation_id(c.clone());
        }
        match self.accounts.execute_with(id, command, &context).await {
            Ok(_) => Ok(Ok(())),
            Err(CommandError::Rejected(e)) => Ok(Err(e.code().to_owned())),
            Err(CommandError::InvalidId(_)) => Ok(Err(AccountError::NotFound.code().to_owned())),
            Err(e) => Err(Box::new(e)),
        }
    }
}

impl Reactor<Transfer> for TransferSteps {
    async fn react(
        &self,
        _id: &str,
        state: &Transfer,
        event: &TransferEvent,
        recorded: &RecordedEvent,
    ) -> Result<Option<TransferCommand>, HandlerError> {
        let amount = state.amount;
        Ok(match event {
            TransferEvent::Requested { from, .. } => Some(
                match self
                    .step(from, AccountCommand::Withdraw { amount }, recorded, "debit")
                    .await?
                {
                    Ok(()) => TransferCommand::RecordDebited,
                    Err(reason) => TransferCommand::RecordDebitFailed { reason },
                },
            ),
            TransferEvent::Debited => Some(
                match self
                    .step(
                        &state.to,
                        AccountCommand::Deposit { amount },
                        recorded,
                        "credit",
                    )
                    .await?
                {
                    Ok(()) => TransferCommand::RecordCredited,
                    Err(reason) => TransferCommand::RecordCreditFailed { reason },
                },
            ),
            TransferEvent::CreditFailed { .. } => {
                match self
                    .step(
                        &state.from,
                        AccountCommand::Deposit { amount },
                        recorded,
                        "refund",
                    )
                    .await?
                {
                    Ok(()) => Some(TransferCommand::RecordRefunded),
                    // The source cannot take its money back now (closed meanwhile): keep
                    // trying; an operator sees the transfer pending.
                    Err(reason) => {
                        return Err(format!("refund to {} refused: {reason}", state.from).into());
                    }
                }
            }
            _ => None,
        })
    }
}

/// The name of the projection that runs transfer steps.
pub const RUNNER: &str = "bank-transfer-steps";

/// Starts the transfer steps as an at-least-once projection over the transfer category, its
/// checkpoint in `store`; an event whose step keeps failing is parked, not blocking others.
pub fn start(
    store: &sirenia::AnyStore,
    metered: Store,
    transfers: Arc<Repository<Transfer, Store>>,
    accounts: Arc<Repository<Account, Store>>,
) -> Option<tokio::task::JoinHandle<()>> {
    use sirenia::process::ProcessRunner;
    use sirenia::projection::{
        AtLeastOnce, FailurePolicy, OnFailure, ProjectionOptions, Projector,
    };
    let runner = ProcessRunner::new(transfers, TransferSteps::new(accounts));
    let target = AtLeastOnce::new(RUNNER, runner, sirenia::StoreAdmin::checkpoints(store));
    let options = ProjectionOptions {
        filter: ProcessRunner::<Transfer, Store, TransferSteps>::filter(),
        batch_size: 100,
        policy: FailurePolicy {
            on_failure: OnFailure::Park,
            ..FailurePolicy::default()
        },
    };
    let mut projector = match Projector::new(RUNNER, metered, target, options) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "transfers cannot run");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            match projector.run(std::future::pending()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "the transfer runner failed; restarting");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }))
}
