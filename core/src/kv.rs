//! The KV cache for a batch of sequences: paged.
//!
//! Every layer keeps its keys and values in pages of `page` slots (a slot is one position's
//! `[n_kv_heads, head_dim]`), taken from a pool per layer kind; each sequence has a page table per layer
//! kind, the same in every layer of that kind. Full-attention (global, NoPE) layers keep the whole history:
//! their table grows a page at a time, and growing never moves what is cached. Chunked (RoPE) layers only ever
//! need the query's own chunk, so their table is a ring of ⌈C / page⌉ pages: position `p` lives in ring slot
//! `p mod (ring pages · page)`, and since a chunk starts at a multiple of C, the chunk's tokens are never
//! overwritten while visible. Ring pages are taken when first written, so a short sequence holds only what it
//! uses.
//!
//! Pages are shared between sequences: [`KvCache::fork`] gives a new sequence the pages of another's prefix,
//! counting references, and the first write into a shared page copies it (copy-on-write), so a shared
//! system prompt or chat history is held once.
//!
//! A pool is one pair of buffers per layer when it fits the backend's largest buffer, else several
//! ("arenas", as a browser's 128 MiB bindings require); a sequence's pages of one kind all live in one arena,
//! and the model runs attention once per arena, for the sequences in it. An arena's buffers grow by doubling
//! (one copy of the arena, amortised); [`KvCache::reserve_for`] sizes them up front for what a memory plan
//! counts.

use crate::backend::{AttnSeq, Backend, KvPages};

// Sizing the pools up front (`reserve_for`) and writing a sequence without a prefill (`fill_random`).
#[path = "kv_fill.rs"]
mod fill;
// The q4 keys' stages: an arena's key buffers' layout, and taking, moving and freeing a sequence's stage.
#[path = "kv_stage.rs"]
mod stage;
// A step's attention calls, planned once per layer kind (`plan`) and given to each layer (`groups`).
#[path = "kv_plan.rs"]
mod plan;
// Rolling a sequence back (`truncate`: speculative decoding's rejected tokens).
#[path = "kv_truncate.rs"]
mod truncate;
use crate::config::{AttnKind, TextConfig};
use crate::error::{HerdError, Result};
use crate::kv_format::KvDtype;
use plan::GroupPlan;

/// A sequence's handle in a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

/// Layer kinds, as indices into per-kind arrays.
const FULL: usize = 0;
const CHUNKED: usize = 1;

fn kind_index(k: AttnKind) -> usize {
    match k {
        AttnKind::Full => FULL,
        AttnKind::Chunked => CHUNKED,
    }
}

/// The page bookkeeping of one arena of one layer kind (its buffers are in every layer of that kind).
#[derive(Default)]
struct Arena {
    /// References to each page the buffers hold (0: free).
    refs: Vec<u32>,
    /// Free pages, taken from the end.
    free: Vec<u32>,
    /// Whether each stage the key buffers hold is taken (q4 keys only).
    stages: Vec<bool>,
}

/// A sequence's pages in the layers of one kind.
#[derive(Default, Clone)]
struct Table {
    /// The arena its pages live in (none before its first page).
    arena: Option<usize>,
    /// Page of each page-sized run of its slots; `None` until written (ring pages are taken on first use).
    pages: Vec<Option<u32>>,
    /// Its stage in the arena (q4 keys: the page being filled, in f32).
    stage: Option<u32>,
}

struct SeqState {
    id: SeqId,
    len: usize,
    tables: [Table; 2],
}

struct Layer<B: Backend> {
    kind: AttnKind,
    /// Key and value buffers, one pair per arena of this layer's kind.
    arenas: Vec<(B::Buffer, B::Buffer)>,
}

/// One attention call's worth of a layer: an arena's key and value buffers, the page table of the sequences
/// in it, and their metadata.
pub struct KvGroup<'a, B: Backend> {
    pub k: &'a B::Buffer,
    pub v: &'a B::Buffer,
    pub table: &'a [u32],
    pub page: usize,
    pub dtype: KvDtype,
    pub seqs: &'a [AttnSeq],
}

