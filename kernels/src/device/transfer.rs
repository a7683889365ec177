//! Host-to-device transfers: pinned staging buffers, uploads in stream order, the step's metadata, and a
//! probe of the link's bandwidth.
//!
//! An upload goes through two pinned buffers of [`STAGE`] bytes: while the DMA engine copies one to the
//! device, the host fills the other. Filling is a host memcpy from pageable memory, which one thread does at
//! a fraction of the link's rate, so it is split over threads ([`par_copy`]); the transfer then runs at the
//! rate of the slower of the two, which with enough threads is the link.

use super::*;

/// Page-locked host memory (cuMemAllocHost), on a GPU or the emulator.
pub(super) struct Pinned {
    ptr: *mut u8,
    len: usize,
    emu: bool,
}

impl Pinned {
    fn slice(&mut self, n: usize) -> &mut [u8] {
        // SAFETY: `ptr` holds `len` bytes and n <= len (checked by the callers' capacity logic).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n.min(self.len)) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.emu {
            if let Err(e) = crate::emu::Emu::free_host(self.ptr) {
                eprintln!("herd: cuda: {e}");
            }
            return;
        }
        // SAFETY: allocated by malloc_host and freed once.
        unsafe {
            let _ = drv::free_host(self.ptr as *mut c_void);
        }
    }
}

/// Host-to-device staging: two buffers of this size, so copying into one overlaps the transfer of the other.
const STAGE: usize = 16 << 20;

/// Pinned host staging: two upload buffers, each guarded by an event, and the step's metadata, guarded by
/// another. Events are the driver's handles (CUevent on a GPU, an index on the emulator).
pub(super) struct Staging {
    pub(super) bufs: Vec<Pinned>,
    pub(super) events: [u64; 2],
    pub(super) meta: Option<Pinned>,
    pub(super) meta_event: u64,
}

impl Dev {
    /// `len` bytes of pinned host memory; the caller has bound the context.
    fn pinned(&self, len: usize) -> Result<Pinned> {
        match &self.engine {
            Engine::Emu(e) => Ok(Pinned { ptr: e.malloc_host(len)?, len, emu: true }),
            Engine::Cuda(_) => {
                // SAFETY: page-locked host allocation; freed in Drop.
                let p = cu("cuMemAllocHost", unsafe { drv::malloc_host(len.max(1), 0) })?;
                Ok(Pinned { ptr: p as *mut u8, len, emu: false })
            }
        }
    }

    /// Records `e` on the stream.
    fn event_record(&self, e: u64) -> Result<()> {
        match &self.engine {
            Engine::Emu(em) => em.event_record(e),
            // SAFETY: our own event and stream.
            Engine::Cuda(c) => cu("cuEventRecord", unsafe { drv::event::record(e as sys::CUevent, c.stream) }),
        }
    }

    /// Waits until the work before `e`'s last record has run.
    fn event_sync(&self, e: u64) -> Result<()> {
        match &self.engine {
            Engine::Emu(em) => em.event_synchronize(e),
            // SAFETY: our own event.
            Engine::Cuda(_) => cu("cuEventSynchronize", unsafe { drv::event::synchronize(e as sys::CUevent) }),
        }
    }

    pub(super) fn event_destroy(&self, e: u64) {
        match &self.engine {
            Engine::Emu(em) => em.event_destroy(e),
            // SAFETY: our own event, destroyed once (the driver defers it past pending work).
            Engine::Cuda(_) => unsafe {
                let _ = drv::event::destroy(e as sys::CUevent);
            },
        }
    }

    /// Queues a copy of `src` (pinned memory, which must stay untouched until the copy has run) to `dst`.
    fn htod_async(&self, dst: u64, src: &[u8]) -> Result<()> {
        match &self.engine {
            Engine::Emu(e) => e.htod_async(dst, src),
            // SAFETY: the destination holds src.len() bytes (the callers' allocation); the source is pinned
            // and outlives the copy (guarded by an event).
            Engine::Cuda(c) => cu("cuMemcpyHtoDAsync", unsafe { drv::memcpy_htod_async(dst, src, c.stream) }),
        }
    }

