//! Running what the stream queued: copies and memsets checked against the live allocations, cuBLAS's GEMM
//! in f32 on the host, and kernels through their family's library (the device's own copy of it), one launch at a
//! time.

use std::ffi::{c_void, CStr};

use herd_core::error::Result;

use super::*;

impl Emu {
    /// Device or pinned memory that `[p, p + n)` must lie in.
    pub(super) fn check_range(&self, what: &str, p: u64, n: usize) -> Result<()> {
        if n == 0 || inside(&*self.allocs.lock().map_err(|_| poisoned())?, p, n) {
            return Ok(());
        }
        if inside(&*PINNED.lock().map_err(|_| poisoned())?, p, n) {
            return Ok(());
        }
        Err(err(format!(
            "{what}: CUDA_ERROR_ILLEGAL_ADDRESS ({n} bytes at {p:#x} are not in a live device allocation or pinned host \
             memory; freed before the command ran?)"
        )))
    }

    pub(super) fn execute(&self, op: &Op) -> Result<()> {
        match op {
            Op::Launch { f, grid, block, smem, args } => self.run_kernel(*f, *grid, *block, *smem, args),
            Op::Copy { dst, src, bytes } => {
                self.check_range("copy source", *src, *bytes)?;
                self.check_range("copy destination", *dst, *bytes)?;
                // SAFETY: both ranges lie in live allocations (checked above).
                unsafe { std::ptr::copy(*src as *const u8, *dst as *mut u8, *bytes) };
                Ok(())
            }
            Op::Upload { dst, data } => {
                self.check_range("copy destination", *dst, data.len())?;
                // SAFETY: as above.
                unsafe { std::ptr::copy(data.as_ptr(), *dst as *mut u8, data.len()) };
                Ok(())
            }
            Op::Memset { dst, bytes, value } => {
                self.check_range("memset", *dst, *bytes)?;
                // SAFETY: as above.
                unsafe { std::ptr::write_bytes(*dst as *mut u8, *value, *bytes) };
                Ok(())
            }
            Op::Gemm(g) => {
                let e = if g.bf16 { 2 } else { 4 };
                self.check_range("gemm a", g.a, g.n * g.k * e)?;
                self.check_range("gemm b", g.b, g.m * g.k * e)?;
                self.check_range("gemm c", g.c, g.m * g.n * 4)?;
                // SAFETY: the ranges were checked above.
                unsafe { gemm(g) };
                Ok(())
            }
        }
    }

    fn run_kernel(&self, f: Func, grid: (u32, u32, u32), block: u32, smem: u32, args: &[u64]) -> Result<()> {
        let k = self.funcs.lock().map_err(|_| poisoned())?.get(f.0).cloned().ok_or_else(|| err("unknown kernel"))?;
        let mut vals = args.to_vec();
        let mut ptrs: Vec<*mut c_void> = vals.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        // SAFETY: the symbols have the signatures written by `build`; the argument slots outlive the call.
        let (rc, msg) = unsafe {
            let launch: libloading::Symbol<LaunchFn> =
                k.lib.get(b"herd_emu_launch\0").map_err(|e| err(format!("emulator: {e}")))?;
            let message: libloading::Symbol<MessageFn> =
                k.lib.get(b"herd_emu_message\0").map_err(|e| err(format!("emulator: {e}")))?;
            let rc = launch(k.name.as_ptr(), grid.0, grid.1, grid.2, block, smem as u64, ptrs.as_mut_ptr());
            (rc, CStr::from_ptr(message()).to_string_lossy().into_owned())
        };
        let name = k.name.to_string_lossy();
        match rc {
            0 => Ok(()),
            1 => Err(err(format!("emulator: {name}: block of {block} threads"))),
            2 => Err(err(format!("emulator: {name}: a barrier that the live threads never all reach"))),
            5 => Err(err(format!("emulator: {name} (grid {grid:?}, block {block}): {msg}"))),
            _ => Err(err(format!("emulator: no kernel {name}"))),
        }
    }
}
