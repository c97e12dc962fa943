//! The engine behind `oneway` and `twoway`: scanning a tree without following links,
//! comparing by SHA-256 with hash caches, a one-way mirror that walks both trees together
//! directory by directory (its memory grows with the changes, not the tree), reconciling
//! two sides against the archive of the last pass, the safe file operations both use, the
//! refusals that protect the user, locks, logging to console and file, the pass loop, and the
//! stop flag set by Ctrl+C and SIGTERM.

pub mod archive;
pub mod cache;
pub mod dircache;
pub mod display;
pub mod driver;
pub mod error;
pub mod fsops;
pub mod hashing;
pub mod listing;
pub mod lock;
pub mod logging;
mod mapped;
pub mod mirror;
pub mod oneway;
pub mod reconcile;
pub mod roots;
pub mod scan;
pub mod signal;
pub mod testhook;
pub mod twoway;

pub use error::{Error, ExitCode};
pub use oneway::{OnewayArgs, run as run_oneway};
