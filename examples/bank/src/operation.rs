//! What a POST asks for, as data: an [`Operation`] (open, deposit, withdraw, close, transfer),
//! turned into a [`Plan`] (a command for one aggregate and the answer its success gets), and
//! [`Commands`], which runs plans through [`idempotency::execute`], once per
//! `Idempotency-Key`.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sirenia::{Aggregate, CommandContext, CommandError, EventStore, Position, Repository};
use uuid::Uuid;

use crate::account::{Account, AccountCommand, Requested};
use crate::error::{ApiError, account_rule, command_error, transfer_error};
use crate::idempotency::{self, Keyed};
use crate::observe::COMMANDS_TOTAL;
use crate::outcome::{Answer, Outcome};
use crate::transfer::{Transfer, TransferCommand};

/// An operation a POST asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `POST /accounts`: open an account for `owner`.
    Open {
        /// The owner's name, as given.
        owner: String,
    },
    /// `POST /accounts/{id}/deposits`.
    Deposit {
        /// The account.
        account: Uuid,
        /// The amount, as given.
        amount: Requested,
    },
    /// `POST /accounts/{id}/withdrawals`.
    Withdraw {
        /// The account.
        account: Uuid,
        /// The amount, as given.
        amount: Requested,
    },
    /// `POST /accounts/{id}/close`.
    Close {
        /// The account.
        account: Uuid,
    },
    /// `POST /transfers`: move `amount` from one account to another, as a process.
    Transfer {
        /// The source account.
        from: Uuid,
        /// The destination account.
        to: Uuid,
        /// The amount, as given.
        amount: Requested,
    },
}

impl Operation {
    /// Its `command` label in the service's metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Operation::Open { .. } => "open",
            Operation::Deposit { .. } => "deposit",
            Operation::Withdraw { .. } => "withdraw",
            Operation::Close { .. } => "close",
            Operation::Transfer { .. } => "transfer",
        }
    }

    /// The request as an `Idempotency-Key` compares it: route, body (as JSON, `null` without
    /// one) and, for an account's operations, `If-Match`.
    pub fn request(&self, body: &Value, if_match: Option<u64>) -> Value {
        let on_account = |account: &Uuid, route: &str| {
            json!({
                "method": "POST",
                "path": format!("/accounts/{account}/{route}"),
                "body": body,
                "if_match": if_match,
            })
        };
        match self {
            Operation::Open { .. } => {
                json!({ "method": "POST", "path": "/accounts", "body": body })
            }
            Operation::Deposit { account, .. } => on_account(account, "deposits"),
            Operation::Withdraw { account, .. } => on_account(account, "withdrawals"),
            Operation::Close { account } => on_account(account, "close"),
            Operation::Transfer { .. } => {
                json!({ "method": "POST", "path": "/transfers", "body": body })
            }
        }
    }

    /// The plan: which aggregate, which command, which answer. `command_id` is the key's
    /// (a retry opens the same account, requests the same transfer); `context` carries the
    /// correlation id and the expected version. A refusal that needs no state (an amount that
    /// breaks the rule) is the plan's error: an answer like any other.
    pub fn plan(self, command_id: Option<Uuid>, context: CommandContext) -> Planned {
        let account = |id: Uuid, command: Result<AccountCommand, ApiError>, answer| {
            Planned::Account(command.map(|command| Plan {
                id: id.to_string(),
                command,
                context: context.clone(),
                answer,
            }))
        };
        let amount = |requested: Requested| requested.check().map_err(|e| account_rule(&e));
        match self {
            Operation::Open { owner } => {
                let id = match command_id {
                    Some(c) => Uuid::new_v5(&c, b"account"),
                    None => Uuid::now_v7(),
                };
                account(id, Ok(AccountCommand::Open { owner }), opened)
            }
            Operation::Deposit {
                account: id,
                amount: requested,
            } => {
                let command = amount(requested).map(|amount| AccountCommand::Deposit { amount });
                account(id, command, changed)
            }
            Operation::Withdraw {
                account: id,
                amount: requested,
            } => {
                let command = amount(requested).map(|amount| AccountCommand::Withdraw { amount });
                account(id, command, changed)
            }
            Operation::Close { account: id } => account(id, Ok(AccountCommand::Close), changed),
            Operation::Transfer {
                from,
                to,
                amount: requested,
            } => Planned::Transfer(amount(requested).map(|amount| {
                let id = match command_id {
                    Some(c) => Uuid::new_v5(&c, b"transfer"),
                    None => Uuid::now_v7(),
                };
                Plan {
                    id: id.to_string(),
                    command: TransferCommand::Request {
                        from: from.to_string(),
                        to: to.to_string(),
                        amount,
                    },
                    // If-Match concerns accounts; a new transfer has no version to match.
                    context: CommandContext {
                        expected_version: None,
                        ..context
                    },
                    answer: accepted,
                }
            })),
        }
    }
}

/// An operation's plan, on the aggregate it concerns (or the answer refusing it at once).
#[derive(Debug)]
pub enum Planned {
    /// A command on an account.
    Account(Result<Plan<Account>, ApiError>),
    /// A command on a transfer.
    Transfer(Result<Plan<Transfer>, ApiError>),
}

