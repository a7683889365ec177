//! NVRTC: each op family's .cu source, with common.cuh in front, compiled to a CUBIN for the device's own
//! architecture (not PTX, which a driver older than the NVRTC could refuse).

use std::ffi::{c_char, c_int, CString};
use std::ptr::null_mut;

use herd_core::error::Result;

use crate::device::err;
use crate::libs::{nvrtc, nvrtc_result, NvrtcProgram};

/// The shared prelude and one source per op family, named as the CPU ops and the WGSL shaders.
pub(crate) const COMMON: &str = include_str!("../common.cuh");
pub const FAMILIES: [(&str, &str); 8] = [
    ("elementwise", include_str!("../elementwise.cu")),
    ("rms_norm", include_str!("../rms_norm.cu")),
    ("layer_norm", include_str!("../layer_norm.cu")),
    ("rope", include_str!("../rope.cu")),
    ("matmul", include_str!("../matmul.cu")),
    // One family in two files: the KV formats, prefill and store, then decode.
    ("attention", concat!(include_str!("../attention.cu"), include_str!("../attention_decode.cu"))),
    ("moe", include_str!("../moe.cu")),
    ("sample", include_str!("../sample.cu")),
];

/// Whether the NVRTC library can be loaded (see `libs` for where it is looked for).
pub fn nvrtc_present() -> bool {
    nvrtc().is_ok()
}

/// Compiles op family `name` with NVRTC to a CUBIN for compute capability `arch` (e.g. (9, 0)).
pub fn compile(name: &str, arch: (i32, i32)) -> Result<Vec<u8>> {
    let lib = nvrtc().map_err(|e| err(e.to_string()))?;
    let src = FAMILIES.iter().find(|f| f.0 == name).ok_or_else(|| err(format!("no kernel family {name}")))?.1;
    let full =
        CString::new(format!("{COMMON}\n#line 1 \"{name}.cu\"\n{src}")).map_err(|_| err("NUL in kernel source"))?;
    let fname = CString::new(format!("{name}.cu")).map_err(|_| err("bad name"))?;
    let opts = [format!("--gpu-architecture=sm_{}{}", arch.0, arch.1), "--std=c++17".into(), "-lineinfo".into()];
    let opts: Vec<CString> =
        opts.into_iter().map(|o| CString::new(o).map_err(|_| err("NUL in an option"))).collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: NvrtcProgram = null_mut();
    // SAFETY: NUL-terminated source and name that outlive the call; no headers.
    let r = unsafe {
        (lib.create_program)(&mut prog, full.as_ptr(), fname.as_ptr(), 0, std::ptr::null(), std::ptr::null())
    };
    if r != 0 {
        return Err(err(format!("nvrtcCreateProgram: {}", nvrtc_result(r))));
    }
    // SAFETY: `prog` is a live program; it is destroyed once, below, whatever the outcome. The options are
    // NUL-terminated strings alive during the call; each out-buffer is as large as NVRTC said.
    unsafe {
        let r = (lib.compile_program)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
        let out = if r == 0 {
            let mut size = 0usize;
            let mut r2 = (lib.get_cubin_size)(prog, &mut size);
            let mut bin = vec![0u8; size];
            if r2 == 0 {
                r2 = (lib.get_cubin)(prog, bin.as_mut_ptr() as *mut c_char);
            }
            if r2 == 0 {
                Ok(bin)
            } else {
                Err(err(format!("{name}.cu: no CUBIN for sm_{}{} ({})", arch.0, arch.1, nvrtc_result(r2))))
            }
        } else {
            let mut size = 0usize;
            let mut log = Vec::new();
            if (lib.get_program_log_size)(prog, &mut size) == 0 && size > 0 {
                log = vec![0u8; size];
                if (lib.get_program_log)(prog, log.as_mut_ptr() as *mut c_char) != 0 {
                    log.clear();
                }
            }
            let log: Vec<u8> = log.into_iter().take_while(|&c| c != 0).collect();
            Err(err(format!(
                "{name}.cu failed to compile for sm_{}{} ({}):\n{}",
                arch.0,
                arch.1,
                nvrtc_result(r),
                String::from_utf8_lossy(&log)
            )))
        };
        let _ = (lib.destroy_program)(&mut prog);
        out
    }
}
