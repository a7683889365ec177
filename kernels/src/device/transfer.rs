//! Host-to-device transfers: pinned staging buffers, uploads in stream order, the step's metadata, and a
//! probe of the link's bandwidth.
//!
//! An upload goes through two pinned buffers of [`STAGE`] bytes: while the DMA engine copies one to the
//! device, the host fills the other. Filling is a host memcpy from pageable memory, which one thread does at
//! a fraction of the link's rate, so it is split over threads ([`par_copy`]); the transfer then runs at the
//! rate of the slower of the two, which with enough threads is the link.

use super::*;

pub(super) struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    pub(super) fn new(len: usize) -> Result<Pinned> {
        // SAFETY: page-locked host allocation; freed in Drop.
        let p = cu("cuMemAllocHost", unsafe { drv::malloc_host(len.max(1), 0) })?;
        Ok(Pinned { ptr: p as *mut u8, len })
    }
    fn slice(&mut self, n: usize) -> &mut [u8] {
        // SAFETY: `ptr` holds `len` bytes and n <= len (checked by the callers' capacity logic).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n.min(self.len)) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host and freed once.
        unsafe {
            let _ = drv::free_host(self.ptr as *mut c_void);
        }
    }
}

/// Host-to-device staging: two buffers of this size, so copying into one overlaps the transfer of the other.
const STAGE: usize = 16 << 20;

/// Pinned host staging: two upload buffers, each guarded by an event, and the step's metadata, guarded by
/// another.
pub(super) struct Staging {
    pub(super) bufs: Vec<Pinned>,
    pub(super) events: [sys::CUevent; 2],
    pub(super) meta: Option<Pinned>,
    pub(super) meta_event: sys::CUevent,
}

