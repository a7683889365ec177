//! Reading config.json fields with the file's own names in errors, and bounds on sizes.

use serde_json::{Map, Value};

use crate::error::{HerdError, Result};

/// A view of one JSON object with the field-path prefix used in error messages. Token ids and dtype may
/// sit on the top-level object instead of the text config, so `root` is consulted for those.
pub(crate) struct Fields<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    pub(crate) root: &'a Map<String, Value>,
    pub(crate) prefix: &'a str,
}

impl Fields<'_> {
    pub(crate) fn name(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }
    /// The value, treating JSON null as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    pub(crate) fn usize_req(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(HerdError::config(self.name(key), "missing")),
            Some(v) => as_usize(v)
                .ok_or_else(|| HerdError::config(self.name(key), format!("expected a non-negative integer, got {v}"))),
        }
    }
    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize_req(key),
        }
    }
    pub(crate) fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.usize_req(key).map(Some),
        }
    }
    pub(crate) fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| HerdError::config(self.name(key), format!("expected a number, got {v}"))),
        }
    }
    /// Booleans; integers count by truthiness (old configs store `attn_temperature_tuning: 4`).
    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) => Ok(n.as_f64() != Some(0.0)),
            Some(v) => Err(HerdError::config(self.name(key), format!("expected a boolean, got {v}"))),
        }
    }
    /// A token id or list of ids, looked up in the text config and then at the top level.
    pub(crate) fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let v = self.get(key).or_else(|| self.root.get(key).filter(|v| !v.is_null()));
        match v {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    as_usize(x)
                        .map(|x| x as u32)
                        .ok_or_else(|| HerdError::config(self.name(key), format!("expected token ids, got {x}")))
                })
                .collect(),
            Some(x) => as_usize(x)
                .map(|x| vec![x as u32])
                .ok_or_else(|| HerdError::config(self.name(key), format!("expected a token id, got {x}"))),
        }
    }
}

/// A bound from [`crate::limits::config`]: sizes beyond it are refused before anything is derived from them.
pub(crate) fn check_max(f: &Fields, key: &str, v: usize, max: usize) -> Result<()> {
    if v > max {
        return Err(HerdError::config(
            f.name(key),
            format!("{v} is beyond herd's limit of {max} (published Llama 4 models are far below it)"),
        ));
    }
    Ok(())
}

pub(crate) fn as_usize(v: &Value) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return usize::try_from(u).ok();
    }
    // 8192.0 is an integer too.
    v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e18).map(|f| f as usize)
}
