//! The KV cache for a batch of sequences.
//!
//! Every layer has one key and one value buffer `[slots, n_kv_heads, head_dim]`; each sequence owns a
//! region of slots in it, the same region in every layer of one kind. Position `p` of a sequence lives in
//! slot `base + p % cap`. Full-attention (global, NoPE) layers keep the whole history: their regions grow
//! (doubling) before they would wrap. Chunked (RoPE) layers only ever need the query's own chunk, so their
//! regions grow up to `attention_chunk_size` slots and then act as ring buffers: a chunk starts at a
//! multiple of C, so its tokens occupy slots 0..p mod C of the ring, never overwritten while visible.
//!
//! Growing relocates the regions of one layer kind into new buffers (one backend copy per region). A layer
//! kind's regions are packed into as few buffers ("arenas") as the backend's largest buffer allows, so a
//! batch whose cache outgrows one binding (a browser's 128 MiB) spreads over several; the model runs
//! attention once per arena, for the sequences in it. The attention op takes any region layout, so a paged
//! allocator can replace this one without touching it.

use crate::backend::{AttnSeq, Backend};
use crate::config::{AttnKind, TextConfig};
use crate::error::{HerdError, Result};

/// A sequence's handle in a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(pub u32);

#[derive(Debug, Clone, Copy)]
struct Region {
    /// Which buffer of the layer holds the region, and where in it.
    arena: usize,
    base: usize,
    cap: usize,
}

struct SeqState {
    id: SeqId,
    len: usize,
    /// Region in full-attention layers, then in chunked layers.
    regions: [Region; 2],
}

struct Layer<B: Backend> {
    kind: AttnKind,
    /// Key and value buffers, one pair per arena.
    arenas: Vec<(B::Buffer, B::Buffer)>,
}

/// One attention call's worth of a layer: an arena's key and value buffers and its sequences' metadata.
pub struct KvGroup<'a, B: Backend> {
    pub k: &'a B::Buffer,
    pub v: &'a B::Buffer,
    pub seqs: Vec<AttnSeq>,
}

/// Keys and values of every layer for every live sequence.
pub struct KvCache<B: Backend> {
    layers: Vec<Layer<B>>,
    seqs: Vec<SeqState>,
    /// Slots in each arena of each layer kind (full, chunked).
    slots: [Vec<usize>; 2],
    /// The most slots one arena may hold (the backend's largest buffer).
    max_slots: usize,
    kv_dim: usize,
    chunk: Option<usize>,
    next_id: u32,
}

