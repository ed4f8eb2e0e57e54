//! The bank account aggregate: open, deposit, withdraw, close. No overdraft; nothing happens
//! to a closed account; amounts are positive integers in minor units (cents).
//!
//! Every account rule lives here, once: callers that want to refuse a bad amount before
//! loading anything (the HTTP service does, and so does a transfer request) ask
//! [`Requested::check`] or [`check_amount`], the same rule `handle` applies.

use serde::{Deserialize, Serialize};
use sirenia::{Aggregate, DomainEvent};

/// The largest amount one deposit or withdrawal may move, in minor units.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000;
/// The largest balance an account may hold, in minor units (2^63 - 1): whoever keeps balances
/// elsewhere (a read model, a report) can rely on this bound.
pub const MAX_BALANCE: u64 = (1 << 63) - 1;
/// The longest owner name, in characters.
pub const MAX_OWNER_CHARS: usize = 100;

/// An amount as a request states it, before the amount rule is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    /// A whole number of minor units from 0 to `u64::MAX`.
    Units(u64),
    /// A whole number that is not one of those: negative, beyond `u64::MAX`, or written as a
    /// decimal (`5.0`, `1e3`). No amount is.
    Outside,
}

impl Requested {
    /// The amount, if it obeys the rule (see [`check_amount`]).
    pub fn check(self) -> Result<u64, AccountError> {
        match self {
            Requested::Units(amount) => check_amount(amount),
            Requested::Outside => Err(AccountError::AmountOutside),
        }
    }
}

/// The amount rule: one deposit or withdrawal moves 1 to [`MAX_AMOUNT`] minor units.
pub fn check_amount(amount: u64) -> Result<u64, AccountError> {
    if amount == 0 || amount > MAX_AMOUNT {
        return Err(AccountError::InvalidAmount { amount });
    }
    Ok(amount)
}

/// Where an account is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// No event yet: the account does not exist.
    #[default]
    Unopened,
    /// Open for business.
    Open,
    /// Closed for good.
    Closed,
}

/// A bank account, as its events make it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Its life-cycle status.
    pub status: AccountStatus,
    /// Who owns it.
    pub owner: String,
    /// Its balance in minor units.
    pub balance: u64,
}

/// What can be asked of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountCommand {
    /// Open it for `owner`.
    Open {
        /// The owner's name: 1 to [`MAX_OWNER_CHARS`] characters, not blank.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// 1 to [`MAX_AMOUNT`] minor units.
        amount: u64,
    },
    /// Take money out, never more than the balance.
    Withdraw {
        /// 1 to [`MAX_AMOUNT`] minor units.
        amount: u64,
    },
    /// Close it; its balance must be zero.
    Close,
}

/// What happened to an account. The serde names are the stored event types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The account was opened.
    #[serde(rename = "AccountOpened")]
    Opened {
        /// Its owner.
        owner: String,
    },
    /// Money was deposited.
    #[serde(rename = "MoneyDeposited")]
    Deposited {
        /// How much.
        amount: u64,
    },
    /// Money was withdrawn.
    #[serde(rename = "MoneyWithdrawn")]
    Withdrawn {
        /// How much.
        amount: u64,
    },
    /// The account was closed.
    #[serde(rename = "AccountClosed")]
    Closed,
}

impl DomainEvent for AccountEvent {}

/// Why an account refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account was already opened.
    #[error("the account already exists")]
    AlreadyExists,
    /// The account was never opened.
    #[error("the account does not exist")]
    NotFound,
    /// The account is closed.
    #[error("the account is closed")]
    Closed,
    /// A withdrawal exceeds the balance.
    #[error("insufficient funds: balance {balance}, requested {amount}")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// The amount asked for.
        amount: u64,
    },
    /// Closing needs a zero balance.
    #[error("the balance is {balance}, not zero")]
    BalanceNotZero {
        /// The balance.
        balance: u64,
    },
    /// An amount is zero or above [`MAX_AMOUNT`].
    #[error("amount must be an integer from 1 to {MAX_AMOUNT}")]
    InvalidAmount {
        /// The amount given.
        amount: u64,
    },
    /// A requested amount is not a whole number of minor units from 0 to `u64::MAX`
    /// ([`Requested::Outside`]).
    #[error("amount must be an integer from 1 to {MAX_AMOUNT}")]
    AmountOutside,
    /// The owner's name is blank, too long or has control characters.
    #[error(
        "owner must be 1 to {MAX_OWNER_CHARS} characters, not blank, without control characters"
    )]
    InvalidOwner,
    /// The balance would exceed [`MAX_BALANCE`].
    #[error("the balance would exceed the largest representable amount")]
    BalanceOverflow,
}

impl AccountError {
    /// The stable machine-readable code (the HTTP service's `error` field).
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::AlreadyExists => "account_exists",
            AccountError::NotFound => "account_not_found",
            AccountError::Closed => "account_closed",
            AccountError::InsufficientFunds { .. } => "insufficient_funds",
            AccountError::BalanceNotZero { .. } => "balance_not_zero",
            AccountError::InvalidAmount { .. } | AccountError::AmountOutside => "invalid_amount",
            AccountError::InvalidOwner => "invalid_owner",
            AccountError::BalanceOverflow => "balance_overflow",
        }
    }
}

fn check_owner(owner: &str) -> Result<(), AccountError> {
    let chars = owner.chars().count();
    if owner.trim().is_empty() || chars > MAX_OWNER_CHARS || owner.chars().any(char::is_control) {
        return Err(AccountError::InvalidOwner);
    }
    Ok(())
}

impl Account {
    fn require_open(&self) -> Result<(), AccountError> {
        match self.status {
            AccountStatus::Unopened => Err(AccountError::NotFound),
            AccountStatus::Closed => Err(AccountError::Closed),
            AccountStatus::Open => Ok(()),
        }
    }
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => {
                self.status = AccountStatus::Open;
                self.owner.clone_from(owner);
            }
            AccountEvent::Deposited { amount } => {
                self.balance = self.balance.saturating_add(*amount);
            }
            AccountEvent::Withdrawn { amount } => {
                debug_assert!(*amount <= self.balance, "a recorded withdrawal overdraws");
                self.balance = self.balance.saturating_sub(*amount);
            }
            AccountEvent::Closed => self.status = AccountStatus::Closed,
        }
    }

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => {
                if self.status != AccountStatus::Unopened {
                    return Err(AccountError::AlreadyExists);
                }
                check_owner(&owner)?;
                Ok(vec![AccountEvent::Opened { owner }])
            }
            // The amount is checked first: a request for an impossible amount is wrong
            // whatever the account (as a caller checking it before loading would find).
            AccountCommand::Deposit { amount } => {
                check_amount(amount)?;
                self.require_open()?;
                self.balance
                    .checked_add(amount)
                    .filter(|b| *b <= MAX_BALANCE)
                    .ok_or(AccountError::BalanceOverflow)?;
                Ok(vec![AccountEvent::Deposited { amount }])
            }
            AccountCommand::Withdraw { amount } => {
                check_amount(amount)?;
                self.require_open()?;
                if amount > self.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: self.balance,
                        amount,
                    });
                }
                Ok(vec![AccountEvent::Withdrawn { amount }])
            }
            AccountCommand::Close => {
                self.require_open()?;
                if self.balance != 0 {
                    return Err(AccountError::BalanceNotZero {
                        balance: self.balance,
                    });
                }
                Ok(vec![AccountEvent::Closed])
            }
        }
    }
}
