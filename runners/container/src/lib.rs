//! `locald-runner-container`: runs the builder's CNB lifecycle inside a rootless
//! user + mount + pid (+ ipc + uts) namespace sandbox whose root is the cached
//! builder root filesystem, mounted read-only.
//!
//! **Status: not yet implemented** (tracked by the `locald build` issue). The
//! namespace syscalls will live in one small module that is allowed `unsafe`, each
//! call with a `// SAFETY:` comment.
