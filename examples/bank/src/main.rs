//! `bank`: the reference service. `bank --help` lists the flags.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use sirenia::{AnyStore, OpenOptions, StoreError};

/// Bank accounts over HTTP, event-sourced with Sirenia.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the address is printed on start).
    #[arg(long, env = "BANK_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The store: a `postgres://` or `postgresql://` URL, or the path of an embedded-store file.
    #[arg(long, env = "BANK_STORE", default_value = "bank-data/bank.db")]
    store: String,
    /// PostgreSQL schema holding the store's tables (PostgreSQL only).
    #[arg(long, env = "BANK_PG_SCHEMA", default_value = "sirenia")]
    pg_schema: String,
}

async fn open(args: &Args) -> Result<AnyStore, StoreError> {
    let options = OpenOptions {
        postgres_schema: Some(args.pg_schema.clone()),
        ..OpenOptions::default()
    };
    AnyStore::open_with(&args.store, options).await
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing requests in flight");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let store = match open(&args).await {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(error = %e, store = %args.store, "cannot open the store");
            return ExitCode::FAILURE;
        }
    };
    let backend = store.backend();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, listen = %args.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let address = listener.local_addr().unwrap_or(args.listen);
    // Scripts and tests read the address from the first line of stdout.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on http://{address}");
    let _ = out.flush();
    tracing::info!(%address, backend, "bank service started");
    let app = bank::App::new(store);
    let served = axum::serve(listener, bank::router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}
