//! A real registry for tests: the distribution registry (`docker-registry serve`)
//! on a free loopback port with no auth, htpasswd basic auth or token auth (with a
//! test token server signing JWTs with a throwaway key), images pushed into it
//! by `skopeo`, and a counting, fault-injecting HTTP proxy to put in front of it.
//!
//! ```no_run
//! use locald_tests::registry::{Auth, Proxy, Registry};
//! let reg = Registry::start(Auth::None);
//! # let layout = std::path::Path::new("/tmp/layout");
//! reg.push_layout(layout, "latest", "app:v1").unwrap();
//! let proxy = Proxy::start(&reg.addr());
//! proxy.fail_next_blob_after(100); // the next blob GET is cut after 100 body bytes
//! // ... pull `127.0.0.1:PROXY_PORT/app:v1` ...
//! assert_eq!(proxy.count("GET", "/blobs/"), 2);
//! ```

use std::collections::{HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::peers;

/// The `service` the token-auth registry expects in tokens' `aud`.
pub const TOKEN_SERVICE: &str = "locald-test-registry";
/// The `iss` the token-auth registry trusts.
pub const TOKEN_ISSUER: &str = "locald-test-token-issuer";

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How the registry authenticates clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may pull and push.
    None,
    /// HTTP basic auth against an `htpasswd -B` file with this one user.
    Htpasswd { user: String, password: String },
    /// Bearer tokens from a [`TokenServer`] that knows this one user.
    Token { user: String, password: String },
}

impl Auth {
    /// `Auth::Htpasswd` with these credentials.
    pub fn htpasswd(user: &str, password: &str) -> Auth {
        Auth::Htpasswd {
            user: user.into(),
            password: password.into(),
        }
    }

    /// `Auth::Token` with these credentials.
    pub fn token(user: &str, password: &str) -> Auth {
        Auth::Token {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The user and password, unless anonymous.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Auth::None => None,
            Auth::Htpasswd { user, password } | Auth::Token { user, password } => {
                Some((user, password))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------
// Registry

/// A running `docker-registry serve` on `127.0.0.1:PORT` with its own storage.
/// Killed (with its token server) on drop. All methods take `&self`, so an
/// `Arc<Registry>` can be killed and restarted from a [`Proxy`] hook.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    auth: Auth,
    child: Mutex<Option<Child>>,
    token: Option<TokenServer>,
    sync: AtomicU64,
}

impl Registry {
    /// Starts a registry (and, for [`Auth::Token`], its token server); panics with
    /// the registry's log if it does not answer `GET /v2/` in time.
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("locald-registry-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let storage = d.join("storage");
        fs::create_dir_all(&storage).expect("storage dir");
        let port = free_port();
        let mut auth_section = String::new();
        let mut token = None;
        match &auth {
            Auth::None => {}
            Auth::Htpasswd { user, password } => {
                let out = peers::run("htpasswd", ["-Bbn", user.as_str(), password.as_str()])
                    .unwrap_or_else(|e| panic!("htpasswd (apt-get install apache2-utils): {e}"));
                let path = d.join("htpasswd");
                fs::write(&path, out.trim_end()).expect("write htpasswd");
                auth_section = format!(
                    "auth:\n  htpasswd:\n    realm: locald-test\n    path: {}\n",
                    path.display()
                );
            }
            Auth::Token { user, password } => {
                let (key, cert) = (d.join("token.key"), d.join("token.crt"));
                generate_key_and_cert(&key, &cert);
                let server = TokenServer::start(&key, &cert, user, password);
                auth_section = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    cert.display()
                );
                token = Some(server);
            }
        }
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: locald-test-secret\n\
             {auth_section}",
            storage.display()
        );
        fs::write(d.join("config.yml"), config).expect("write config.yml");
        let reg = Registry {
            dir,
            port,
            auth,
            child: Mutex::new(None),
            token,
            sync: AtomicU64::new(0),
        };
        reg.spawn_until_ready();
        reg
    }

    fn spawn_until_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("registry log file");
            let err = log.try_clone().expect("dup log file");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(self.dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn docker-registry: {e}"));
            *lock(&self.child) = Some(child);
            match self.wait_ready(deadline) {
                Ok(()) => return,
                // The old process's port may be briefly unavailable after a kill.
                Err(exited) if exited && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(_) => panic!(
                    "docker-registry on {} did not become ready; log:\n{}",
                    self.addr(),
                    self.log()
                ),
            }
        }
    }

