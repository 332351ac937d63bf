//! `locald-source-registry`: images from OCI distribution registries over HTTP(S).
//!
//! Manifests, the token dance and `HEAD` digest checks go through `oci-client`;
//! blobs are streamed with our own requests (same credentials and token) so we
//! can resume an interrupted download with a `Range` request, retry `5xx`/`429`
//! honouring `Retry-After`, and never hold a layer in memory. Digests are checked
//! by the core, as for every source.
//!
//! Networks: HTTPS by default; plain HTTP for loopback registries (as Docker does)
//! and for hosts named in [`RegistryOptions::insecure`]; extra CA certificates;
//! proxies from the usual environment variables (reqwest honours them).

pub mod auth;
pub mod error;
mod push;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use locald_core::digest::Digest;
use locald_core::manifest;
use locald_core::oci_spec::image::Descriptor;
use locald_core::source::{BlobReader, BoxFuture, Document, ImageSource, SourceFactory};
use locald_core::ImageReference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

pub use auth::Credential;
pub use error::RegistryError;
pub use push::RegistryDestination;

/// The source-spec scheme this crate serves (also the default scheme).
pub const SCHEME: &str = "registry";

/// Manifest media types we ask for.
const ACCEPT: &[&str] = &[
    manifest::OCI_INDEX,
    manifest::OCI_MANIFEST,
    manifest::DOCKER_LIST,
    manifest::DOCKER_MANIFEST,
];

/// How to talk to registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Credentials that win over every configured ones.
    pub credential: Option<Credential>,
    /// Hosts (`host[:port]`) spoken to over plain HTTP. Loopback hosts always are.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM files).
    pub ca_certs: Vec<std::path::PathBuf>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout for a read to make progress.
    pub read_timeout: Duration,
    /// Attempts per request before giving up (at least 1).
    pub attempts: u32,
    /// First retry delay; doubles each time (capped at 10 s) unless the registry
    /// says `Retry-After`.
    pub backoff: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            credential: None,
            insecure: Vec::new(),
            ca_certs: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            attempts: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

/// Whether a registry host is on this machine (spoken to over plain HTTP).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// What a resolved image needs for its blob requests.
#[derive(Clone)]
struct Session {
    reference: Reference,
    registry: String,
    client: oci_client::Client,
    auth: RegistryAuth,
    /// The `Authorization` header for blob requests (a bearer token or basic).
    header: Arc<Mutex<Option<String>>>,
    credential: Credential,
    scheme: &'static str,
}

/// A registry as an image source.
pub struct RegistrySource {
    options: RegistryOptions,
    /// Built on first use: building it loads the system's CA certificates, which
    /// costs more than a warm pull that never contacts the registry.
    http: std::sync::OnceLock<reqwest::Client>,
    /// Certificates of `--ca-cert` and `SSL_CERT_FILE`, checked up front.
    certs: Vec<reqwest::Certificate>,
    extra_certs: Vec<oci_client::client::Certificate>,
    session: Mutex<Option<Session>>,
}

