//! The token-id input of `herd logits` and `herd greedy`: a safetensors file whose `input_ids` tensor
//! (int64 or int32, [B, T]) holds rows of ids. Parsed from bytes, so the fuzz targets run it as the CLI does.

use safetensors::{Dtype, SafeTensors};

/// The rows of `input_ids` in a safetensors file's bytes; the error is one line, without the file's name.
pub fn parse_input_ids(bytes: &[u8]) -> Result<Vec<Vec<u32>>, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file ({})", crate::error::line(&e.to_string())))?;
    let t = st.tensor("input_ids").map_err(|_| "no tensor `input_ids`".to_string())?;
    let [b, n] = t.shape()[..] else { return Err(format!("`input_ids` has shape {:?}, expected [B, T]", t.shape())) };
    if b == 0 || n == 0 {
        return Err(format!("`input_ids` is empty (shape {:?})", t.shape()));
    }
    let vals: Vec<i64> = match t.dtype() {
        Dtype::I64 => t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect(),
        Dtype::I32 => {
            t.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64).collect()
        }
        d => return Err(format!("`input_ids` has dtype {d:?}, expected int64 or int32")),
    };
    if vals.len() != b.saturating_mul(n) {
        return Err(format!("`input_ids` holds {} values for shape [{b}, {n}]", vals.len()));
    }
    if let Some(bad) = vals.iter().find(|&&v| v < 0 || v > u32::MAX as i64) {
        return Err(format!("`input_ids` holds {bad}, not a token id"));
    }
    Ok(vals.chunks_exact(n).map(|r| r.iter().map(|&v| v as u32).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn file(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Vec<u8> {
        let view = safetensors::tensor::TensorView::new(dtype, shape, data).unwrap();
        let m: HashMap<String, _> = [("input_ids".to_string(), view)].into_iter().collect();
        safetensors::serialize(&m, None).unwrap()
    }

    #[test]
    fn rows_and_errors() {
        let data: Vec<u8> = [1i64, 2, 3, 4, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(parse_input_ids(&file(Dtype::I64, vec![2, 3], &data)).unwrap(), vec![vec![1, 2, 3], vec![4, 5, 6]]);
        let e = parse_input_ids(&file(Dtype::I64, vec![6], &data)).unwrap_err();
        assert!(e.contains("expected [B, T]"), "{e}");
        let neg: Vec<u8> = [-1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = parse_input_ids(&file(Dtype::I32, vec![1, 2], &neg)).unwrap_err();
        assert!(e.contains("holds -1"), "{e}");
        assert!(parse_input_ids(b"\x08\0\0\0\0\0\0\0{}      ").unwrap_err().contains("no tensor"));
        assert!(parse_input_ids(b"garbage").unwrap_err().contains("not a valid safetensors"));
    }
}
