//! Where credentials come from, in order: explicit (`--creds` / `LOCALD_REGISTRY_CREDS`),
//! Docker's `config.json` (`$DOCKER_CONFIG` or `~/.docker`: `auths`, `credHelpers`,
//! `credsStore`, through `docker_credential`), podman's `auth.json`
//! (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`), then anonymous.
//!
//! Secrets never reach a log line or an error message: [`Credential`]'s `Debug`
//! prints only which kind it is and where it came from.

use std::fmt;

use docker_credential::{CredentialRetrievalError, DockerCredential};

use crate::error::RegistryError;

/// The address Docker's tools use for Docker Hub credentials.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential: anonymous pulls.
    Anonymous,
    /// A user name and password (or personal access token).
    Basic {
        /// User name.
        user: String,
        /// Password or token.
        password: String,
        /// Where it came from, for `-v` logs.
        origin: &'static str,
    },
    /// An OAuth2 refresh token (`identitytoken` in config.json), exchanged at the
    /// registry's token realm.
    IdentityToken {
        /// The refresh token.
        token: String,
        /// Where it came from.
        origin: &'static str,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("anonymous"),
            Credential::Basic { user, origin, .. } => write!(f, "user {user:?} from {origin}"),
            Credential::IdentityToken { origin, .. } => write!(f, "identity token from {origin}"),
        }
    }
}

impl Credential {
    /// Parses `USER:PASSWORD` as given with `--creds`.
    pub fn parse_explicit(s: &str, origin: &'static str) -> Result<Self, RegistryError> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credential::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
                origin,
            }),
            _ => Err(RegistryError::BadCredsSyntax { origin }),
        }
    }
}

/// The key Docker's tools file a registry's credentials under.
pub fn auth_key(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_AUTH_KEY,
        other => other,
    }
}

/// Finds the credential for `registry` (as in an image reference, e.g. `docker.io`
/// or `127.0.0.1:5000`), explicit credentials first.
pub fn resolve(registry: &str, explicit: Option<&Credential>) -> Result<Credential, RegistryError> {
    if let Some(c) = explicit {
        return Ok(c.clone());
    }
    let key = auth_key(registry);
    let convert = |c: DockerCredential, origin: &'static str| match c {
        DockerCredential::UsernamePassword(user, password) => Credential::Basic {
            user,
            password,
            origin,
        },
        DockerCredential::IdentityToken(token) => Credential::IdentityToken { token, origin },
    };
    match docker_credential::get_credential(key) {
        Ok(c) => return Ok(convert(c, "docker config.json")),
        Err(e) => absent_or_error(e, registry, "docker config.json")?,
    }
    match docker_credential::get_podman_credential(key) {
        Ok(c) => return Ok(convert(c, "containers auth.json")),
        Err(e) => absent_or_error(e, registry, "containers auth.json")?,
    }
    Ok(Credential::Anonymous)
}

/// Missing files and entries mean "look further"; a helper that fails or a
/// malformed entry is an error the user must see.
fn absent_or_error(
    e: CredentialRetrievalError,
    registry: &str,
    origin: &'static str,
) -> Result<(), RegistryError> {
    match e {
        CredentialRetrievalError::NoCredentialConfigured
        | CredentialRetrievalError::ConfigNotFound
        | CredentialRetrievalError::ConfigReadError => Ok(()),
        CredentialRetrievalError::HelperFailure { helper, stderr, .. } => {
            // A helper that has nothing for this registry says so; not an error.
            if stderr
                .to_ascii_lowercase()
                .contains("credentials not found")
            {
                return Ok(());
            }
            Err(RegistryError::CredentialLookup {
                registry: registry.to_owned(),
                origin,
                reason: format!(
                    "credential helper docker-credential-{helper} failed: {}",
                    stderr.trim()
                ),
            })
        }
        other => Err(RegistryError::CredentialLookup {
            registry: registry.to_owned(),
            origin,
            reason: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_creds_syntax() {
        let c = Credential::parse_explicit("me:s3cr:et", "--creds").unwrap();
        assert_eq!(
            c,
            Credential::Basic {
                user: "me".into(),
                password: "s3cr:et".into(),
                origin: "--creds"
            }
        );
        assert!(Credential::parse_explicit("nopassword", "--creds").is_err());
        assert!(Credential::parse_explicit(":x", "--creds").is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            user: "me".into(),
            password: "hunter2".into(),
            origin: "--creds",
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Credential::IdentityToken {
            token: "refresh-xyz".into(),
            origin: "docker config.json",
        };
        assert!(!format!("{t:?}").contains("refresh-xyz"));
    }

    #[test]
    fn hub_key() {
        assert_eq!(auth_key("docker.io"), DOCKER_HUB_AUTH_KEY);
        assert_eq!(auth_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
