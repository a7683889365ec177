//! The checksum manifest (`herd-manifest.json`) that lets a page verify every byte range it fetches.
//!
//! A safetensors checkpoint carries no checksums of its own, and a browser reads it in pieces (one range
//! per tensor, one per routed expert), so the whole-file hashes a model hub keeps cannot check them. The
//! manifest, written next to the checkpoint by `herd web-manifest` (or made on the fly by `herd serve-web`),
//! holds a CRC-32 for each tensor, and for each routed expert tensor one per expert: the CRC of that
//! expert's bytes as the page assembles them (its values, then its scales for a quantized format;
//! [`herd_core::quant::row_ranges`] says where they lie).
//!
//! ```json
//! {"format": "herd-manifest", "version": 1, "checksum": "crc32",
//!  "files": {"model.safetensors": {"bytes": 983864}},
//!  "tensors": {"model.norm.weight": {"crc32": 305419896},
//!              "model.layers.1.feed_forward.experts.down_proj": {"rows": [1, 2, 3, 4]}}}
//! ```

use std::collections::HashMap;

use herd_core::checkpoint::HeaderTensor;

/// The routed experts' tensors, by logical name: what streams instead of loading.
pub fn is_routed_expert(logical: &str) -> bool {
    logical.starts_with("model.layers.")
        && (logical.ends_with(".feed_forward.experts.gate_up_proj")
            || logical.ends_with(".feed_forward.experts.down_proj"))
}

/// The name of the manifest file beside the checkpoint.
pub const MANIFEST: &str = "herd-manifest.json";

/// A tensor's checksum: of its bytes, or of each outer row's (routed experts).
#[derive(Debug, Clone, PartialEq)]
pub enum Sum {
    Whole(u32),
    Rows(Vec<u32>),
}

/// A parsed manifest.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    files: HashMap<String, u64>,
    tensors: HashMap<String, Sum>,
}

pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

impl Manifest {
    pub fn parse(json: &[u8]) -> Result<Manifest, String> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("{MANIFEST}: not valid JSON ({e})"))?;
        if v["format"] != "herd-manifest" || v["version"] != 1 || v["checksum"] != "crc32" {
            return Err(format!("{MANIFEST}: not a version 1 crc32 herd manifest"));
        }
        let mut m = Manifest::default();
        for (f, info) in v["files"].as_object().ok_or(format!("{MANIFEST}: no files"))? {
            let n = info["bytes"].as_u64().ok_or(format!("{MANIFEST}: {f} has no size"))?;
            m.files.insert(f.clone(), n);
        }
        let u32_of = |x: &serde_json::Value, what: &str| {
            x.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or(format!("{MANIFEST}: {what} is not a CRC-32"))
        };
        for (name, t) in v["tensors"].as_object().ok_or(format!("{MANIFEST}: no tensors"))? {
            let sum = if let Some(rows) = t["rows"].as_array() {
                Sum::Rows(rows.iter().map(|r| u32_of(r, name)).collect::<Result<_, _>>()?)
            } else {
                Sum::Whole(u32_of(&t["crc32"], name)?)
            };
            m.tensors.insert(name.clone(), sum);
        }
        Ok(m)
    }

    /// The size the manifest gives file `name`.
    pub fn file_len(&self, name: &str) -> Option<u64> {
        self.files.get(name).copied()
    }

    /// Checks the bytes of tensor `name` (a stored name).
    pub fn check_tensor(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        match self.tensors.get(name) {
            Some(Sum::Whole(want)) => {
                let got = crc32(&[bytes]);
                (got == *want).then_some(()).ok_or(format!("checksum mismatch (CRC-32 {got:08x}, expected {want:08x})"))
            }
            Some(Sum::Rows(_)) => Err("the manifest has it by rows".into()),
            None => Err("not in the manifest".into()),
        }
    }

    /// Checks outer row `row` of tensor `name`: `parts` are its bytes in order (values, then scales).
    pub fn check_row(&self, name: &str, row: usize, parts: &[&[u8]]) -> Result<(), String> {
        match self.tensors.get(name) {
            Some(Sum::Rows(rows)) => {
                let want = rows.get(row).ok_or(format!("the manifest has {} rows, not row {row}", rows.len()))?;
                let got = crc32(parts);
                (got == *want).then_some(()).ok_or(format!("checksum mismatch (CRC-32 {got:08x}, expected {want:08x})"))
            }
            Some(Sum::Whole(_)) => Err("the manifest has it whole, not by rows".into()),
            None => Err("not in the manifest".into()),
        }
    }
}

/// The manifest entry of one tensor, given a way to read byte ranges of its file.
pub fn tensor_entry(
    t: &HeaderTensor,
    read: &mut dyn FnMut(usize, usize) -> Result<Vec<u8>, String>,
) -> Result<serde_json::Value, String> {
    match t.dtype {
        Some(dt) if is_routed_expert(t.logical()) => {
            let mut rows = Vec::with_capacity(t.shape.first().copied().unwrap_or(0));
            for e in 0..t.shape.first().copied().unwrap_or(0) {
                let rr = herd_core::quant::row_ranges(dt, &t.shape, e)?;
                let v = read(t.start + rr.values.start, t.start + rr.values.end)?;
                let s = read(t.start + rr.scales.start, t.start + rr.scales.end)?;
                rows.push(crc32(&[&v, &s]));
            }
            Ok(serde_json::json!({ "rows": rows }))
        }
        _ => Ok(serde_json::json!({ "crc32": crc32(&[&read(t.start, t.end)?]) })),
    }
}

