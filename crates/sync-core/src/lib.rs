//! The engine behind `oneway` and `twoway`. Data flows one way:
//!
//! - [`run`]: start-up shared by both programs (the options both take, roots, filter, lock,
//!   logging, signals, cache) and the pass loop;
//! - [`pass`]: one pass of each kind (mirror, two-way), scan → hash → plan → apply;
//! - [`scan`]: reading a tree without following links; [`hash`]: digests and the one hash cache;
//! - [`plan`]: deciding what to do (the two-way reconcile, the refusals of SPEC §8);
//! - [`tree`]: the safe operations on a user's tree; [`state`]: manifests and the archive;
//! - [`model`], [`error`], [`display`], [`signal`], [`subtrees`]: the words, faults, printing,
//!   stop flag and sets of subtrees every part shares.

pub mod apply;
pub mod display;
pub mod error;
pub mod hash;
pub mod model;
pub mod pass;
pub mod plan;
pub mod progress;
pub mod run;
pub mod scan;
pub mod signal;
pub mod state;
pub mod subtrees;
pub mod testhook;
pub mod tree;

pub use error::{Error, ExitCode};
pub use run::startup::{Program, Session, Setup};
