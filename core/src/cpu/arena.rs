//! Weight memory in transparent huge pages (Linux).
//!
//! A decode step streams every active weight from memory once, and through 4 KiB pages that is one TLB
//! entry per 4 KiB read: at the CPU's memory bandwidth the page walks cost a tenth of a step (more in a
//! virtual machine, where each walk is two-dimensional). The checkpoint's mapping gives only such pages (the
//! kernel does not map file pages huge), so where the kernel has transparent huge pages the CPU backend
//! reads each weight into private anonymous memory advised for 2 MiB pages ([`WeightMemory::HugePages`],
//! the default there) instead of borrowing the mapping ([`WeightMemory::Mapped`], `--mmap`).
//!
//! Weights are read with positioned reads, not through the mapping, so the file's pages are never part of
//! the process's resident memory: the copy does not double it. Small weights share 64 MiB chunks (a norm's
//! few KiB would waste most of a huge page of its own); large ones get a mapping each, advised only over
//! its whole huge pages, so no tensor's tail takes a 2 MiB page for a few bytes.

use std::sync::{Arc, Mutex};

use super::err;
use crate::error::Result;

/// Where the CPU backend keeps the weights it loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMemory {
    /// Read into private memory in transparent huge pages: the whole model resident, decode's weight reads
    /// through 2 MiB pages. The default where the kernel has transparent huge pages (Linux, not `never`).
    HugePages,
    /// Borrowed from the checkpoint file's mapping: nothing copied, pages read in when first used and
    /// droppable by the OS under memory pressure, 4 KiB pages. The default elsewhere.
    Mapped,
}

impl WeightMemory {
    /// [`WeightMemory::HugePages`] where the kernel gives them to memory that asks (`enabled` is `always`
    /// or `madvise`), else [`WeightMemory::Mapped`].
    pub fn detect() -> Self {
        if cfg!(target_os = "linux") && thp_enabled() {
            WeightMemory::HugePages
        } else {
            WeightMemory::Mapped
        }
    }
}

fn thp_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

/// A huge page.
const HUGE: usize = 2 << 20;
/// The mapping small weights share.
const CHUNK: usize = 64 << 20;
/// Weights of at least this many bytes get a mapping of their own.
const OWN: usize = CHUNK / 4;
/// Where each weight starts in its mapping (a cache line).
const ALIGN: usize = 64;

/// One anonymous mapping starting on a huge page, whose bytes are handed out once each as disjoint ranges.
struct Region {
    #[cfg(target_os = "linux")]
    _map: memmap2::MmapMut,
    /// The first byte on a huge-page boundary, and the bytes usable from there.
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned (freed when the last `Slice` of it drops); its ranges are written only through
// the one `&mut` that `Arena::alloc` hands out before the range is shared, and read only afterwards.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// A mapping of at least `len` bytes from a huge-page boundary, advised for huge pages over its first
    /// `advise` bytes (rounded down to whole pages).
    #[cfg(target_os = "linux")]
    fn new(len: usize, advise: usize) -> Result<Region> {
        let mut map = memmap2::MmapMut::map_anon(len + HUGE)
            .map_err(|e| err(format!("cannot map {} for weights: {e}", crate::limits::fmt_bytes(len as u64))))?;
        let off = (HUGE - map.as_ptr() as usize % HUGE) % HUGE;
        let whole = advise.min(len) / HUGE * HUGE;
        if whole > 0 {
            // Advice only: where the kernel has no huge page free the pages are small ones, still correct.
            let _ = map.advise_range(memmap2::Advice::HugePage, off, whole);
        }
        // SAFETY: off < HUGE, so off..off + len lies in the mapping of len + HUGE bytes.
        let base = unsafe { map.as_mut_ptr().add(off) };
        Ok(Region { _map: map, base, len })
    }

    #[cfg(not(target_os = "linux"))]
    fn new(_len: usize, _advise: usize) -> Result<Region> {
        Err(err("weights in huge pages need Linux's transparent huge pages"))
    }
}

/// A weight's bytes in an [`Arena`] mapping.
pub(crate) struct Slice {
    region: Arc<Region>,
    start: usize,
    len: usize,
}

impl Slice {
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: start..start + len is in the region (Arena::alloc), written before this Slice existed.
        unsafe { std::slice::from_raw_parts(self.region.base.add(self.start), self.len) }
    }
}

/// Hands out huge-page memory for weights: a chunk shared by small weights, a mapping each for large ones.
#[derive(Default)]
pub(crate) struct Arena {
    /// The chunk small weights go into now, and its bytes used.
    chunk: Mutex<Option<(Arc<Region>, usize)>>,
}

impl Arena {
    /// `len` bytes (zero at first), which `fill` writes before anything else can see them.
    pub(crate) fn alloc(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), String>,
    ) -> Result<Slice> {
        let (region, start) = if len >= OWN {
            (Arc::new(Region::new(len, len)?), 0)
        } else {
            let mut g = self.chunk.lock().map_err(|_| err("poisoned weight arena"))?;
            let fits = g.as_ref().is_some_and(|(r, used)| used.next_multiple_of(ALIGN) + len <= r.len);
            if !fits {
                *g = Some((Arc::new(Region::new(CHUNK, CHUNK)?), 0));
            }
            let (r, used) = g.as_mut().expect("a chunk was just made");
            let start = used.next_multiple_of(ALIGN);
            *used = start + len;
            (r.clone(), start)
        };
        // SAFETY: start..start + len is in the region and handed out only here, once: no other reference to
        // these bytes exists until the Slice returned below.
        let dst = unsafe { std::slice::from_raw_parts_mut(region.base.add(start), len) };
        fill(dst).map_err(err)?;
        Ok(Slice { region, start, len })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn slices_are_disjoint_aligned_and_keep_their_bytes() {
        let arena = Arena::default();
        let sizes = [3usize, 4096, 1 << 20, OWN, 0, 5, CHUNK - 100, 17];
        let slices: Vec<Slice> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                arena
                    .alloc(n, |d| {
                        d.iter_mut().enumerate().for_each(|(j, b)| *b = (i * 31 + j) as u8);
                        Ok(())
                    })
                    .unwrap()
            })
            .collect();
        for (i, (s, &n)) in slices.iter().zip(&sizes).enumerate() {
            assert_eq!(s.bytes().len(), n);
            assert_eq!(s.bytes().as_ptr() as usize % ALIGN, 0);
            assert!(s.bytes().iter().enumerate().all(|(j, &b)| b == (i * 31 + j) as u8), "slice {i} was overwritten");
        }
        // A large one starts on a huge page.
        assert_eq!(slices[3].bytes().as_ptr() as usize % HUGE, 0);
        assert!(slices[4].bytes().is_empty(), "an empty weight stays empty");
        // A fill's error is the alloc's.
        assert!(arena.alloc(10, |_| Err("short read".into())).is_err());
    }
}