impl RegistrySource {
    /// A source with these options.
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        let mut certs = Vec::new();
        let mut extra_certs = Vec::new();
        let mut files = options.ca_certs.clone();
        if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
            files.push(f.into());
        }
        for path in files {
            let data = std::fs::read(&path).map_err(|e| RegistryError::CaCert {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let cert =
                reqwest::Certificate::from_pem(&data).map_err(|e| RegistryError::CaCert {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            certs.push(cert);
            extra_certs.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            });
        }
        Ok(RegistrySource {
            options,
            http: std::sync::OnceLock::new(),
            certs,
            extra_certs,
            session: Mutex::new(None),
        })
    }

    /// The HTTP client for token and blob requests (built on first use).
    fn http(&self) -> Result<&reqwest::Client, RegistryError> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.options.connect_timeout)
            .read_timeout(self.options.read_timeout)
            .user_agent(concat!("locald/", env!("CARGO_PKG_VERSION")));
        for cert in &self.certs {
            http = http.add_root_certificate(cert.clone());
        }
        let built = http
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))?;
        Ok(self.http.get_or_init(|| built))
    }

    fn scheme_for(&self, registry: &str) -> &'static str {
        if is_loopback(registry) || self.options.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }

    fn client_for(&self, registry: &str) -> oci_client::Client {
        let protocol = if self.scheme_for(registry) == "http" {
            ClientProtocol::HttpsExcept(vec![registry.to_owned(), oci_registry_host(registry)])
        } else {
            ClientProtocol::Https
        };
        oci_client::Client::new(ClientConfig {
            protocol,
            extra_root_certificates: self.extra_certs.clone(),
            connect_timeout: Some(self.options.connect_timeout),
            read_timeout: Some(self.options.read_timeout),
            https_proxy: std::env::var("HTTPS_PROXY")
                .or_else(|_| std::env::var("https_proxy"))
                .ok(),
            http_proxy: std::env::var("HTTP_PROXY")
                .or_else(|_| std::env::var("http_proxy"))
                .ok(),
            no_proxy: std::env::var("NO_PROXY")
                .or_else(|_| std::env::var("no_proxy"))
                .ok(),
            ..ClientConfig::default()
        })
    }

    /// Logs in to the image's registry (once per source) and returns the session.
    async fn session(&self, image: &ImageReference) -> locald_core::Result<Session> {
        if let Ok(guard) = self.session.lock() {
            if let Some(s) = guard.as_ref() {
                if s.registry == image.registry() && s.reference.repository() == image.repository()
                {
                    let mut s = s.clone();
                    s.reference = image.oci().clone();
                    return Ok(s);
                }
            }
        }
        let session = self.login(image, RegistryOperation::Pull).await?;
        if let Ok(mut guard) = self.session.lock() {
            *guard = Some(session.clone());
        }
        Ok(session)
    }

    /// Logs in to the image's registry for `operation` (a push asks for a
    /// token with push scope) and returns the session.
    async fn login(
        &self,
        image: &ImageReference,
        operation: RegistryOperation,
    ) -> locald_core::Result<Session> {
        let registry = image.registry().to_owned();
        let credential = auth::resolve(&registry, self.options.credential.as_ref())?;
        tracing::debug!(registry = %registry, "using {credential:?}");
        let client = self.client_for(&registry);
        let reference = image.oci().clone();
        let scheme = self.scheme_for(&registry);
        let auth = match &credential {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { user, password, .. } => {
                RegistryAuth::Basic(user.clone(), password.clone())
            }
            Credential::IdentityToken { token, .. } => {
                let bearer = self
                    .exchange_identity_token(
                        &registry,
                        scheme,
                        image.repository(),
                        match operation {
                            RegistryOperation::Push => "pull,push",
                            RegistryOperation::Pull => "pull",
                        },
                        token,
                        &credential,
                    )
                    .await?;
                RegistryAuth::Bearer(bearer)
            }
        };
        let token = self
            .retry("authentication", &registry, || {
                client.auth(&reference, &auth, operation)
            })
            .await
            .map_err(|e| self.classify(e, &registry, &credential, "authentication"))?;
        let header = match (&token, &auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            (None, RegistryAuth::Bearer(t)) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Anonymous) => None,
        };
        let session = Session {
            reference,
            registry,
            client,
            auth,
            header: Arc::new(Mutex::new(header)),
            credential,
            scheme,
        };
        Ok(session)
    }

    /// Exchanges an OAuth2 refresh token (`identitytoken`) for an access token at
    /// the registry's token realm.
    async fn exchange_identity_token(
        &self,
        registry: &str,
        scheme: &str,
        repository: &str,
        scope: &str,
        refresh_token: &str,
        credential: &Credential,
    ) -> locald_core::Result<String> {
        let host = oci_registry_host(registry);
        let url = format!("{scheme}://{host}/v2/");
        let failed = |detail: String| RegistryError::AuthFailed {
            registry: registry.to_owned(),
            credential: format!("{credential:?}"),
            detail: Some(detail),
        };
        let res = self
            .http()?
            .get(&url)
            .send()
            .await
            .map_err(|e| RegistryError::Request {
                what: "the registry's API root".to_owned(),
                url: url.clone(),
                attempts: 1,
                reason: e.to_string(),
            })?;
        let challenge = res
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .map(parse_bearer_challenge)
            .ok_or_else(|| failed("the registry did not ask for a bearer token".to_owned()))?;
        let realm = challenge
            .get("realm")
            .ok_or_else(|| failed("the registry's challenge names no token realm".to_owned()))?;
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.to_owned()),
            ("client_id", "locald".to_owned()),
            ("scope", format!("repository:{repository}:{scope}")),
        ];
        if let Some(service) = challenge.get("service") {
            form.push(("service", service.clone()));
        }
        let res = self
            .http()?
            .post(realm)
            .form(&form)
            .send()
            .await
            .map_err(|e| RegistryError::Request {
                what: "a token".to_owned(),
                url: realm.clone(),
                attempts: 1,
                reason: e.to_string(),
            })?;
        if !res.status().is_success() {
            return Err(failed(format!("the token service answered {}", res.status())).into());
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: Option<String>,
            token: Option<String>,
        }
        let body: TokenResponse = res
            .json()
            .await
            .map_err(|e| failed(format!("unreadable token response: {e}")))?;
        body.access_token
            .or(body.token)
            .ok_or_else(|| failed("the token response holds no token".to_owned()).into())
    }

    /// Runs an `oci-client` call, retrying connection failures, 5xx and 429.
    async fn retry<T, F, Fut>(
        &self,
        what: &str,
        registry: &str,
        mut f: F,
    ) -> Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.options.attempts && retryable(&e) => {
                    let delay = backoff(self.options.backoff, attempt);
                    tracing::debug!("{what} at {registry} failed ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Turns an `oci-client` error into one a user can act on.
    fn classify(
        &self,
        e: OciDistributionError,
        registry: &str,
        credential: &Credential,
        what: &str,
    ) -> locald_core::Error {
        let auth_failed = |detail: Option<String>| RegistryError::AuthFailed {
            registry: registry.to_owned(),
            credential: format!("{credential:?}"),
            detail,
        };
        let err = match e {
            OciDistributionError::AuthenticationFailure(reason) => {
                auth_failed(Some(short(&reason)))
            }
            OciDistributionError::UnauthorizedError { .. } => auth_failed(None),
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    auth_failed(Some(envelope.to_string()))
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    RegistryError::NotFound {
                        what: what.to_owned(),
                        registry: registry.to_owned(),
                    }
                } else {
                    RegistryError::Request {
                        what: what.to_owned(),
                        url,
                        attempts: 1,
                        reason: envelope.to_string(),
                    }
                }
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => auth_failed(None),
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::NotFound {
                what: what.to_owned(),
                registry: registry.to_owned(),
            },
            OciDistributionError::ServerError { code, url, message } => RegistryError::Request {
                what: what.to_owned(),
                url,
                attempts: self.options.attempts,
                reason: format!("HTTP {code}: {}", short(&message)),
            },
            other => RegistryError::Request {
                what: what.to_owned(),
                url: format!("{}://{}", self.scheme_for(registry), registry),
                attempts: if retryable(&other) {
                    self.options.attempts
                } else {
                    1
                },
                reason: locald_core::error::chain(&other),
            },
        };
        err.into()
    }

    fn current(&self) -> locald_core::Result<Session> {
        self.session
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| RegistryError::NeedImage.into())
    }

    async fn fetch_manifest_bytes(
        &self,
        session: &Session,
        reference: &Reference,
        what: &str,
    ) -> locald_core::Result<(Vec<u8>, String)> {
        tracing::debug!(
            "GET {}://{}/v2/{}/manifests/{}",
            session.scheme,
            oci_registry_host(&session.registry),
            reference.repository(),
            reference.digest().or(reference.tag()).unwrap_or("latest")
        );
        let (bytes, digest) = self
            .retry(what, &session.registry, || {
                session
                    .client
                    .pull_manifest_raw(reference, &session.auth, ACCEPT)
            })
            .await
            .map_err(|e| self.classify(e, &session.registry, &session.credential, what))?;
        Ok((bytes.to_vec(), digest))
    }

    fn blob_url(&self, session: &Session, digest: &str) -> String {
        format!(
            "{}://{}/v2/{}/blobs/{}",
            session.scheme,
            oci_registry_host(&session.registry),
            session.reference.repository(),
            digest
        )
    }
}

