//! The CUDA emulator's host side: each kernel family's .cu source, with emu.h in front, compiled by the
//! system C++ compiler into a shared library (cached under the temp directory by a hash of the sources),
//! and launched by name. Device memory is host memory; cuBLAS is a plain f32-accumulating GEMM. It exists
//! so that the CUDA backend — its host code, its command lists and graphs, and its kernels — runs the op
//! table and the golden fixtures on machines without a GPU (`CudaBackend::emulated`). It is a test
//! device, not a fast one.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use herd_core::error::Result;

use crate::device::{err, Func, Gemm};
use crate::nvrtc::{COMMON, FAMILIES};

const EMU_H: &str = include_str!("../emu.h");
/// Marks where the kernel family starts in the preprocessed source (kernels are looked for after it).
const MARK: &str = "namespace herd_emu_kernels_begin {}";

type LaunchFn = unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, u64, *mut *mut c_void) -> i32;

pub(crate) struct Emu {
    dir: PathBuf,
    libs: Mutex<HashMap<&'static str, Arc<libloading::Library>>>,
    funcs: Mutex<Vec<(Arc<libloading::Library>, CString)>>,
    allocs: Mutex<HashMap<u64, Layout>>,
}

/// One launch at a time in the process: the scheduler's state is global in each library.
static RUN: Mutex<()> = Mutex::new(());

/// The C++ compiler: $CXX, else c++.
fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Whether a C++ compiler is there to build the emulator.
pub fn available() -> bool {
    Command::new(cxx()).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The kernels defined in preprocessed source: (name, parameter types).
fn kernels(pre: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let body = pre.find(MARK).map_or(pre, |i| &pre[i..]);
    let mut rest = body;
    while let Some(i) = rest.find("extern \"C\"") {
        rest = &rest[i + 10..];
        let t = rest.trim_start();
        let Some(t) = t.strip_prefix("void") else { continue };
        let t = t.trim_start();
        let name: String = t.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let t = t[name.len()..].trim_start();
        let (Some(t), false) = (t.strip_prefix('('), name.is_empty()) else { continue };
        let Some(close) = t.find(')') else { continue };
        let params = t[..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let n = p.rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
                p[..p.len() - n.len()].trim().to_owned()
            })
            .collect();
        out.push((name, params));
    }
    out
}

fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let o = cmd.output().map_err(|e| err(format!("emulator: cannot run the C++ compiler {} ({e})", cxx())))?;
    if !o.status.success() {
        let log = String::from_utf8_lossy(&o.stderr);
        let head: String = log.lines().take(30).collect::<Vec<_>>().join("\n");
        return Err(err(format!("emulator: {what} failed:\n{head}")));
    }
    Ok(o.stdout)
}

/// Builds (or finds in the cache) the emulator library of one family.
fn build(dir: &Path, family: &str, src: &str) -> Result<PathBuf> {
    let lib = dir.join(format!("{family}.so"));
    if lib.exists() {
        return Ok(lib);
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("emulator cache {}: {e}", dir.display())))?;
    let unique = format!("{}.{}", std::process::id(), family);
    let front = format!("{EMU_H}\n{COMMON}\n{MARK}\n#line 1 \"{family}.cu\"\n{src}\n");
    let pre_path = dir.join(format!("{unique}.pre.cpp"));
    std::fs::write(&pre_path, &front).map_err(|e| err(format!("emulator: {e}")))?;
    let pre = run(Command::new(cxx()).args(["-std=c++20", "-E", "-P"]).arg(&pre_path), "preprocessing")?;
    let _ = std::fs::remove_file(&pre_path);
    let ks = kernels(&String::from_utf8_lossy(&pre));
    if ks.is_empty() {
        return Err(err(format!("emulator: no kernels found in {family}.cu")));
    }
    let mut full = front;
    for (name, params) in &ks {
        let args: Vec<String> = params.iter().enumerate().map(|(i, t)| format!("*({t}*)a[{i}]")).collect();
        full.push_str(&format!("static void emu_k_{name}(void** a) {{ {name}({}); }}\n", args.join(", ")));
    }
    full.push_str(
        "extern \"C\" __attribute__((visibility(\"default\"))) int herd_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, \
         unsigned long long smem, void** args) {\n",
    );
    for (name, _) in &ks {
        full.push_str(&format!(
            "    if (!strcmp(name, \"{name}\")) return emu::run_grid(emu_k_{name}, args, dim3{{gx, gy, gz}}, dim3{{bx, 1, 1}}, smem);\n"
        ));
    }
    full.push_str("    return 3;\n}\n");
    let cpp = dir.join(format!("{unique}.cpp"));
    std::fs::write(&cpp, full).map_err(|e| err(format!("emulator: {e}")))?;
    let tmp = dir.join(format!("{unique}.so"));
    run(
        Command::new(cxx())
            .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-w", "-o"])
            .arg(&tmp)
            .arg(&cpp),
        &format!("compiling {family}.cu as C++"),
    )?;
    let _ = std::fs::remove_file(&cpp);
    // Another process may have built it meanwhile: the rename is atomic either way.
    std::fs::rename(&tmp, &lib).map_err(|e| err(format!("emulator: {e}")))?;
    Ok(lib)
}

