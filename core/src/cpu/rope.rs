//! Interleaved-pair ("complex") RoPE on the CPU, in place: pair (2j, 2j+1) of each head of row r turns by
//! `positions[r] · inv_freq[j]`, the angle formed in f32 as transformers does.

use super::pool;

use super::need;
use crate::error::Result;

pub fn rope(
    x: &mut [f32],
    rows: usize,
    heads: usize,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
) -> Result<()> {
    let row = heads * head_dim;
    need("rope x", x.len(), rows * row)?;
    need("rope positions", positions.len(), rows)?;
    need("rope inv_freq", inv_freq.len(), head_dim / 2)?;
    pool::chunks_mut(&mut x[..rows * row], row, |r, xr| {
        let p = positions[r] as f32;
        // The row's angles, on the stack for heads up to 512 wide (else on the heap).
        let (mut stack, mut heap) = ([(0f32, 0f32); 256], Vec::new());
        let cs = if head_dim / 2 <= stack.len() {
            &mut stack[..head_dim / 2]
        } else {
            heap.resize(head_dim / 2, (0f32, 0f32));
            &mut heap[..]
        };
        for (c, &f) in cs.iter_mut().zip(&inv_freq[..head_dim / 2]) {
            let a = p * f;
            *c = (a.cos(), a.sin());
        }
        for h in xr.chunks_mut(head_dim) {
            for (pair, &(c, s)) in h.chunks_exact_mut(2).zip(cs.iter()) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    });
    Ok(())
}
