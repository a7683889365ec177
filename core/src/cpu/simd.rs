//! Which vector instructions the CPU kernels use, chosen once per backend from what the processor has.
//! Every kernel has a scalar version that computes the same thing (the same integer sums, the same scales),
//! so forcing [`Simd::Scalar`] checks the vector code against it in the op table.

/// A level of vector instructions. The x86 levels are ordered (each includes the one before); the others
/// stand alone beside [`Simd::Scalar`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Plain Rust (whatever the compiler makes of it for the build target).
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI's 8-bit dot products, and everything of [`Simd::Avx2`]: the q8/q4
    /// matmuls (decode and prefill) take 64 weights an instruction (core/src/cpu/vnni.rs, qpanel.rs), the f32
    /// expert GEMM and f32 GEMV rows 16 lanes (xw512.rs, vnni.rs); other kernels run their AVX2 versions.
    Avx512,
    /// aarch64 NEON with the dot-product extension (Armv8.2 and later): neon.rs.
    Neon,
    /// WebAssembly's 128-bit SIMD, when the build enables it (`-C target-feature=+simd128`, as the browser
    /// build does): wasm.rs.
    Simd128,
}

impl Simd {
    /// The best level this processor runs.
    pub fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    return Simd::Avx512;
                }
                return Simd::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            if has!("neon") && has!("dotprod") {
                return Simd::Neon;
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return Simd::Simd128;
        #[allow(unreachable_code)]
        Simd::Scalar
    }

    /// Every level this processor runs, the scalar one first.
    pub fn available() -> Vec<Simd> {
        let best = Simd::detect();
        let x86 = |s: Simd| matches!(best, Simd::Avx2 | Simd::Avx512) && s <= best;
        [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Neon, Simd::Simd128]
            .into_iter()
            .filter(|&s| s == Simd::Scalar || s == best || x86(s))
            .collect()
    }

    /// Whether the level has vector kernels for the integer formats (all but [`Simd::Scalar`]): quantized
    /// weights in their layouts take the integer kernels at every row count.
    pub fn vector(self) -> bool {
        self != Simd::Scalar
    }

    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
            Simd::Neon => "neon",
            Simd::Simd128 => "simd128",
        }
    }

    /// The level named `s` (as [`Simd::name`] gives it), if this processor runs it.
    pub fn parse(s: &str) -> Result<Simd, String> {
        let want = match s {
            "scalar" => Simd::Scalar,
            "avx2" => Simd::Avx2,
            "avx512" => Simd::Avx512,
            "neon" => Simd::Neon,
            "simd128" => Simd::Simd128,
            _ => return Err(format!("unknown CPU kernel level {s:?} (scalar, avx2, avx512, neon or simd128)")),
        };
        if !Simd::available().contains(&want) {
            return Err(format!("this processor does not run the {s} kernels"));
        }
        Ok(want)
    }
}
