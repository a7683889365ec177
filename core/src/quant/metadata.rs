//! How a quantized tensor is described in a safetensors file's metadata.

use super::{DType, GroupAxis, Grouping, QuantLayout, ScaleType};

/// The safetensors metadata key that marks tensor `name` as quantized (its bytes, stored as U8 [len], are in
/// the layout of this module) and the value that describes it: `q4;group=32;scale=bf16;axis=last;shape=4096,5120`.
pub fn metadata_key(name: &str) -> String {
    format!("herd.quant.{name}")
}

pub fn metadata_value(dtype: DType, shape: &[usize]) -> Option<String> {
    let g = dtype.grouping()?;
    let scale = match g.scale {
        ScaleType::F16 => "f16",
        ScaleType::BF16 => "bf16",
    };
    let axis = match g.axis {
        GroupAxis::Last => "last",
        GroupAxis::SecondLast => "second-last",
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    Some(format!("{};group={};scale={scale};axis={axis};shape={}", dtype.name(), g.group, dims.join(",")))
}

/// Parses [`metadata_value`]'s text back into the format and the logical shape.
pub fn parse_metadata(v: &str) -> std::result::Result<(DType, Vec<usize>), String> {
    let mut parts = v.split(';');
    let kind = parts.next().unwrap_or("");
    let (mut group, mut scale, mut axis, mut shape) = (None, None, None, None);
    for p in parts {
        let (k, val) = p.split_once('=').ok_or_else(|| format!("bad field {p:?}"))?;
        match k {
            "group" => group = val.parse::<u32>().ok(),
            "scale" => {
                scale = match val {
                    "f16" => Some(ScaleType::F16),
                    "bf16" => Some(ScaleType::BF16),
                    _ => None,
                }
            }
            "axis" => {
                axis = match val {
                    "last" => Some(GroupAxis::Last),
                    "second-last" => Some(GroupAxis::SecondLast),
                    _ => None,
                }
            }
            "shape" => shape = val.split(',').map(|d| d.parse::<usize>().ok()).collect::<Option<Vec<_>>>(),
            _ => return Err(format!("unknown field {k:?}")),
        }
    }
    let g = match (group, scale, axis) {
        (Some(group), Some(scale), Some(axis)) if group > 0 => Grouping { group, scale, axis },
        _ => return Err(format!("incomplete quantization description {v:?}")),
    };
    let shape = shape.ok_or_else(|| format!("no shape in {v:?}"))?;
    let dt = match kind {
        "q4" => DType::Q4(g),
        "q8" => DType::Q8(g),
        _ => return Err(format!("unknown quantized format {kind:?}")),
    };
    QuantLayout::new(dt, &shape)?;
    Ok((dt, shape))
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_and_bad_ones_fail() {
        let dt = DType::Q4(Grouping { group: 32, scale: ScaleType::BF16, axis: GroupAxis::SecondLast });
        let v = metadata_value(dt, &[4, 64, 256]).unwrap();
        assert_eq!(v, "q4;group=32;scale=bf16;axis=second-last;shape=4,64,256");
        assert_eq!(parse_metadata(&v).unwrap(), (dt, vec![4, 64, 256]));
        for bad in [
            "q5;group=32;scale=bf16;axis=last;shape=4,64",
            "q4;group=32;scale=bf16;axis=last;shape=4,48",
            "q4;group=32;scale=bf16",
            "q4;group=x;scale=bf16;axis=last;shape=4,64",
            "q4;color=red",
        ] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }
        assert_eq!(metadata_value(DType::BF16, &[2]), None);
    }
}
