//! The jobs the pass loop runs for this crate's passes: a mirror, and a two-way sync. (The
//! versioned job lives with its pass in the `versioning` crate; twoway's recovery system wraps
//! [`TwowayJob`] in the binary.)

use std::path::Path;

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
    /// The session it runs in (its state directory is where twoway runs from).
    pub session: Session,
    /// The pair's archive and conflict policy.
    pub sync: TwowayOptions,
}

impl TwowayJob {
    /// A two-way job on `session`, whose conflicts `policy` settles. The pair's archive lives
    /// in the sync-state directory, named after the pair whichever root comes first (in the
    /// session's state directory where there is none); one that an earlier release left in
    /// the state directory is taken over.
    pub fn new(session: Session, policy: Policy) -> TwowayJob {
        let state_dir = session.state_dir.as_deref().unwrap_or(Path::new("."));
        let (source, backup) = (&session.opts.source, &session.opts.backup);
        let home = session.pair_state.as_deref().unwrap_or(state_dir);
        let archive = archive::path_of_pair(home, source, backup);
        let earlier = [
            archive::path_for(state_dir, source, backup),
            archive::path_for(state_dir, backup, source),
        ]
        .into_iter()
        .filter(|p| *p != archive)
        .collect();
        TwowayJob {
            session,
            sync: TwowayOptions {
                archive,
                earlier,
                policy,
            },
        }
    }
}

impl Job for TwowayJob {
    fn pass(&mut self) -> Result<PassStats, Error> {
        twoway_pass(&self.session.opts, &self.sync, &mut self.session.cache)
    }
}
