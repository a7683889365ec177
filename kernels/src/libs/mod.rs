//! NVRTC and cuBLAS, found and loaded by herd itself. cudarc would look for them only under a few fixed
//! names on the dynamic loader's search path (libnvrtc.so, .so.12, .so.11, ...), which misses a CUDA 13
//! install that has only `libnvrtc.so.13` and `libcublas.so.13`, and any toolkit not on LD_LIBRARY_PATH.
//!
//! Each library is looked for, in order: in `$HERD_CUDA_LIB_DIR`; as `libX.so`, `libX.so.13`, `libX.so.12`
//! on the loader's search path (LD_LIBRARY_PATH, the ld.so cache); then in the `lib64` and
//! `targets/<arch>-linux/lib` folders of `$CUDA_PATH`, `$CUDA_HOME`, /usr/local/cuda, /usr/local/cuda-13.*
//! and /usr/local/cuda-12.* (newest first), /usr/lib/<arch>-linux-gnu and /opt/cuda. The first that loads
//! and has every function herd calls is kept for the process. When none does, the error says in one line
//! what was tried and why each failed. Only the functions herd calls are declared here.

use std::ffi::{c_char, c_int, c_void};
use std::fmt;
use std::path::{Path, PathBuf};

use libloading::Library;

mod cublas;
mod nvrtc;
pub(crate) use cublas::{cublas, cublas_status, CublasHandle};
pub(crate) use nvrtc::{nvrtc, nvrtc_result, NvrtcProgram};

/// The CUDA major versions whose sonames are looked for, newest first.
const MAJORS: [u32; 2] = [13, 12];

/// The folder of the CUDA toolkit's `targets/` that holds this architecture's libraries, and Debian's
/// multiarch folder.
#[cfg(target_arch = "aarch64")]
const TARGET: (&str, &str) = ("sbsa-linux", "aarch64-linux-gnu");
#[cfg(not(target_arch = "aarch64"))]
const TARGET: (&str, &str) = ("x86_64-linux", "x86_64-linux-gnu");

/// Where to look: the folders the environment names, and the root under which the fixed folders lie
/// (`/`; another folder in tests).
#[derive(Debug, Clone, Default)]
pub(crate) struct Places {
    pub lib_dir: Option<PathBuf>,
    pub cuda_path: Option<PathBuf>,
    pub cuda_home: Option<PathBuf>,
    pub root: PathBuf,
}

impl Places {
    pub fn from_env() -> Places {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        Places {
            lib_dir: var("HERD_CUDA_LIB_DIR"),
            cuda_path: var("CUDA_PATH"),
            cuda_home: var("CUDA_HOME"),
            root: PathBuf::from("/"),
        }
    }
}

/// One place a library may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// A file, opened by its path.
    File(PathBuf),
    /// A bare file name, for the dynamic loader to find on its search path.
    Name(String),
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Candidate::File(p) => write!(f, "{}", p.display()),
            Candidate::Name(n) => f.write_str(n),
        }
    }
}

/// The file names of library `stem` (e.g. `libnvrtc`): unversioned, then by major, newest first.
fn file_names(stem: &str) -> Vec<String> {
    let mut v = vec![format!("{stem}.so")];
    v.extend(MAJORS.iter().map(|m| format!("{stem}.so.{m}")));
    v
}

