//! Turns a parsed Dockerfile into images: resolves base images, runs each stage's steps
//! (RUN in the sandbox, COPY into fresh layer dirs), writes layers and configs into a content
//! store, and delivers the result to its outputs (registry push, OCI layout) through
//! `kiln_transport`, with the store as the source.

mod base;
mod context;
mod error;
mod executor;
mod export;
mod metadata;
mod mounts;
mod output;
mod platform_args;
mod progress;
mod secrets;
mod store;
mod timefmt;

pub use error::BuildError;
pub use executor::{BuildOptions, BuildResult, BuiltImage, StepRecord, build};
pub use export::{StoreSource, deliver};
pub use metadata::{BuildMetadata, MetadataError, pushed_image};
pub use output::{Output, OutputSpecError};
pub use progress::{Progress, ProgressMode};
pub use secrets::{Redactor, SecretSource, Secrets};
pub use store::Store;