impl Dev {
    /// Copies host bytes to `dst` in stream order (through pinned staging buffers on a GPU).
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        let _st = self.lock()?;
        match &self.engine {
            Engine::Emu(e) => {
                // SAFETY: `dst` holds src.len() bytes (allocated by the caller for it).
                unsafe { e.copy(dst, src.as_ptr() as u64, src.len()) };
                Ok(())
            }
            Engine::Cuda(c) => {
                let mut stage = c.stage.lock().map_err(|_| err("staging poisoned"))?;
                let Staging { bufs, events, .. } = &mut *stage;
                while bufs.len() < 2 {
                    bufs.push(Pinned::new(STAGE)?);
                }
                for (i, chunk) in src.chunks(STAGE).enumerate() {
                    let b = i % 2;
                    // SAFETY: waiting on our own event, then reusing the staging buffer it guarded.
                    cu("cuEventSynchronize", unsafe { drv::event::synchronize(events[b]) })?;
                    let host = bufs[b].slice(chunk.len());
                    par_copy(host, chunk);
                    let off = (i * STAGE) as u64;
                    // SAFETY: pinned source of chunk.len() bytes; the destination holds src.len() bytes.
                    unsafe {
                        cu("cuMemcpyHtoDAsync", drv::memcpy_htod_async(dst + off, &*host, c.stream))?;
                        cu("cuEventRecord", drv::event::record(events[b], c.stream))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// [`Dev::upload`] after the work recorded so far, which is submitted first (not waited for).
    pub fn upload_in_order(&self, dst: u64, src: &[u8]) -> Result<()> {
        let _op = self.op();
        self.flush(&mut *self.lock()?)?;
        self.upload(dst, src)
    }

    /// Copies the step's metadata to the device arena, in stream order.
    pub(super) fn upload_meta(&self, st: &mut State) -> Result<()> {
        let bytes = st.meta.len() * 4;
        if bytes > st.meta_cap {
            let cap = bytes.next_power_of_two().max(64 << 10);
            let p = self.malloc(cap, "the metadata arena")?;
            if st.meta_dev != 0 {
                self.free_later(st.meta_dev);
            }
            // Graphs captured against the old arena address are stale.
            for g in std::mem::take(&mut st.graphs) {
                self.destroy(g);
            }
            st.meta_dev = p;
            st.meta_cap = cap;
            if let Engine::Cuda(c) = &self.engine {
                c.stage.lock().map_err(|_| err("staging poisoned"))?.meta = Some(Pinned::new(cap)?);
            }
        }
        if bytes == 0 {
            return Ok(());
        }
        match &self.engine {
            Engine::Emu(e) => {
                // SAFETY: the arena holds meta_cap >= bytes.
                unsafe { e.copy(st.meta_dev, st.meta.as_ptr() as u64, bytes) };
            }
            Engine::Cuda(c) => {
                let mut stage = c.stage.lock().map_err(|_| err("staging poisoned"))?;
                let Staging { meta: host, meta_event: event, .. } = &mut *stage;
                // SAFETY: the previous copy out of the pinned buffer is waited for before it is overwritten.
                cu("cuEventSynchronize", unsafe { drv::event::synchronize(*event) })?;
                let host = host.as_mut().ok_or_else(|| err("metadata buffer missing"))?.slice(bytes);
                host.copy_from_slice(bytemuck::cast_slice(&st.meta));
                // SAFETY: pinned source of `bytes`, device arena of meta_cap >= bytes.
                unsafe {
                    cu("cuMemcpyHtoDAsync", drv::memcpy_htod_async(st.meta_dev, &*host, c.stream))?;
                    cu("cuEventRecord", drv::event::record(*event, c.stream))?;
                }
            }
        }
        Ok(())
    }

    /// Host-to-device bandwidth from pinned memory, the link's best case (what `bandwidthTest` reports):
    /// the best of three timed copies of `bytes`. None on the emulator.
    pub fn h2d_peak_gbps(&self, bytes: usize) -> Result<Option<f64>> {
        let Engine::Cuda(c) = &self.engine else { return Ok(None) };
        let _op = self.op();
        self.flush(&mut *self.lock()?)?;
        self.bind()?;
        let mut host = Pinned::new(bytes)?;
        let src = host.slice(bytes);
        src.fill(1);
        let dst = self.alloc_raw(bytes)?;
        let mut best = f64::INFINITY;
        let run = (|| -> Result<()> {
            for _ in 0..3 {
                // SAFETY: our stream; the pinned source and the device allocation both hold `bytes`.
                unsafe {
                    cu("cuStreamSynchronize", drv::stream::synchronize(c.stream))?;
                    let t0 = std::time::Instant::now();
                    cu("cuMemcpyHtoDAsync", drv::memcpy_htod_async(dst, &*src, c.stream))?;
                    cu("cuStreamSynchronize", drv::stream::synchronize(c.stream))?;
                    best = best.min(t0.elapsed().as_secs_f64());
                }
            }
            Ok(())
        })();
        self.free_later(dst);
        run?;
        Ok(Some(bytes as f64 / best / 1e9))
    }
}

/// Below this many bytes a copy stays on one thread (starting threads costs more than it saves).
const PAR_MIN: usize = 4 << 20;
/// Each thread copies at least this much.
const PAR_PIECE: usize = 1 << 20;

/// `dst.copy_from_slice(src)`, split over up to [`copy_threads`] threads for large copies.
pub(crate) fn par_copy(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    let threads = copy_threads().min(n / PAR_PIECE).max(1);
    if n < PAR_MIN || threads == 1 {
        dst.copy_from_slice(src);
        return;
    }
    let piece = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (d, c) in dst.chunks_mut(piece).zip(src.chunks(piece)) {
            s.spawn(move || d.copy_from_slice(c));
        }
    });
}

/// Threads for filling staging buffers: `HERD_COPY_THREADS`, else half the cores (at most 8; memory
/// bandwidth, not cores, is the limit past that).
fn copy_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("HERD_COPY_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).div_ceil(2).min(8))
    })
}

#[cfg(test)]
mod tests {
    use super::par_copy;

    #[test]
    fn par_copy_copies_every_byte_at_every_size() {
        for n in [0, 1, 4095, (4 << 20) - 1, 4 << 20, (9 << 20) + 7] {
            let src: Vec<u8> = (0..n).map(|i| (i * 31 + i / 251) as u8).collect();
            let mut dst = vec![0xAAu8; n];
            par_copy(&mut dst, &src);
            assert!(dst == src, "{n} bytes");
        }
    }
}
