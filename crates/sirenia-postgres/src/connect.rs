//! Connections to PostgreSQL: plain, or TLS (rustls, feature `tls`) with the server's
//! certificate verified against the system's roots or a given PEM file.

use std::path::PathBuf;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use futures_util::StreamExt;
use sirenia_core::StoreError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls};

/// TLS for every connection of a store (pool, listener, notifier, projection locks). The
/// server's certificate is verified, its name included; a connection that cannot be verified
/// fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// A PEM file of the certificates to trust; `None`: the system's trusted roots.
    pub root_certificates: Option<PathBuf>,
}

/// How connections are opened.
#[derive(Clone)]
pub(crate) enum Connector {
    Plain,
    #[cfg(feature = "tls")]
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// A connection being driven in a task of its own.
pub(crate) struct Driven {
    pub(crate) client: Client,
    /// Resolves when the connection has ended.
    pub(crate) ended: oneshot::Receiver<()>,
    pub(crate) driver: tokio::task::JoinHandle<()>,
}

impl Connector {
    /// The connector for `options`; a URL asking for TLS (`sslmode=require`) gets TLS with the
    /// system's roots when no options are given.
    pub(crate) fn new(options: Option<&TlsOptions>, config: &Config) -> Result<Self, StoreError> {
        let required = config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
        let options = match (options, required) {
            (Some(o), _) => o.clone(),
            (None, true) => TlsOptions::default(),
            (None, false) => return Ok(Connector::Plain),
        };
        Self::tls(&options)
    }

    #[cfg(feature = "tls")]
    fn tls(options: &TlsOptions) -> Result<Self, StoreError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let invalid = |message: String| StoreError::InvalidOptions { message };
        let mut roots = rustls::RootCertStore::empty();
        match &options.root_certificates {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| invalid(format!("bad PEM in {}: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| {
                        invalid(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A system root rustls cannot use is skipped, as browsers do.
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(invalid("no trusted root certificate for TLS".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS set-up failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector::Tls(
            tokio_postgres_rustls::MakeRustlsConnect::new(config),
        ))
    }

    #[cfg(not(feature = "tls"))]
    fn tls(_: &TlsOptions) -> Result<Self, StoreError> {
        Err(StoreError::InvalidOptions {
            message: "TLS was asked for, but sirenia-postgres was built without its `tls` \
                      feature"
                .to_owned(),
        })
    }

    /// The pool's connection manager.
    pub(crate) fn manager(&self, config: Config) -> Manager {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        match self {
            Connector::Plain => Manager::from_config(config, NoTls, manager_config),
            #[cfg(feature = "tls")]
            Connector::Tls(tls) => Manager::from_config(config, tls.clone(), manager_config),
        }
    }

    /// A connection of its own, driven in a task; notifications bump `wake`, if given.
    pub(crate) async fn connect(
        &self,
        config: &Config,
        wake: Option<Arc<watch::Sender<u64>>>,
    ) -> Result<Driven, tokio_postgres::Error> {
        match self {
            Connector::Plain => {
                let (client, connection) = config.connect(NoTls).await?;
                Ok(drive(client, connection, wake))
            }
            #[cfg(feature = "tls")]
            Connector::Tls(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok(drive(client, connection, wake))
            }
        }
    }
}

/// Drives `connection` in a task, handing notifications to `wake`.
fn drive<S, T>(
    client: Client,
    mut connection: Connection<S, T>,
    wake: Option<Arc<watch::Sender<u64>>>,
) -> Driven
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (done, ended) = oneshot::channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(wake) = &wake {
                        wake.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
    Driven {
        client,
        ended,
        driver,
    }
}
