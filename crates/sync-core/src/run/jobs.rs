//! The jobs the pass loop runs for this crate's passes: a mirror, and a two-way sync. (The
//! versioned job lives with its pass in the `versioning` crate; twoway's recovery system wraps
//! [`TwowayJob`] in the binary.)

use crate::error::Error;
use crate::model::PassStats;
use crate::pass::mirror::mirror_pass;
use crate::pass::twoway::{TwowayOptions, twoway_pass};
use crate::plan::reconcile::Policy;
use crate::run::passes::Job;
use crate::run::startup::Session;
use crate::state::archive;

/// `oneway SOURCE BACKUP`: a mirror pass at every interval.
pub struct MirrorJob(pub Session);

impl Job for MirrorJob {
    fn pass(&mut self) -> Result<PassStats, Error> {
        mirror_pass(&self.0.opts, &mut self.0.cache)
    }
}

/// `twoway SOURCE BACKUP`: a two-way pass at every interval.
pub struct TwowayJob {
    /// The pass options.
    pub opts: TwowayOptions,
    /// The session it runs in (its state directory is where twoway runs from).
    pub session: Session,
}

impl TwowayJob {
    /// A two-way job on `session`, whose conflicts `policy` settles. The session must have
    /// a state directory, where the pair's archive lives.
    pub fn new(mut session: Session, policy: Policy) -> TwowayJob {
        let state_dir = session
            .state_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        let opts = &mut session.opts;
        let opts = TwowayOptions {
            archive: archive::path_for(&state_dir, &opts.source, &opts.backup),
            source: opts.source.clone(),
            backup: opts.backup.clone(),
            filter: std::mem::take(&mut opts.filter),
            dry_run: opts.dry_run,
            force: opts.force,
            policy,
        };
        TwowayJob { opts, session }
    }
}

impl Job for TwowayJob {
    fn pass(&mut self) -> Result<PassStats, Error> {
        twoway_pass(&self.opts, &mut self.session.cache)
    }
}