/// A command on one aggregate and the answer to its success.
pub struct Plan<A: Aggregate> {
    /// The aggregate's id.
    pub id: String,
    /// The command.
    pub command: A::Command,
    /// Correlation id and expected version; the runner adds the command id (with a key) or a
    /// causation id.
    pub context: CommandContext,
    /// The answer once the command took effect. A `position` field in its body is the
    /// position of the command's last event (under a key, stored as `null` and filled in
    /// when it is sent or replayed).
    pub answer: fn(&Done<'_, A>) -> Outcome,
}

impl<A: Aggregate> std::fmt::Debug for Plan<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("aggregate", &A::CATEGORY)
            .field("id", &self.id)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// A command that took effect: what its answer is made of.
pub struct Done<'a, A> {
    /// The aggregate's id.
    pub id: &'a str,
    /// Its state right after the command.
    pub state: &'a A,
    /// Its version right after the command.
    pub version: u64,
    /// The position of the command's last event.
    pub position: Option<Position>,
}

/// An aggregate the service runs commands on: how its refusals are answered.
pub trait Answers: Aggregate {
    /// The answer to a command that did not take effect.
    fn refusal(e: &CommandError<Self::Error>) -> ApiError;
}

impl Answers for Account {
    fn refusal(e: &CommandError<Self::Error>) -> ApiError {
        command_error(e)
    }
}

impl Answers for Transfer {
    fn refusal(e: &CommandError<Self::Error>) -> ApiError {
        transfer_error(e)
    }
}

/// 201 `{id, version, position}` + `Location`.
fn opened(done: &Done<'_, Account>) -> Outcome {
    let mut outcome = Outcome::new(
        StatusCode::CREATED,
        json!({
            "id": done.id,
            "version": done.version,
            "position": done.position.map(|p| p.0),
        }),
    );
    outcome.location = Some(format!("/accounts/{}", done.id));
    outcome
}

/// 200 `{id, version, position, balance}`.
fn changed(done: &Done<'_, Account>) -> Outcome {
    Outcome::new(
        StatusCode::OK,
        json!({
            "id": done.id,
            "version": done.version,
            "position": done.position.map(|p| p.0),
            "balance": done.state.balance,
        }),
    )
}

/// 202 `{id}` + `Location`.
fn accepted(done: &Done<'_, Transfer>) -> Outcome {
    let mut outcome = Outcome::new(StatusCode::ACCEPTED, json!({ "id": done.id }));
    outcome.location = Some(format!("/transfers/{}", done.id));
    outcome
}

/// A POST: the operation and how it was asked for.
#[derive(Clone, Debug)]
pub struct Post {
    /// What it asks for.
    pub operation: Operation,
    /// Its body as JSON (`null` without one).
    pub body: Value,
    /// Its `If-Match` version.
    pub if_match: Option<u64>,
    /// Its correlation id.
    pub correlation_id: String,
    /// Its `Idempotency-Key`.
    pub key: Option<String>,
}

/// The repositories operations run on.
pub struct Commands<S> {
    accounts: Arc<Repository<Account, S>>,
    transfers: Arc<Repository<Transfer, S>>,
}

impl<S: EventStore> Commands<S> {
    /// Operations on `accounts` and `transfers`.
    pub fn new(
        accounts: Arc<Repository<Account, S>>,
        transfers: Arc<Repository<Transfer, S>>,
    ) -> Self {
        Commands {
            accounts,
            transfers,
        }
    }

    /// The accounts.
    pub fn accounts(&self) -> &Repository<Account, S> {
        &self.accounts
    }

    /// The transfers.
    pub fn transfers(&self) -> &Repository<Transfer, S> {
        &self.transfers
    }

    /// Runs `post`'s operation (once per key) and counts it. An error is an answer that is
    /// neither stored nor replayed: the key was used for another request, or the store failed
    /// around the stored answers.
    pub async fn submit(&self, post: Post) -> Result<Answer, ApiError> {
        let label = post.operation.label();
        let keyed = post
            .key
            .as_deref()
            .map(|key| Keyed::new(key, &post.operation.request(&post.body, post.if_match)));
        let mut context = CommandContext::new().correlation_id(post.correlation_id);
        context.expected_version = post.if_match;
        let plan = post
            .operation
            .plan(keyed.as_ref().map(Keyed::command_id), context);
        let answer = match plan {
            Planned::Account(plan) => {
                idempotency::execute(&self.accounts, keyed.as_ref(), plan).await
            }
            Planned::Transfer(plan) => {
                idempotency::execute(&self.transfers, keyed.as_ref(), plan).await
            }
        }?;
        let outcome = match (answer.replayed, answer.outcome.status) {
            (true, _) => "replayed",
            (false, 200..=299) => "ok",
            (false, 412) => "conflict",
            (false, 400..=499) => "rejected",
            (false, _) => "error",
        };
        metrics::counter!(COMMANDS_TOTAL, "command" => label, "outcome" => outcome).increment(1);
        Ok(answer)
    }
}