    /// Ok when `GET /v2/` answers 200 or 401; Err(true) when the process exited.
    fn wait_ready(&self, deadline: Instant) -> Result<(), bool> {
        loop {
            if let Some(child) = lock(&self.child).as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return Err(true);
                }
            }
            if let Ok(r) = http_request(&self.addr(), "GET", "/v2/", &[], b"") {
                if r.status == 200 || r.status == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(false);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`, what goes in front of image references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The user and password clients must present, unless anonymous.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.credentials()
    }

    /// The token server of an [`Auth::Token`] registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// Requests the token server has answered (0 without token auth).
    pub fn token_requests(&self) -> usize {
        self.token.as_ref().map_or(0, TokenServer::requests)
    }

    /// The directory holding config, storage, keys and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Everything the registry wrote (all runs, restarts appended).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Whether the registry process is running.
    pub fn is_running(&self) -> bool {
        lock(&self.child)
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILLs the registry (storage stays); a no-op when it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same storage (kills it
    /// first if it still runs).
    pub fn restart(&self) {
        self.kill();
        self.spawn_until_ready();
    }

    /// `(method, request URI, status)` of every request the registry has logged,
    /// in the order the responses completed (parsed from its access log). Waits
    /// until a marker request of its own is logged so that requests whose
    /// responses a client already holds are included.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        if self.is_running() {
            let n = self.sync.fetch_add(1, Ordering::Relaxed);
            let marker = format!("locald-sync={n}");
            if http_request(&self.addr(), "GET", &format!("/v2/?{marker}"), &[], b"").is_ok() {
                let deadline = Instant::now() + Duration::from_secs(3);
                while !self.log().contains(&marker) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        parse_access_log(&self.log())
            .into_iter()
            .filter(|(_, uri, _)| !uri.contains("locald-sync="))
            .collect()
    }

    /// How many `GET .../blobs/DIGEST` requests the registry logged (any status).
    pub fn blob_requests(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest}");
        self.requests()
            .iter()
            .filter(|(m, uri, _)| {
                m == "GET" && uri.split('?').next().is_some_and(|p| p.ends_with(&suffix))
            })
            .count()
    }

    /// Where the registry stores the bytes of `digest` (`sha256:...`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest is alg:hex");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs")
            .join(alg)
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Flips one byte in the middle of the stored blob: the registry then serves
    /// content that does not match its digest (it does not check on reads).
    pub fn corrupt_stored_blob(&self, digest: &str) {
        let p = self.blob_path(digest);
        let mut bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!bytes.is_empty(), "empty blob {digest}");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&p, bytes).expect("rewrite blob");
    }

    fn skopeo_creds(&self, flag: &str) -> Vec<String> {
        self.credentials()
            .map(|(u, p)| vec![flag.to_string(), format!("{u}:{p}")])
            .unwrap_or_default()
    }

    /// `skopeo copy --dest-tls-verify=false [--dest-creds U:P] oci:DIR:REF
    /// docker://ADDR/REPO_TAG`. For an index without `--all` skopeo copies only
    /// the image for the host's platform; see [`Registry::push_layout_all`].
    pub fn push_layout(
        &self,
        layout_dir: &Path,
        ref_name: &str,
        repo_tag: &str,
    ) -> Result<(), String> {
        self.push(layout_dir, ref_name, repo_tag, false)
    }

    /// [`Registry::push_layout`] with `--all`: a multi-platform index and all
    /// its images.
    pub fn push_layout_all(
        &self,
        layout_dir: &Path,
        ref_name: &str,
        repo_tag: &str,
    ) -> Result<(), String> {
        self.push(layout_dir, ref_name, repo_tag, true)
    }

    fn push(
        &self,
        layout_dir: &Path,
        ref_name: &str,
        repo_tag: &str,
        all: bool,
    ) -> Result<(), String> {
        let mut args = vec!["--dest-tls-verify=false".to_string()];
        args.extend(self.skopeo_creds("--dest-creds"));
        if all {
            args.push("--all".into());
        }
        let extra: Vec<&str> = args.iter().map(String::as_str).collect();
        peers::skopeo_copy(
            &format!("oci:{}:{ref_name}", layout_dir.display()),
            &format!("docker://{}/{repo_tag}", self.addr()),
            &extra,
        )
    }

    /// `skopeo inspect --raw` of `ADDR/REPO_TAG` with the registry's credentials:
    /// the manifest (or index) exactly as stored.
    pub fn inspect_raw(&self, repo_tag: &str) -> Result<String, String> {
        let mut args = vec![
            "inspect".to_string(),
            "--raw".into(),
            "--tls-verify=false".into(),
        ];
        args.extend(self.skopeo_creds("--creds"));
        args.push(format!("docker://{}/{repo_tag}", self.addr()));
        peers::skopeo(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A plain HTTP request to the registry (no auth handling).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<HttpResponse> {
        http_request(&self.addr(), method, path, headers, b"")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(method, uri, status)` of each access-log line (`... "GET /v2/ HTTP/1.1" 200 ...`).
fn parse_access_log(log: &str) -> Vec<(String, String, u16)> {
    log.lines()
        .filter_map(|line| {
            let start = line.find("] \"")? + 3;
            let rest = &line[start..];
            let end = rest.find('"')?;
            let mut req = rest[..end].split(' ');
            let (method, uri, proto) = (req.next()?, req.next()?, req.next()?);
            if !proto.starts_with("HTTP/") {
                return None;
            }
            let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
            Some((method.to_string(), uri.to_string(), status))
        })
        .collect()
}

fn generate_key_and_cert(key: &Path, cert: &Path) {
    let mut args: Vec<std::ffi::OsString> = [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=locald-test-token-issuer",
        "-keyout",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(key.into());
    args.push("-out".into());
    args.push(cert.into());
    peers::run("openssl", args).unwrap_or_else(|e| panic!("openssl: {e}"));
}

// ---------------------------------------------------------------------------
// docker config.json and credential helpers

/// A docker `config.json` with `auths.HOST.auth = base64(user:password)`.
pub fn docker_config_auths(host: &str, user: &str, password: &str) -> String {
    serde_json::json!({
        "auths": { host: { "auth": STANDARD.encode(format!("{user}:{password}")) } }
    })
    .to_string()
}

/// A docker `config.json` with `auths.HOST.identitytoken` (an OAuth2 refresh
/// token, see [`TokenServer::issue_refresh_token`]).
pub fn docker_config_identity_token(host: &str, token: &str) -> String {
    serde_json::json!({ "auths": { host: { "identitytoken": token } } }).to_string()
}

/// A docker `config.json` with `credHelpers.HOST = NAME`.
pub fn docker_config_cred_helper(host: &str, name: &str) -> String {
    serde_json::json!({ "credHelpers": { host: name } }).to_string()
}

/// Writes an executable `DIR/docker-credential-NAME` that answers `get` for
/// `host` (with or without `http://`) with `{"ServerURL","Username","Secret"}`
/// and exits 1 with "credentials not found in native keychain" for anything
/// else. Every invocation appends `ACTION SERVER` to `DIR/NAME.calls`. Put DIR
/// on the `PATH` of the process under test. A username of `<token>` makes the
/// secret an identity token.
pub fn write_credential_helper(
    dir: &Path,
    name: &str,
    host: &str,
    user: &str,
    secret: &str,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let json =
        serde_json::json!({ "ServerURL": host, "Username": user, "Secret": secret }).to_string();
    let calls = dir.join(format!("{name}.calls"));
    let script = format!(
        "#!/bin/sh\n\
         read -r server\n\
         printf '%s %s\\n' \"$1\" \"$server\" >> {calls}\n\
         if [ \"$1\" = get ] && {{ [ \"$server\" = {h} ] || [ \"$server\" = {hh} ] || [ \"$server\" = {hs} ]; }}; then\n\
         \tprintf '%s\\n' {json}\n\
         \texit 0\n\
         fi\n\
         echo 'credentials not found in native keychain'\n\
         exit 1\n",
        calls = q(&calls.to_string_lossy()),
        h = q(host),
        hh = q(&format!("http://{host}")),
        hs = q(&format!("https://{host}")),
        json = q(&json),
    );
    let path = dir.join(format!("docker-credential-{name}"));
    fs::write(&path, script).expect("write credential helper");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod helper");
    path
}

// ---------------------------------------------------------------------------
// Token server

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// `anonymous`, `basic` (GET with credentials), `password` or `refresh_token`.
    pub grant: String,
    pub scopes: Vec<String>,
    pub status: u16,
}

struct TokenState {
    user: String,
    password: String,
    key: PathBuf,
    x5c: String,
    refresh_tokens: Mutex<HashSet<String>>,
    log: Mutex<Vec<TokenRequest>>,
    counter: AtomicU64,
}

/// A token server for the registry's `auth: token:` section: `GET /token`
/// (basic auth or anonymous) and `POST /token` (OAuth2 password and
/// refresh_token grants). Signs RS256 JWTs with `openssl dgst`, the
/// certificate in the `x5c` header. Valid credentials get every action they ask
/// for; anonymous requests get a token with no access.
pub struct TokenServer {
    addr: String,
    state: Arc<TokenState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Serves tokens signed with `key` (PEM), `cert` (PEM) in their `x5c`.
    pub fn start(key: &Path, cert: &Path, user: &str, password: &str) -> TokenServer {
        let pem = fs::read_to_string(cert).expect("read cert");
        let x5c: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let state = Arc::new(TokenState {
            user: user.into(),
            password: password.into(),
            key: key.into(),
            x5c,
            refresh_tokens: Mutex::new(HashSet::new()),
            log: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    thread::spawn(move || {
                        let _ = serve_token(&state, conn);
                    });
                }
            })
        };
        TokenServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `http://ADDR/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// How many requests were answered.
    pub fn requests(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// Every request answered, in order.
    pub fn log(&self) -> Vec<TokenRequest> {
        lock(&self.state.log).clone()
    }

    /// A refresh token the server accepts (what `docker login` stores as an
    /// `identitytoken`).
    pub fn issue_refresh_token(&self) -> String {
        let t = self.state.random("refresh");
        lock(&self.state.refresh_tokens).insert(t.clone());
        t
    }

    /// Forgets every refresh token issued so far.
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.state.refresh_tokens).clear();
    }

    /// A signed token for `sub` granting `scopes` (`repository:NAME:pull,push`).
    pub fn mint(&self, sub: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.state.jwt(sub, &scopes).expect("sign token")
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TokenState {
    fn random(&self, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        hex::encode(&Sha256::digest(format!("{what}-{n}-{now}-{}", std::process::id()))[..16])
    }

    fn jwt(&self, sub: &str, scopes: &[String]) -> io::Result<String> {
        let now = unix_now();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let (typ, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": typ,
                    "name": name,
                    "actions": actions.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5c": [self.x5c] });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": sub,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": self.random("jti"),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "openssl dgst: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(out.stdout)))
    }

    fn token_body(
        &self,
        sub: &str,
        scopes: &[String],
        refresh: Option<String>,
    ) -> io::Result<String> {
        let token = self.jwt(sub, scopes)?;
        let mut v = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": 300,
            "issued_at": rfc3339(unix_now()),
            "scope": scopes.join(" "),
        });
        if let Some(r) = refresh {
            v["refresh_token"] = r.into();
        }
        Ok(v.to_string())
    }
}

fn serve_token(state: &TokenState, conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let req = parse_request_head(&head).ok_or_else(|| io::Error::other("bad request"))?;
    let len = header(&req.headers, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));

    let unauthorized = |msg: &str| {
        (401, serde_json::json!({ "error": "invalid_grant", "error_description": msg, "details": msg }).to_string())
    };
    let (grant, scopes, (status, body)) = if path != "/token" {
        (
            "none".to_string(),
            vec![],
            (404, r#"{"error":"not found"}"#.to_string()),
        )
    } else if req.method == "GET" {
        let params = parse_form(query);
        let scopes = scopes_of(&params);
        let basic = header(&req.headers, "authorization")
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        match basic {
            None => (
                "anonymous".into(),
                scopes.clone(),
                (200, state.token_body("", &[], None)?),
            ),
            Some(up) => {
                let ok = up.split_once(':') == Some((&state.user, &state.password));
                let res = if ok {
                    (200, state.token_body(&state.user, &scopes, None)?)
                } else {
                    unauthorized("wrong username or password")
                };
                ("basic".into(), scopes, res)
            }
        }
    } else if req.method == "POST" {
        let params = parse_form(&String::from_utf8_lossy(&body));
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let scopes = scopes_of(&params);
        let grant = get("grant_type").unwrap_or("").to_string();
        let res = match grant.as_str() {
            "password" => {
                if get("username") == Some(&state.user) && get("password") == Some(&state.password)
                {
                    let refresh = (get("access_type") == Some("offline")).then(|| {
                        let t = state.random("refresh");
                        lock(&state.refresh_tokens).insert(t.clone());
                        t
                    });
                    (200, state.token_body(&state.user, &scopes, refresh)?)
                } else {
                    unauthorized("wrong username or password")
                }
            }
            "refresh_token" => {
                let known =
                    get("refresh_token").is_some_and(|t| lock(&state.refresh_tokens).contains(t));
                if known {
                    (
                        200,
                        state.token_body(
                            &state.user,
                            &scopes,
                            get("refresh_token").map(String::from),
                        )?,
                    )
                } else {
                    unauthorized("unknown refresh token")
                }
            }
            _ => (400, r#"{"error":"unsupported_grant_type"}"#.to_string()),
        };
        (grant, scopes, res)
    } else {
        (
            "none".into(),
            vec![],
            (405, r#"{"error":"method not allowed"}"#.to_string()),
        )
    };
    lock(&state.log).push(TokenRequest {
        method: req.method.clone(),
        grant,
        scopes,
        status,
    });
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    w.flush()?;
    let _ = w.shutdown(Shutdown::Both);
    Ok(())
}

/// Every `scope` parameter, each split on spaces (OAuth2 joins them with spaces).
fn scopes_of(params: &[(String, String)]) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| {
            v.split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `a=b&c=d` with `+` and `%XX` decoded.
fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------
// HTTP bits

struct RequestHead {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

/// Reads up to and including the empty line; `None` on a clean EOF before any
/// byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            // Tolerate stray CRLFs between messages.
            if before == 0 {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
        if head.len() > 1 << 20 {
            return Err(io::Error::other("HTTP head over 1 MiB"));
        }
    }
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn parse_request_head(head: &[u8]) -> Option<RequestHead> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.lines();
    let mut first = lines.next()?.split(' ');
    let (method, path, proto) = (first.next()?, first.next()?, first.next()?);
    if !proto.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
    {
        return None;
    }
    Some(RequestHead {
        method: method.into(),
        path: path.into(),
        headers: parse_headers(lines),
    })
}

/// `(status, headers)` of a response head.
fn parse_response_head(head: &[u8]) -> Option<(u16, Vec<(String, String)>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.lines();
    let mut first = lines.next()?.splitn(3, ' ');
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = first.next()?.parse().ok()?;
    Some((status, parse_headers(lines)))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

fn content_length(headers: &[(String, String)]) -> Option<u64> {
    header(headers, "content-length").and_then(|v| v.parse().ok())
}

/// Copies exactly `n` bytes.
fn copy_exact(r: &mut impl Read, w: &mut impl Write, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), w)?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Copies one chunked body (chunks, last chunk, trailers) verbatim.
fn copy_chunked(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        w.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size =
            u64::from_str_radix(size_text, 16).map_err(|_| io::Error::other("bad chunk size"))?;
        if size == 0 {
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                w.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
        }
        copy_exact(r, w, size)?;
        line.clear();
        r.read_until(b'\n', &mut line)?;
        w.write_all(&line)?;
    }
}

/// A response read by [`http_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the whole body arrived (false when the connection closed before
    /// `Content-Length` bytes or the last chunk).
    pub complete: bool,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), the response
/// read to its end or to EOF. `Host` and `Content-Length` are added.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD")
}

/// Reads one response (skipping 1xx) from a connection; a body cut short comes
/// back with `complete: false`.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> io::Result<HttpResponse> {
    let (status, headers) = loop {
        let head = read_head(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let (status, headers) =
            parse_response_head(&head).ok_or_else(|| io::Error::other("bad response head"))?;
        if !(100..200).contains(&status) {
            break (status, headers);
        }
    };
    let mut body = Vec::new();
    let complete = if head_request || status == 204 || status == 304 {
        true
    } else if is_chunked(&headers) {
        let mut raw = Vec::new();
        let ok = copy_chunked(r, &mut raw).is_ok();
        body = dechunk(&raw);
        ok
    } else if let Some(n) = content_length(&headers) {
        let got = r.take(n).read_to_end(&mut body);
        got.is_ok() && body.len() as u64 == n
    } else {
        r.read_to_end(&mut body).is_ok()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
        complete,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = raw.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&raw[..nl]);
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        raw = &raw[nl + 1..];
        if size == 0 || raw.len() < size {
            out.extend_from_slice(&raw[..size.min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

// ---------------------------------------------------------------------------
// Proxy

/// One request seen by a [`Proxy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    pub method: String,
    /// The request target as sent, query included.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The status of the response, once one was read (or injected).
    pub status: Option<u16>,
    /// Whether a fault was injected into (or instead of) the response.
    pub injected: bool,
}

impl ProxyRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

enum ResponseFault {
    /// Close the connection after this many body bytes.
    Cut(u64),
    /// Flip the byte in the middle of the body.
    Corrupt,
    /// Run the hook after this many body bytes, then close the connection.
    Hook(u64, Box<dyn FnOnce() + Send>),
}

#[derive(Default)]
struct Faults {
    /// Synthetic responses for the next blob GETs, not forwarded upstream.
    statuses: VecDeque<(u16, Vec<(String, String)>)>,
    /// Applied to the next 200/206 blob GET responses, one each.
    responses: VecDeque<ResponseFault>,
    /// The next uploads (`PATCH`/`PUT` of `.../blobs/uploads/...` with a body):
    /// forward this many body bytes, then drop both connections.
    upload_cuts: VecDeque<u64>,
    /// Synthetic answers for the next request matching (method, path part):
    /// status and JSON body, not forwarded upstream.
    answers: VecDeque<(String, String, u16, String)>,
}

struct ProxyShared {
    upstream: String,
    stop: AtomicBool,
    log: Mutex<Vec<ProxyRequest>>,
    faults: Mutex<Faults>,
    conns: Mutex<Vec<TcpStream>>,
    connections: AtomicUsize,
}

/// A plain-TCP HTTP/1.1 proxy in front of a registry (clients use the proxy's
/// address as the registry host). Logs every request (keep-alive connections,
/// request bodies by `Content-Length` or chunked) and injects faults into
/// blob GETs (`GET .../blobs/<digest>`, not uploads). Connections that do not
/// start with an HTTP request line (a TLS probe) are passed through unparsed.
/// When the upstream is down the proxy accepts and closes at once.
pub struct Proxy {
    addr: String,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(ProxyShared {
            upstream: upstream.into(),
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            conns: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let accept = {
            let shared = shared.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    thread::spawn(move || proxy_connection(&shared, conn));
                }
            })
        };
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(method, path)` of every request, in the order they were sent.
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.shared.log)
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect()
    }

    /// Every request with its headers and response status.
    pub fn records(&self) -> Vec<ProxyRequest> {
        lock(&self.shared.log).clone()
    }

    /// Requests with this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    /// `GET`s of blobs (any digest, uploads excluded).
    pub fn blob_gets(&self) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.method == "GET" && is_blob_path(&r.path))
            .count()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// The next 200/206 blob response is cut (both connections closed) after
    /// `bytes` bytes of its body.
    pub fn fail_next_blob_after(&self, bytes: u64) {
        lock(&self.shared.faults)
            .responses
            .push_back(ResponseFault::Cut(bytes));
    }

    /// The next 200/206 blob response has the byte in the middle of its body
    /// flipped (the first byte when the length is unknown).
    pub fn corrupt_next_blob(&self) {
        lock(&self.shared.faults)
            .responses
            .push_back(ResponseFault::Corrupt);
    }

    /// After `bytes` bytes of the next 200/206 blob response body, runs `hook`
    /// on the proxy's thread (say, `registry.kill()`), then cuts the connection
    /// like [`Proxy::fail_next_blob_after`]: whatever the upstream had already
    /// sent is dropped, as if it died right there (on loopback a killed
    /// registry has usually written the whole blob into socket buffers).
    pub fn on_next_blob_after(&self, bytes: u64, hook: impl FnOnce() + Send + 'static) {
        lock(&self.shared.faults)
            .responses
            .push_back(ResponseFault::Hook(bytes, Box::new(hook)));
    }

    /// The next `n` blob GETs are answered by the proxy with `status`, these
    /// headers and a small JSON error body, without reaching the upstream.
    pub fn respond_next_blobs_with(&self, n: usize, status: u16, headers: &[(&str, &str)]) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut f = lock(&self.shared.faults);
        for _ in 0..n {
            f.statuses.push_back((status, headers.clone()));
        }
    }

    /// [`Proxy::respond_next_blobs_with`] `status`, with `Retry-After: SECS`
    /// when given.
    pub fn fail_next_blobs_with_status(&self, n: usize, status: u16, retry_after: Option<u32>) {
        let ra = retry_after.map(|s| s.to_string());
        let headers: Vec<(&str, &str)> = ra.iter().map(|s| ("Retry-After", s.as_str())).collect();
        self.respond_next_blobs_with(n, status, &headers);
    }

    /// Faults armed and not yet used.
    pub fn pending_faults(&self) -> usize {
        let f = lock(&self.shared.faults);
        f.statuses.len() + f.responses.len()
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        let mut f = lock(&self.shared.faults);
        f.statuses.clear();
        f.responses.clear();
        f.upload_cuts.clear();
        f.answers.clear();
    }

    /// The next `method` request whose path contains `path_part` is answered
    /// by the proxy with `status` and the JSON `body` (a registry error
    /// envelope, say), and not forwarded.
    pub fn answer_next(&self, method: &str, path_part: &str, status: u16, body: &str) {
        lock(&self.shared.faults).answers.push_back((
            method.to_owned(),
            path_part.to_owned(),
            status,
            body.to_owned(),
        ));
    }

    /// Upload cuts not hit yet.
    pub fn pending_upload_cuts(&self) -> usize {
        lock(&self.shared.faults).upload_cuts.len()
    }

    /// The next upload request with a body longer than `bytes` (`PATCH` or
    /// `PUT` of `.../blobs/uploads/...`) reaches the registry with only `bytes`
    /// of its body; then both connections are dropped, as a network failure
    /// would.
    pub fn cut_next_upload_after(&self, bytes: u64) {
        lock(&self.shared.faults).upload_cuts.push_back(bytes);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in lock(&self.shared.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Whether log entry `idx` is an upload request (`PATCH`/`PUT` of
/// `.../blobs/uploads/...`).
fn req_method_is_upload(log: &Mutex<Vec<ProxyRequest>>, idx: usize) -> bool {
    lock(log).get(idx).is_some_and(|r| {
        (r.method == "PATCH" || r.method == "PUT") && r.path.contains("/blobs/uploads/")
    })
}

fn is_blob_path(path: &str) -> bool {
    path.contains("/blobs/") && !path.contains("/blobs/uploads")
}

/// What the response side of a connection does next, in request order.
enum Next {
    /// Read one response from upstream for log entry `idx`.
    Forwarded {
        idx: usize,
        head: bool,
        blob_get: bool,
    },
    /// Write these bytes instead (an injected response).
    Synthetic(Vec<u8>),
    /// Copy bytes verbatim from now on.
    Raw,
}

fn proxy_connection(shared: &ProxyShared, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect(&shared.upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        let mut conns = lock(&shared.conns);
        if let (Ok(a), Ok(b)) = (client.try_clone(), upstream.try_clone()) {
            conns.push(a);
            conns.push(b);
        }
    }
    let (tx, rx) = mpsc::channel();
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    thread::scope(|s| {
        s.spawn(|| {
            let _ = proxy_requests(shared, c2, u2, &tx);
            drop(tx);
        });
        let _ = proxy_responses(shared, &client, upstream, rx);
        let _ = client.shutdown(Shutdown::Both);
    });
}

fn proxy_requests(
    shared: &ProxyShared,
    client: TcpStream,
    mut upstream: TcpStream,
    tx: &mpsc::Sender<Next>,
) -> io::Result<()> {
    let mut r = BufReader::new(client);
    loop {
        let first = r.fill_buf()?;
        if first.is_empty() {
            let _ = upstream.shutdown(Shutdown::Write);
            return Ok(());
        }
        if !first[0].is_ascii_uppercase() {
            return raw_requests(r, upstream, tx);
        }
        let Some(head) = read_head(&mut r)? else {
            let _ = upstream.shutdown(Shutdown::Write);
            return Ok(());
        };
        let Some(req) = parse_request_head(&head) else {
            upstream.write_all(&head)?;
            return raw_requests(r, upstream, tx);
        };
        let head_req = req.method == "HEAD";
        let blob_get = req.method == "GET" && is_blob_path(&req.path);
        let body_len = content_length(&req.headers);
        let chunked = is_chunked(&req.headers);
        let answer = {
            let mut faults = lock(&shared.faults);
            let at = faults
                .answers
                .iter()
                .position(|(m, p, _, _)| *m == req.method && req.path.contains(p.as_str()));
            at.and_then(|i| faults.answers.remove(i))
        };
        let injected = if blob_get {
            lock(&shared.faults).statuses.pop_front()
        } else {
            None
        };
        let injected = injected.or(answer.as_ref().map(|(_, _, s, _)| (*s, Vec::new())));
        let idx = {
            let mut log = lock(&shared.log);
            log.push(ProxyRequest {
                method: req.method,
                path: req.path,
                headers: req.headers,
                status: injected.as_ref().map(|(s, _)| *s),
                injected: injected.is_some(),
            });
            log.len() - 1
        };
        if let Some((status, headers)) = injected {
            // Swallow the request; answer it ourselves.
            if chunked {
                copy_chunked(&mut r, &mut io::sink())?;
            } else if let Some(n) = body_len {
                copy_exact(&mut r, &mut io::sink(), n)?;
            }
            let body = match &answer {
                Some((_, _, _, body)) => body.clone(),
                None => format!(
                    r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected by the locald test proxy","detail":{status}}}]}}"#
                ),
            };
            let mut resp = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n",
                reason(status)
            );
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
            if tx.send(Next::Synthetic(resp.into_bytes())).is_err() {
                return Ok(());
            }
            continue;
        }
        let upload =
            (req_method_is_upload(&shared.log, idx)) && body_len.is_some_and(|n| n > 0) && !chunked;
        // A cut applies to the next upload whose body is longer than it.
        let cut = if upload {
            let mut faults = lock(&shared.faults);
            match faults.upload_cuts.front() {
                Some(&c) if body_len.is_some_and(|n| n > c) => faults.upload_cuts.pop_front(),
                _ => None,
            }
        } else {
            None
        };
        upstream.write_all(&head)?;
        if let (Some(cut), Some(n)) = (cut, body_len) {
            copy_exact(&mut r, &mut upstream, cut.min(n))?;
            upstream.flush()?;
            let _ = upstream.shutdown(Shutdown::Both);
            let _ = r.get_ref().shutdown(Shutdown::Both);
            return Err(io::Error::other("upload cut by the test proxy"));
        }
        if chunked {
            copy_chunked(&mut r, &mut upstream)?;
        } else if let Some(n) = body_len {
            copy_exact(&mut r, &mut upstream, n)?;
        }
        if tx
            .send(Next::Forwarded {
                idx,
                head: head_req,
                blob_get,
            })
            .is_err()
        {
            return Ok(());
        }
    }
}

fn raw_requests(
    mut r: BufReader<TcpStream>,
    mut upstream: TcpStream,
    tx: &mpsc::Sender<Next>,
) -> io::Result<()> {
    let _ = tx.send(Next::Raw);
    let buffered = r.buffer().to_vec();
    upstream.write_all(&buffered)?;
    r.consume(buffered.len());
    io::copy(r.get_mut(), &mut upstream)?;
    let _ = upstream.shutdown(Shutdown::Write);
    Ok(())
}

fn proxy_responses(
    shared: &ProxyShared,
    client: &TcpStream,
    upstream: TcpStream,
    rx: mpsc::Receiver<Next>,
) -> io::Result<()> {
    let mut w = client;
    let mut r = BufReader::new(upstream);
    for next in rx {
        let (idx, head_req, blob_get) = match next {
            Next::Synthetic(bytes) => {
                w.write_all(&bytes)?;
                continue;
            }
            Next::Raw => {
                io::copy(&mut r, &mut w)?;
                return Ok(());
            }
            Next::Forwarded {
                idx,
                head,
                blob_get,
            } => (idx, head, blob_get),
        };
        let (head, status, headers) = loop {
            let head = read_head(&mut r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
            let (status, headers) =
                parse_response_head(&head).ok_or_else(|| io::Error::other("bad response head"))?;
            if (100..200).contains(&status) && status != 101 {
                w.write_all(&head)?;
                continue;
            }
            break (head, status, headers);
        };
        if let Some(e) = lock(&shared.log).get_mut(idx) {
            e.status = Some(status);
        }
        w.write_all(&head)?;
        if status == 101 {
            io::copy(&mut r, &mut w)?;
            return Ok(());
        }
        let len = if head_req || status == 204 || status == 304 {
            Some(0)
        } else if is_chunked(&headers) {
            None
        } else {
            content_length(&headers)
        };
        let fault = if blob_get && (status == 200 || status == 206) && len != Some(0) {
            let mut f = lock(&shared.faults);
            // Flipping a byte needs a known length (chunk framing would break).
            let usable = match f.responses.front() {
                Some(ResponseFault::Corrupt) => len.is_some(),
                Some(_) => true,
                None => false,
            };
            usable.then(|| f.responses.pop_front()).flatten()
        } else {
            None
        };
        if fault.is_some() {
            if let Some(e) = lock(&shared.log).get_mut(idx) {
                e.injected = true;
            }
        }
        match (fault, len) {
            (None, Some(n)) => copy_exact(&mut r, &mut w, n)?,
            (None, None) if is_chunked(&headers) => copy_chunked(&mut r, &mut w)?,
            (None, None) => {
                io::copy(&mut r, &mut w)?;
                return Ok(());
            }
            (Some(ResponseFault::Cut(k)), len) => {
                let k = len.map_or(k, |n| k.min(n));
                let _ = copy_exact(&mut r, &mut w, k);
                let _ = w.flush();
                let _ = r.get_ref().shutdown(Shutdown::Both);
                return Ok(());
            }
            (Some(ResponseFault::Corrupt), len) => {
                let n = len.unwrap_or(0);
                let mid = n / 2;
                copy_exact(&mut r, &mut w, mid)?;
                let mut b = [0u8; 1];
                r.read_exact(&mut b)?;
                w.write_all(&[b[0] ^ 0xff])?;
                copy_exact(&mut r, &mut w, n - mid - 1)?;
            }
            (Some(ResponseFault::Hook(k, hook)), len) => {
                let k = len.map_or(k, |n| k.min(n));
                let _ = copy_exact(&mut r, &mut w, k);
                let _ = w.flush();
                hook();
                let _ = r.get_ref().shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{
        noise, Compression, Entry, ImageInfo, ImageSpec, IndexSpec, Layer, LayoutBuilder,
    };

    /// A layout with image `latest`: one gzip layer holding 64 KiB of noise
    /// (the blob is about as big).
    fn layout(dir: &Path) -> ImageInfo {
        let mut b = LayoutBuilder::new(dir);
        let info = b.add_image(
            ImageSpec::new(vec![Layer::new(
                vec![
                    Entry::dir("app/"),
                    Entry::file("app/noise", noise(64 * 1024, 7)),
                ],
                Compression::Gzip,
            )])
            .ref_name("latest"),
        );
        b.write().unwrap();
        info
    }

    fn manifest_digest(raw: &str) -> String {
        crate::fixture::sha256_digest(raw.as_bytes())
    }

    fn blob_path_of(repo: &str, info: &ImageInfo) -> String {
        format!("/v2/{repo}/blobs/{}", info.layers[0].digest)
    }

    #[test]
    fn no_auth_push_inspect_and_access_log() {
        let tmp = tempfile::tempdir().unwrap();
        let info = layout(&tmp.path().join("layout"));
        let reg = Registry::start(Auth::None);
        reg.push_layout(&tmp.path().join("layout"), "latest", "app:v1")
            .unwrap();
        let raw = reg.inspect_raw("app:v1").unwrap();
        assert_eq!(manifest_digest(&raw), info.manifest.digest);

        let r = reg
            .request("GET", &blob_path_of("app", &info), &[])
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.complete);
        assert_eq!(
            crate::fixture::sha256_digest(&r.body),
            info.layers[0].digest
        );
        assert_eq!(reg.blob_requests(&info.layers[0].digest), 1);
        let reqs = reg.requests();
        assert!(
            reqs.iter()
                .any(|(m, p, s)| m == "PUT" && p == "/v2/app/manifests/v1" && *s == 201),
            "{reqs:?}"
        );
        assert_eq!(reg.token_requests(), 0);
    }

    #[test]
    fn htpasswd_accepts_right_and_refuses_wrong_credentials() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let info = layout(&dir);
        let reg = Registry::start(Auth::htpasswd("alice", "s3cret"));
        let r = reg.request("GET", "/v2/", &[]).unwrap();
        assert_eq!(r.status, 401);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .starts_with("Basic realm="),
            "{r:?}"
        );
        let bad = format!("Basic {}", STANDARD.encode("alice:nope"));
        assert_eq!(
            reg.request("GET", "/v2/", &[("Authorization", &bad)])
                .unwrap()
                .status,
            401
        );

        let wrong = peers::skopeo_copy(
            &format!("oci:{}:latest", dir.display()),
            &format!("docker://{}/app:v1", reg.addr()),
            &["--dest-tls-verify=false", "--dest-creds", "alice:nope"],
        )
        .unwrap_err();
        assert!(
            wrong.contains("401") || wrong.contains("nauthorized"),
            "{wrong}"
        );
        reg.push_layout(&dir, "latest", "app:v1").unwrap();
        assert_eq!(
            manifest_digest(&reg.inspect_raw("app:v1").unwrap()),
            info.manifest.digest
        );
        let anon = peers::skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--no-creds",
            &format!("docker://{}/app:v1", reg.addr()),
        ])
        .unwrap_err();
        assert!(
            anon.contains("401") || anon.contains("nauthorized"),
            "{anon}"
        );
    }

    #[test]
    fn token_auth_end_to_end_with_skopeo() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let info = layout(&dir);
        let reg = Registry::start(Auth::token("bob", "hunter2"));
        let ts = reg.token_server().unwrap();
        let r = reg.request("GET", "/v2/", &[]).unwrap();
        assert_eq!(r.status, 401);
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.contains(&ts.realm()), "{challenge}");
        assert!(challenge.contains(TOKEN_SERVICE), "{challenge}");

        reg.push_layout(&dir, "latest", "team/app:v1").unwrap();
        assert_eq!(
            manifest_digest(&reg.inspect_raw("team/app:v1").unwrap()),
            info.manifest.digest
        );
        assert!(ts
            .log()
            .iter()
            .any(|t| t.grant == "basic" && t.status == 200));
        let image = format!("docker://{}/team/app:v1", reg.addr());
        let wrong = peers::skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "bob:nope",
            &image,
        ])
        .unwrap_err();
        assert!(
            wrong.contains("401") || wrong.contains("nauthorized"),
            "{wrong}"
        );
        assert!(ts
            .log()
            .iter()
            .any(|t| t.grant == "basic" && t.status == 401));
        let anon = peers::skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--no-creds",
            &image,
        ])
        .unwrap_err();
        assert!(
            anon.contains("401") || anon.contains("nauthorized") || anon.contains("denied"),
            "{anon}"
        );
        assert!(ts
            .log()
            .iter()
            .any(|t| t.grant == "anonymous" && t.status == 200));

        // A token minted for the repository reads the blob; one without access
        // (what anonymous callers get) does not.
        let good = ts.mint("bob", &["repository:team/app:pull"]);
        let path = blob_path_of("team/app", &info);
        let r = reg
            .request(
                "GET",
                &path,
                &[("Authorization", &format!("Bearer {good}"))],
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let none = ts.mint("", &[]);
        let r = reg
            .request(
                "GET",
                &path,
                &[("Authorization", &format!("Bearer {none}"))],
            )
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("insufficient_scope"),
            "{r:?}"
        );
    }

    #[test]
    fn token_server_grants() {
        let reg = Registry::start(Auth::token("carol", "pw"));
        let ts = reg.token_server().unwrap();
        let addr = ts.addr();
        let post = |body: &str| {
            http_request(
                &addr,
                "POST",
                "/token",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                body.as_bytes(),
            )
            .unwrap()
        };
        let scope = "repository%3Axyz%3Apull";
        let r = post(&format!(
            "grant_type=password&username=carol&password=pw&service={TOKEN_SERVICE}&scope={scope}&access_type=offline&client_id=t"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let refresh = v["refresh_token"].as_str().unwrap().to_string();
        assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["expires_in"], 300);

        let r = post(&format!(
            "grant_type=refresh_token&refresh_token={refresh}&service={TOKEN_SERVICE}&scope={scope}"
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let token = v["access_token"].as_str().unwrap();
        // Accepted by the registry: a missing repo is 404, not 401.
        let r = reg
            .request(
                "GET",
                "/v2/xyz/tags/list",
                &[("Authorization", &format!("Bearer {token}"))],
            )
            .unwrap();
        assert_eq!(r.status, 404, "{}", r.text());
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["access"][0]["name"], "xyz");
        assert_eq!(claims["sub"], "carol");

        assert_eq!(
            post("grant_type=refresh_token&refresh_token=bogus").status,
            401
        );
        assert_eq!(
            post("grant_type=password&username=carol&password=no").status,
            401
        );
        let issued = ts.issue_refresh_token();
        assert_eq!(
            post(&format!("grant_type=refresh_token&refresh_token={issued}")).status,
            200
        );
        ts.revoke_refresh_tokens();
        assert_eq!(
            post(&format!("grant_type=refresh_token&refresh_token={issued}")).status,
            401
        );

        let basic = format!("Basic {}", STANDARD.encode("carol:pw"));
        let r = http_request(
            &addr,
            "GET",
            &format!("/token?service={TOKEN_SERVICE}&scope={scope}&scope=repository%3Aother%3Apull%2Cpush"),
            &[("Authorization", &basic)],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["token"], v["access_token"]);
        assert_eq!(ts.requests(), 7);
        assert_eq!(
            ts.log().last().unwrap().scopes,
            ["repository:xyz:pull", "repository:other:pull,push"]
        );
    }

    #[test]
    fn kill_and_restart_keep_storage_and_port() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let info = layout(&dir);
        let reg = Registry::start(Auth::None);
        reg.push_layout(&dir, "latest", "app:v1").unwrap();
        let addr = reg.addr();
        reg.kill();
        assert!(!reg.is_running());
        assert!(TcpStream::connect(&addr).is_err());
        reg.restart();
        assert_eq!(reg.addr(), addr);
        assert_eq!(
            manifest_digest(&reg.inspect_raw("app:v1").unwrap()),
            info.manifest.digest
        );

        // A blob corrupted in storage is served as is.
        reg.corrupt_stored_blob(&info.layers[0].digest);
        let r = reg
            .request("GET", &blob_path_of("app", &info), &[])
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len() as i64, info.layers[0].size);
        assert_ne!(
            crate::fixture::sha256_digest(&r.body),
            info.layers[0].digest
        );
    }

    #[test]
    fn multi_platform_push_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let mut b = LayoutBuilder::new(&dir);
        let image = |arch: &str| {
            ImageSpec::new(vec![Layer::new(
                vec![Entry::file("arch", arch)],
                Compression::Gzip,
            )])
            .platform("linux", arch, None)
        };
        let info =
            b.add_index(IndexSpec::new(vec![image("amd64"), image("arm64")]).ref_name("multi"));
        b.write().unwrap();
        let reg = Registry::start(Auth::None);
        reg.push_layout_all(&dir, "multi", "app:multi").unwrap();
        let raw = reg.inspect_raw("app:multi").unwrap();
        assert_eq!(manifest_digest(&raw), info.index.digest);
        for img in &info.images {
            let r = reg
                .request(
                    "GET",
                    &format!("/v2/app/blobs/{}", img.layers[0].digest),
                    &[],
                )
                .unwrap();
            assert_eq!(r.status, 200);
        }
    }

    /// Raw GETs through the proxy: counting, keep-alive, cut, injected status,
    /// flipped byte.
    #[test]
    fn proxy_counts_and_injects_faults() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let info = layout(&dir);
        let reg = Registry::start(Auth::None);
        reg.push_layout(&dir, "latest", "app:v1").unwrap();
        let proxy = Proxy::start(&reg.addr());
        let path = blob_path_of("app", &info);
        let want = fs_blob(&dir, &info.layers[0].digest);
        let get = || http_request(&proxy.addr(), "GET", &path, &[], b"").unwrap();

        let r = get();
        assert!(r.complete && r.status == 200 && r.body == want);

        proxy.fail_next_blob_after(1000);
        let r = get();
        assert_eq!(r.status, 200);
        assert!(!r.complete);
        assert_eq!(r.body, want[..1000]);
        assert_eq!(proxy.pending_faults(), 0);

        proxy.fail_next_blobs_with_status(2, 503, Some(1));
        for _ in 0..2 {
            let r = get();
            assert_eq!(r.status, 503);
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        proxy.respond_next_blobs_with(1, 429, &[("Retry-After", "2")]);
        assert_eq!(get().status, 429);
        assert_eq!(get().status, 200);

        proxy.corrupt_next_blob();
        let r = get();
        assert!(r.complete);
        let diffs: Vec<usize> = (0..want.len()).filter(|&i| r.body[i] != want[i]).collect();
        assert_eq!(diffs, [want.len() / 2]);

        // HEAD and non-blob requests do not consume faults.
        proxy.fail_next_blob_after(10);
        let h = http_request(&proxy.addr(), "HEAD", &path, &[], b"").unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(proxy.pending_faults(), 1);
        proxy.clear_faults();

        // Several requests on one keep-alive connection, with a body.
        let mut s = TcpStream::connect(proxy.addr()).unwrap();
        let host = proxy.addr();
        write!(
            s,
            "GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n\
             POST /v2/app/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n\
             GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
        assert_eq!(read_response(&mut r, false).unwrap().status, 202);
        let last = read_response(&mut r, false).unwrap();
        assert_eq!(last.body, want);

        assert_eq!(proxy.count("GET", "/blobs/sha256:"), 8);
        assert_eq!(proxy.blob_gets(), 8);
        assert_eq!(proxy.count("HEAD", "/blobs/"), 1);
        assert_eq!(proxy.count("POST", "/blobs/uploads/"), 1);
        let statuses: Vec<Option<u16>> = proxy
            .records()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses, [200, 200, 503, 503, 429, 200, 200, 200].map(Some));
        let injected = proxy.records().iter().filter(|r| r.injected).count();
        assert_eq!(injected, 5);

        // skopeo through the proxy (its https probe passes through unparsed).
        let raw = peers::skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/app:v1", proxy.addr()),
        ])
        .unwrap();
        assert_eq!(manifest_digest(&raw), info.manifest.digest);
        assert_eq!(proxy.count("GET", "/v2/app/manifests/v1"), 1);
    }

    /// The registry killed while a blob is on the wire, then restarted: the
    /// client sees a cut, the next request works on the same port.
    #[test]
    fn proxy_hook_kills_registry_mid_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let info = layout(&dir);
        let reg = Arc::new(Registry::start(Auth::None));
        reg.push_layout(&dir, "latest", "app:v1").unwrap();
        let proxy = Proxy::start(&reg.addr());
        let path = blob_path_of("app", &info);
        let hooked = reg.clone();
        proxy.on_next_blob_after(4096, move || hooked.kill());
        let r = http_request(&proxy.addr(), "GET", &path, &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert!(!r.complete);
        assert_eq!(r.body.len(), 4096);
        assert!(!reg.is_running());
        // Down: the proxy accepts and closes.
        assert!(http_request(&proxy.addr(), "GET", &path, &[], b"").is_err());
        reg.restart();
        let r = http_request(
            &proxy.addr(),
            "GET",
            &path,
            &[("Range", "bytes=4096-")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, fs_blob(&dir, &info.layers[0].digest)[4096..]);
        assert_eq!(
            proxy.records().last().unwrap().header("range"),
            Some("bytes=4096-")
        );
    }

    fn fs_blob(layout: &Path, digest: &str) -> Vec<u8> {
        fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap()
    }

    #[test]
    fn helpers() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(percent_decode("a%3Ab+c%2"), "a:b c%2");
        let log = "time=\"x\" level=info msg=\"response completed\"\n\
                   127.0.0.1 - - [24/Nov/2026:06:17:38 +0000] \"GET /v2/a/blobs/sha256:00 HTTP/1.1\" 404 157 \"\" \"curl/7.88.1\"\n";
        assert_eq!(
            parse_access_log(log),
            [("GET".to_string(), "/v2/a/blobs/sha256:00".to_string(), 404)]
        );
        let tmp = tempfile::tempdir().unwrap();
        let helper = write_credential_helper(tmp.path(), "locald-test", "127.0.0.1:5000", "u", "p");
        let run = |input: &str| {
            let mut c = Command::new(&helper)
                .arg("get")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            c.wait_with_output().unwrap()
        };
        let out = run("127.0.0.1:5000\n");
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["Username"].as_str(), v["Secret"].as_str()),
            (Some("u"), Some("p"))
        );
        assert!(!run("other:1\n").status.success());
        let calls = fs::read_to_string(tmp.path().join("locald-test.calls")).unwrap();
        assert_eq!(calls, "get 127.0.0.1:5000\nget other:1\n");
        let cfg: serde_json::Value =
            serde_json::from_str(&docker_config_auths("h:1", "u", "p")).unwrap();
        assert_eq!(cfg["auths"]["h:1"]["auth"], STANDARD.encode("u:p"));
    }
}
