//! cuBLAS's functions (and cuBLASLt's, loaded beside it), from the library found by the parent module.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

use super::*;

/// A cuBLAS handle (cublasHandle_t).
pub(crate) type CublasHandle = *mut c_void;

/// The cuBLAS functions herd calls; each returns a cublasStatus_t (0 is CUBLAS_STATUS_SUCCESS). The enum
/// arguments (cublasOperation_t, cudaDataType, cublasComputeType_t, cublasGemmAlgo_t) are C enums, passed
/// as ints.
pub(crate) struct Cublas {
    pub create: unsafe extern "C" fn(*mut CublasHandle) -> c_int,
    pub set_stream: unsafe extern "C" fn(CublasHandle, *mut c_void) -> c_int,
    #[allow(clippy::type_complexity)]
    pub gemm_ex: unsafe extern "C" fn(
        CublasHandle,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        *const c_void,
        *const c_void,
        c_int,
        c_int,
        *const c_void,
        c_int,
        c_int,
        *const c_void,
        *mut c_void,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> c_int,
    pub destroy: unsafe extern "C" fn(CublasHandle) -> c_int,
    /// cublasGetProperty: (major, minor, patch).
    pub version: Option<(i32, i32, i32)>,
    /// The file loaded.
    pub path: String,
    /// cuBLASLt and cuBLAS, kept loaded for the process.
    _libs: Vec<Library>,
}

/// The name of a cublasStatus_t.
pub(crate) fn cublas_status(code: c_int) -> String {
    match code {
        0 => "CUBLAS_STATUS_SUCCESS".into(),
        1 => "CUBLAS_STATUS_NOT_INITIALIZED".into(),
        3 => "CUBLAS_STATUS_ALLOC_FAILED".into(),
        7 => "CUBLAS_STATUS_INVALID_VALUE".into(),
        8 => "CUBLAS_STATUS_ARCH_MISMATCH".into(),
        11 => "CUBLAS_STATUS_MAPPING_ERROR".into(),
        13 => "CUBLAS_STATUS_EXECUTION_FAILED".into(),
        14 => "CUBLAS_STATUS_INTERNAL_ERROR".into(),
        15 => "CUBLAS_STATUS_NOT_SUPPORTED".into(),
        16 => "CUBLAS_STATUS_LICENSE_ERROR".into(),
        c => format!("cublasStatus_t {c}"),
    }
}

/// The cuBLASLt beside (or named like) cuBLAS candidate `c`: `libcublasLt` with the same suffix.
pub(super) fn lt_for(c: &Candidate) -> Candidate {
    let lt = |name: &str| name.replacen("libcublas", "libcublasLt", 1);
    match c {
        Candidate::File(p) => {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Candidate::File(p.with_file_name(lt(&name)))
        }
        Candidate::Name(n) => Candidate::Name(lt(n)),
    }
}

pub(super) fn open_cublas(c: &Candidate) -> Result<Cublas, String> {
    // cuBLAS needs cuBLASLt: the one beside it, loaded first so that cuBLAS's dependency resolves to it.
    let mut libs = Vec::new();
    match lt_for(c) {
        Candidate::File(p) if !p.is_file() => {}
        lt => match open_global(&lt) {
            Ok(l) => libs.push(l),
            Err(e) if matches!(lt, Candidate::File(_)) => return Err(format!("{lt}: {e}")),
            // By name: when it is missing, cuBLAS's own error names it.
            Err(_) => {}
        },
    }
    let lib = open(c)?;
    // SAFETY: each type is that of the function's declaration in cublas_api.h.
    let mut b = unsafe {
        Cublas {
            create: sym(&lib, "cublasCreate_v2")?,
            set_stream: sym(&lib, "cublasSetStream_v2")?,
            gemm_ex: sym(&lib, "cublasGemmEx")?,
            destroy: sym(&lib, "cublasDestroy_v2")?,
            version: None,
            path: String::new(),
            _libs: Vec::new(),
        }
    };
    // SAFETY: as above; a valid out-parameter. libraryPropertyType: MAJOR_VERSION 0, MINOR_VERSION 1,
    // PATCH_LEVEL 2.
    unsafe {
        if let Ok(get) = sym::<unsafe extern "C" fn(c_int, *mut c_int) -> c_int>(&lib, "cublasGetProperty") {
            let mut v = [0; 3];
            if (0..3).all(|i| get(i, &mut v[i as usize]) == 0) {
                b.version = Some((v[0], v[1], v[2]));
            }
        }
    }
    b.path = loaded_from(b.create as *const c_void).unwrap_or_else(|| c.to_string());
    libs.push(lib);
    b._libs = libs;
    Ok(b)
}

static CUBLAS: OnceLock<Result<Cublas, NotFound>> = OnceLock::new();

/// cuBLAS (with cuBLASLt), loaded at the first call.
pub(crate) fn cublas() -> Result<&'static Cublas, &'static NotFound> {
    CUBLAS.get_or_init(|| load("cuBLAS (libcublas)", "libcublas", open_cublas)).as_ref()
}
