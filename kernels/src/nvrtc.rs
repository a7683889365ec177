//! NVRTC: each op family's .cu source, with common.cuh in front, compiled to a CUBIN for the device's own
//! architecture (not PTX, which a driver older than the NVRTC could refuse).

use std::ffi::CString;

use cudarc::nvrtc::{result as nvrtc, sys as nsys};
use herd_core::error::Result;

use crate::device::{cu, err};

/// The shared prelude and one source per op family, named as the CPU ops and the WGSL shaders.
pub(crate) const COMMON: &str = include_str!("../common.cuh");
pub const FAMILIES: [(&str, &str); 8] = [
    ("elementwise", include_str!("../elementwise.cu")),
    ("rms_norm", include_str!("../rms_norm.cu")),
    ("layer_norm", include_str!("../layer_norm.cu")),
    ("rope", include_str!("../rope.cu")),
    ("matmul", include_str!("../matmul.cu")),
    ("attention", include_str!("../attention.cu")),
    ("moe", include_str!("../moe.cu")),
    ("sample", include_str!("../sample.cu")),
];

/// Whether the NVRTC library can be loaded (it is found through LD_LIBRARY_PATH).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes for the shared library; nothing is called.
    unsafe { nsys::is_culib_present() }
}

/// Compiles op family `name` with NVRTC to a CUBIN for compute capability `arch` (e.g. (9, 0)).
pub fn compile(name: &str, arch: (i32, i32)) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(err(
            "the NVRTC library (libnvrtc.so) was not found: add the CUDA toolkit's lib64 to LD_LIBRARY_PATH",
        ));
    }
    let src = FAMILIES.iter().find(|f| f.0 == name).ok_or_else(|| err(format!("no kernel family {name}")))?.1;
    let full =
        CString::new(format!("{COMMON}\n#line 1 \"{name}.cu\"\n{src}")).map_err(|_| err("NUL in kernel source"))?;
    let fname = CString::new(format!("{name}.cu")).map_err(|_| err("bad name"))?;
    let prog = cu("nvrtcCreateProgram", nvrtc::create_program(&full, Some(&fname)))?;
    let opts = [format!("--gpu-architecture=sm_{}{}", arch.0, arch.1), "--std=c++17".into(), "-lineinfo".into()];
    // SAFETY: `prog` is a live program; it is destroyed once, below, whatever the outcome.
    unsafe {
        let compiled = nvrtc::compile_program(prog, &opts);
        let out = match compiled {
            Ok(()) => {
                let mut size = 0usize;
                let r = nsys::nvrtcGetCUBINSize(prog, &mut size);
                let mut bin = vec![0u8; size];
                let r2 = if r == nsys::nvrtcResult::NVRTC_SUCCESS {
                    nsys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut _)
                } else {
                    r
                };
                if r2 == nsys::nvrtcResult::NVRTC_SUCCESS {
                    Ok(bin)
                } else {
                    Err(err(format!("{name}.cu: no CUBIN for sm_{}{} ({r2:?})", arch.0, arch.1)))
                }
            }
            Err(e) => {
                let log = nvrtc::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                Err(err(format!(
                    "{name}.cu failed to compile for sm_{}{} ({e:?}):\n{}",
                    arch.0,
                    arch.1,
                    String::from_utf8_lossy(&log)
                )))
            }
        };
        let _ = nvrtc::destroy_program(prog);
        out
    }
}