fn kind_index(k: AttnKind) -> usize {
    match k {
        AttnKind::Full => 0,
        AttnKind::Chunked => 1,
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty cache shaped for `cfg`.
    pub fn new(backend: &B, cfg: &TextConfig) -> Result<Self> {
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        let layers = cfg
            .layer_types
            .iter()
            .map(|&kind| Ok(Layer { kind, arenas: vec![(backend.alloc(kv_dim)?, backend.alloc(kv_dim)?)] }))
            .collect::<Result<_>>()?;
        let max_slots = (backend.max_buffer_len() / kv_dim.max(1)).max(1);
        Ok(KvCache {
            layers,
            seqs: Vec::new(),
            slots: [vec![1], vec![1]],
            max_slots,
            kv_dim,
            chunk: cfg.attention_chunk_size,
            next_id: 0,
        })
    }

    /// Starts a new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        // An empty region at the end; it gets room on its first step.
        self.seqs.push(SeqState {
            id,
            len: 0,
            regions: [Region { arena: 0, base: 0, cap: 0 }, Region { arena: 0, base: 0, cap: 0 }],
        });
        id
    }

    /// How many of the first `len` tokens of `src` [`KvCache::fork`] can copy (see there).
    pub fn reusable(&self, src: SeqId, len: usize) -> Result<usize> {
        let from = self.seq(src)?;
        let len = len.min(from.len);
        if let Some(c) = self.chunk.filter(|_| self.layers.iter().any(|l| l.kind == AttnKind::Chunked)) {
            // Position p of `src` is still in its ring iff no later position took its slot: p + cap >= len(src).
            let start = len / c * c;
            if len > start && start + from.regions[1].cap.max(1) < from.len {
                return Ok(start);
            }
        }
        Ok(len)
    }

    /// A new sequence holding a copy of the first `len` tokens of `src` (prefix reuse), or fewer: chunked
    /// layers keep only the current chunk's tokens, so when `src` has moved on far enough to overwrite some
    /// of the chunk that position `len` falls in, the copy stops at that chunk's start. Returns the new
    /// sequence and how many tokens it holds. `src` is not changed.
    pub fn fork(&mut self, backend: &B, src: SeqId, len: usize) -> Result<(SeqId, usize)> {
        let len = self.reusable(src, len)?;
        let id = self.add_sequence();
        if len == 0 {
            return Ok((id, 0));
        }
        if let Err(e) = self.reserve(backend, &[(id, len)]) {
            self.remove_sequence(id);
            return Err(e);
        }
        let (from, to) = (self.seq(src)?.regions, self.seq(id)?.regions);
        let kv = self.kv_dim;
        for layer in &self.layers {
            let k = kind_index(layer.kind);
            let first = match (k, self.chunk) {
                (1, Some(c)) => len / c * c,
                _ => 0,
            };
            let (a, b) = (from[k], to[k]);
            let ((sk, sv), (dk, dv)) = (&layer.arenas[a.arena], &layer.arenas[b.arena]);
            // Positions first..len, in runs that wrap neither ring.
            let mut p = first;
            while p < len {
                let (so, dof) = (p % a.cap.max(1), p % b.cap.max(1));
                let run = (len - p).min(a.cap.max(1) - so).min(b.cap.max(1) - dof);
                let (from_at, to_at, n) = ((a.base + so) * kv, (b.base + dof) * kv, run * kv);
                for (src, dst) in [(sk, dk), (sv, dv)] {
                    if a.arena == b.arena {
                        // Within one buffer: through a scratch buffer (a backend copy takes two).
                        let tmp = backend.alloc(n)?;
                        backend.copy(src, from_at, &tmp, 0, n)?;
                        backend.copy(&tmp, 0, dst, to_at, n)?;
                    } else {
                        backend.copy(src, from_at, dst, to_at, n)?;
                    }
                }
                p += run;
            }
        }
        self.advance(&[(id, len)])?;
        Ok((id, len))
    }

    /// Forgets a sequence (its slots are reclaimed at the next relocation).
    pub fn remove_sequence(&mut self, id: SeqId) {
        self.seqs.retain(|s| s.id != id);
    }

    /// Tokens cached for a sequence.
    pub fn seq_len(&self, id: SeqId) -> Result<usize> {
        Ok(self.seq(id)?.len)
    }

    /// Bytes the cache buffers take (f32 elements).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| 2 * self.slots[kind_index(l.kind)].iter().sum::<usize>() * self.kv_dim * 4).sum()
    }

    fn seq(&self, id: SeqId) -> Result<&SeqState> {
        self.seqs.iter().find(|s| s.id == id).ok_or_else(|| HerdError::Input(format!("unknown sequence {}", id.0)))
    }

    /// Capacity a region of `kind` needs to hold a sequence of `len` tokens.
    fn needed(&self, kind: usize, len: usize) -> usize {
        match (kind, self.chunk) {
            (1, Some(c)) => len.min(c),
            _ => len,
        }
    }

    /// Fails, before anything changes, if `new` more tokens of sequence `id` would need a cache region
    /// larger than one buffer of this backend holds.
    pub fn check_fits(&self, id: SeqId, new: usize) -> Result<()> {
        let len = self.seq(id)?.len + new;
        let kinds: Vec<usize> = self.layers.iter().map(|l| kind_index(l.kind)).collect();
        let cap = kinds.iter().map(|&k| self.needed(k, len)).max().unwrap_or(0);
        if cap > self.max_slots {
            return Err(HerdError::Input(format!(
                "{len} tokens need {cap} cache slots ({} bytes per layer), more than this device's largest buffer holds ({} slots)",
                cap * self.kv_dim * 4,
                self.max_slots
            )));
        }
        Ok(())
    }

    /// Makes room for `new` more tokens of each listed sequence, relocating regions if needed.
    pub fn reserve(&mut self, backend: &B, batch: &[(SeqId, usize)]) -> Result<()> {
        for kind in 0..2 {
            let mut grow = false;
            let mut caps: Vec<usize> = self.seqs.iter().map(|s| s.regions[kind].cap).collect();
            for &(id, new) in batch {
                let i = self
                    .seqs
                    .iter()
                    .position(|s| s.id == id)
                    .ok_or_else(|| HerdError::Input(format!("unknown sequence {}", id.0)))?;
                let want = self.needed(kind, self.seqs[i].len + new);
                if want > caps[i] {
                    // Room to grow into, but never more than one buffer holds.
                    let doubled = self.needed(kind, (2 * caps[i]).max(16)).min(self.max_slots);
                    caps[i] = want.max(doubled);
                    grow = true;
                }
            }
            if grow {
                self.relocate(backend, kind, &caps)?;
            }
        }
        Ok(())
    }

    /// Lays out every sequence's region of one layer kind afresh with the given capacities, packed in order
    /// into arenas of at most `max_slots` slots.
    fn relocate(&mut self, backend: &B, kind: usize, caps: &[usize]) -> Result<()> {
        let kv = self.kv_dim;
        let mut arenas = vec![0usize];
        let mut new_regions = Vec::with_capacity(caps.len());
        for &cap in caps {
            if cap > self.max_slots {
                return Err(HerdError::Input(format!(
                    "a sequence needs {cap} cache slots ({} bytes per layer), more than this device's largest buffer holds ({} slots)",
                    cap * kv * 4,
                    self.max_slots
                )));
            }
            let mut last = arenas.len() - 1;
            if arenas[last] + cap > self.max_slots {
                arenas.push(0);
                last += 1;
            }
            new_regions.push(Region { arena: last, base: arenas[last], cap });
            arenas[last] += cap;
        }
        for layer in self.layers.iter_mut().filter(|l| kind_index(l.kind) == kind) {
            let mut bufs = Vec::with_capacity(arenas.len());
            for &slots in &arenas {
                bufs.push((backend.alloc(slots.max(1) * kv)?, backend.alloc(slots.max(1) * kv)?));
            }
            for (s, r) in self.seqs.iter().zip(&new_regions) {
                let old = s.regions[kind];
                // Regions grow only before they wrap, and a wrapped ring is copied whole: slot order is kept.
                let used = s.len.min(old.cap);
                if used > 0 {
                    let (ok, ov) = &layer.arenas[old.arena];
                    let (nk, nv) = &bufs[r.arena];
                    backend.copy(ok, old.base * kv, nk, r.base * kv, used * kv)?;
                    backend.copy(ov, old.base * kv, nv, r.base * kv, used * kv)?;
                }
            }
            layer.arenas = bufs;
        }
        for (s, r) in self.seqs.iter_mut().zip(new_regions) {
            s.regions[kind] = r;
        }
        self.slots[kind] = arenas.into_iter().map(|a| a.max(1)).collect();
        Ok(())
    }

    /// Attention calls for one layer in a step: per arena that holds sequences of `batch`, its buffers and
    /// their metadata. `batch` lists (sequence, first row, new tokens) in row order.
    pub fn groups(&self, layer: usize, batch: &[(SeqId, usize, usize)]) -> Result<Vec<KvGroup<'_, B>>> {
        let l = &self.layers[layer];
        let kind = kind_index(l.kind);
        let mut groups: Vec<KvGroup<'_, B>> = Vec::new();
        let mut which: Vec<usize> = Vec::new();
        for &(id, row, n) in batch {
            let s = self.seq(id)?;
            let r = s.regions[kind];
            let meta = AttnSeq {
                q_start: row as u32,
                q_len: n as u32,
                pos0: s.len as u32,
                slot_base: r.base as u32,
                slot_cap: r.cap.max(1) as u32,
            };
            let (k, v) = l.arenas.get(r.arena).ok_or_else(|| HerdError::internal("cache region lost"))?;
            match which.iter().position(|&a| a == r.arena) {
                Some(g) => groups[g].seqs.push(meta),
                None => {
                    which.push(r.arena);
                    groups.push(KvGroup { k, v, seqs: vec![meta] });
                }
            }
        }
        Ok(groups)
    }

    /// Records that the step's new tokens are now cached.
    pub fn advance(&mut self, batch: &[(SeqId, usize)]) -> Result<()> {
        for &(id, n) in batch {
            let s = self
                .seqs
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| HerdError::Input(format!("unknown sequence {}", id.0)))?;
            s.len += n;
        }
        Ok(())
    }

    /// How many buffers each layer of a kind spreads over (full-attention layers, chunked layers).
    pub fn arenas(&self) -> (usize, usize) {
        (self.slots[0].len(), self.slots[1].len())
    }
}
