//! HTTP basic authentication, as the clients send it (`authorization: Basic …`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A user allowed in: a name and a password.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
}

impl User {
    /// Parses `name:password` (the password may contain `:`).
    pub fn parse(text: &str) -> Option<User> {
        let (name, password) = text.split_once(':')?;
        (!name.is_empty()).then(|| User {
            name: name.to_owned(),
            password: password.to_owned(),
        })
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Checks every call's credentials against the configured users; with none configured, lets
/// every call through.
#[derive(Clone, Debug, Default)]
pub struct BasicAuth {
    users: std::sync::Arc<Vec<User>>,
}

impl BasicAuth {
    /// Authentication against `users` (none: open).
    pub fn new(users: Vec<User>) -> Self {
        BasicAuth {
            users: std::sync::Arc::new(users),
        }
    }

    fn check(&self, header: Option<&str>) -> Result<(), Status> {
        if self.users.is_empty() {
            return Ok(());
        }
        let header = header.ok_or_else(|| Status::unauthenticated("credentials are required"))?;
        let encoded = header
            .strip_prefix("Basic ")
            .ok_or_else(|| Status::unauthenticated("only basic authentication is supported"))?;
        let decoded = BASE64
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| User::parse(&text))
            .ok_or_else(|| Status::unauthenticated("malformed basic credentials"))?;
        if self.users.contains(&decoded) {
            Ok(())
        } else {
            Err(Status::unauthenticated("unknown user or wrong password"))
        }
    }
}

impl Interceptor for BasicAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.check(header)?;
        Ok(request)
    }
}
