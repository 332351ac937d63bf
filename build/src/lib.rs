//! `locald-build`: the build flow as a library.
//!
//! - [`flow`]: [`build`], the one entry point: options in (sources, runner,
//!   output), a [`Built`] out, what the user sees through [`BuildEvents`];
//! - [`builder`]: what a CNB builder image carries (lifecycle, APIs, buildpacks,
//!   order, run images, build user), read from its extracted `/cnb` files and its
//!   config labels;
//! - [`plan`]: Platform API negotiation and the creator's [`LifecyclePlan`];
//! - [`exit`]: a failed lifecycle's exit explained in a sentence;
//! - [`project`]: per-app state (layers, cache, layout, platform) under locks;
//! - [`appcopy`]: the app directory copied for the build, with its excludes;
//! - [`placement`]: the run image placed where the lifecycle looks for it.
//!
//! [`LifecyclePlan`]: locald_core::lifecycle::LifecyclePlan

pub mod appcopy;
pub mod builder;
pub mod exit;
pub mod flow;
pub mod host;
pub mod placement;
pub mod plan;
pub mod project;
pub mod sparse;

pub use exit::explain_exit;
pub use flow::{
    build, image_name, BuildError, BuildEvents, BuildOptions, BuildpackRef, Built, ImageInput,
    Output, Timings,
};
pub use plan::{
    check_builder, negotiate_platform_api, plan_creator, CreatorOptions, PlanError, CREATOR,
    PLATFORM_APIS,
};
