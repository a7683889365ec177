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

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn silu_mul(gate: &mut [f32], up: &[f32], n: usize) -> Result<()> {
    need("silu_mul gate", gate.len(), n)?;
    need("silu_mul up", up.len(), n)?;
    pool::chunks_mut(&mut gate[..n], 4096, |i, g| {
        for (g, &u) in g.iter_mut().zip(&up[i * 4096..]) {
            *g = silu(*g) * u;
        }
    });
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