impl Emu {
    pub fn new() -> Result<Emu> {
        if !available() {
            return Err(err(format!("emulator: no C++ compiler ({}) found", cxx())));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (EMU_H, COMMON, FAMILIES).hash(&mut h);
        cxx().hash(&mut h);
        let dir = std::env::temp_dir().join(format!("herd-cuda-emu-{:016x}", h.finish()));
        Ok(Emu {
            dir,
            libs: Mutex::new(HashMap::new()),
            funcs: Mutex::new(Vec::new()),
            allocs: Mutex::new(HashMap::new()),
        })
    }

    pub fn func(&self, family: &'static str, name: &str) -> Result<Func> {
        let mut libs = self.libs.lock().map_err(|_| err("emulator poisoned"))?;
        let lib = match libs.get(family) {
            Some(l) => l.clone(),
            None => {
                let src = FAMILIES.iter().find(|f| f.0 == family).ok_or_else(|| err(format!("no family {family}")))?.1;
                let path = build(&self.dir, family, src)?;
                // SAFETY: a library built above from our own sources; its initialisers do nothing.
                let l = Arc::new(
                    unsafe { libloading::Library::new(&path) }
                        .map_err(|e| err(format!("emulator: loading {}: {e}", path.display())))?,
                );
                libs.insert(family, l.clone());
                l
            }
        };
        let mut funcs = self.funcs.lock().map_err(|_| err("emulator poisoned"))?;
        funcs.push((lib, CString::new(name).map_err(|_| err("bad kernel name"))?));
        Ok(Func(funcs.len() - 1))
    }

    pub fn launch(&self, f: Func, grid: (u32, u32, u32), block: u32, smem: u32, args: &mut [u64]) -> Result<()> {
        let (lib, name) = {
            let funcs = self.funcs.lock().map_err(|_| err("emulator poisoned"))?;
            funcs.get(f.0).cloned().ok_or_else(|| err("unknown kernel"))?
        };
        let mut ptrs: Vec<*mut c_void> = args.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        let _one = RUN.lock().map_err(|_| err("emulator poisoned"))?;
        // SAFETY: the symbol has the signature written by `build`; the argument slots outlive the call.
        let rc = unsafe {
            let launch: libloading::Symbol<LaunchFn> =
                lib.get(b"herd_emu_launch\0").map_err(|e| err(format!("emulator: {e}")))?;
            launch(name.as_ptr(), grid.0, grid.1, grid.2, block, smem as u64, ptrs.as_mut_ptr())
        };
        match rc {
            0 => Ok(()),
            1 => Err(err(format!("emulator: {name:?}: block of {block} threads"))),
            2 => Err(err(format!("emulator: {name:?}: a barrier that the live threads never all reach"))),
            _ => Err(err(format!("emulator: no kernel {name:?}"))),
        }
    }

    pub fn malloc(&self, bytes: usize) -> Result<u64> {
        let layout = Layout::from_size_align(bytes.max(4), 256).map_err(|_| err("allocation too large"))?;
        // SAFETY: non-zero size; freed with the same layout.
        let p = unsafe { alloc_zeroed(layout) };
        if p.is_null() {
            return Err(err(format!("emulator: out of memory allocating {bytes} bytes")));
        }
        self.allocs.lock().map_err(|_| err("emulator poisoned"))?.insert(p as u64, layout);
        Ok(p as u64)
    }

    pub fn free(&self, p: u64) {
        if let Some(layout) = self.allocs.lock().ok().and_then(|mut a| a.remove(&p)) {
            // SAFETY: allocated by `malloc` with this layout, removed from the table so freed once.
            unsafe { dealloc(p as *mut u8, layout) }
        }
    }

    /// SAFETY: `dst` and `src` must address `bytes` valid bytes of emulated device (host) memory.
    pub unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) {
        std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
    }

    /// cuBLAS's GEMM: row-major c[m, n] (+)= b[m, k] · a[n, k]ᵀ with f32 accumulation.
    ///
    /// SAFETY: the pointers must address tensors of the sizes `g` says.
    pub unsafe fn gemm(&self, g: &Gemm) {
        let (m, n, k) = (g.m, g.n, g.k);
        let load = |p: u64, i: usize| -> f32 {
            if g.bf16 {
                f32::from_bits((*(p as *const u16).add(i) as u32) << 16)
            } else {
                *(p as *const f32).add(i)
            }
        };
        let c = g.c as *mut f32;
        for r in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for kk in 0..k {
                    s += load(g.a, j * k + kk) * load(g.b, r * k + kk);
                }
                let o = c.add(r * n + j);
                *o = if g.accumulate { *o + s } else { s };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_signatures_are_read() {
        let pre = format!(
            "extern \"C\" {{ int printf(); }}\n{}\nextern \"C\" void add(float* acc, const float* __restrict x, \
             unsigned n) {{ }}\n extern \"C\" void  rope(float* x, unsigned long long s, float eps){{}}",
            super::MARK
        );
        let k = super::kernels(&pre);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].0, "add");
        assert_eq!(k[0].1, ["float*", "const float* __restrict", "unsigned"]);
        assert_eq!(k[1].1, ["float*", "unsigned long long", "float"]);
    }
}