/// The host `oci-client` talks to for a registry (Docker Hub's API host).
fn oci_registry_host(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" => "index.docker.io".to_owned(),
        other => other.to_owned(),
    }
}

fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 429 || *code >= 500,
        OciDistributionError::RequestError(r) => {
            (r.is_connect() || r.is_timeout() || r.is_request() || r.is_body())
                && !is_tls_failure(r)
        }
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// A certificate problem is not going to fix itself by retrying.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let text = locald_core::error::chain(e).to_ascii_lowercase();

    text.contains("certificate") || text.contains("tls handshake") || text.contains("invalid peer")
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    (base * 2u32.saturating_pow(attempt.saturating_sub(1))).min(Duration::from_secs(10))
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 300 {
        format!("{}...", &s[..s.floor_char_boundary(300)])
    } else {
        s.to_owned()
    }
}

/// `Bearer realm="...",service="...",scope="..."` -> map.
fn parse_bearer_challenge(h: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let Some(rest) = h
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| h.trim().strip_prefix("bearer "))
    else {
        return out;
    };
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Parses a `Retry-After` header given in seconds (dates are treated as 1 s).
fn retry_after(h: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let v = h?.to_str().ok()?.trim();
    Some(match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs.min(60)),
        Err(_) => Duration::from_secs(1),
    })
}