impl<B: Backend> KvGroup<'_, B> {
    /// The group's pages, as the attention ops take them.
    pub fn pages(&self) -> KvPages<'_> {
        KvPages { table: self.table, size: self.page, dtype: self.dtype }
    }
}

/// A zeroed cache buffer of `n` elements in `dtype`'s element type (f32, or u32 words).
fn cache_buffer<B: Backend>(backend: &B, dtype: KvDtype, n: usize) -> Result<B::Buffer> {
    match dtype {
        KvDtype::F32 => backend.alloc(n),
        _ => backend.alloc_u32(n),
    }
}

/// Keys and values of every layer for every live sequence.
pub struct KvCache<B: Backend> {
    layers: Vec<Layer<B>>,
    seqs: Vec<SeqState>,
    /// Arenas of each layer kind.
    arenas: [Vec<Arena>; 2],
    /// Whether any layer is of each kind.
    has_kind: [bool; 2],
    /// Slots per page.
    page: usize,
    /// The most pages one arena of each kind may hold (the backend's largest buffer).
    max_pages: [usize; 2],
    /// The format of each kind's keys and values, and the u32 words (f32 elements for f32) of a page of keys,
    /// of a page of values and of a stage (q4 keys; else 0).
    dtypes: [KvDtype; 2],
    kpw: [usize; 2],
    vpw: [usize; 2],
    stage_w: [usize; 2],
    chunk: Option<usize>,
    /// A slot's shape: kv heads × head dim.
    kv_heads: usize,
    head_dim: usize,
    next_id: u32,
    /// The step's attention calls per kind ([`KvCache::plan`]), and how many of each are in use.
    plans: [Vec<GroupPlan>; 2],
    planned: [usize; 2],
}

impl<B: Backend> KvCache<B> {
    /// An empty cache shaped for `cfg`, with the backend's page size.
    pub fn new(backend: &B, cfg: &TextConfig) -> Result<Self> {
        Self::with_page_size(backend, cfg, backend.kv_page_size())
    }

    /// An empty f32 cache shaped for `cfg`, with pages of `page` slots.
    pub fn with_page_size(backend: &B, cfg: &TextConfig, page: usize) -> Result<Self> {
        Self::with_options(backend, cfg, page, [KvDtype::F32; 2])
    }

    /// An empty cache shaped for `cfg`, with pages of `page` slots, keys and values of full-attention layers
    /// in `dtypes[0]` and of chunked layers in `dtypes[1]`.
    pub fn with_options(backend: &B, cfg: &TextConfig, page: usize, dtypes: [KvDtype; 2]) -> Result<Self> {
        if page == 0 {
            return Err(HerdError::Input("a KV-cache page must hold at least one slot".into()));
        }
        let (mut kpw, mut vpw, mut stage_w, mut max_pages) = ([0usize; 2], [0usize; 2], [0usize; 2], [0usize; 2]);
        let (kvh, hd) = (cfg.num_key_value_heads, cfg.head_dim);
        for k in 0..2 {
            // Every format's page is below two f32 pages, and a q4 stage is one.
            if kvh.checked_mul(hd).and_then(|n| n.checked_mul(3)).and_then(|w| w.checked_mul(page)).is_none() {
                return Err(HerdError::Input(format!("KV-cache pages of {page} slots overflow")));
            }
            let d = dtypes[k];
            kpw[k] = d.key_page_words(kvh, hd, page).map_err(HerdError::Input)?.max(1);
            vpw[k] = d.value_page_words(kvh, hd, page).map_err(HerdError::Input)?.max(1);
            stage_w[k] = d.stage_words(kvh, hd, page);
            let page_elems = kpw[k].max(vpw[k]);
            // Key buffers keep room for their arena's stages.
            let room = backend.max_buffer_len().saturating_sub(stage::MAX_STAGES * stage_w[k] + kvh * hd);
            max_pages[k] = room / page_elems;
            if max_pages[k] == 0 {
                return Err(HerdError::Input(format!(
                    "a KV-cache page of {page} slots ({} bytes) is larger than this device's largest buffer",
                    page_elems * 4
                )));
            }
        }
        let layers = cfg.layer_types.iter().map(|&kind| Layer { kind, arenas: Vec::new() }).collect();
        let has_kind = [FULL, CHUNKED].map(|k| cfg.layer_types.iter().any(|&l| kind_index(l) == k));
        Ok(KvCache {
            layers,
            seqs: Vec::new(),
            arenas: [Vec::new(), Vec::new()],
            has_kind,
            page,
            max_pages,
            dtypes,
            kpw,
            vpw,
            stage_w,
            chunk: cfg.attention_chunk_size,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            next_id: 0,
            plans: Default::default(),
            planned: [0; 2],
        })
    }

