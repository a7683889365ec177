//! Which format each tensor gets when a model is quantized.

use super::{DType, GroupAxis, Grouping, QuantLayout, ScaleType};

/// Which format each tensor of a model gets when it is quantized (`herd quantize`, and `herd bench
/// --synthetic --quant`): every matrix in `bits`-bit integers with groups of `group` along its reduction
/// axis (nn.Linear weights and the embedding: the last axis; the fused expert tensors: the second-last),
/// except 1-D tensors (norms), the router, and any tensor whose name contains one of `keep`. A matrix whose
/// grouped axis `group` does not divide also keeps its format.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPlan {
    pub bits: u32,
    pub group: u32,
    pub scale: ScaleType,
    pub keep: Vec<String>,
}

impl QuantPlan {
    /// `q4`, `q8`, or with a group size: `q4g32`, `q8g128` (default group 128, bf16 scales).
    pub fn parse(format: &str) -> std::result::Result<QuantPlan, String> {
        let bad = || format!("unknown weight format {format:?} (q4, q8, optionally with a group size: q4g32, q8g128)");
        let rest = format.strip_prefix('q').ok_or_else(bad)?;
        let (bits, group) = match rest.split_once('g') {
            Some((b, g)) => (b, g.parse::<u32>().map_err(|_| bad())?),
            None => (rest, 128),
        };
        let bits = match bits {
            "4" => 4,
            "8" => 8,
            _ => return Err(bad()),
        };
        if group == 0 || group % 8 != 0 || group > 4096 {
            return Err(format!("group size {group}: it must be a multiple of 8 up to 4096 (32 and 128 are usual)"));
        }
        Ok(QuantPlan { bits, group, scale: ScaleType::BF16, keep: Vec::new() })
    }

    /// The format tensor `name` of `shape` gets, or None to keep its own.
    pub fn format_of(&self, name: &str, shape: &[usize]) -> Option<DType> {
        // The router stays exact; the vision tower's positional embedding is a table added to activations,
        // not a matrix multiplied by them.
        if shape.len() < 2
            || name.contains("router")
            || name.contains("positional_embedding")
            || self.keep.iter().any(|k| name.contains(k.as_str()))
        {
            return None;
        }
        let axis = if shape.len() == 3 && name.contains("experts.") { GroupAxis::SecondLast } else { GroupAxis::Last };
        let g = Grouping { group: self.group, scale: self.scale, axis };
        let dt = if self.bits == 8 { DType::Q8(g) } else { DType::Q4(g) };
        QuantLayout::new(dt, shape).ok().map(|_| dt)
    }

    /// A short name, e.g. `q4g128`.
    pub fn name(&self) -> String {
        format!("q{}g{}", self.bits, self.group)
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    #[test]
    fn plans_parse_and_choose_per_tensor() {
        let p = QuantPlan::parse("q4").unwrap();
        assert_eq!((p.bits, p.group), (4, 128));
        assert_eq!(QuantPlan::parse("q8g32").unwrap().group, 32);
        for bad in ["q3", "q4g0", "q4g12", "int4", "q4gx", ""] {
            assert!(QuantPlan::parse(bad).is_err(), "{bad}");
        }
        let p = QuantPlan { keep: vec!["self_attn".into()], ..QuantPlan::parse("q4g32").unwrap() };
        assert_eq!(p.format_of("model.norm.weight", &[64]), None);
        assert_eq!(p.format_of("model.layers.0.feed_forward.router.weight", &[4, 64]), None);
        assert_eq!(p.format_of("model.layers.0.self_attn.q_proj.weight", &[64, 64]), None);
        let up = p.format_of("model.layers.0.feed_forward.experts.gate_up_proj", &[4, 64, 256]).unwrap();
        assert_eq!(up.grouping().unwrap().axis, GroupAxis::SecondLast);
        let lm = p.format_of("lm_head.weight", &[512, 64]).unwrap();
        assert_eq!(lm.grouping().unwrap().axis, GroupAxis::Last);
        // 32 does not divide 48: kept.
        assert_eq!(p.format_of("lm_head.weight", &[512, 48]), None);
    }
}
