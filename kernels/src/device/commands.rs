//! Submitting a step's command list: its metadata first, then the commands, issued one by one or captured
//! once as a CUDA graph and replayed when the same list comes again (see the parent module).

use std::ffi::c_void;

use cudarc::driver::{result as drv, sys};
use herd_core::error::Result;

use super::{cu, err, Cmd, Dev, Engine, Graph, GraphExec, State, MAX_GRAPHS, MIN_GRAPH_CMDS};
use crate::kernel::{DevPtr, FieldInfo, FieldKind};

impl Dev {
    pub(super) fn destroy(&self, g: Graph) {
        if let GraphExec::Cuda(exec) = g.exec {
            // SAFETY: the driver defers destruction past launches still pending.
            unsafe {
                let _ = drv::graph::exec_destroy(exec);
            }
        }
    }

    /// Submits the recorded step: its metadata, then its commands (replayed from a graph when this exact
    /// list ran before).
    pub(super) fn flush(&self, st: &mut State) -> Result<()> {
        if st.cmds.is_empty() {
            st.meta.clear();
            return Ok(());
        }
        self.upload_meta(st)?;
        st.meta.clear();
        let meta_dev = st.meta_dev;
        let cmds = std::mem::take(&mut st.cmds);
        st.stats.steps += 1;
        st.tick += 1;
        let tick = st.tick;
        if let Some(g) = st.graphs.iter_mut().find(|g| g.meta_dev == meta_dev && g.key == cmds) {
            g.used = tick;
            st.stats.replayed += 1;
            match g.exec {
                // SAFETY: an instantiated graph whose buffers are alive (the same list was just recorded).
                GraphExec::Cuda(exec) => cu("cuGraphLaunch", unsafe { drv::graph::launch(exec, self.stream()?) })?,
                GraphExec::Emu(ref ops) => match &self.engine {
                    Engine::Emu(e) => e.graph_launch(ops)?,
                    Engine::Cuda(_) => return Err(err("an emulator graph on a GPU")),
                },
            }
            st.last = cmds;
            return Ok(());
        }
        let capturable = st.graphs_on
            && !self.sync_each
            && cmds.len() >= MIN_GRAPH_CMDS
            && !cmds.iter().any(|c| matches!(c, Cmd::Gemm(_)))
            && st.last == cmds;
        if capturable {
            let exec = match &self.engine {
                Engine::Cuda(_) => {
                    let exec = self.capture(&cmds, meta_dev)?;
                    // SAFETY: a freshly instantiated graph.
                    cu("cuGraphLaunch", unsafe { drv::graph::launch(exec, self.stream()?) })?;
                    GraphExec::Cuda(exec)
                }
                Engine::Emu(e) => {
                    e.begin_capture()?;
                    let issued = self.issue_all(&cmds, meta_dev);
                    let ops = e.end_capture();
                    issued?;
                    let ops = ops?;
                    e.graph_launch(&ops)?;
                    GraphExec::Emu(ops)
                }
            };
            if st.graphs.len() >= MAX_GRAPHS {
                if let Some(i) = st.graphs.iter().enumerate().min_by_key(|(_, g)| g.used).map(|(i, _)| i) {
                    let g = st.graphs.swap_remove(i);
                    self.destroy(g);
                }
            }
            st.graphs.push(Graph { key: cmds.clone(), meta_dev, exec, used: tick });
            st.stats.captured += 1;
        } else {
            self.issue_all(&cmds, meta_dev)?;
        }
        st.last = cmds;
        Ok(())
    }

    pub(super) fn stream(&self) -> Result<sys::CUstream> {
        match &self.engine {
            Engine::Cuda(c) => Ok(c.stream),
            Engine::Emu(_) => Err(err("the emulator has no stream")),
        }
    }

    fn issue_all(&self, cmds: &[Cmd], meta_dev: u64) -> Result<()> {
        if !self.sync_each {
            return cmds.iter().try_for_each(|c| self.issue(c, meta_dev));
        }
        for (i, c) in cmds.iter().enumerate() {
            self.issue(c, meta_dev)
                .and_then(|()| self.stream_sync())
                .map_err(|e| err(format!("command {i} of {} ({}): {e}", cmds.len(), self.describe(c))))?;
        }
        Ok(())
    }