    /// Slots per page.
    pub fn page_size(&self) -> usize {
        self.page
    }

    /// Pages in a chunked layer's ring (None: this kind keeps the whole history).
    fn ring(&self, kind: usize) -> Option<usize> {
        match (kind, self.chunk) {
            (CHUNKED, Some(c)) => Some(c.div_ceil(self.page).max(1)),
            _ => None,
        }
    }

    /// Starts a new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let mut tables: [Table; 2] = Default::default();
        if let Some(r) = self.ring(CHUNKED) {
            tables[CHUNKED].pages = vec![None; r];
        }
        self.seqs.push(SeqState { id, len: 0, tables });
        id
    }

    fn index(&self, id: SeqId) -> Result<usize> {
        self.seqs.iter().position(|s| s.id == id).ok_or_else(|| HerdError::Input(format!("unknown sequence {}", id.0)))
    }

    fn seq(&self, id: SeqId) -> Result<&SeqState> {
        Ok(&self.seqs[self.index(id)?])
    }

    /// How many of the first `len` tokens of `src` [`KvCache::fork`] can share (see there).
    pub fn reusable(&self, src: SeqId, len: usize) -> Result<usize> {
        let from = self.seq(src)?;
        let mut len = len.min(from.len);
        loop {
            let mut l = len;
            if let (Some(c), Some(r), true) = (self.chunk, self.ring(CHUNKED), self.has_kind[CHUNKED]) {
                // Position p of `src` is still in its ring iff no later position took its slot: p + cap >= len(src).
                let start = l / c * c;
                if l > start && start + r * self.page < from.len {
                    l = start;
                }
            }
            // q4 keys: a page `src` has completed is quantized, its f32 keys gone from the stage; a new sequence
            // ending inside it would need them, so it ends at the page's start.
            let staged = (0..2).any(|k| self.has_kind[k] && self.stage_w[k] > 0);
            if staged && l / self.page < from.len / self.page {
                l = l / self.page * self.page;
            }
            if l == len {
                return Ok(len);
            }
            len = l;
        }
    }

    /// A new sequence holding the first `len` tokens of `src` (prefix reuse), or fewer: chunked layers keep
    /// only the current chunk's tokens, so when `src` has moved on far enough to overwrite some of the chunk
    /// that position `len` falls in, the new sequence stops at that chunk's start. Nothing is copied: the
    /// new sequence shares `src`'s pages, and whichever of the two first writes into a shared page copies it.
    /// Returns the new sequence and how many tokens it holds. What `src` holds is not changed.
    pub fn fork(&mut self, backend: &B, src: SeqId, len: usize) -> Result<(SeqId, usize)> {
        let mut len = self.reusable(src, len)?;
        let from = self.index(src)?;
        // A new sequence keeps its q4 stage in the arena of the pages it shares: none there, nothing shared.
        if (0..2).any(|k| self.seqs[from].tables[k].arena.is_some_and(|a| !self.stage_room(k, a))) {
            len = 0;
        }
        let id = self.add_sequence();
        if len == 0 {
            return Ok((id, 0));
        }
        let mut tables: [Table; 2] = Default::default();
        for (kind, t) in tables.iter_mut().enumerate() {
            let have = &self.seqs[from].tables[kind];
            t.arena = have.arena;
            t.pages = match self.ring(kind) {
                None => have.pages[..len.div_ceil(self.page).min(have.pages.len())].to_vec(),
                Some(r) => {
                    // The ring pages of the positions the new sequence can still see: its last chunk's.
                    let first = self.chunk.map_or(0, |c| len / c * c);
                    let mut pages = vec![None; r];
                    for p in first..len {
                        let i = p % (r * self.page) / self.page;
                        pages[i] = have.pages[i];
                    }
                    pages
                }
            };
            if let Some(a) = t.arena {
                for &p in t.pages.iter().flatten() {
                    self.arenas[kind][a].refs[p as usize] += 1;
                }
            }
        }
        let new = self.index(id)?;
        self.seqs[new].tables = tables;
        self.seqs[new].len = len;
        self.fork_stages(backend, from, new)?;
        Ok((id, len))
    }

    /// Forgets a sequence; its pages go back to the pool once no other sequence shares them.
    pub fn remove_sequence(&mut self, id: SeqId) {
        let Ok(i) = self.index(id) else { return };
        let s = self.seqs.remove(i);
        for (kind, t) in s.tables.iter().enumerate() {
            if let Some(a) = t.arena {
                for &p in t.pages.iter().flatten() {
                    self.release(kind, a, p);
                }
                if let Some(st) = t.stage {
                    self.arenas[kind][a].stages[st as usize] = false;
                }
            }
        }
    }

    /// Drops one reference to a page, freeing it at the last.
    fn release(&mut self, kind: usize, arena: usize, page: u32) {
        let ar = &mut self.arenas[kind][arena];
        let r = &mut ar.refs[page as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            ar.free.push(page);
        }
    }

    /// Tokens cached for a sequence.
    pub fn seq_len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
    }

    /// Bytes of the pages the live sequences hold (a page shared by several sequences counts once), keys and
    /// values over every layer, and of their q4 stages.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let k = kind_index(l.kind);
                let pages: usize = self.arenas[k].iter().map(|a| a.refs.iter().filter(|&&r| r > 0).count()).sum();
                let stages: usize = self.arenas[k].iter().map(|a| a.stages.iter().filter(|&&t| t).count()).sum();
                4 * (pages * (self.kpw[k] + self.vpw[k]) + stages * self.stage_w[k])
            })
            .sum()
    }

    /// Bytes the cache buffers take (held pages, free pages and room grown into ahead of need).
    pub fn reserved_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let k = kind_index(l.kind);
                let sized = |a: &Arena| self.key_len(k, a.refs.len(), a.stages.len()) + a.refs.len() * self.vpw[k];
                4 * self.arenas[k].iter().map(sized).sum::<usize>()
            })
            .sum()
    }

    /// Pages a sequence of `len` tokens holds in the layers of `kind`.
    fn pages_for(&self, kind: usize, len: usize) -> usize {
        let n = len.div_ceil(self.page);
        self.ring(kind).map_or(n, |r| n.min(r))
    }

    /// Fails, before anything changes, if `new` more tokens of sequence `id` would need more pages than one
    /// buffer of this backend holds.
    pub fn check_fits(&self, id: SeqId, new: usize) -> Result<()> {
        let len = self.seq(id)?.len + new;
        for kind in (0..2).filter(|&k| self.has_kind[k]) {
            let n = self.pages_for(kind, len);
            if n > self.max_pages[kind] {
                return Err(HerdError::Input(format!(
                    "{len} tokens need {} cache slots ({} bytes per layer), more than this device's largest buffer holds ({} slots)",
                    n * self.page,
                    n * (self.kpw[kind] + self.vpw[kind]) * 4,
                    self.max_pages[kind] * self.page
                )));
            }
        }
        Ok(())
    }

    /// Takes pages for `new` more tokens of each listed sequence, copying any shared page they will write.
    pub fn reserve(&mut self, backend: &B, batch: &[(SeqId, usize)]) -> Result<()> {
        for &(id, _) in batch {
            self.index(id)?;
        }
        let has = self.has_kind;
        for &(id, new) in batch {
            for kind in (0..2).filter(|&k| has[k]) {
                let s = self.index(id)?;
                let len = self.seqs[s].len;
                // The pages the new tokens land in, in order (no list for the common cases: a decode step
                // allocates nothing here).
                let touched: Vec<usize> = match self.ring(kind) {
                    None => {
                        for i in len / self.page..(len + new).div_ceil(self.page) {
                            self.writable(backend, kind, s, i)?;
                        }
                        continue;
                    }
                    Some(r) if new == 1 => {
                        self.writable(backend, kind, s, len % (r * self.page) / self.page)?;
                        continue;
                    }
                    Some(r) => {
                        // A step longer than the ring writes only its last ring's worth.
                        let slots = r * self.page;
                        let from = len.max((len + new).saturating_sub(slots));
                        let mut idx: Vec<usize> = (from..len + new).map(|p| p % slots / self.page).collect();
                        idx.dedup();
                        idx.sort_unstable();
                        idx.dedup();
                        idx
                    }
                };
                for i in touched {
                    self.writable(backend, kind, s, i)?;
                }
            }
        }
        Ok(())
    }

    /// Makes entry `i` of sequence `s`'s table of `kind` a page it alone holds: takes a page if it has none,
    /// copies a shared one.
    fn writable(&mut self, backend: &B, kind: usize, s: usize, i: usize) -> Result<()> {
        let private = |me: &Self| match (me.seqs[s].tables[kind].pages[i], me.seqs[s].tables[kind].arena) {
            (Some(p), Some(a)) => me.arenas[kind][a].refs[p as usize] == 1,
            _ => false,
        };
        let t = &mut self.seqs[s].tables[kind];
        if t.pages.len() <= i {
            t.pages.resize(i + 1, None);
        }
        if private(self) {
            return Ok(());
        }
        match self.seqs[s].tables[kind].arena {
            // The sequence's arena is full at its largest: it moves (which leaves all its pages its own).
            Some(a) if !self.has_room(kind, a, 1) => {
                self.migrate(backend, kind, s)?;
                if private(self) {
                    return Ok(());
                }
            }
            Some(_) => {}
            None => {
                let a = self.arena_with_room(backend, kind, 1)?;
                self.seqs[s].tables[kind].arena = Some(a);
                self.seqs[s].tables[kind].stage = self.take_stage(backend, kind, a)?;
            }
        }
        let a = self.seqs[s].tables[kind].arena.ok_or_else(|| HerdError::internal("a sequence without an arena"))?;
        let page = self.take_page(backend, kind, a)?;
        if let Some(from) = self.seqs[s].tables[kind].pages[i] {
            // Copy-on-write: the page's keys and values in every layer of this kind.
            let (from, to) = (from as usize, page as usize);
            for layer in self.layers.iter().filter(|l| kind_index(l.kind) == kind) {
                let (k, v) = &layer.arenas[a];
                for (x, n) in [(k, self.kpw[kind]), (v, self.vpw[kind])] {
                    // Within one buffer: through a scratch buffer (a backend copy takes two).
                    let tmp = cache_buffer(backend, self.dtypes[kind], n)?;
                    backend.copy(x, from * n, &tmp, 0, n)?;
                    backend.copy(&tmp, 0, x, to * n, n)?;
                }
            }
            let from = from as u32;
            self.release(kind, a, from);
        }
        self.seqs[s].tables[kind].pages[i] = Some(page);
        Ok(())
    }

    /// A free page of arena `a` of `kind` (which has room), with one reference, growing the arena if needed.
    fn take_page(&mut self, backend: &B, kind: usize, a: usize) -> Result<u32> {
        if self.arenas[kind][a].free.is_empty() {
            let have = self.arenas[kind][a].refs.len();
            self.grow(backend, kind, a, (2 * have).max(have + 1).max(4).min(self.max_pages[kind]))?;
        }
        let ar = &mut self.arenas[kind][a];
        let page = ar.free.pop().ok_or_else(|| HerdError::internal("no free KV-cache page after growing"))?;
        ar.refs[page as usize] = 1;
        Ok(page)
    }

    /// Whether arena `a` of `kind` can give `n` more pages (free, or by growing).
    fn has_room(&self, kind: usize, a: usize, n: usize) -> bool {
        let ar = &self.arenas[kind][a];
        ar.free.len() + (self.max_pages[kind] - ar.refs.len()) >= n
    }

    /// An arena of `kind` that can give `n` more pages: the first with room, else a new one.
    fn arena_with_room(&mut self, backend: &B, kind: usize, n: usize) -> Result<usize> {
        if n > self.max_pages[kind] {
            return Err(HerdError::Input(format!(
                "a sequence needs {} cache slots per layer, more than this device's largest buffer holds ({} slots)",
                n * self.page,
                self.max_pages[kind] * self.page
            )));
        }
        match (0..self.arenas[kind].len()).find(|&a| self.has_room(kind, a, n) && self.stage_room(kind, a)) {
            Some(a) => Ok(a),
            None => self.new_arena(backend, kind),
        }
    }

    /// Adds an empty arena of `kind` (small buffers, grown on use).
    fn new_arena(&mut self, backend: &B, kind: usize) -> Result<usize> {
        let (kn, vn) = (self.kpw[kind], self.vpw[kind]);
        let dtype = self.dtypes[kind];
        for layer in self.layers.iter_mut().filter(|l| kind_index(l.kind) == kind) {
            layer.arenas.push((cache_buffer(backend, dtype, kn)?, cache_buffer(backend, dtype, vn)?));
        }
        // The buffers hold one page's room but no page yet: `grow` sizes them.
        self.arenas[kind].push(Arena::default());
        Ok(self.arenas[kind].len() - 1)
    }

    /// Grows arena `a` of `kind` to `pages` pages (new buffers, the old contents copied).
    fn grow(&mut self, backend: &B, kind: usize, a: usize, pages: usize) -> Result<()> {
        let stages = self.arenas[kind][a].stages.len();
        self.resize(backend, kind, a, pages, stages)
    }

    /// Moves sequence `s`'s pages of `kind` to an arena with room for them and one more; returns it.
    fn migrate(&mut self, backend: &B, kind: usize, s: usize) -> Result<usize> {
        let old =
            self.seqs[s].tables[kind].arena.ok_or_else(|| HerdError::internal("migrating a sequence without pages"))?;
        let held: Vec<(usize, u32)> =
            self.seqs[s].tables[kind].pages.iter().enumerate().filter_map(|(i, p)| p.map(|p| (i, p))).collect();
        let a = (0..self.arenas[kind].len())
            .find(|&a| a != old && self.has_room(kind, a, held.len() + 1) && self.stage_room(kind, a))
            .map_or_else(|| self.new_arena(backend, kind), Ok)?;
        let (kn, vn) = (self.kpw[kind], self.vpw[kind]);
        self.seqs[s].tables[kind].arena = Some(a);
        self.move_stage(backend, kind, s, old, a)?;
        for (i, from) in held {
            let page = self.take_page(backend, kind, a)?;
            for layer in self.layers.iter().filter(|l| kind_index(l.kind) == kind) {
                let ((sk, sv), (dk, dv)) = (&layer.arenas[old], &layer.arenas[a]);
                backend.copy(sk, from as usize * kn, dk, page as usize * kn, kn)?;
                backend.copy(sv, from as usize * vn, dv, page as usize * vn, vn)?;
            }
            self.release(kind, old, from);
            self.seqs[s].tables[kind].pages[i] = Some(page);
        }
        Ok(a)
    }

    /// Records that the step's new tokens are now cached.
    pub fn advance(&mut self, batch: &[(SeqId, usize)]) -> Result<()> {
        for &(id, n) in batch {
            let i = self.index(id)?;
            self.seqs[i].len += n;
        }
        Ok(())
    }

    /// The chunk of chunked-attention layers, where the model has them (what [`KvCache::truncate`] bounds).
    pub fn chunk(&self) -> Option<usize> {
        self.chunk.filter(|_| self.has_kind[CHUNKED])
    }

    /// How many buffers each layer of a kind spreads over (full-attention layers, chunked layers).
    pub fn arenas(&self) -> (usize, usize) {
        (self.arenas[FULL].len(), self.arenas[CHUNKED].len())
    }
}