impl ImageSource for RegistrySource {
    fn describe(&self) -> String {
        "registry".to_owned()
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn registry_origin(&self) -> Option<(String, String)> {
        let session = self.current().ok()?;
        Some((session.registry, session.reference.repository().to_owned()))
    }

    fn prepare<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, locald_core::Result<()>> {
        Box::pin(async move {
            let image = image.ok_or(RegistryError::NeedImage)?;
            let reference = ImageReference::parse(image).map_err(RegistryError::from)?;
            self.session(&reference).await?;
            Ok(())
        })
    }

    fn canonical_name(&self, image: Option<&str>) -> Option<String> {
        let image = image?;
        Some(
            ImageReference::parse(image)
                .map(|r| r.to_string())
                .unwrap_or_else(|_| image.to_owned()),
        )
    }

    fn root<'a>(&'a self, image: Option<&'a str>) -> BoxFuture<'a, locald_core::Result<Document>> {
        Box::pin(async move {
            let image = image.ok_or(RegistryError::NeedImage)?;
            let reference = ImageReference::parse(image).map_err(RegistryError::from)?;
            let session = self.session(&reference).await?;
            let what = format!("image {reference}");
            let (bytes, digest) = self
                .fetch_manifest_bytes(&session, &session.reference, &what)
                .await?;
            let digest = Digest::parse(&digest).ok();
            Ok(Document {
                bytes,
                media_type: None,
                digest: reference.digest().cloned().or(digest),
                name: Some(reference.to_string()),
            })
        })
    }

    fn fetch_manifest<'a>(
        &'a self,
        descriptor: &'a Descriptor,
    ) -> BoxFuture<'a, locald_core::Result<Vec<u8>>> {
        Box::pin(async move {
            let session = self.current()?;
            let media = descriptor.media_type().to_string();
            let is_manifest = [
                manifest::OCI_INDEX,
                manifest::OCI_MANIFEST,
                manifest::DOCKER_LIST,
                manifest::DOCKER_MANIFEST,
            ]
            .contains(&media.as_str());
            let what = format!("document {}", descriptor.digest());
            if is_manifest {
                let reference = session
                    .reference
                    .clone_with_digest(descriptor.digest().to_string());
                return Ok(self
                    .fetch_manifest_bytes(&session, &reference, &what)
                    .await?
                    .0);
            }
            manifest::check_size(descriptor.size(), &what)?;
            let reader = self.open_blob(descriptor).await?;
            locald_core::source::read_capped(reader, manifest::MAX_JSON_BYTES, &what).await
        })
    }

    fn open_blob<'a>(
        &'a self,
        descriptor: &'a Descriptor,
    ) -> BoxFuture<'a, locald_core::Result<BlobReader>> {
        Box::pin(async move {
            let session = self.current()?;
            let digest = descriptor.digest().to_string();
            let fetch = BlobFetch {
                http: self.http()?.clone(),
                url: self.blob_url(&session, &digest),
                size: descriptor.size(),
                digest,
                session,
                attempts: self.options.attempts,
                backoff: self.options.backoff,
            };
            // Open the first response now, so "not found" or "unauthorized" is an
            // error of open_blob, not a read error later.
            let first = fetch.open(0).await?;
            let stream = blob_stream(fetch, first);
            let reader: BlobReader = Box::pin(tokio_util::io::StreamReader::new(stream));
            Ok(reader)
        })
    }

    fn current_digest<'a>(
        &'a self,
        image: Option<&'a str>,
    ) -> BoxFuture<'a, locald_core::Result<Digest>> {
        Box::pin(async move {
            let image = image.ok_or(RegistryError::NeedImage)?;
            let reference = ImageReference::parse(image).map_err(RegistryError::from)?;
            let session = self.session(&reference).await?;
            let what = format!("digest of image {reference}");
            let digest = self
                .retry(&what, &session.registry, || {
                    session
                        .client
                        .fetch_manifest_digest(&session.reference, &session.auth)
                })
                .await
                .map_err(|e| self.classify(e, &session.registry, &session.credential, &what))?;
            Digest::parse(&digest).map_err(|source| locald_core::Error::BadDigest { what, source })
        })
    }
}

