//! The emulator's build side: a kernel family's .cu source, with emu.h in front, preprocessed, its kernels
//! and `__shared__` declarations found and rewritten for the emulator's scheduler, and compiled by the system
//! C++ compiler into a shared library (cached under the temp directory by a hash of the sources).

use std::path::{Path, PathBuf};
use std::process::Command;

use herd_core::error::Result;

use crate::device::err;
use crate::nvrtc::COMMON;

pub(super) const EMU_H: &str = include_str!("../../emu.h");
/// Marks where the kernel family starts in the preprocessed source (kernels are looked for after it).
const MARK: &str = "namespace herd_emu_kernels_begin {}";

/// The C++ compiler: $CXX, else c++.
pub(super) fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Whether a C++ compiler is there to build the emulator.
pub fn available() -> bool {
    Command::new(cxx()).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A kernel defined in preprocessed source: its name, parameter types and `__launch_bounds__` (0: none).
#[derive(Debug, PartialEq)]
pub(crate) struct KernelDecl {
    pub(crate) name: String,
    pub(crate) params: Vec<String>,
    pub(crate) bound: u32,
}

const LAUNCH_BOUNDS: &str = "HERD_EMU_LAUNCH_BOUNDS";
const SHARED: &str = "HERD_EMU_SHARED";

/// The kernels defined in preprocessed source.
fn kernels(pre: &str) -> Vec<KernelDecl> {
    let mut out = Vec::new();
    let body = pre.find(MARK).map_or(pre, |i| &pre[i..]);
    let mut rest = body;
    while let Some(i) = rest.find("extern \"C\"") {
        rest = &rest[i + 10..];
        let t = rest.trim_start();
        let Some(t) = t.strip_prefix("void") else { continue };
        let mut t = t.trim_start();
        let mut bound = 0;
        if let Some(b) = t.strip_prefix(LAUNCH_BOUNDS) {
            let b = b.trim_start().strip_prefix('(').unwrap_or(b);
            let Some(close) = b.find(')') else { continue };
            bound = b[..close].trim().parse().unwrap_or(0);
            t = b[close + 1..].trim_start();
        }
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
        out.push(KernelDecl { name, params, bound });
    }
    out
}

/// Removes the `__launch_bounds__` markers and turns each static `__shared__` declaration into a static
/// and a call that registers it (to be filled with NaN bytes before every block; a call, not a static
/// object, so that no initialisation guard is shared between the threads): `HERD_EMU_SHARED float a[4], b;`
/// → `static float a[4], b; emu::shared_at((void*)&a, sizeof a), emu::shared_at((void*)&b, sizeof b);`.
fn rewrite(pre: &str) -> Result<String> {
    let mut out = String::with_capacity(pre.len() + 4096);
    let mut rest = pre;
    loop {
        let lb = rest.find(LAUNCH_BOUNDS);
        let sh = rest.find(SHARED);
        let i = match (lb, sh) {
            (None, None) => break,
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
        };
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix(LAUNCH_BOUNDS) {
            let close = r.find(')').ok_or_else(|| err("emulator: unterminated __launch_bounds__"))?;
            rest = &r[close + 1..];
            continue;
        }
        let r = &rest[SHARED.len()..];
        let end = r.find(';').ok_or_else(|| err("emulator: unterminated __shared__ declaration"))?;
        let decl = r[..end].trim();
        // The declarators, split at commas outside brackets and parentheses.
        let (mut depth, mut start, mut names) = (0i32, 0, Vec::new());
        for (j, c) in decl.char_indices().chain([(decl.len(), ',')]) {
            match c {
                '[' | '(' => depth += 1,
                ']' | ')' => depth -= 1,
                ',' if depth == 0 => {
                    let d = &decl[start..j];
                    let d = d.split('[').next().unwrap_or(d).trim_end();
                    let name: String = d
                        .chars()
                        .rev()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    if name.is_empty() {
                        return Err(err(format!("emulator: cannot read the __shared__ declaration `{decl}`")));
                    }
                    names.push(name);
                    start = j + 1;
                }
                _ => {}
            }
        }
        out.push_str(&format!("static {decl}; "));
        let regs: Vec<String> = names.iter().map(|nm| format!("emu::shared_at((void*)&{nm}, sizeof {nm})")).collect();
        out.push_str(&regs.join(", "));
        rest = &r[end..];
    }
    out.push_str(rest);
    Ok(out)
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

/// A name for this process's and thread's temporary files of one family.
fn unique(family: &str) -> String {
    let unique = format!("{}.{}.{:?}", std::process::id(), family, std::thread::current().id());
    unique.chars().filter(|c| c.is_alphanumeric() || *c == '.').collect()
}

/// One family's .cu source with emu.h and common.cuh in front, preprocessed (in `dir`), and its kernels.
pub(crate) fn preprocess(dir: &Path, family: &str, src: &str, race: bool) -> Result<(String, Vec<KernelDecl>)> {
    std::fs::create_dir_all(dir).map_err(|e| err(format!("emulator cache {}: {e}", dir.display())))?;
    let front = format!("{EMU_H}\n{COMMON}\n{MARK}\n#line 1 \"{family}.cu\"\n{src}\n");
    let pre_path = dir.join(format!("{}.pre.cpp", unique(family)));
    std::fs::write(&pre_path, &front).map_err(|e| err(format!("emulator: {e}")))?;
    let mut cmd = Command::new(cxx());
    cmd.args(["-std=c++20", "-E", "-P"]);
    if race {
        cmd.arg("-DHERD_EMU_RACECHECK");
    }
    let pre = run(cmd.arg(&pre_path), "preprocessing");
    let _ = std::fs::remove_file(&pre_path);
    let pre = String::from_utf8_lossy(&pre?).into_owned();
    let ks = kernels(&pre);
    if ks.is_empty() {
        return Err(err(format!("emulator: no kernels found in {family}.cu")));
    }
    Ok((pre, ks))
}

/// Checks that preprocessed source `pre` with `extra` appended compiles (no code is generated): the
/// layout test's static assertions.
#[cfg(test)]
pub(crate) fn check_compiles(dir: &Path, family: &str, pre: &str, extra: &str) -> Result<()> {
    let full = rewrite(pre)? + extra;
    let cpp = dir.join(format!("{}.check.cpp", unique(family)));
    std::fs::write(&cpp, full).map_err(|e| err(format!("emulator: {e}")))?;
    let r = run(
        Command::new(cxx()).args(["-std=c++20", "-fsyntax-only", "-w"]).arg(&cpp),
        &format!("checking {family}.cu"),
    );
    let _ = std::fs::remove_file(&cpp);
    r.map(|_| ())
}

/// Builds (or finds in the cache) the emulator library of one family; returns it and its kernels.
pub(super) fn build(dir: &Path, family: &str, src: &str, race: bool) -> Result<(PathBuf, Vec<KernelDecl>)> {
    let (pre, ks) = preprocess(dir, family, src, race)?;
    let unique = unique(family);
    let lib = dir.join(format!("{family}.so"));
    if lib.exists() {
        return Ok((lib, ks));
    }
    let mut full = rewrite(&pre)?;
    for k in &ks {
        let args: Vec<String> = k.params.iter().enumerate().map(|(i, t)| format!("*({t}*)a[{i}]")).collect();
        full.push_str(&format!("static void emu_k_{}(void** a) {{ {}({}); }}\n", k.name, k.name, args.join(", ")));
    }
    full.push_str(
        "extern \"C\" __attribute__((visibility(\"default\"))) const char* herd_emu_message() { return emu::message; }\n\
         extern \"C\" __attribute__((visibility(\"default\"))) int herd_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, \
         unsigned long long smem, void** args) {\n",
    );
    for k in &ks {
        full.push_str(&format!(
            "    if (!strcmp(name, \"{0}\")) return emu::run_grid(emu_k_{0}, args, dim3{{gx, gy, gz}}, dim3{{bx, 1, 1}}, smem);\n",
            k.name
        ));
    }
    full.push_str("    return 3;\n}\n");
    let cpp = dir.join(format!("{unique}.cpp"));
    std::fs::write(&cpp, full).map_err(|e| err(format!("emulator: {e}")))?;
    let tmp = dir.join(format!("{unique}.so"));
    let what = format!("compiling {family}.cu as C++");
    let built = if race {
        // Instrumented by the thread sanitizer, linked without its runtime: emu.h defines the hooks.
        let obj = dir.join(format!("{unique}.o"));
        let r = run(
            Command::new(cxx())
                .args(["-std=c++20", "-O1", "-fPIC", "-fsanitize=thread", "-fvisibility=hidden", "-w", "-c", "-o"])
                .arg(&obj)
                .arg(&cpp),
            &what,
        )
        .and_then(|_| {
            run(
                Command::new(cxx()).args(["-shared", "-Wl,-z,defs", "-o"]).arg(&tmp).arg(&obj),
                &format!("linking {family}"),
            )
        });
        let _ = std::fs::remove_file(&obj);
        r
    } else {
        run(
            Command::new(cxx())
                .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-w", "-Wl,-z,defs", "-o"])
                .arg(&tmp)
                .arg(&cpp),
            &what,
        )
    };
    let _ = std::fs::remove_file(&cpp);
    built?;
    // Another process may have built it meanwhile: the rename is atomic either way.
    std::fs::rename(&tmp, &lib).map_err(|e| err(format!("emulator: {e}")))?;
    Ok((lib, ks))
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
        assert_eq!(k[0].name, "add");
        assert_eq!(k[0].params, ["float*", "const float* __restrict", "unsigned"]);
        assert_eq!(k[1].params, ["float*", "unsigned long long", "float"]);
        assert_eq!(k[1].bound, 0);
    }

    #[test]
    fn launch_bounds_and_shared_declarations_are_rewritten() {
        let pre = format!(
            "{}\nextern \"C\" void HERD_EMU_LAUNCH_BOUNDS(256) k(float* x) {{ HERD_EMU_SHARED float a[4][33], \
             b; HERD_EMU_SHARED __attribute__((aligned(16))) unsigned short h[2][(3 + 1)]; }}",
            super::MARK
        );
        let k = super::kernels(&pre);
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].name.as_str(), k[0].bound), ("k", 256));
        let out = super::rewrite(&pre).unwrap();
        assert!(!out.contains("HERD_EMU"), "{out}");
        assert!(
            out.contains(
                "static float a[4][33], b; emu::shared_at((void*)&a, sizeof a), emu::shared_at((void*)&b, sizeof b);"
            ),
            "{out}"
        );
        assert!(out.contains("unsigned short h[2][(3 + 1)]; emu::shared_at((void*)&h, sizeof h);"), "{out}");
    }
}
