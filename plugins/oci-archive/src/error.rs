//! What can go wrong reading an oci-archive, and how each failure crosses the
//! plugin boundary (a [`locald_plugin::Error`]: a status and one message, so
//! every message carries its cause in its own text).

use std::path::PathBuf;

/// How many links one member lookup may follow.
pub const MAX_LINKS: usize = 40;

/// What can go wrong reading an oci-archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The location names no file.
    #[error("oci-archive needs a file: --source oci-archive:FILE[:REF]")]
    NoFile,
    /// The file could not be read.
    #[error("could not read {}: {source}", path.display())]
    Io {
        /// The archive.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not an oci-archive (not a tar, compressed, no layout inside).
    #[error("{} is not an oci-archive: {reason}", path.display())]
    NotAnArchive {
        /// The archive.
        path: PathBuf,
        /// Why not, with a hint where there is one.
        reason: String,
    },
    /// A member name we refuse (`..`, absolute, NUL).
    #[error("archive member {name:?} is refused: {reason}")]
    UnsafeMember {
        /// The member name as found.
        name: String,
        /// Why.
        reason: String,
    },
    /// A member's data runs past the end of the file.
    #[error("archive {} is truncated: member {name:?} needs {needed} bytes, the file has {actual}", path.display())]
    Truncated {
        /// The archive.
        path: PathBuf,
        /// The member.
        name: String,
        /// Where its data ends.
        needed: u64,
        /// The file's size.
        actual: u64,
    },
    /// A member that should be there is not.
    #[error("archive {} has no member {name:?} (needed by {referrer})", path.display())]
    MissingMember {
        /// The archive.
        path: PathBuf,
        /// The member.
        name: String,
        /// Who needed it.
        referrer: String,
    },
    /// A member is neither a file nor a link (a directory, a device, a sparse file).
    #[error("archive member {name:?} is a {kind}, not a file")]
    NotAFile {
        /// The member.
        name: String,
        /// What it is.
        kind: String,
    },
    /// A link member points outside the archive.
    #[error("archive member {name:?} is a link to {target:?}, outside the archive")]
    LinkOutside {
        /// The member.
        name: String,
        /// Its target.
        target: String,
    },
    /// Link members form a loop (or a very long chain).
    #[error("archive member {name:?}: more than {MAX_LINKS} links (a loop?)")]
    LinkLoop {
        /// The member.
        name: String,
    },
    /// A JSON document is over the limit.
    #[error("{what} in {} is {size} bytes, more than the {limit}-byte limit for JSON documents", path.display())]
    TooLarge {
        /// The archive.
        path: PathBuf,
        /// Which document.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A JSON document does not parse or lacks what it must have.
    #[error("{what} in {} is not valid: {reason}", path.display())]
    BadDocument {
        /// The archive.
        path: PathBuf,
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
    /// A digest that is not `sha256:` + 64 or `sha512:` + 128 lower-case hex digits.
    #[error("{what}: {digest:?} is not a valid digest (sha256:<64 hex digits> or sha512:<128 hex digits>)")]
    BadDigest {
        /// Where it was found.
        what: String,
        /// The digest as given.
        digest: String,
    },
    /// A document's bytes do not hash to the digest naming it.
    #[error("{what} in {} is corrupt: its digest is {actual}, not {expected}", path.display())]
    DigestMismatch {
        /// The archive.
        path: PathBuf,
        /// Which document.
        what: String,
        /// The digest that names it.
        expected: String,
        /// What its bytes hash to.
        actual: String,
    },
    /// A blob's size in the archive is not the size its descriptor says.
    #[error("{what} in {} is {actual} bytes, but its descriptor says {expected}", path.display())]
    SizeMismatch {
        /// The archive.
        path: PathBuf,
        /// Which blob.
        what: String,
        /// Declared.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// A blob that is not in the archive.
    #[error("archive {} has no blob {digest}", path.display())]
    MissingBlob {
        /// The archive.
        path: PathBuf,
        /// The blob.
        digest: String,
    },
    /// The index lists no images.
    #[error("archive {} holds no images (its index.json lists no manifests)", path.display())]
    Empty {
        /// The archive.
        path: PathBuf,
    },
    /// No index entry has the name asked for.
    #[error("archive {} has no image named {image:?} (it holds: {})", path.display(), list(available))]
    NoSuchImage {
        /// The archive.
        path: PathBuf,
        /// The name asked for.
        image: String,
        /// The names there are.
        available: Vec<String>,
    },
    /// Several index entries match the name.
    #[error("image name {image:?} matches several images in archive {} ({}); use the exact name", path.display(), list(candidates))]
    Ambiguous {
        /// The archive.
        path: PathBuf,
        /// The name asked for.
        image: String,
        /// The matching names.
        candidates: Vec<String>,
    },
    /// No name given and several images.
    #[error("archive {} holds {} images; name one (oci-archive:FILE:REF) of: {}", path.display(), available.len(), list(available))]
    NeedName {
        /// The archive.
        path: PathBuf,
        /// The names there are.
        available: Vec<String>,
    },
    /// No manifest of an index is for the platform.
    #[error("{what} in {} has no manifest for {wanted} (it has: {})", path.display(), list(available))]
    NoMatchingPlatform {
        /// The archive.
        path: PathBuf,
        /// The index.
        what: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms there are.
        available: Vec<String>,
    },
    /// A platform string that is not `os/arch[/variant]`.
    #[error(
        "platform {0:?} is not of the form OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8"
    )]
    BadPlatform(String),
    /// A document of a kind we do not read.
    #[error("{what} in {} has media type {media_type:?}, which is neither an image index nor an image manifest", path.display())]
    UnsupportedMediaType {
        /// The archive.
        path: PathBuf,
        /// Which document.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// Indexes nested deeper than we follow.
    #[error("image {image} in {} nests indexes more than {limit} deep", path.display())]
    IndexTooDeep {
        /// The archive.
        path: PathBuf,
        /// The image.
        image: String,
        /// How deep we follow.
        limit: usize,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

impl From<ArchiveError> for locald_plugin::Error {
    fn from(e: ArchiveError) -> Self {
        let message = e.to_string();
        match e {
            ArchiveError::NoSuchImage { .. }
            | ArchiveError::MissingBlob { .. }
            | ArchiveError::NoMatchingPlatform { .. } => locald_plugin::Error::not_found(message),
            _ => locald_plugin::Error::new(message),
        }
    }
}
