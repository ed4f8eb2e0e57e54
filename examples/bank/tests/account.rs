//! The account's rules, given/when/then, and a model-based property test through the
//! repository.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bank::account::{
    Account, AccountCommand, AccountError, AccountEvent, AccountStatus, MAX_AMOUNT, MAX_OWNER_CHARS,
};
use proptest::prelude::*;
use sirenia::testkit::AggregateFixture;
use sirenia::{CommandError, InMemoryStore, Repository};

type Fixture = AggregateFixture<Account>;

fn opened() -> AccountEvent {
    AccountEvent::Opened {
        owner: "Ada".into(),
    }
}

#[test]
fn opening() {
    Fixture::given_no_events()
        .when(AccountCommand::Open {
            owner: "Ada".into(),
        })
        .then_expect_events([opened()]);
    Fixture::given([opened()])
        .when(AccountCommand::Open {
            owner: "Bob".into(),
        })
        .then_expect_error(AccountError::AlreadyExists);
    Fixture::given([opened(), AccountEvent::Closed])
        .when(AccountCommand::Open {
            owner: "Bob".into(),
        })
        .then_expect_error(AccountError::AlreadyExists);
    for bad in ["", "   ", "tab\there", &"x".repeat(MAX_OWNER_CHARS + 1)] {
        Fixture::given_no_events()
            .when(AccountCommand::Open { owner: bad.into() })
            .then_expect_error(AccountError::InvalidOwner);
    }
    let longest = "é".repeat(MAX_OWNER_CHARS);
    Fixture::given_no_events()
        .when(AccountCommand::Open {
            owner: longest.clone(),
        })
        .then_expect_events([AccountEvent::Opened { owner: longest }]);
}

#[test]
fn deposits() {
    Fixture::given([opened()])
        .when(AccountCommand::Deposit { amount: 250 })
        .then_expect_events([AccountEvent::Deposited { amount: 250 }]);
    Fixture::given([opened()])
        .when(AccountCommand::Deposit { amount: MAX_AMOUNT })
        .then_expect_events([AccountEvent::Deposited { amount: MAX_AMOUNT }]);
    for amount in [0, MAX_AMOUNT + 1, u64::MAX] {
        Fixture::given([opened()])
            .when(AccountCommand::Deposit { amount })
            .then_expect_error(AccountError::InvalidAmount { amount });
    }
    Fixture::given_no_events()
        .when(AccountCommand::Deposit { amount: 1 })
        .then_expect_error(AccountError::NotFound);
    Fixture::given([opened(), AccountEvent::Closed])
        .when(AccountCommand::Deposit { amount: 1 })
        .then_expect_error(AccountError::Closed);
}

#[test]
fn withdrawals_never_overdraw() {
    let funded = [opened(), AccountEvent::Deposited { amount: 100 }];
    Fixture::given(funded.clone())
        .when(AccountCommand::Withdraw { amount: 100 })
        .then_expect_events([AccountEvent::Withdrawn { amount: 100 }]);
    Fixture::given(funded.clone())
        .when(AccountCommand::Withdraw { amount: 101 })
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 100,
            amount: 101,
        });
    Fixture::given(funded.clone())
        .when(AccountCommand::Withdraw { amount: 0 })
        .then_expect_error(AccountError::InvalidAmount { amount: 0 });
    Fixture::given([opened(), AccountEvent::Closed])
        .when(AccountCommand::Withdraw { amount: 1 })
        .then_expect_error(AccountError::Closed);
    Fixture::given_no_events()
        .when(AccountCommand::Withdraw { amount: 1 })
        .then_expect_error_matching("is account_not_found", |e| e.code() == "account_not_found");
}

#[test]
fn closing_needs_a_zero_balance_and_is_final() {
    Fixture::given([opened()])
        .when(AccountCommand::Close)
        .then_expect_events([AccountEvent::Closed]);
    Fixture::given([opened(), AccountEvent::Deposited { amount: 5 }])
        .when(AccountCommand::Close)
        .then_expect_error(AccountError::BalanceNotZero { balance: 5 });
    Fixture::given([
        opened(),
        AccountEvent::Deposited { amount: 5 },
        AccountEvent::Withdrawn { amount: 5 },
    ])
    .when(AccountCommand::Close)
    .then_expect_events([AccountEvent::Closed]);
    Fixture::given([opened(), AccountEvent::Closed])
        .when(AccountCommand::Close)
        .then_expect_error(AccountError::Closed);
}

