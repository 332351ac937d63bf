//! Pushing: [`RegistryDestination`], the [`ImageDestination`] for `registry:REF`.
//!
//! A blob the repository has (HEAD) is skipped; one in another repository of
//! the same registry that the source read it from is mounted (`POST
//! .../blobs/uploads/?mount=DIGEST&from=REPO`); others are uploaded: small ones
//! in one `PUT`, large ones in `PATCH` chunks. A chunk that fails (connection
//! dropped, 5xx, 429) is resumed where the registry says the upload stands
//! (`GET` on the upload); an upload the registry lost starts again. The bytes
//! are hashed on the way and the upload is only committed when they match the
//! descriptor. The manifest goes last, once per name: until then no tag
//! points at the image.

use std::collections::HashMap;

use locald_core::destination::{check_blob, BlobPut, ImageDestination, Written};
use locald_core::digest::Digest;
use locald_core::manifest;
use locald_core::source::{BoxFuture, ResolvedImage, ResolvedIndex};
use locald_core::ImageReference;
use oci_client::RegistryOperation;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::StatusCode;
use tokio::io::AsyncReadExt;

use crate::{
    backoff, oci_registry_host, retry_after, short, RegistryError, RegistryOptions, RegistrySource,
    Session,
};

/// Blobs up to this size are uploaded in one request.
const MONOLITHIC_MAX: u64 = 8 << 20;
/// The size of the `PATCH` chunks of larger blobs (each is held in memory until
/// the registry accepted it, so that it can be sent again).
const CHUNK: usize = 32 << 20;

/// A registry repository (or several of one registry) being pushed to.
pub struct RegistryDestination {
    registry: RegistrySource,
    /// The names the image gets; blobs go to the first one's repository.
    names: Vec<ImageReference>,
    /// Push sessions by repository.
    sessions: tokio::sync::Mutex<HashMap<String, Session>>,
}

/// Why an upload attempt stopped.
enum Stop {
    /// Start the upload again (the registry lost it, or it failed in a way a
    /// new upload may not).
    Restart(locald_core::Error),
    /// Give up.
    Fail(locald_core::Error),
}

impl RegistryDestination {
    /// Opens the registry that `names` (`registry/repository:tag`, all in one
    /// registry) name, and logs in to push: wrong or missing credentials fail
    /// here, before anything is uploaded.
    pub async fn open(options: RegistryOptions, names: &[String]) -> locald_core::Result<Self> {
        let mut parsed = Vec::new();
        for name in names {
            parsed.push(ImageReference::parse(name).map_err(RegistryError::from)?);
        }
        let Some(first) = parsed.first() else {
            return Err(RegistryError::NeedImage.into());
        };
        if let Some(other) = parsed.iter().find(|n| n.registry() != first.registry()) {
            return Err(RegistryError::Refused {
                what: format!("pushing {other}"),
                registry: first.registry().to_owned(),
                reason: "all the names of one push must be in one registry; push to the other registry with a second `locald image copy`".to_owned(),
            }
            .into());
        }
        let destination = RegistryDestination {
            registry: RegistrySource::new(options)?,
            names: parsed,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
        };
        let first = destination.names[0].clone();
        destination.session(&first).await?;
        Ok(destination)
    }

    /// The push session for `name`'s repository (logging in on first use, or
    /// again with `fresh`).
    async fn session(&self, name: &ImageReference) -> locald_core::Result<Session> {
        let mut sessions = self.sessions.lock().await;
        if let Some(s) = sessions.get(name.repository()) {
            return Ok(s.clone());
        }
        let s = self.registry.login(name, RegistryOperation::Push).await?;
        sessions.insert(name.repository().to_owned(), s.clone());
        Ok(s)
    }

    async fn relogin(&self, name: &ImageReference) -> locald_core::Result<Session> {
        self.sessions.lock().await.remove(name.repository());
        self.session(name).await
    }

    fn base(&self, session: &Session) -> String {
        format!(
            "{}://{}/v2/{}",
            session.scheme,
            oci_registry_host(&session.registry),
            session.reference.repository()
        )
    }

