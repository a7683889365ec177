//! Host and shader agree on every kernel's parameters: for each entry-point enum, Naga's reading of the
//! composed WGSL must declare the parameter struct with the host struct's field names, types and offsets,
//! and the entry point (with every function it calls) must load that struct and no other. Every entry point
//! of every .wgsl file must belong to some enum.

use std::collections::{BTreeSet, HashSet};

use naga::{Block, Handle, Module, ScalarKind, Statement, TypeInner};

use crate::kernel::{Kernel, Params, MAX_PARAM_BYTES};
use crate::shader::{compose, Shader};

fn module(shader: Shader) -> Module {
    let src = compose(shader, 0, false, false);
    naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{shader:?}: {}", e.emit_to_string(&src)))
}

/// The `load_*` functions reached from `block`, through the functions it calls.
fn loads(m: &Module, block: &Block, seen: &mut HashSet<Handle<naga::Function>>, out: &mut BTreeSet<String>) {
    for st in block.iter() {
        match st {
            Statement::Call { function, .. } => {
                let f = &m.functions[*function];
                let name = f.name.clone().unwrap_or_default();
                if name.starts_with("load_") {
                    out.insert(name);
                } else if seen.insert(*function) {
                    loads(m, &f.body, seen, out);
                }
            }
            Statement::Block(b) => loads(m, b, seen, out),
            Statement::If { accept, reject, .. } => {
                loads(m, accept, seen, out);
                loads(m, reject, seen, out);
            }
            Statement::Switch { cases, .. } => cases.iter().for_each(|c| loads(m, &c.body, seen, out)),
            Statement::Loop { body, continuing, .. } => {
                loads(m, body, seen, out);
                loads(m, continuing, seen, out);
            }
            _ => {}
        }
    }
}

