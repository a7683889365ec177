//! NVRTC's functions, loaded from the library found by the parent module.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

use super::*;

/// An NVRTC program (nvrtcProgram).
pub(crate) type NvrtcProgram = *mut c_void;

/// The NVRTC functions herd calls; each returns an nvrtcResult (0 is NVRTC_SUCCESS).
pub(crate) struct Nvrtc {
    pub create_program: unsafe extern "C" fn(
        *mut NvrtcProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    pub compile_program: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int,
    pub get_cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    pub get_cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    pub get_program_log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    pub get_program_log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    pub destroy_program: unsafe extern "C" fn(*mut NvrtcProgram) -> c_int,
    /// nvrtcVersion: (major, minor).
    pub version: (i32, i32),
    /// The file loaded.
    pub path: String,
    /// Kept loaded for the process.
    _libs: Vec<Library>,
}

/// The name of an nvrtcResult.
pub(crate) fn nvrtc_result(code: c_int) -> String {
    const NAMES: [&str; 19] = [
        "NVRTC_SUCCESS",
        "NVRTC_ERROR_OUT_OF_MEMORY",
        "NVRTC_ERROR_PROGRAM_CREATION_FAILURE",
        "NVRTC_ERROR_INVALID_INPUT",
        "NVRTC_ERROR_INVALID_PROGRAM",
        "NVRTC_ERROR_INVALID_OPTION",
        "NVRTC_ERROR_COMPILATION",
        "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE",
        "NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION",
        "NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION",
        "NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID",
        "NVRTC_ERROR_INTERNAL_ERROR",
        "NVRTC_ERROR_TIME_FILE_WRITE_FAILED",
        "NVRTC_ERROR_NO_PCH_CREATE_ATTEMPTED",
        "NVRTC_ERROR_PCH_CREATE_HEAP_EXHAUSTED",
        "NVRTC_ERROR_PCH_CREATE",
        "NVRTC_ERROR_CANCELLED",
        "NVRTC_ERROR_TIME_TRACE_FILE_WRITE_FAILED",
        "NVRTC_ERROR_BUSY",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).map_or_else(|| format!("nvrtcResult {code}"), |s| (*s).into())
}

pub(super) fn open_nvrtc(c: &Candidate) -> Result<Nvrtc, String> {
    let lib = open(c)?;
    // SAFETY: each type is that of the function's declaration in nvrtc.h.
    let mut n = unsafe {
        Nvrtc {
            create_program: sym(&lib, "nvrtcCreateProgram")?,
            compile_program: sym(&lib, "nvrtcCompileProgram")?,
            get_cubin_size: sym(&lib, "nvrtcGetCUBINSize")?,
            get_cubin: sym(&lib, "nvrtcGetCUBIN")?,
            get_program_log_size: sym(&lib, "nvrtcGetProgramLogSize")?,
            get_program_log: sym(&lib, "nvrtcGetProgramLog")?,
            destroy_program: sym(&lib, "nvrtcDestroyProgram")?,
            version: (0, 0),
            path: String::new(),
            _libs: Vec::new(),
        }
    };
    // SAFETY: as above; two valid out-parameters.
    let (mut major, mut minor) = (0, 0);
    let r = unsafe {
        let version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int = sym(&lib, "nvrtcVersion")?;
        version(&mut major, &mut minor)
    };
    if r != 0 {
        return Err(format!("nvrtcVersion: {}", nvrtc_result(r)));
    }
    n.version = (major, minor);
    n.path = loaded_from(n.create_program as *const c_void).unwrap_or_else(|| c.to_string());
    // NVRTC opens its builtins library (libnvrtc-builtins.so.<major>.<minor>) when it compiles, by name; a
    // copy loaded here from the same folder is the one it finds, even off the loader's search path.
    if let Some(dir) = Path::new(&n.path).parent() {
        let builtins = Candidate::File(dir.join(format!("libnvrtc-builtins.so.{major}.{minor}")));
        if let Ok(b) = open_global(&builtins) {
            n._libs.push(b);
        }
    }
    n._libs.push(lib);
    Ok(n)
}

static NVRTC: OnceLock<Result<Nvrtc, NotFound>> = OnceLock::new();

/// NVRTC, loaded at the first call.
pub(crate) fn nvrtc() -> Result<&'static Nvrtc, &'static NotFound> {
    NVRTC.get_or_init(|| load("NVRTC (libnvrtc)", "libnvrtc", open_nvrtc)).as_ref()
}