    /// Copies host bytes to `dst` in stream order, through the pinned staging buffers.
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        let _st = self.lock()?;
        let mut stage = self.stage.lock().map_err(|_| err("staging poisoned"))?;
        while stage.bufs.len() < 2 {
            let b = self.pinned(STAGE)?;
            stage.bufs.push(b);
        }
        let events = stage.events;
        for (i, chunk) in src.chunks(STAGE).enumerate() {
            let b = i % 2;
            // The copy out of this buffer two chunks ago must have run before it is refilled.
            self.event_sync(events[b])?;
            let host = stage.bufs[b].slice(chunk.len());
            par_copy(host, chunk, self.copy_threads);
            self.htod_async(dst + (i * STAGE) as u64, host)?;
            self.event_record(events[b])?;
        }
        Ok(())
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
        let mut stage = self.stage.lock().map_err(|_| err("staging poisoned"))?;
        let event = stage.meta_event;
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
            // The last copy out of the old pinned buffer may still be queued: wait for it before freeing it.
            self.event_sync(event)?;
            stage.meta = Some(self.pinned(cap)?);
        }
        if bytes == 0 {
            return Ok(());
        }
        // The previous copy out of the pinned buffer is waited for before it is overwritten.
        self.event_sync(event)?;
        let host = stage.meta.as_mut().ok_or_else(|| err("metadata buffer missing"))?.slice(bytes);
        host.copy_from_slice(bytemuck::cast_slice(&st.meta));
        self.htod_async(st.meta_dev, host)?;
        self.event_record(event)
    }

    /// Host-to-device bandwidth from pinned memory, the link's best case (what `bandwidthTest` reports):
    /// the best of three timed copies of `bytes`, on a stream of its own (so nothing else queued or
    /// captured on the device's stream is waited for or disturbed). None on the emulator.
    pub fn h2d_peak_gbps(&self, bytes: usize) -> Result<Option<f64>> {
        let Engine::Cuda(_) = &self.engine else { return Ok(None) };
        let _op = self.op();
        self.flush(&mut *self.lock()?)?;
        self.bind()?;
        let mut host = self.pinned(bytes)?;
        let src = host.slice(bytes);
        src.fill(1);
        let dst = self.alloc_raw(bytes)?;
        let stream = cu("cuStreamCreate", drv::stream::create(drv::stream::StreamKind::NonBlocking))?;
        let mut best = f64::INFINITY;
        let run = (|| -> Result<()> {
            for _ in 0..3 {
                // SAFETY: our private stream; the pinned source and the device allocation both hold `bytes`.
                unsafe {
                    let t0 = std::time::Instant::now();
                    cu("cuMemcpyHtoDAsync", drv::memcpy_htod_async(dst, &*src, stream))?;
                    cu("cuStreamSynchronize", drv::stream::synchronize(stream))?;
                    best = best.min(t0.elapsed().as_secs_f64());
                }
            }
            Ok(())
        })();
        // SAFETY: the stream is idle (synchronised above, or never used past a failure that returned early
        // from a synchronous call); destroying it waits for nothing else.
        unsafe {
            let _ = drv::stream::synchronize(stream);
            let _ = drv::stream::destroy(stream);
        }
        self.free_later(dst);
        run?;
        Ok(Some(bytes as f64 / best / 1e9))
    }
}

/// Below this many bytes a copy stays on one thread (starting threads costs more than it saves).
const PAR_MIN: usize = 4 << 20;
/// Each thread copies at least this much.
const PAR_PIECE: usize = 1 << 20;

/// `dst.copy_from_slice(src)`, split over up to `threads` threads for large copies.
pub(crate) fn par_copy(dst: &mut [u8], src: &[u8], threads: usize) {
    let n = src.len();
    let threads = threads.min(n / PAR_PIECE).max(1);
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

#[cfg(test)]
mod tests {
    use super::par_copy;

    #[test]
    fn par_copy_copies_every_byte_at_every_size() {
        for n in [0, 1, 4095, (4 << 20) - 1, 4 << 20, (9 << 20) + 7] {
            let src: Vec<u8> = (0..n).map(|i| (i * 31 + i / 251) as u8).collect();
            let mut dst = vec![0xAAu8; n];
            par_copy(&mut dst, &src, 4);
            assert!(dst == src, "{n} bytes");
        }
    }
}