/// One blob download: the request to make and how to retry it.
struct BlobFetch {
    http: reqwest::Client,
    url: String,
    digest: String,
    size: u64,
    session: Session,
    attempts: u32,
    backoff: Duration,
}

/// A response body and how many of its leading bytes to drop (a registry that
/// ignored our `Range` resends from the start).
struct Opened {
    body: reqwest::Response,
    skip: u64,
}

impl BlobFetch {
    fn what(&self) -> String {
        format!("blob {}", self.digest)
    }

    /// GETs the blob from `offset`, retrying 5xx/429 (honouring `Retry-After`),
    /// connection failures, and a 401 once after logging in again.
    async fn open(&self, offset: u64) -> Result<Opened, RegistryError> {
        let mut attempt = 1;
        let mut reauthed = false;
        loop {
            let mut req = self.http.get(&self.url);
            if let Some(h) = self.session.header.lock().ok().and_then(|g| g.clone()) {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            if offset > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
                tracing::debug!("GET {} (from byte {offset})", self.url);
            } else {
                tracing::debug!("GET {}", self.url);
            }
            let failure = match req.send().await {
                Ok(res) => {
                    let status = res.status();
                    if status == reqwest::StatusCode::PARTIAL_CONTENT && offset > 0 {
                        return Ok(Opened { body: res, skip: 0 });
                    }
                    if status == reqwest::StatusCode::OK {
                        return Ok(Opened {
                            body: res,
                            skip: offset,
                        });
                    }
                    if status == reqwest::StatusCode::UNAUTHORIZED && !reauthed {
                        // Tokens expire during long pulls: log in again, once.
                        reauthed = true;
                        self.reauth().await?;
                        continue;
                    }
                    if status == reqwest::StatusCode::UNAUTHORIZED
                        || status == reqwest::StatusCode::FORBIDDEN
                    {
                        return Err(RegistryError::AuthFailed {
                            registry: self.session.registry.clone(),
                            credential: format!("{:?}", self.session.credential),
                            detail: None,
                        });
                    }
                    if status == reqwest::StatusCode::NOT_FOUND {
                        return Err(RegistryError::NotFound {
                            what: self.what(),
                            registry: self.session.registry.clone(),
                        });
                    }
                    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
                        return Err(RegistryError::Request {
                            what: self.what(),
                            url: self.url.clone(),
                            attempts: attempt,
                            reason: format!("the registry has fewer than {offset} bytes of it"),
                        });
                    }
                    let retry = status.as_u16() == 429 || status.is_server_error();
                    let wait = retry_after(res.headers().get(reqwest::header::RETRY_AFTER));
                    if !retry {
                        return Err(RegistryError::Request {
                            what: self.what(),
                            url: self.url.clone(),
                            attempts: attempt,
                            reason: format!("HTTP {status}"),
                        });
                    }
                    (format!("HTTP {status}"), wait)
                }
                Err(e) if is_tls_failure(&e) => {
                    return Err(RegistryError::Request {
                        what: self.what(),
                        url: self.url.clone(),
                        attempts: attempt,
                        reason: locald_core::error::chain(&e),
                    })
                }
                Err(e) => (locald_core::error::chain(&e), None),
            };
            if attempt >= self.attempts {
                return Err(RegistryError::Request {
                    what: self.what(),
                    url: self.url.clone(),
                    attempts: attempt,
                    reason: failure.0,
                });
            }
            let delay = failure.1.unwrap_or_else(|| backoff(self.backoff, attempt));
            tracing::debug!(
                "{} failed ({}); retrying in {delay:?}",
                self.what(),
                failure.0
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn reauth(&self) -> Result<(), RegistryError> {
        let s = &self.session;
        let token = s
            .client
            .auth(&s.reference, &s.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| RegistryError::AuthFailed {
                registry: s.registry.clone(),
                credential: format!("{:?}", s.credential),
                detail: Some(short(&e.to_string())),
            })?;
        if let (Some(t), Ok(mut h)) = (token, s.header.lock()) {
            *h = Some(format!("Bearer {t}"));
        }
        Ok(())
    }
}

/// The blob's bytes; an interrupted body is resumed from where it stopped.
fn blob_stream(
    fetch: BlobFetch,
    first: Opened,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    struct State {
        fetch: BlobFetch,
        body: Option<(
            futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
            u64,
        )>,
        offset: u64,
        failures: u32,
        done: bool,
    }
    let body = Some((first.body.bytes_stream().boxed(), first.skip));
    let state = State {
        fetch,
        body,
        offset: 0,
        failures: 0,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if let Some((body, skip)) = st.body.as_mut() {
                match body.next().await {
                    Some(Ok(mut chunk)) => {
                        if *skip > 0 {
                            let n = (*skip).min(chunk.len() as u64);
                            *skip -= n;
                            chunk = chunk.slice(n as usize..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        st.offset += chunk.len() as u64;
                        return Some((Ok(chunk), st));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(
                            "{} interrupted at byte {}: {}",
                            st.fetch.what(),
                            st.offset,
                            locald_core::error::chain(&e)
                        );
                    }
                    None if st.offset >= st.fetch.size => return None,
                    None => {
                        tracing::debug!(
                            "{} ended early at byte {} of {}",
                            st.fetch.what(),
                            st.offset,
                            st.fetch.size
                        );
                    }
                }
                // Interrupted: resume with a Range request.
                st.body = None;
                st.failures += 1;
                if st.failures >= st.fetch.attempts {
                    st.done = true;
                    let e = RegistryError::Request {
                        what: st.fetch.what(),
                        url: st.fetch.url.clone(),
                        attempts: st.failures,
                        reason: format!(
                            "the connection broke at byte {} of {}",
                            st.offset, st.fetch.size
                        ),
                    };
                    return Some((Err(std::io::Error::other(e)), st));
                }
                tokio::time::sleep(backoff(st.fetch.backoff, st.failures)).await;
            }
            match st.fetch.open(st.offset).await {
                Ok(o) => st.body = Some((o.body.bytes_stream().boxed(), o.skip)),
                Err(e) => {
                    st.done = true;
                    return Some((Err(std::io::Error::other(e)), st));
                }
            }
        }
    })
}

/// Opens `registry:` sources.
pub struct Factory {
    options: RegistryOptions,
}

impl Factory {
    /// A factory using these options for every source it opens.
    pub fn new(options: RegistryOptions) -> Self {
        Factory { options }
    }
}

impl SourceFactory for Factory {
    fn provider(&self) -> String {
        "built-in registry source".to_owned()
    }

    fn open(&self, location: &str) -> locald_core::Result<Box<dyn ImageSource>> {
        if !location.is_empty() {
            return Err(locald_core::Error::source(format!(
                "the registry source takes no location (got {location:?}); name the registry in the image reference, e.g. {location}/repo:tag"
            )));
        }
        Ok(Box::new(RegistrySource::new(self.options.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_table() {
        for (host, want) in [
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("docker.io", false),
            ("10.0.0.1:5000", false),
            ("registry.local:5000", false),
        ] {
            assert_eq!(is_loopback(host), want, "{host}");
        }
    }

    #[test]
    fn challenge_parsing() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(c["realm"], "https://auth.docker.io/token");
        assert_eq!(c["service"], "registry.docker.io");
        assert_eq!(c["scope"], "repository:library/ubuntu:pull");
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_empty());
    }

    #[test]
    fn retry_after_and_backoff() {
        let h = reqwest::header::HeaderValue::from_static("3");
        assert_eq!(retry_after(Some(&h)), Some(Duration::from_secs(3)));
        let h = reqwest::header::HeaderValue::from_static("9999");
        assert_eq!(retry_after(Some(&h)), Some(Duration::from_secs(60)));
        assert_eq!(retry_after(None), None);
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 3), Duration::from_secs(2));
        assert_eq!(backoff(b, 30), Duration::from_secs(10));
    }
}
