//! `locald-runner-native`: runs the builder's CNB lifecycle (`/cnb/lifecycle/creator`)
//! directly on the host, with host paths for the logical build directories.
//!
//! **Status: not yet implemented** (tracked by the `locald build` issue). It will
//! implement the core's `LifecycleRunner` for a `LifecyclePlan` built by the core.
