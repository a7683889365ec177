//! The scheduler step's working vectors, kept between steps.

use crate::kv::SeqId;
use crate::model::{Pick, Picked};

/// A step's working vectors, kept from step to step (emptied) so that a warm decode step allocates none.
#[derive(Default)]
pub(super) struct StepScratch {
    pub(super) pieces: Vec<(usize, usize, usize)>,
    pub(super) order: Vec<usize>,
    pub(super) producing: Vec<bool>,
    pub(super) draws: Vec<f32>,
    pub(super) job_of: Vec<Option<usize>>,
    pub(super) feeds: Vec<u32>,
    pub(super) spans: Vec<(usize, usize)>,
    pub(super) batch: Vec<(SeqId, &'static [u32])>,
    pub(super) picks: Vec<Pick<'static>>,
    pub(super) picked: Vec<Picked>,
    pub(super) grammar: Vec<Option<std::result::Result<Vec<u32>, String>>>,
}