    /// A command in words, for HERD_CUDA_SYNC=1's errors.
    fn describe(&self, c: &Cmd) -> String {
        match c {
            Cmd::Launch { f, grid, block, smem, .. } => {
                let name = match &self.engine {
                    Engine::Emu(e) => e.name(*f),
                    Engine::Cuda(_) => self
                        .funcs
                        .lock()
                        .ok()
                        .and_then(|m| m.iter().find(|(_, v)| **v == *f).map(|(k, _)| k.clone()))
                        .unwrap_or_default(),
                };
                format!("kernel {name}, grid {grid:?}, block {block}, {smem} bytes of shared memory")
            }
            Cmd::Copy { bytes, .. } => format!("device copy of {bytes} bytes"),
            Cmd::MetaCopy { bytes, .. } => format!("metadata copy of {bytes} bytes"),
            Cmd::Gemm(g) => format!("cuBLAS GEMM {}x{}x{}", g.m, g.n, g.k),
        }
    }

    /// Waits for the stream.
    pub(super) fn stream_sync(&self) -> Result<()> {
        match &self.engine {
            Engine::Emu(e) => e.synchronize(),
            // SAFETY: our own stream.
            Engine::Cuda(c) => cu("cuStreamSynchronize", unsafe { drv::stream::synchronize(c.stream) }),
        }
    }

    fn capture(&self, cmds: &[Cmd], meta_dev: u64) -> Result<sys::CUgraphExec> {
        let stream = self.stream()?;
        // SAFETY: capture on our stream, ended on every path.
        unsafe {
            cu(
                "cuStreamBeginCapture",
                drv::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            )?;
            let issued = self.issue_all(cmds, meta_dev);
            let graph = drv::stream::end_capture(stream);
            issued?;
            let graph = cu("cuStreamEndCapture", graph)?;
            let exec = drv::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0));
            let _ = drv::graph::destroy(graph);
            cu("cuGraphInstantiate", exec)
        }
    }

    fn issue(&self, c: &Cmd, meta_dev: u64) -> Result<()> {
        // The parameter struct with its metadata pointers made addresses.
        let resolve = |params: &[u64], fields: &[FieldInfo]| {
            let mut words = params.to_vec();
            for fl in fields.iter().filter(|fl| fl.kind == FieldKind::Ptr) {
                words[fl.offset / 8] = DevPtr::resolve(words[fl.offset / 8], meta_dev);
            }
            words
        };
        match (&self.engine, c) {
            (Engine::Emu(e), Cmd::Launch { f, grid, block, smem, params, fields }) => {
                // The emulator's trampoline reads the struct from where its first argument slot points.
                e.launch(*f, *grid, *block, *smem, &resolve(params, fields))
            }
            (Engine::Emu(e), Cmd::Copy { dst, src, bytes }) => e.dtod_async(*dst, *src, *bytes),
            (Engine::Emu(e), Cmd::MetaCopy { dst, off, bytes }) => e.dtod_async(*dst, meta_dev + *off as u64, *bytes),
            (Engine::Emu(e), Cmd::Gemm(g)) => e.gemm_async(g),
            (Engine::Cuda(cd), Cmd::Launch { f, grid, block, smem, params, fields }) => {
                let mut words = resolve(params, fields);
                let mut args = [words.as_mut_ptr() as *mut c_void];
                // SAFETY: every kernel takes one argument, its parameter struct, whose bytes `words` holds
                // (8-byte aligned, the struct's size; the layout test checks the Rust and .cu twins agree).
                cu("cuLaunchKernel", unsafe {
                    drv::launch_kernel(f.0 as sys::CUfunction, *grid, (*block, 1, 1), *smem, cd.stream, &mut args)
                })
            }
            (Engine::Cuda(cd), Cmd::Copy { dst, src, bytes }) => {
                // SAFETY: both ranges lie in live allocations (checked by the op).
                cu("cuMemcpyDtoDAsync", unsafe { drv::memcpy_dtod_async(*dst, *src, *bytes, cd.stream) })
            }
            (Engine::Cuda(cd), Cmd::MetaCopy { dst, off, bytes }) => {
                // SAFETY: as above; the metadata was copied to the arena ahead of the list.
                cu("cuMemcpyDtoDAsync", unsafe {
                    drv::memcpy_dtod_async(*dst, meta_dev + *off as u64, *bytes, cd.stream)
                })
            }
            (Engine::Cuda(cd), Cmd::Gemm(g)) => crate::blas::gemm(cd.blas, g),
        }
    }
}
