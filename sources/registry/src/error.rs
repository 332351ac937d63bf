//! The registry source's errors. None of them carries a secret.

/// What can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry source needs an image reference.
    #[error("the registry source needs an image reference, e.g. heroku/builder:22")]
    NeedImage,
    /// The image reference is not valid.
    #[error(transparent)]
    BadReference(#[from] locald_core::reference::ReferenceError),
    /// `--creds` / `LOCALD_REGISTRY_CREDS` is not `USER:PASSWORD`.
    #[error("credentials from {origin} must be USER:PASSWORD")]
    BadCredsSyntax {
        /// Where they came from.
        origin: &'static str,
    },
    /// Looking credentials up failed (a helper failed, a malformed entry).
    #[error("could not get credentials for registry {registry} from {origin}: {reason}")]
    CredentialLookup {
        /// The registry.
        registry: String,
        /// Where we looked.
        origin: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The registry refused our credentials (or wants some).
    #[error("authentication failed for registry {registry} ({credential}){}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    AuthFailed {
        /// The registry.
        registry: String,
        /// Which credential was used, without the secret (e.g. `user "ci" from docker config.json`).
        credential: String,
        /// What the registry said.
        detail: Option<String>,
    },
    /// The image or blob does not exist.
    #[error("{what} was not found in registry {registry}")]
    NotFound {
        /// What was asked for.
        what: String,
        /// The registry.
        registry: String,
    },
    /// A request failed for good (after retries where they make sense).
    #[error("{what} from {url} failed{}: {reason}", if *attempts > 1 { format!(" after {attempts} attempts") } else { String::new() })]
    Request {
        /// What we were fetching.
        what: String,
        /// The URL (never with credentials).
        url: String,
        /// How many times we tried.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The registry refused what we sent (a manifest it does not take, a media
    /// type it does not know, a blob it would not mount).
    #[error("{what}: registry {registry} refused it: {reason}")]
    Refused {
        /// What we were doing.
        what: String,
        /// The registry.
        registry: String,
        /// What it said.
        reason: String,
    },
    /// A CA certificate file could not be used.
    #[error("could not use CA certificate {path}: {reason}")]
    CaCert {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("could not set up the HTTP client: {0}")]
    Client(String),
}

impl From<RegistryError> for locald_core::Error {
    fn from(e: RegistryError) -> Self {
        locald_core::Error::source(e)
    }
}