/// The toolkits installed as `<root>/usr/local/cuda-<major>.<minor>...`, newest version first.
fn versioned_toolkits(root: &Path, major: u32) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("usr/local")) else { return Vec::new() };
    let mut found: Vec<(Vec<u64>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version: Vec<u64> =
                name.strip_prefix("cuda-")?.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            (version.first() == Some(&u64::from(major))).then(|| (version, e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|f| f.1).collect()
}

/// The folders searched, in order, each once (a folder reached through a symlink, such as /usr/local/cuda,
/// counts as the folder it points to): `$HERD_CUDA_LIB_DIR` first, then the toolkits' library folders.
pub(crate) fn folders(p: &Places) -> Vec<PathBuf> {
    let mut toolkits: Vec<PathBuf> = [&p.cuda_path, &p.cuda_home].into_iter().flatten().cloned().collect();
    toolkits.push(p.root.join("usr/local/cuda"));
    for m in MAJORS {
        toolkits.extend(versioned_toolkits(&p.root, m));
    }
    let in_toolkit = |t: &Path| [t.join("lib64"), t.join("targets").join(TARGET.0).join("lib")];
    let mut dirs: Vec<PathBuf> = p.lib_dir.iter().cloned().collect();
    dirs.extend(toolkits.iter().flat_map(|t| in_toolkit(t)));
    // Debian's and Ubuntu's packaged toolkit, then Arch's.
    dirs.push(p.root.join("usr/lib").join(TARGET.1));
    dirs.extend(in_toolkit(&p.root.join("opt/cuda")));
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    dirs
}

/// Every place library `stem` is looked for, in order.
pub(crate) fn candidates(stem: &str, p: &Places) -> Vec<Candidate> {
    let names = file_names(stem);
    let in_dir = |d: &Path| names.iter().map(|n| Candidate::File(d.join(n))).collect::<Vec<_>>();
    let dirs = folders(p);
    let mut out = Vec::new();
    let mut rest = dirs.as_slice();
    if let (Some(_), Some((first, others))) = (&p.lib_dir, dirs.split_first()) {
        out.extend(in_dir(first));
        rest = others;
    }
    out.extend(names.iter().cloned().map(Candidate::Name));
    for d in rest {
        out.extend(in_dir(d));
    }
    out
}

/// What became of a candidate that was not taken: `None` when its file is not there, else why it failed.
pub(crate) type Tried = Vec<(Candidate, Option<String>)>;

/// A library that could not be loaded from any candidate.
#[derive(Debug, Clone)]
pub(crate) struct NotFound {
    /// The library, e.g. `NVRTC (libnvrtc)`.
    pub what: String,
    /// What was tried and why each failed, and what to do: one line.
    pub tried: String,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} was not found (tried {})", self.what, self.tried)
    }
}

/// The loader's message for `c` in one line, without the name it starts with (it is said beside it).
fn dl_message(c: &Candidate, e: &libloading::Error) -> String {
    let msg = e.to_string().replace(['\n', '\r'], " ");
    let Some(own) = msg.strip_prefix(&format!("{c}: ")) else {
        // About something else, e.g. a dependency that is missing: kept whole, as it names it.
        return msg;
    };
    if own.starts_with("cannot open shared object file") {
        "not found".into()
    } else {
        own.to_owned()
    }
}

/// Opens `c` (for its own use: its symbols resolve nothing else), saying in one line why not.
fn open(c: &Candidate) -> Result<Library, String> {
    let r = match c {
        // SAFETY: loading a library runs its initializers; the CUDA libraries' are safe to run anywhere.
        Candidate::File(p) => unsafe { Library::new(p) },
        // SAFETY: as above.
        Candidate::Name(n) => unsafe { Library::new(n) },
    };
    r.map_err(|e| dl_message(c, &e))
}

/// Opens `c` so that libraries loaded after it can use it (cuBLAS needs cuBLASLt).
fn open_global(c: &Candidate) -> Result<Library, String> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library as UnixLibrary, RTLD_GLOBAL, RTLD_LAZY};
        let name: &std::ffi::OsStr = match c {
            Candidate::File(p) => p.as_os_str(),
            Candidate::Name(n) => n.as_ref(),
        };
        // SAFETY: as in `open`.
        unsafe { UnixLibrary::open(Some(name), RTLD_LAZY | RTLD_GLOBAL) }
            .map(Library::from)
            .map_err(|e| dl_message(c, &e))
    }
    #[cfg(not(unix))]
    {
        open(c)
    }
}

/// Function `name` of `lib` as `F`, which must be the `unsafe extern "C" fn` type of its C declaration.
unsafe fn sym<F: Copy>(lib: &Library, name: &str) -> Result<F, String> {
    // SAFETY: the caller's `F` matches the C declaration.
    unsafe { lib.get::<F>(name.as_bytes()) }.map(|s| *s).map_err(|_| format!("has no {name}"))
}

