//! Element-wise and row ops on the CPU: embedding lookup, residual add, SwiGLU's silu·up, row gather.

use super::pool;

use super::{need, CpuWeight};
use crate::error::{HerdError, Result};

pub fn embed(table: &CpuWeight, ids: &[u32], n: usize, dim: usize, out: &mut [f32]) -> Result<()> {
    need("embed ids", ids.len(), n)?;
    need("embed out", out.len(), n * dim)?;
    let vocab = table.numel() / dim.max(1);
    let held = table.read()?;
    let view = held.view();
    for (r, &id) in ids[..n].iter().enumerate() {
        if id as usize >= vocab {
            return Err(HerdError::Input(format!("token id {id} is outside the vocabulary ({vocab})")));
        }
        view.to_f32(id as usize * dim, &mut out[r * dim..(r + 1) * dim]);
    }
    Ok(())
}

pub fn add(acc: &mut [f32], x: &[f32], n: usize) -> Result<()> {
    need("add acc", acc.len(), n)?;
    need("add x", x.len(), n)?;
    pool::chunks_mut(&mut acc[..n], 4096, |i, a| {
        for (a, b) in a.iter_mut().zip(&x[i * 4096..]) {
            *a += b;
        }
    });
    Ok(())
}

/// e^x without a branch or a library call, so that loops over it vectorize: Cephes' expf (x = n·ln 2 + r,
/// a degree-6 polynomial in r; within 2 ulp of e^x, checked below), x clamped to [-87, 88] so that e^x stays a
/// normal f32 (silu needs no more). NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding 1.5 · 2^23 rounds to an integer, which the sum's low mantissa bits then hold.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let pow2 = f32::from_bits(((t.to_bits() as i32 - 0x4B40_0000 + 127) as u32) << 23);
    // ln 2 in two parts, the first exact in a few bits, so n · 0.693359375 has no rounding error.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    (p * r * r + r + 1.0) * pow2
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `g[i] = silu(g[i]) · u[i]`: the loop the MoE op, the fused SwiGLU and [`silu_mul`] share.
pub fn silu_mul_slice(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = silu(*g) * u;
    }
}

pub fn silu_mul(gate: &mut [f32], up: &[f32], n: usize) -> Result<()> {
    need("silu_mul gate", gate.len(), n)?;
    need("silu_mul up", up.len(), n)?;
    pool::chunks_mut(&mut gate[..n], 4096, |i, g| silu_mul_slice(g, &up[i * 4096..]));
    Ok(())
}

pub fn gather_rows(x: &[f32], rows: &[u32], n: usize, dim: usize, out: &mut [f32]) -> Result<()> {
    need("gather_rows rows", rows.len(), n)?;
    need("gather_rows out", out.len(), n * dim)?;
    for (i, &r) in rows[..n].iter().enumerate() {
        let r = r as usize;
        need("gather_rows x", x.len(), (r + 1) * dim)?;
        out[i * dim..(i + 1) * dim].copy_from_slice(&x[r * dim..(r + 1) * dim]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_and_silu_keeps_its_limits() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_7;
        }
        // 2 ulp of a float in [1, 2) is 2.4e-7 of it.
        assert!(worst < 2.4e-7, "largest relative error {worst:e}");
        assert!(super::exp(f32::NAN).is_nan() && super::silu(f32::NAN).is_nan());
        assert_eq!(super::silu(f32::INFINITY), f32::INFINITY);
        assert_eq!(super::silu(0.0), 0.0);
        assert!(super::silu(-1000.0).abs() < 1e-35 && super::silu(1000.0) == 1000.0);
        assert!(super::exp(-1000.0) > 0.0 && super::exp(1000.0).is_finite());
    }
}