/// A struct's fields as (name, byte offset, type).
type Fields = Vec<(String, usize, &'static str)>;

/// The struct `name` of `m`, and its size.
fn wgsl_struct(m: &Module, name: &str) -> Option<(Fields, usize)> {
    m.types.iter().find(|(_, t)| t.name.as_deref() == Some(name)).map(|(_, t)| {
        let TypeInner::Struct { members, span } = &t.inner else { panic!("{name} is not a struct") };
        let fields = members
            .iter()
            .map(|f| {
                let ty = match &m.types[f.ty].inner {
                    TypeInner::Scalar(s) if s.width == 4 && s.kind == ScalarKind::Uint => "u32",
                    TypeInner::Scalar(s) if s.width == 4 && s.kind == ScalarKind::Float => "f32",
                    TypeInner::Scalar(s) if s.width == 4 && s.kind == ScalarKind::Sint => "i32",
                    other => panic!("{name}.{:?}: {other:?} is not a 4-byte scalar", f.name),
                };
                (f.name.clone().unwrap_or_default(), f.offset as usize, ty)
            })
            .collect();
        (fields, *span as usize)
    })
}

/// Every variant of `K` against its module; returns the entry points it covers.
fn check<K: Kernel>(errors: &mut Vec<String>) -> Vec<(Shader, &'static str)> {
    let name = K::Params::NAME;
    let host: Vec<(String, usize, &str)> =
        K::Params::fields().into_iter().map(|(f, o, t)| (f.to_string(), o, t)).collect();
    let size = std::mem::size_of::<K::Params>();
    if size > MAX_PARAM_BYTES {
        errors.push(format!("{name}: {size} bytes, more than the {MAX_PARAM_BYTES} of the uniform block"));
    }
    let mut covered = Vec::new();
    let mut checked = Vec::new();
    for &k in K::all() {
        let m = module(k.shader());
        if !checked.contains(&k.shader()) {
            checked.push(k.shader());
            match wgsl_struct(&m, name) {
                None => errors.push(format!("{k:?}: {:?}.wgsl declares no struct {name}", k.shader())),
                Some((fields, span)) if fields != host || span != size => errors.push(format!(
                    "{name}: the host has {host:?} ({size} bytes), {:?}.wgsl {fields:?} ({span} bytes)",
                    k.shader()
                )),
                Some(_) => {}
            }
        }
        let Some(ep) = m.entry_points.iter().find(|e| e.name == k.entry()) else {
            errors.push(format!("{k:?}: no entry point {} in {:?}.wgsl", k.entry(), k.shader()));
            continue;
        };
        let mut got = BTreeSet::new();
        loads(&m, &ep.function.body, &mut HashSet::new(), &mut got);
        let want = BTreeSet::from([format!("load_{name}")]);
        if got != want {
            errors.push(format!("{k:?}: entry point {} loads {got:?}, the host passes {name}", k.entry()));
        }
        covered.push((k.shader(), k.entry()));
    }
    covered
}

#[test]
fn every_kernel_reads_the_parameters_the_host_writes() {
    use crate::{attention, elementwise, layer_norm, matmul, moe, rms_norm, rope, sample};
    let mut errors = Vec::new();
    let mut covered = Vec::new();
    covered.extend(check::<elementwise::Eltwise>(&mut errors));
    covered.extend(check::<elementwise::Gather>(&mut errors));
    covered.extend(check::<elementwise::Embed>(&mut errors));
    covered.extend(check::<rms_norm::RmsNorm>(&mut errors));
    covered.extend(check::<layer_norm::LayerNorm>(&mut errors));
    covered.extend(check::<layer_norm::BiasAct>(&mut errors));
    covered.extend(check::<rope::Rope>(&mut errors));
    covered.extend(check::<matmul::Matmul>(&mut errors));
    covered.extend(check::<attention::Attention>(&mut errors));
    covered.extend(check::<attention::KvStore>(&mut errors));
    covered.extend(check::<moe::Router>(&mut errors));
    covered.extend(check::<moe::Moe>(&mut errors));
    covered.extend(check::<moe::MoeRoute>(&mut errors));
    covered.extend(check::<moe::MoeGemv>(&mut errors));
    covered.extend(check::<moe::MoeAct>(&mut errors));
    covered.extend(check::<moe::MoeSum>(&mut errors));
    covered.extend(check::<sample::Sample>(&mut errors));
    covered.extend(check::<sample::MaskLogits>(&mut errors));
    for shader in Shader::ALL {
        for ep in module(shader).entry_points {
            if !covered.iter().any(|&(s, e)| s == shader && e == ep.name) {
                errors.push(format!("{shader:?}.wgsl: entry point {} has no kernel enum on the host", ep.name));
            }
        }
    }
    assert!(errors.is_empty(), "{} mismatches:\n{}", errors.len(), errors.join("\n"));
}

/// The check can fail: a struct with two fields swapped, or a field of another type, reads differently.
#[test]
fn the_layout_check_catches_a_swap() {
    let src = compose(Shader::Rope, 0, false, false);
    let swapped =
        src.replacen("struct RopeParams { rows: u32, heads: u32,", "struct RopeParams { heads: u32, rows: u32,", 1);
    assert_ne!(src, swapped);
    let m = naga::front::wgsl::parse_str(&swapped).unwrap();
    let (fields, _) = wgsl_struct(&m, "RopeParams").unwrap();
    let host: Fields =
        <crate::rope::RopeParams as Params>::fields().into_iter().map(|(f, o, t)| (f.to_string(), o, t)).collect();
    assert_ne!(fields, host);
    let retyped = src.replacen("eps: f32 }", "eps: u32 }", 1);
    let m = naga::front::wgsl::parse_str(&retyped).unwrap();
    assert_ne!(wgsl_struct(&m, "RopeParams").unwrap().0, host);
    let m = module(Shader::Rope);
    assert_eq!(wgsl_struct(&m, "RopeParams").unwrap().0, host);
}