/// The file the code at `addr` was loaded from, as the dynamic loader resolved it (symlinks followed, so
/// the name shows the full version, e.g. libnvrtc.so.13.0.88).
fn loaded_from(addr: *const c_void) -> Option<String> {
    #[cfg(unix)]
    {
        #[repr(C)]
        struct DlInfo {
            fname: *const c_char,
            fbase: *mut c_void,
            sname: *const c_char,
            saddr: *mut c_void,
        }
        extern "C" {
            fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
        }
        let mut info = DlInfo {
            fname: std::ptr::null(),
            fbase: std::ptr::null_mut(),
            sname: std::ptr::null(),
            saddr: std::ptr::null_mut(),
        };
        // SAFETY: `info` is a valid out-parameter; `fname`, when set, is a NUL-terminated string owned by the
        // loader for as long as the library stays loaded (for the process).
        let name = unsafe {
            if dladdr(addr, &mut info) == 0 || info.fname.is_null() {
                return None;
            }
            std::ffi::CStr::from_ptr(info.fname).to_string_lossy().into_owned()
        };
        Some(std::fs::canonicalize(&name).map_or(name, |p| p.display().to_string()))
    }
    #[cfg(not(unix))]
    {
        let _ = addr;
        None
    }
}

/// Loads the first of `cands` that `open` accepts, or says what became of each.
pub(crate) fn load_first<T>(
    cands: &[Candidate],
    mut open: impl FnMut(&Candidate) -> Result<T, String>,
) -> Result<T, Tried> {
    let mut tried = Vec::new();
    for c in cands {
        if let Candidate::File(f) = c {
            if !f.is_file() {
                tried.push((c.clone(), None));
                continue;
            }
        }
        match open(c) {
            Ok(t) => return Ok(t),
            Err(e) => tried.push((c.clone(), Some(e))),
        }
    }
    Err(tried)
}

/// The one-line account of a failed search for library `stem`.
pub(crate) fn not_found(what: &str, stem: &str, p: &Places, tried: &Tried) -> NotFound {
    let mut parts = vec![match &p.lib_dir {
        Some(d) => format!("HERD_CUDA_LIB_DIR={}", d.display()),
        None => "HERD_CUDA_LIB_DIR (not set)".into(),
    }];
    let missing: Vec<String> = tried
        .iter()
        .filter_map(|(c, e)| match (c, e.as_deref()) {
            (Candidate::Name(n), Some("not found")) => Some(n.clone()),
            _ => None,
        })
        .collect();
    if !missing.is_empty() {
        parts.push(format!("{} on the loader's search path (not found)", missing.join(", ")));
    }
    // Folders none of whose candidates exist are listed together; every file that was there, with its error.
    let mut empty: Vec<PathBuf> = Vec::new();
    for (c, e) in tried {
        match (c, e) {
            (Candidate::Name(_), Some(e)) if e == "not found" => {}
            (Candidate::File(f), None) => {
                let dir = f.parent().map(Path::to_path_buf).unwrap_or_default();
                let any_there = tried.iter().any(|(c2, e2)| {
                    e2.is_some() && matches!(c2, Candidate::File(f2) if f2.parent() == Some(dir.as_path()))
                });
                if !any_there && !empty.contains(&dir) {
                    empty.push(dir);
                }
            }
            (c, Some(e)) => parts.push(format!("{c} ({e})")),
            (c, None) => parts.push(format!("{c} (not there)")),
        }
    }
    if !empty.is_empty() {
        let shown: Vec<String> = empty.iter().map(|d| d.display().to_string()).collect();
        let names = file_names(stem);
        let (last, first) = names.split_last().expect("names");
        parts.push(format!("no {} or {last} in {}", first.join(", "), shown.join(", ")));
    }
    let hint = format!(
        "set HERD_CUDA_LIB_DIR to the folder that holds {stem}.so.13 or {stem}.so.12 (the CUDA toolkit's lib64)"
    );
    NotFound { what: what.to_owned(), tried: format!("{}; {hint}", parts.join("; ")).replace(['\n', '\r'], " ") }
}

/// Loads library `stem` from the first candidate `open` accepts.
fn load<T>(what: &str, stem: &str, open: impl FnMut(&Candidate) -> Result<T, String>) -> Result<T, NotFound> {
    let places = Places::from_env();
    load_first(&candidates(stem, &places), open).map_err(|tried| not_found(what, stem, &places, &tried))
}

/// Which NVRTC and cuBLAS files the CUDA backend uses (loading them if not yet loaded), with their
/// versions, in one line; or that one was not found.
pub fn cuda_libraries() -> String {
    let n = match nvrtc() {
        Ok(n) => format!("NVRTC {}.{} ({})", n.version.0, n.version.1, n.path),
        Err(_) => "NVRTC not found".into(),
    };
    let b = match cublas() {
        Ok(b) => match b.version {
            Some((major, minor, patch)) => format!("cuBLAS {major}.{minor}.{patch} ({})", b.path),
            None => format!("cuBLAS ({})", b.path),
        },
        Err(_) => "cuBLAS not found".into(),
    };
    format!("{n}; {b}")
}

