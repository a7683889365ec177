//! The scheduler step's working vectors, kept between steps, and the step's plan made in them.

use super::Seq;
use crate::backend::Backend;
use crate::constrain::Constraint;
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

impl StepScratch {
    /// Plans a step of the running sequences within `budget` tokens: decoding sequences first (one token
    /// each), then prompt pieces in joining order (`pieces`: running index, start, length; `order`: the
    /// running index of each batch row); whether each row gives a token (`producing`: not while its prompt is
    /// still being read) and its draw of its own random stream; each row's tokens (`feeds`, at `spans`).
    /// Returns the constraints of the rows that give a token, taken from their sequences (with their stop
    /// ids), for the masks computed while the forward runs; `job_of` maps rows to them.
    pub(super) fn plan<B: Backend>(
        &mut self,
        running: &mut [Seq<B>],
        mut budget: usize,
    ) -> Vec<(Constraint, Vec<u32>)> {
        let StepScratch { pieces, order, producing, draws, job_of, feeds, spans, .. } = self;
        pieces.clear();
        order.clear();
        for (i, s) in running.iter().enumerate() {
            if s.fed == s.prompt.len() {
                order.push(i);
                budget = budget.saturating_sub(1 + s.draft.len());
            }
        }
        for (i, s) in running.iter().enumerate() {
            if s.fed < s.prompt.len() && budget > 0 {
                let n = (s.prompt.len() - s.fed).min(budget);
                pieces.push((i, s.fed, n));
                budget -= n;
            }
        }
        order.extend(pieces.iter().map(|p| p.0));
        let piece = |i: usize| pieces.iter().find(|p| p.0 == i).copied();
        producing.clear();
        producing
            .extend(order.iter().map(|&i| piece(i).is_none_or(|(_, start, n)| start + n == running[i].prompt.len())));
        draws.clear();
        draws.resize(order.len(), 0.0);
        for ((&i, &p), d) in order.iter().zip(producing.iter()).zip(draws.iter_mut()) {
            if p {
                *d = running[i].sampler.draw();
            }
        }
        let mut jobs = Vec::new();
        job_of.clear();
        job_of.resize(order.len(), None);
        for (k, (&i, &p)) in order.iter().zip(producing.iter()).enumerate() {
            let s = &mut running[i];
            // Only a row that gives a token takes its constraint (a row still reading its prompt keeps it).
            if let Some(c) = s.constraint.take_if(|_| p) {
                job_of[k] = Some(jobs.len());
                jobs.push((c, s.params.stop_ids.clone()));
            }
        }
        feeds.clear();
        spans.clear();
        for &i in order.iter() {
            let s = &running[i];
            let at = feeds.len();
            match piece(i) {
                Some((_, start, n)) => feeds.extend_from_slice(&s.prompt[start..start + n]),
                None => {
                    feeds.push(*s.out.last().expect("a decoding sequence has generated a token"));
                    feeds.extend_from_slice(&s.draft);
                }
            }
            spans.push((at, feeds.len() - at));
        }
        jobs
    }
}