/// The manifest of the checkpoint in `dir` (`model.safetensors`, or the shards its index lists), read
/// tensor by tensor. The index is read and checked as loading reads it ([`herd_core::checkpoint::parse_index`]:
/// a shard named outside the directory is refused), and each shard is opened only if it is a regular file.
#[cfg(not(target_arch = "wasm32"))]
pub fn build(dir: &std::path::Path) -> Result<serde_json::Value, String> {
    use std::io::{Read, Seek, SeekFrom};
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<String> = if index.exists() {
        let bytes =
            herd_core::limits::read_input(&index, herd_core::limits::InputKind::Index).map_err(|e| e.to_string())?;
        herd_core::checkpoint::parse_index(&bytes).map_err(|e| format!("{}: {e}", index.display()))?
    } else {
        vec!["model.safetensors".into()]
    };
    let mut files_json = serde_json::Map::new();
    let mut tensors_json = serde_json::Map::new();
    for name in files {
        let path = dir.join(&name);
        let mut file = open_regular(&path)?;
        let len = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len() as usize;
        let mut read = |a: usize, b: usize| -> Result<Vec<u8>, String> {
            let mut buf = vec![0u8; b - a];
            file.seek(SeekFrom::Start(a as u64))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(buf)
        };
        let n = herd_core::checkpoint::header_len(&name, &read(0, 8.min(len))?).map_err(|e| e.to_string())?;
        let head = read(0, n.min(len))?;
        let tensors = herd_core::checkpoint::parse_header(&name, &head, len).map_err(|e| e.to_string())?;
        for t in &tensors {
            tensors_json.insert(t.name.clone(), tensor_entry(t, &mut read)?);
        }
        files_json.insert(name, serde_json::json!({ "bytes": len }));
    }
    Ok(serde_json::json!({
        "format": "herd-manifest", "version": 1, "checksum": "crc32", "files": files_json, "tensors": tensors_json,
    }))
}

/// Opens a checkpoint file for reading if it is a regular file (links followed), never a FIFO, device or
/// directory: checked before the open, which does not block (a FIFO swapped in cannot hang it), and again on
/// the open file.
#[cfg(not(target_arch = "wasm32"))]
fn open_regular(path: &std::path::Path) -> Result<std::fs::File, String> {
    let refuse = || format!("{}: is not a regular file (a directory, device or FIFO)", path.display());
    if !std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.is_file() {
        return Err(refuse());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: the same value on every Linux architecture; the BSDs and macOS use 4. A regular file
        // reads as it would without it.
        opts.custom_flags(if cfg!(any(target_os = "linux", target_os = "android")) { 0o4000 } else { 4 });
    }
    let file = opts.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !file.metadata().map_err(|e| format!("{}: {e}", path.display()))?.is_file() {
        return Err(refuse());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
    }

    /// The manifest made from a fixture checks every tensor and every expert row of that file, and catches a
    /// single flipped bit in any of them.
    #[test]
    fn the_manifest_checks_every_tensor_and_expert_and_catches_a_flipped_bit() {
        let dir = fixture("scout");
        let m = Manifest::parse(build(&dir).unwrap().to_string().as_bytes()).unwrap();
        let file = std::fs::read(dir.join("model.safetensors")).unwrap();
        assert_eq!(m.file_len("model.safetensors"), Some(file.len() as u64));
        let n = herd_core::checkpoint::header_len("f", &file).unwrap();
        let tensors = herd_core::checkpoint::parse_header("f", &file[..n], file.len()).unwrap();
        let mut experts = 0;
        for t in &tensors {
            let mut bytes = file[t.start..t.end].to_vec();
            if is_routed_expert(t.logical()) {
                experts += 1;
                let dt = t.dtype.unwrap();
                for e in 0..t.shape[0] {
                    let rr = herd_core::quant::row_ranges(dt, &t.shape, e).unwrap();
                    let (v, s) = (&bytes[rr.values.clone()], &bytes[rr.scales.clone()]);
                    m.check_row(&t.name, e, &[v, s]).unwrap();
                }
                let rr = herd_core::quant::row_ranges(dt, &t.shape, 1).unwrap();
                bytes[rr.values.start + 3] ^= 0x10;
                let err = m.check_row(&t.name, 1, &[&bytes[rr.values.clone()], &bytes[rr.scales.clone()]]);
                assert!(err.unwrap_err().contains("checksum mismatch"), "{}", t.name);
                assert!(m.check_row(&t.name, t.shape[0], &[]).is_err());
            } else {
                m.check_tensor(&t.name, &bytes).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 1;
                assert!(m.check_tensor(&t.name, &bytes).unwrap_err().contains("checksum mismatch"), "{}", t.name);
            }
        }
        assert!(experts >= 2, "the fixture has {experts} routed expert tensors");
        assert!(m.check_tensor("no.such.tensor", &[]).is_err());
    }

    #[test]
    fn a_manifest_of_another_kind_is_refused() {
        for bad in
            [&b"{"[..], br#"{"format": "other"}"#, br#"{"format": "herd-manifest", "version": 2, "checksum": "crc32"}"#]
        {
            assert!(Manifest::parse(bad).is_err());
        }
        let ok = br#"{"format": "herd-manifest", "version": 1, "checksum": "crc32", "files": {}, "tensors": {"t": {"crc32": -1}}}"#;
        assert!(Manifest::parse(ok).unwrap_err().contains("CRC-32"));
    }
}
