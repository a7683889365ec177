//! A step's attention calls: per layer kind and per arena that holds sequences of the step, its page table and
//! the sequences' metadata, planned once a step ([`KvCache::plan`]) into buffers the cache keeps, and given to
//! each layer with its own key and value buffers ([`KvCache::groups`]).

use super::{kind_index, KvCache, KvGroup, SeqId};
use crate::backend::{AttnSeq, Backend};
use crate::error::{HerdError, Result};

/// One arena's share of a step, the same for every layer of a kind: the arena, the page table of the step's
/// sequences that live there, and their metadata. The cache keeps them and refills them each step
/// ([`KvCache::plan`]), so a step allocates nothing once the cache has seen a batch of its size.
#[derive(Default)]
pub(super) struct GroupPlan {
    arena: usize,
    table: Vec<u32>,
    seqs: Vec<AttnSeq>,
}

impl<B: Backend> KvCache<B> {
    /// Plans a step's attention calls: per layer kind and per arena that holds sequences of `batch`, its page
    /// table and metadata ([`KvCache::groups`] gives them for each layer). `batch` lists (sequence, first row,
    /// new tokens) in row order; call after [`KvCache::reserve`], before the step's layers.
    pub fn plan(&mut self, batch: &[(SeqId, usize, usize)]) -> Result<()> {
        for kind in 0..2 {
            let mut plans = std::mem::take(&mut self.plans[kind]);
            let planned = if self.has_kind[kind] { self.plan_kind(kind, batch, &mut plans) } else { Ok(0) };
            self.plans[kind] = plans;
            // Nothing planned if planning failed.
            self.planned[kind] = *planned.as_ref().unwrap_or(&0);
            planned?;
        }
        Ok(())
    }

    /// [`KvCache::plan`] for one kind, into `plans` (reused); returns how many are in use.
    fn plan_kind(&self, kind: usize, batch: &[(SeqId, usize, usize)], plans: &mut Vec<GroupPlan>) -> Result<usize> {
        let mut used = 0;
        for &(id, row, n) in batch {
            let s = self.seq(id)?;
            let t = &s.tables[kind];
            let a = t.arena.ok_or_else(|| HerdError::internal("a sequence in a step has no cache pages"))?;
            if a >= self.arenas[kind].len() {
                return Err(HerdError::internal("cache arena lost"));
            }
            let g = match plans[..used].iter().position(|p| p.arena == a) {
                Some(g) => g,
                None => {
                    if used == plans.len() {
                        plans.push(GroupPlan::default());
                    }
                    let p = &mut plans[used];
                    p.arena = a;
                    p.table.clear();
                    p.seqs.clear();
                    used += 1;
                    used - 1
                }
            };
            let group = &mut plans[g];
            let meta = AttnSeq {
                q_start: row as u32,
                q_len: n as u32,
                pos0: s.len as u32,
                page_base: group.table.len() as u32,
                slot_cap: (t.pages.len() * self.page) as u32,
            };
            // A page not yet taken is never read (no position maps to it): any page number will do.
            group.table.extend(t.pages.iter().map(|p| p.unwrap_or(0)));
            if self.stage_w[kind] > 0 {
                group.table.push(self.stage_entry(kind, a, t)?);
            }
            group.seqs.push(meta);
        }
        Ok(used)
    }

    /// The attention calls of `layer` in the step [`KvCache::plan`] planned: one per arena, with its buffers.
    pub fn groups(&self, layer: usize) -> impl Iterator<Item = KvGroup<'_, B>> {
        let l = &self.layers[layer];
        let kind = kind_index(l.kind);
        // Every layer of a kind has each of the kind's arenas (`new_arena`), which `plan` checked.
        self.plans[kind][..self.planned[kind]].iter().map(move |p| {
            let (k, v) = &l.arenas[p.arena];
            KvGroup { k, v, table: &p.table, page: self.page, dtype: self.dtypes[kind], seqs: &p.seqs }
        })
    }
}