#[cfg(test)]
mod tests {
    use super::cublas::{lt_for, open_cublas};
    use super::nvrtc::open_nvrtc;
    use super::*;

    /// A fresh folder under the temp directory, removed when dropped.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let d = std::env::temp_dir().join(format!(
                "herd-libs-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        fn dir(&self, rel: &str) -> PathBuf {
            let d = self.0.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files(c: &[Candidate]) -> Vec<PathBuf> {
        c.iter().filter_map(|c| if let Candidate::File(f) = c { Some(f.clone()) } else { None }).collect()
    }

    #[test]
    fn candidates_in_order() {
        let s = Scratch::new("order");
        let root = s.dir("root");
        for v in ["12.4", "13.0", "12.10", "13.1", "12.9", "11.8", "13.x"] {
            s.dir(&format!("root/usr/local/cuda-{v}"));
        }
        let places = Places {
            lib_dir: Some(s.dir("mine")),
            cuda_path: Some(s.dir("cp")),
            cuda_home: Some(s.dir("ch")),
            root: root.clone(),
        };
        let c = candidates("libnvrtc", &places);
        // HERD_CUDA_LIB_DIR, then the bare names for the loader, then the folders.
        assert_eq!(c[0], Candidate::File(s.0.join("mine/libnvrtc.so")));
        assert_eq!(c[1], Candidate::File(s.0.join("mine/libnvrtc.so.13")));
        assert_eq!(c[2], Candidate::File(s.0.join("mine/libnvrtc.so.12")));
        assert_eq!(c[3..6], ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"].map(|n| Candidate::Name(n.into())));
        let dirs: Vec<PathBuf> = files(&c[6..]).iter().step_by(3).map(|f| f.parent().unwrap().to_path_buf()).collect();
        let t = TARGET.0;
        let mut want = Vec::new();
        for tk in [s.0.join("cp"), s.0.join("ch"), root.join("usr/local/cuda")]
            .into_iter()
            .chain(["13.1", "13.0", "12.10", "12.9", "12.4"].map(|v| root.join(format!("usr/local/cuda-{v}"))))
        {
            want.push(tk.join("lib64"));
            want.push(tk.join(format!("targets/{t}/lib")));
        }
        want.push(root.join("usr/lib").join(TARGET.1));
        want.push(root.join("opt/cuda/lib64"));
        want.push(root.join(format!("opt/cuda/targets/{t}/lib")));
        assert_eq!(dirs, want);
        assert_eq!(files(&c[6..]).len(), 3 * want.len());
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_reached_twice_is_searched_once() {
        // /usr/local/cuda is usually a symlink to /usr/local/cuda-13.0, and CUDA_HOME often names one of them.
        let s = Scratch::new("dedup");
        let root = s.dir("root");
        let real = s.dir("root/usr/local/cuda-13.0/lib64").parent().unwrap().to_path_buf();
        std::os::unix::fs::symlink(&real, root.join("usr/local/cuda")).unwrap();
        let places =
            Places { lib_dir: Some(real.join("lib64")), cuda_home: Some(real.clone()), root, ..Places::default() };
        let lib64: Vec<PathBuf> = files(&candidates("libcublas", &places))
            .into_iter()
            .filter(|f| {
                std::fs::canonicalize(f.parent().unwrap()).ok() == std::fs::canonicalize(real.join("lib64")).ok()
            })
            .collect();
        assert_eq!(lib64, ["libcublas.so", "libcublas.so.13", "libcublas.so.12"].map(|n| real.join("lib64").join(n)));
    }

    #[test]
    fn a_fake_library_fails_with_its_name() {
        let s = Scratch::new("fake");
        let home = s.dir("cuda");
        let lib = s.dir("cuda/lib64").join("libnvrtc.so.13");
        std::fs::write(&lib, b"not a shared object").unwrap();
        let places = Places { cuda_home: Some(home), root: s.dir("root"), ..Places::default() };
        let c = candidates("libnvrtc", &places);
        assert!(c.contains(&Candidate::File(lib.clone())), "{c:?}");
        // Only the folders: the loader's path may hold a real NVRTC on a machine with CUDA.
        let c: Vec<Candidate> = c.into_iter().filter(|c| matches!(c, Candidate::File(_))).collect();
        let tried = match load_first(&c, open_nvrtc) {
            Ok(_) => panic!("a text file loaded as NVRTC"),
            Err(t) => t,
        };
        let e = not_found("NVRTC (libnvrtc)", "libnvrtc", &places, &tried).to_string();
        eprintln!("{e}");
        assert!(e.contains(&format!("{} (", lib.display())), "{e}");
        assert!(e.contains("HERD_CUDA_LIB_DIR"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn a_fake_cublaslt_is_named_in_cublas_error() {
        let s = Scratch::new("fakeblas");
        let dir = s.dir("lib");
        for f in ["libcublas.so.13", "libcublasLt.so.13"] {
            std::fs::write(dir.join(f), b"not a shared object").unwrap();
        }
        let places = Places { lib_dir: Some(dir.clone()), root: s.dir("root"), ..Places::default() };
        let c: Vec<Candidate> =
            candidates("libcublas", &places).into_iter().filter(|c| matches!(c, Candidate::File(_))).collect();
        let tried = match load_first(&c, open_cublas) {
            Ok(_) => panic!("a text file loaded as cuBLAS"),
            Err(t) => t,
        };
        let e = not_found("cuBLAS (libcublas)", "libcublas", &places, &tried).to_string();
        eprintln!("{e}");
        assert!(
            e.contains(&format!(
                "{} ({}: ",
                dir.join("libcublas.so.13").display(),
                dir.join("libcublasLt.so.13").display()
            )),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn nothing_there_is_one_line_naming_what_was_tried() {
        let s = Scratch::new("empty");
        let mine = s.dir("mine");
        let places = Places { lib_dir: Some(mine.clone()), root: s.dir("root"), ..Places::default() };
        // A name no library has, so that the loader's search path finds nothing on any machine.
        let stem = "libherd_no_such_cuda_lib";
        let c = candidates(stem, &places);
        let tried = match load_first(&c, open) {
            Ok(_) => panic!("loaded {stem}"),
            Err(t) => t,
        };
        let e = not_found("NVRTC (libnvrtc)", stem, &places, &tried).to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("NVRTC (libnvrtc) was not found (tried HERD_CUDA_LIB_DIR="), "{e}");
        assert!(
            e.contains(&format!("{stem}.so, {stem}.so.13, {stem}.so.12 on the loader's search path (not found)")),
            "{e}"
        );
        assert!(e.contains(&format!("in {}, ", mine.display())), "{e}");
        assert!(e.contains(&s.0.join("root/usr/local/cuda/lib64").display().to_string()), "{e}");
        assert!(e.contains("set HERD_CUDA_LIB_DIR to the folder"), "{e}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_library_without_the_functions_is_refused() {
        // The C math library loads, but it is not NVRTC or cuBLAS.
        let e = open_nvrtc(&Candidate::Name("libm.so.6".into())).err().expect("libm is not NVRTC");
        assert_eq!(e, "has no nvrtcCreateProgram");
        let e = open_cublas(&Candidate::Name("libm.so.6".into())).err().expect("libm is not cuBLAS");
        assert_eq!(e, "has no cublasCreate_v2");
        // A library the loader cannot find is "not found".
        let e = open(&Candidate::Name("libherd_no_such_lib.so.13".into())).expect_err("no such library");
        assert_eq!(e, "not found");
        // A library that is found reports where it was loaded from.
        let lib = open(&Candidate::Name("libm.so.6".into())).unwrap();
        // SAFETY: cos is `double cos(double)`.
        let cos: unsafe extern "C" fn(f64) -> f64 = unsafe { sym(&lib, "cos") }.unwrap();
        let path = loaded_from(cos as *const c_void).expect("dladdr names libm");
        assert!(path.starts_with('/') && path.contains("libm"), "{path}");
    }

    #[test]
    fn cublaslt_is_looked_for_beside_cublas() {
        assert_eq!(
            lt_for(&Candidate::File("/usr/local/cuda/lib64/libcublas.so.13".into())),
            Candidate::File("/usr/local/cuda/lib64/libcublasLt.so.13".into())
        );
        assert_eq!(lt_for(&Candidate::Name("libcublas.so".into())), Candidate::Name("libcublasLt.so".into()));
        assert_eq!(nvrtc_result(6), "NVRTC_ERROR_COMPILATION");
        assert_eq!(cublas_status(13), "CUBLAS_STATUS_EXECUTION_FAILED");
    }
}