#[test]
fn the_fixture_reports_mismatches_readably() {
    let result = std::panic::catch_unwind(|| {
        Fixture::given([opened()])
            .when(AccountCommand::Withdraw { amount: 5 })
            .then_expect_events([AccountEvent::Withdrawn { amount: 5 }]);
    });
    let message = *result
        .expect_err("a rejected command does not match expected events")
        .downcast::<String>()
        .unwrap();
    for part in [
        "the command was rejected",
        "given:",
        "0: Opened",
        "when:",
        "Withdraw",
        "expected:",
        "Withdrawn",
        "actual:",
        "InsufficientFunds",
    ] {
        assert!(message.contains(part), "{part:?} missing from:\n{message}");
    }
}

#[test]
fn events_are_stored_under_stable_names() {
    let codec = sirenia::JsonCodec::<AccountEvent>::new();
    let cases = [
        (opened(), "AccountOpened", r#"{"owner":"Ada"}"#),
        (
            AccountEvent::Deposited { amount: 7 },
            "MoneyDeposited",
            r#"{"amount":7}"#,
        ),
        (
            AccountEvent::Withdrawn { amount: 7 },
            "MoneyWithdrawn",
            r#"{"amount":7}"#,
        ),
        (AccountEvent::Closed, "AccountClosed", "{}"),
    ];
    for (event, name, json) in cases {
        let encoded = codec.encode(&event).unwrap();
        assert_eq!(encoded.event_type, name);
        assert_eq!(std::str::from_utf8(&encoded.data).unwrap(), json);
    }
}

#[derive(Clone, Debug)]
enum Step {
    Open,
    Deposit(u64),
    Withdraw(u64),
    Close,
}

fn step() -> impl Strategy<Value = Step> {
    let amount = prop_oneof![1u64..1_000, Just(0u64), Just(MAX_AMOUNT + 1)];
    prop_oneof![
        1 => Just(Step::Open),
        4 => amount.clone().prop_map(Step::Deposit),
        4 => amount.prop_map(Step::Withdraw),
        1 => Just(Step::Close),
    ]
}

/// A plain model of an account, written independently of the aggregate.
#[derive(Default, Debug)]
struct Model {
    opened: bool,
    closed: bool,
    balance: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// Through the repository, every step is accepted exactly when the model allows it, the
    /// balance follows the model and never goes negative, and reloading from the stored events
    /// gives the same state.
    #[test]
    fn the_account_follows_the_model(steps in prop::collection::vec(step(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let accounts = Repository::<Account, _>::new(InMemoryStore::new());
            let mut model = Model::default();
            let mut version = 0u64;
            for step in steps {
                let valid = |a: u64| (1..=MAX_AMOUNT).contains(&a);
                let (command, allowed) = match step {
                    Step::Open => (AccountCommand::Open { owner: "Ada".into() }, !model.opened),
                    Step::Deposit(a) => (AccountCommand::Deposit { amount: a }, model.opened && !model.closed && valid(a)),
                    Step::Withdraw(a) => (AccountCommand::Withdraw { amount: a }, model.opened && !model.closed && valid(a) && a <= model.balance),
                    Step::Close => (AccountCommand::Close, model.opened && !model.closed && model.balance == 0),
                };
                match accounts.execute("p", command.clone()).await {
                    Ok(done) => {
                        prop_assert!(allowed, "{:?} was accepted against the model {:?}", command, model);
                        match command {
                            AccountCommand::Open { .. } => model.opened = true,
                            AccountCommand::Deposit { amount } => model.balance += amount,
                            AccountCommand::Withdraw { amount } => model.balance -= amount,
                            AccountCommand::Close => model.closed = true,
                        }
                        version += 1;
                        prop_assert_eq!(done.version, version);
                        prop_assert_eq!(done.state.balance, model.balance);
                    }
                    Err(CommandError::Rejected(e)) => {
                        prop_assert!(!allowed, "{:?} was rejected ({}) against the model {:?}", command, e, model);
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            }
            let loaded = accounts.load("p").await.unwrap();
            prop_assert_eq!(loaded.version, version);
            prop_assert_eq!(loaded.state.balance, model.balance);
            let status = match (model.opened, model.closed) {
                (false, _) => AccountStatus::Unopened,
                (true, false) => AccountStatus::Open,
                (true, true) => AccountStatus::Closed,
            };
            prop_assert_eq!(loaded.state.status, status);
            Ok(())
        })?;
    }
}