    /// An upload location as an absolute URL.
    fn absolute(&self, session: &Session, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!(
                "{}://{}{location}",
                session.scheme,
                oci_registry_host(&session.registry)
            )
        }
    }

    /// Sends one request (built again for each attempt) with the session's
    /// credentials, retrying connection failures, 5xx and 429 with backoff
    /// (`Retry-After` when the registry gives it), and logging in again once on
    /// 401. Any other answer is returned as it is.
    async fn send<F>(
        &self,
        name: &ImageReference,
        what: &str,
        build: F,
    ) -> locald_core::Result<reqwest::Response>
    where
        F: Fn(&reqwest::Client, &Session) -> reqwest::RequestBuilder,
    {
        let http = self.registry.http()?.clone();
        let mut session = self.session(name).await?;
        let mut relogged = false;
        let mut attempt = 1;
        loop {
            let request = authorized(build(&http, &session), &session);
            let url = request
                .try_clone()
                .and_then(|r| r.build().ok())
                .map(|r| r.url().to_string())
                .unwrap_or_default();
            match request.send().await {
                Ok(res) if res.status() == StatusCode::UNAUTHORIZED && !relogged => {
                    relogged = true;
                    session = self.relogin(name).await?;
                }
                Ok(res)
                    if res.status() == StatusCode::UNAUTHORIZED
                        || res.status() == StatusCode::FORBIDDEN =>
                {
                    let detail = res.text().await.ok().map(|t| short(&t));
                    return Err(RegistryError::AuthFailed {
                        registry: session.registry.clone(),
                        credential: format!("{:?}", session.credential),
                        detail,
                    }
                    .into());
                }
                Ok(res)
                    if (res.status().is_server_error()
                        || res.status() == StatusCode::TOO_MANY_REQUESTS)
                        && attempt < self.registry.options.attempts =>
                {
                    let delay = retry_after(res.headers().get(reqwest::header::RETRY_AFTER))
                        .unwrap_or_else(|| backoff(self.registry.options.backoff, attempt));
                    tracing::debug!("{what}: {} from {url}; retrying in {delay:?}", res.status());
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Ok(res) => return Ok(res),
                Err(e) if attempt < self.registry.options.attempts && transient(&e) => {
                    let delay = backoff(self.registry.options.backoff, attempt);
                    tracing::debug!("{what} at {url} failed ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(RegistryError::Request {
                        what: what.to_owned(),
                        url,
                        attempts: attempt,
                        reason: locald_core::error::chain(&e),
                    }
                    .into())
                }
            }
        }
    }

    /// Whether `name`'s repository has blob `digest` of `size` bytes.
    async fn exists(
        &self,
        name: &ImageReference,
        digest: &Digest,
        size: u64,
    ) -> locald_core::Result<bool> {
        let what = format!("checking blob {digest}");
        let res = self
            .send(name, &what, |http, s| {
                http.head(format!("{}/blobs/{digest}", self.base(s)))
            })
            .await?;
        match res.status() {
            s if s.is_success() => Ok(res
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_none_or(|n| n == size)),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(self.refused(name, &what, other, res).await),
        }
    }

    /// An error for an answer we cannot go on with, with what the registry said.
    async fn refused(
        &self,
        name: &ImageReference,
        what: &str,
        status: StatusCode,
        res: reqwest::Response,
    ) -> locald_core::Error {
        let body = res.text().await.unwrap_or_default();
        RegistryError::Refused {
            what: what.to_owned(),
            registry: name.registry().to_owned(),
            reason: format!("HTTP {status}: {}", short(&body)),
        }
        .into()
    }

    /// Starts an upload to `name`'s repository; with `mount`, asks the registry
    /// to mount the blob from that repository instead (`None`: mounted).
    async fn start(
        &self,
        name: &ImageReference,
        mount: Option<(&Digest, &str)>,
    ) -> locald_core::Result<Option<String>> {
        let what = match mount {
            Some((d, from)) => format!("mounting blob {d} from {from}"),
            None => "starting an upload".to_owned(),
        };
        let res = self
            .send(name, &what, |http, s| {
                let url = match mount {
                    Some((d, from)) => {
                        format!("{}/blobs/uploads/?mount={d}&from={from}", self.base(s))
                    }
                    None => format!("{}/blobs/uploads/", self.base(s)),
                };
                http.post(url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        match res.status() {
            StatusCode::CREATED if mount.is_some() => Ok(None),
            StatusCode::ACCEPTED => {
                let session = self.session(name).await?;
                let location = res
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| RegistryError::Refused {
                        what: what.clone(),
                        registry: name.registry().to_owned(),
                        reason: "the registry gave no upload location".to_owned(),
                    })?;
                Ok(Some(self.absolute(&session, location)))
            }
            other => Err(self.refused(name, &what, other, res).await),
        }
    }

    /// Uploads `blob` to `name`'s repository, starting again (with backoff) when
    /// an upload is lost, up to the configured attempts.
    async fn upload(
        &self,
        name: &ImageReference,
        blob: &BlobPut<'_>,
        mut location: Option<String>,
    ) -> locald_core::Result<()> {
        let mut attempt = 1;
        loop {
            let loc = match location.take() {
                Some(l) => l,
                None => self.start(name, None).await?.ok_or_else(|| {
                    locald_core::Error::source("the registry mounted a blob it was not asked to")
                })?,
            };
            match self.upload_once(name, blob, loc).await {
                Ok(()) => return Ok(()),
                Err(Stop::Restart(e)) if attempt < self.registry.options.attempts => {
                    let delay = backoff(self.registry.options.backoff, attempt);
                    tracing::debug!(
                        "uploading {} failed ({}); starting again in {delay:?}",
                        blob.what,
                        locald_core::error::chain(&e)
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(Stop::Restart(e) | Stop::Fail(e)) => return Err(e),
            }
        }
    }

    async fn upload_once(
        &self,
        name: &ImageReference,
        blob: &BlobPut<'_>,
        mut location: String,
    ) -> Result<(), Stop> {
        let restart = Stop::Restart;
        let mut hasher = blob.digest.hasher();
        let mut count = 0u64;
        if let Some(bytes) = blob.bytes {
            hasher.update(bytes);
            count = bytes.len() as u64;
            check_blob(blob.digest, blob.size, hasher.finish(), count, &blob.what)
                .map_err(Stop::Fail)?;
            return self
                .commit(name, blob, &location, bytes::Bytes::copy_from_slice(bytes))
                .await;
        }
        let reader = blob
            .source
            .open_blob(blob.descriptor)
            .await
            .map_err(restart)?;
        let mut reader = reader.take(blob.size.saturating_add(1));
        if blob.size <= MONOLITHIC_MAX {
            let mut bytes = Vec::with_capacity(blob.size as usize);
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| Stop::Restart(locald_core::Error::ReadBlob(e)))?;
            hasher.update(&bytes);
            check_blob(
                blob.digest,
                blob.size,
                hasher.finish(),
                bytes.len() as u64,
                &blob.what,
            )
            .map_err(Stop::Fail)?;
            (blob.progress)(bytes.len() as u64);
            return self
                .commit(name, blob, &location, bytes::Bytes::from(bytes))
                .await;
        }
        loop {
            blob.cancel.check().map_err(Stop::Fail)?;
            let mut chunk = Vec::with_capacity(CHUNK);
            (&mut reader)
                .take(CHUNK as u64)
                .read_to_end(&mut chunk)
                .await
                .map_err(|e| Stop::Restart(locald_core::Error::ReadBlob(e)))?;
            if chunk.is_empty() {
                break;
            }
            hasher.update(&chunk);
            let start = count;
            count += chunk.len() as u64;
            if count > blob.size {
                return Err(Stop::Fail(locald_core::Error::SizeMismatch {
                    what: blob.what.clone(),
                    expected: blob.size,
                    actual: count,
                }));
            }
            let chunk = bytes::Bytes::from(chunk);
            location = self.send_chunk(name, blob, location, &chunk, start).await?;
            (blob.progress)(chunk.len() as u64);
        }
        check_blob(blob.digest, blob.size, hasher.finish(), count, &blob.what)
            .map_err(Stop::Fail)?;
        self.commit(name, blob, &location, bytes::Bytes::new())
            .await
    }

    /// Sends `chunk` (the blob's bytes from `start`) with `PATCH`, resuming
    /// where the registry says the upload stands when a request fails.
    async fn send_chunk(
        &self,
        name: &ImageReference,
        blob: &BlobPut<'_>,
        mut location: String,
        chunk: &bytes::Bytes,
        start: u64,
    ) -> Result<String, Stop> {
        let http = self.registry.http().map_err(|e| Stop::Fail(e.into()))?;
        let mut sent = 0usize;
        let mut attempt = 1;
        loop {
            let session = self.session(name).await.map_err(Stop::Fail)?;
            let body = chunk.slice(sent..);
            let from = start + sent as u64;
            let to = start + chunk.len() as u64 - 1;
            let request = authorized(
                http.patch(&location)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{from}-{to}"))
                    .header(CONTENT_LENGTH, body.len())
                    .body(body),
                &session,
            );
            let failure = match request.send().await {
                Ok(res) if res.status() == StatusCode::ACCEPTED => {
                    return match res.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                        Some(l) => Ok(self.absolute(&session, l)),
                        None => Ok(location),
                    };
                }
                Ok(res)
                    if res.status().is_server_error()
                        || res.status() == StatusCode::TOO_MANY_REQUESTS
                        || res.status() == StatusCode::UNAUTHORIZED =>
                {
                    format!("HTTP {}", res.status())
                }
                Ok(res) => {
                    let status = res.status();
                    return Err(Stop::Restart(
                        self.refused(name, &format!("uploading {}", blob.what), status, res)
                            .await,
                    ));
                }
                Err(e) if transient(&e) => locald_core::error::chain(&e),
                Err(e) => {
                    return Err(Stop::Restart(
                        RegistryError::Request {
                            what: format!("uploading {}", blob.what),
                            url: location.clone(),
                            attempts: attempt,
                            reason: locald_core::error::chain(&e),
                        }
                        .into(),
                    ))
                }
            };
            if attempt >= self.registry.options.attempts {
                return Err(Stop::Fail(
                    RegistryError::Request {
                        what: format!("uploading {}", blob.what),
                        url: location,
                        attempts: attempt,
                        reason: failure,
                    }
                    .into(),
                ));
            }
            let delay = backoff(self.registry.options.backoff, attempt);
            tracing::debug!(
                "a chunk of {} failed ({failure}); resuming in {delay:?}",
                blob.what
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
            // Where does the upload stand? Resume from there, within this chunk.
            let (end, new_location) = self.upload_status(name, &location).await?;
            location = new_location;
            let have = end.map_or(0, |e| e + 1);
            if have < start || have > start + chunk.len() as u64 {
                return Err(Stop::Restart(locald_core::Error::source(format!(
                    "the registry holds {have} bytes of {}, outside the chunk being sent",
                    blob.what
                ))));
            }
            sent = (have - start) as usize;
            if sent == chunk.len() {
                return Ok(location);
            }
        }
    }

    /// The last byte the registry holds of the upload at `location` (`None`:
    /// none), and the location to go on with. A lost upload restarts.
    async fn upload_status(
        &self,
        name: &ImageReference,
        location: &str,
    ) -> Result<(Option<u64>, String), Stop> {
        let res = self
            .send(name, "checking an upload", |http, _| http.get(location))
            .await
            .map_err(Stop::Restart)?;
        if res.status() != StatusCode::NO_CONTENT && !res.status().is_success() {
            return Err(Stop::Restart(locald_core::Error::source(format!(
                "the registry lost the upload (HTTP {})",
                res.status()
            ))));
        }
        let session = self.session(name).await.map_err(Stop::Fail)?;
        let end = res
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.rsplit_once('-'))
            .and_then(|(_, e)| e.trim().parse::<u64>().ok());
        let location = res
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.absolute(&session, l))
            .unwrap_or_else(|| location.to_owned());
        Ok((end, location))
    }

    /// Finishes the upload at `location` with its last bytes (`PUT ?digest=`).
    async fn commit(
        &self,
        name: &ImageReference,
        blob: &BlobPut<'_>,
        location: &str,
        body: bytes::Bytes,
    ) -> Result<(), Stop> {
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={}", blob.digest);
        let what = format!("uploading {}", blob.what);
        let res = self
            .send(name, &what, |http, _| {
                http.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, body.len())
                    .body(body.clone())
            })
            .await;
        match res {
            Ok(res) if res.status() == StatusCode::CREATED || res.status().is_success() => Ok(()),
            Ok(res) => {
                let status = res.status();
                Err(Stop::Restart(self.refused(name, &what, status, res).await))
            }
            // The commit may have landed before the connection dropped.
            Err(e) => match self.exists(name, blob.digest, blob.size).await {
                Ok(true) => Ok(()),
                _ => Err(Stop::Restart(e)),
            },
        }
    }

    /// Puts `image`'s manifest under `name` (its blobs are in `name`'s
    /// repository: mounted there from the first name's when it is another).
    async fn put_manifest_as(
        &self,
        name: &ImageReference,
        image: &ResolvedImage,
    ) -> locald_core::Result<()> {
        let primary = &self.names[0];
        if name.repository() != primary.repository() {
            let mut blobs = vec![(image.config_digest.clone(), image.config_bytes.len() as u64)];
            blobs.extend(image.layers.iter().map(|l| (l.digest.clone(), l.size)));
            for (digest, size) in blobs {
                if !self.exists(name, &digest, size).await?
                    && self
                        .start(name, Some((&digest, primary.repository())))
                        .await?
                        .is_some()
                {
                    return Err(RegistryError::Refused {
                        what: format!("mounting blob {digest} into {name}"),
                        registry: name.registry().to_owned(),
                        reason: "the registry would not mount it from the first name's repository"
                            .to_owned(),
                    }
                    .into());
                }
            }
        }
        if name.digest().is_some_and(|d| *d != image.manifest_digest) {
            return Err(RegistryError::Refused {
                what: format!("pushing {name}"),
                registry: name.registry().to_owned(),
                reason: format!(
                    "the image's manifest is {}, not the digest the name pins",
                    image.manifest_digest
                ),
            }
            .into());
        }
        self.put_document(
            name,
            &manifest_target(name),
            &manifest::manifest_media_type(&image.manifest),
            &image.manifest_bytes,
            &image.manifest_digest,
        )
        .await
    }

    /// `PUT .../manifests/TARGET` of a manifest or index, checking the digest
    /// the registry answers with.
    async fn put_document(
        &self,
        name: &ImageReference,
        target: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &Digest,
    ) -> locald_core::Result<()> {
        let what = format!("pushing the manifest of {name}");
        let res = self
            .send(name, &what, |http, s| {
                http.put(format!("{}/manifests/{target}", self.base(s)))
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            })
            .await?;
        if !res.status().is_success() {
            let status = res.status();
            return Err(self.refused(name, &what, status, res).await);
        }
        if let Some(got) = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if got != digest.to_string() {
                return Err(RegistryError::Refused {
                    what,
                    registry: name.registry().to_owned(),
                    reason: format!("the registry stored the manifest as {got}, not {digest}"),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// `request` with the session's `Authorization`, when it has one.
fn authorized(request: reqwest::RequestBuilder, session: &Session) -> reqwest::RequestBuilder {
    match session.header.lock().ok().and_then(|h| h.clone()) {
        Some(h) => request.header(reqwest::header::AUTHORIZATION, h),
        None => request,
    }
}

/// Where a manifest goes under `name`: `.../manifests/DIGEST` when the name
/// pins one, else its tag.
fn manifest_target(name: &ImageReference) -> String {
    match (name.digest(), name.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => "latest".to_owned(),
    }
}

/// A request error worth trying again: connection, timeout, a body cut short.
fn transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

impl ImageDestination for RegistryDestination {
    fn describe(&self) -> String {
        format!("{}:{}", crate::SCHEME, self.names[0])
    }

    fn has_blob<'a>(
        &'a self,
        digest: &'a Digest,
        size: u64,
    ) -> BoxFuture<'a, locald_core::Result<bool>> {
        Box::pin(async move { self.exists(&self.names[0], digest, size).await })
    }

    fn put_blob<'a>(&'a self, blob: BlobPut<'a>) -> BoxFuture<'a, locald_core::Result<()>> {
        Box::pin(async move {
            let name = &self.names[0];
            let mut location = None;
            if let Some((registry, repository)) = blob.source.registry_origin() {
                if registry == name.registry() && repository != name.repository() {
                    match self
                        .start(name, Some((blob.digest, repository.as_str())))
                        .await?
                    {
                        None => {
                            tracing::debug!("mounted {} from {repository}", blob.digest);
                            (blob.progress)(blob.size);
                            return Ok(());
                        }
                        // Not mounted: the registry opened an upload instead.
                        Some(l) => location = Some(l),
                    }
                }
            }
            self.upload(name, &blob, location).await
        })
    }

    fn put_child_manifest<'a>(
        &'a self,
        image: &'a ResolvedImage,
    ) -> BoxFuture<'a, locald_core::Result<()>> {
        Box::pin(async move {
            let name = &self.names[0];
            self.put_document(
                name,
                &image.manifest_digest.to_string(),
                &manifest::manifest_media_type(&image.manifest),
                &image.manifest_bytes,
                &image.manifest_digest,
            )
            .await
        })
    }

    fn put_index<'a>(
        &'a self,
        index: &'a ResolvedIndex,
    ) -> BoxFuture<'a, locald_core::Result<Written>> {
        Box::pin(async move {
            for name in &self.names {
                self.put_document(
                    name,
                    &manifest_target(name),
                    &index.media_type,
                    &index.bytes,
                    &index.digest,
                )
                .await?;
            }
            Ok(Written {
                manifest_digest: index.digest.clone(),
                config_digest: index.digest.clone(),
                size: index.bytes.len() as u64,
            })
        })
    }

    fn put_manifest<'a>(
        &'a self,
        image: &'a ResolvedImage,
    ) -> BoxFuture<'a, locald_core::Result<Written>> {
        Box::pin(async move {
            for name in &self.names {
                self.put_manifest_as(name, image).await?;
            }
            Ok(Written::of(image))
        })
    }
}
