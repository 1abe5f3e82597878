//! Turns a parsed Dockerfile into images: resolves base images, runs each stage's steps
//! (RUN in the sandbox, COPY into fresh layer dirs), writes layers and configs into a content
//! store, and hands the result to an output (registry push, OCI layout).

mod base;
mod context;
mod context_hash;
mod context_record;
mod error;
mod executor;
mod mounts;
mod output;
mod platform_args;
mod progress;
mod secrets;
mod store;
mod timefmt;

pub use context::{BuildContext, ContextSource};
pub use context_hash::HashStats;
pub use error::BuildError;
pub use executor::{BuildOptions, BuildResult, BuiltImage, StepRecord, build};
pub use output::{Output, deliver};
pub use progress::{Progress, ProgressMode};
pub use secrets::{Redactor, SecretSource, Secrets};
pub use store::Store;
