//! The stages of q4 keys ([`crate::kv_q4`]): each sequence keeps the keys of the page it is filling in f32 until
//! the page completes and is quantized. An arena's key buffers hold its pages, then (from a multiple of a slot's
//! words) its stages; the page table gives attention and kv_store a sequence's stage after its pages
//! ([`crate::backend::KvPages::stage`]). Formats other than q4 have no stages (their stage words are 0).

use super::{cache_buffer, kind_index, KvCache, Table};
use crate::backend::Backend;
use crate::error::{HerdError, Result};

/// The most stages (so sequences) one arena holds; its pages are bounded to leave them room in a buffer.
pub(super) const MAX_STAGES: usize = 64;

impl<B: Backend> KvCache<B> {
    /// Where the stages start in a key buffer of `pages` pages of `kind`.
    fn stage_base(&self, kind: usize, pages: usize) -> usize {
        let words = pages * self.kpw[kind];
        if self.stage_w[kind] == 0 {
            return words;
        }
        words.div_ceil(self.kv_dim()) * self.kv_dim()
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Words of a key buffer of `pages` pages and `stages` stages of `kind`.
    pub(super) fn key_len(&self, kind: usize, pages: usize, stages: usize) -> usize {
        self.stage_base(kind, pages) + stages * self.stage_w[kind]
    }

    /// Whether arena `a` of `kind` can take one more sequence's stage (always, for formats without stages).
    pub(super) fn stage_room(&self, kind: usize, a: usize) -> bool {
        self.stage_w[kind] == 0 || self.arenas[kind][a].stages.iter().filter(|&&t| t).count() < MAX_STAGES
    }

    /// The page-table entry of a sequence's stage: its first slot in the key buffer.
    pub(super) fn stage_entry(&self, kind: usize, a: usize, t: &Table) -> Result<u32> {
        let st = t.stage.ok_or_else(|| HerdError::internal("a q4 sequence without a stage"))? as usize;
        let base = self.stage_base(kind, self.arenas[kind][a].refs.len()) / self.kv_dim();
        u32::try_from(base + st * self.page).map_err(|_| HerdError::internal("a stage past 2^32 slots"))
    }

    /// A free stage of arena `a` (which has room), growing its stages if needed; None for formats without.
    pub(super) fn take_stage(&mut self, backend: &B, kind: usize, a: usize) -> Result<Option<u32>> {
        if self.stage_w[kind] == 0 {
            return Ok(None);
        }
        if !self.arenas[kind][a].stages.contains(&false) {
            let (pages, have) = (self.arenas[kind][a].refs.len(), self.arenas[kind][a].stages.len());
            if have >= MAX_STAGES {
                return Err(HerdError::internal("no stage left in a KV-cache arena"));
            }
            self.resize(backend, kind, a, pages, (2 * have).clamp(1, MAX_STAGES))?;
        }
        let st = &mut self.arenas[kind][a].stages;
        let i = st.iter().position(|&t| !t).ok_or_else(|| HerdError::internal("no free stage after growing"))?;
        st[i] = true;
        Ok(Some(i as u32))
    }

    /// Copies stage `from` of arena `fa` to stage `to` of arena `ta` in every layer of `kind`.
    fn copy_stage(&self, backend: &B, kind: usize, (fa, from): (usize, u32), (ta, to): (usize, u32)) -> Result<()> {
        let n = self.stage_w[kind];
        let at = |a: usize, st: u32| self.stage_base(kind, self.arenas[kind][a].refs.len()) + st as usize * n;
        let (src, dst) = (at(fa, from), at(ta, to));
        for layer in self.layers.iter().filter(|l| kind_index(l.kind) == kind) {
            if fa == ta {
                let tmp = cache_buffer(backend, self.dtypes[kind], n)?;
                backend.copy(&layer.arenas[fa].0, src, &tmp, 0, n)?;
                backend.copy(&tmp, 0, &layer.arenas[ta].0, dst, n)?;
            } else {
                backend.copy(&layer.arenas[fa].0, src, &layer.arenas[ta].0, dst, n)?;
            }
        }
        Ok(())
    }

    /// Moves sequence `s`'s stage of `kind` from arena `old` to arena `a` (which has room), keys and all.
    pub(super) fn move_stage(&mut self, backend: &B, kind: usize, s: usize, old: usize, a: usize) -> Result<()> {
        let Some(from) = self.seqs[s].tables[kind].stage else { return Ok(()) };
        let to = self.take_stage(backend, kind, a)?.ok_or_else(|| HerdError::internal("a stage lost its format"))?;
        self.copy_stage(backend, kind, (old, from), (a, to))?;
        self.arenas[kind][old].stages[from as usize] = false;
        self.seqs[s].tables[kind].stage = Some(to);
        Ok(())
    }

    /// Gives the forked sequence `new` stages beside the pages it shares with `from`: a copy of `from`'s when it
    /// ends inside a page (whose keys are then in that stage, see [`KvCache::reusable`]).
    pub(super) fn fork_stages(&mut self, backend: &B, from: usize, new: usize) -> Result<()> {
        for kind in 0..2 {
            let Some(a) = self.seqs[new].tables[kind].arena else { continue };
            let st = self.take_stage(backend, kind, a)?;
            self.seqs[new].tables[kind].stage = st;
            if let (Some(to), Some(src)) = (st, self.seqs[from].tables[kind].stage) {
                if !self.seqs[new].len.is_multiple_of(self.page) {
                    self.copy_stage(backend, kind, (a, src), (a, to))?;
                }
            }
        }
        Ok(())
    }

    /// Sizes arena `a` of `kind` to `pages` pages and `stages` stages, or more if it has them (new buffers, the
    /// old pages and stages copied to their places).
    pub(super) fn resize(&mut self, backend: &B, kind: usize, a: usize, pages: usize, stages: usize) -> Result<()> {
        let (have, have_st) = (self.arenas[kind][a].refs.len(), self.arenas[kind][a].stages.len());
        let pages = pages.min(self.max_pages[kind]).max(have);
        let stages = if self.stage_w[kind] == 0 { 0 } else { stages.min(MAX_STAGES).max(have_st) };
        if pages == have && stages == have_st {
            return Ok(());
        }
        let overflow = || HerdError::Input(format!("a KV cache of {pages} pages overflows"));
        let (kpw, vpw, sw) = (self.kpw[kind], self.vpw[kind], self.stage_w[kind]);
        pages.checked_mul(kpw.max(vpw)).ok_or_else(overflow)?;
        let klen = self.key_len(kind, pages, stages);
        let (old_base, new_base) = (self.stage_base(kind, have), self.stage_base(kind, pages));
        let dtype = self.dtypes[kind];
        for layer in self.layers.iter_mut().filter(|l| kind_index(l.kind) == kind) {
            let (k, v) = (cache_buffer(backend, dtype, klen)?, cache_buffer(backend, dtype, pages * vpw)?);
            let (ok, ov) = &layer.arenas[a];
            if have > 0 {
                backend.copy(ok, 0, &k, 0, have * kpw)?;
                backend.copy(ov, 0, &v, 0, have * vpw)?;
            }
            if have_st > 0 {
                backend.copy(ok, old_base, &k, new_base, have_st * sw)?;
            }
            layer.arenas[a] = (k, v);
        }
        let ar = &mut self.arenas[kind][a];
        ar.refs.resize(pages, 0);
        ar.stages.resize(stages, false);
        // Lower pages first.
        ar.free.extend((have as u32..pages as u32).rev());
        Ok(())
    }
}
