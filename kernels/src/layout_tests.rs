//! Every kernel's parameter struct is declared twice, in its .cu file and in Rust (`params!`); these tests
//! check that the twins agree and that every entry point takes the struct its Rust kernel type names. The
//! .cu files are read by the C++ compiler (the emulator's), so offsets and sizes are the compiler's own:
//! each Rust field's offset, size and kind and each struct's size become `static_assert`s compiled after
//! the family's source. A field swapped, renamed, retyped, added or dropped on either side fails here.

use std::collections::{BTreeMap, BTreeSet};

use crate::emu::build::{check_compiles, preprocess};
use crate::kernel::{FieldInfo, FieldKind, Kernel, Params};
use crate::nvrtc::FAMILIES;
use crate::{attention, elementwise, layer_norm, matmul, moe, rms_norm, rope, sample};

/// An entry point as the Rust side declares it.
struct Entry {
    family: &'static str,
    entry: String,
    params: &'static str,
    fields: &'static [FieldInfo],
    size: usize,
}

fn entries<K: Kernel>() -> Vec<Entry> {
    K::all()
        .iter()
        .map(|k| Entry {
            family: K::FAMILY,
            entry: k.entry().into_owned(),
            params: K::Params::NAME,
            fields: K::Params::FIELDS,
            size: std::mem::size_of::<K::Params>(),
        })
        .collect()
}

/// Every kernel type of the backend.
fn all_entries() -> Vec<Entry> {
    [
        entries::<attention::AttnDecode>(),
        entries::<attention::AttnCombine>(),
        entries::<attention::AttnPrefill>(),
        entries::<attention::KvStore>(),
        entries::<attention::KvQ4Pages>(),
        entries::<attention::KvQ4Stage>(),
        entries::<elementwise::Embed>(),
        entries::<elementwise::EmbedQ>(),
        entries::<elementwise::Add>(),
        entries::<elementwise::SiluMul>(),
        entries::<elementwise::GatherRows>(),
        entries::<elementwise::Synth>(),
        entries::<elementwise::SynthQ>(),
        entries::<layer_norm::LayerNorm>(),
        entries::<layer_norm::BiasAct>(),
        entries::<matmul::Gemv>(),
        entries::<matmul::Swiglu>(),
        entries::<matmul::GemvQ>(),
        entries::<matmul::TiledQ>(),
        entries::<matmul::SplitBf16>(),
        entries::<moe::RouterTopk>(),
        entries::<moe::MoeGemv>(),
        entries::<moe::MoeGemvQ>(),
        entries::<moe::MoeAct>(),
        entries::<moe::MoeSum>(),
        entries::<moe::MoeRoute>(),
        entries::<moe::MoeTile>(),
        entries::<moe::MoeMma>(),
        entries::<rms_norm::RmsNorm>(),
        entries::<rms_norm::AddRmsNorm>(),
        entries::<rope::Rope>(),
        entries::<sample::Sample>(),
        entries::<sample::MaskLogits>(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The field names of `struct NAME { ... };` in preprocessed source, in order.
fn declared_fields(pre: &str, name: &str) -> Option<Vec<String>> {
    let at = pre.find(&format!("struct {name} {{"))?;
    let body = &pre[at..];
    let body = &body[body.find('{')? + 1..body.find("};")?];
    Some(
        body.split(';')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("").to_owned())
            .collect(),
    )
}

/// The C++ type test for a field kind.
fn kind_check(kind: FieldKind, ty: &str) -> String {
    match kind {
        FieldKind::Ptr => format!("herd_layout::is_ptr<{ty}>"),
        FieldKind::U32 => format!("herd_layout::same<{ty}, unsigned int>"),
        FieldKind::U64 => format!("herd_layout::same<{ty}, unsigned long long>"),
        FieldKind::F32 => format!("herd_layout::same<{ty}, float>"),
    }
}

/// What is wrong with one family: each message names the kernel or struct.
fn family_problems(family: &str, src: &str, entries: &[&Entry]) -> Vec<String> {
    let dir = std::env::temp_dir().join("herd-cuda-layout");
    let (pre, decls) = match preprocess(&dir, family, src, false) {
        Ok(r) => r,
        Err(e) => return vec![format!("{family}.cu: {e}")],
    };
    let mut problems = Vec::new();
    // Each entry point exists and takes the struct its Rust type names, and nothing else.
    let named: BTreeSet<&str> = entries.iter().map(|e| e.entry.as_str()).collect();
    for e in entries {
        match decls.iter().find(|d| d.name == e.entry) {
            None => problems.push(format!("{family}.cu has no kernel {} (Rust names it)", e.entry)),
            Some(d) if d.params != [format!("const {}", e.params)] => problems.push(format!(
                "kernel {} takes ({}), Rust passes one `const {}`",
                e.entry,
                d.params.join(", "),
                e.params
            )),
            Some(_) => {}
        }
    }
    for d in &decls {
        if !named.contains(d.name.as_str()) {
            problems.push(format!("kernel {} in {family}.cu has no Rust kernel type", d.name));
        }
    }
    // The structs: field names in order from the declaration, then offsets, sizes and kinds asserted.
    let mut structs: BTreeMap<&str, (&[FieldInfo], usize)> = BTreeMap::new();
    for e in entries {
        structs.insert(e.params, (e.fields, e.size));
    }
    // No headers: the preprocessed source already holds what emu.h included.
    let mut asserts = String::from(
        "\nnamespace herd_layout {\n\
         template <class T> constexpr bool is_ptr = false;\n\
         template <class T> constexpr bool is_ptr<T*> = true;\n\
         template <class A, class B> constexpr bool same = false;\n\
         template <class A> constexpr bool same<A, A> = true;\n}\n",
    );
    for (name, (fields, size)) in &structs {
        let rust: Vec<&str> = fields.iter().map(|f| f.name).collect();
        match declared_fields(&pre, name) {
            None => problems.push(format!("{family}.cu declares no struct {name}")),
            Some(cu) if cu != rust => problems.push(format!(
                "{name}: fields ({}) in {family}.cu, ({}) in Rust",
                cu.join(", "),
                rust.join(", ")
            )),
            Some(_) => {}
        }
        asserts += &format!("static_assert(sizeof({name}) == {size}, \"{name}: {size} bytes in Rust\");\n");
        for f in fields.iter() {
            let ty = format!("decltype({name}::{})", f.name);
            asserts += &format!(
                "static_assert(__builtin_offsetof({name}, {0}) == {1}, \"{name}.{0}: at byte {1} in Rust\");\n\
                 static_assert(sizeof({ty}) == {2} && {3}, \"{name}.{0}: {4:?} of {2} bytes in Rust\");\n",
                f.name,
                f.offset,
                f.size,
                kind_check(f.kind, &ty),
                f.kind,
            );
        }
    }
    if let Err(e) = check_compiles(&dir, family, &pre, &asserts) {
        problems.push(e.to_string());
    }
    problems
}

/// Every CUDA kernel's parameter struct matches its Rust twin (a field swapped in either fails this).
#[test]
fn every_kernel_parameter_struct_matches_its_rust_twin() {
    if !crate::emu::available() {
        herd_core::not_run("cuda parameter layout", Some("HERD_REQUIRE_CUDA_EMU"), &"no C++ compiler");
        return;
    }
    let all = all_entries();
    let mut problems = Vec::new();
    for (family, src) in FAMILIES {
        let mine: Vec<&Entry> = all.iter().filter(|e| e.family == family).collect();
        problems.extend(family_problems(family, src, &mine));
    }
    for e in &all {
        assert!(FAMILIES.iter().any(|f| f.0 == e.family), "kernel {} names no family {}", e.entry, e.family);
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    eprintln!("cuda parameter layout: {} entry points checked", all.len());
}

/// The check sees a difference: two fields of one struct swapped on the Rust side, a renamed kernel.
#[test]
fn the_layout_check_sees_a_swapped_field() {
    if !crate::emu::available() {
        herd_core::not_run("cuda parameter layout", None, &"no C++ compiler");
        return;
    }
    let src = FAMILIES.iter().find(|f| f.0 == "elementwise").map(|f| f.1).unwrap_or_default();
    static SWAPPED: [FieldInfo; 4] = [
        FieldInfo { name: "x", offset: 0, size: 8, kind: FieldKind::Ptr },
        FieldInfo { name: "acc", offset: 8, size: 8, kind: FieldKind::Ptr },
        FieldInfo { name: "n", offset: 16, size: 4, kind: FieldKind::U32 },
        FieldInfo { name: "pad", offset: 20, size: 4, kind: FieldKind::U32 },
    ];
    let all = all_entries();
    let mut mine: Vec<&Entry> = all.iter().filter(|e| e.family == "elementwise" && e.params != "AddParams").collect();
    let swapped = Entry { family: "elementwise", entry: "add".into(), params: "AddParams", fields: &SWAPPED, size: 24 };
    mine.push(&swapped);
    let problems = family_problems("elementwise", src, &mine);
    assert!(problems.iter().any(|p| p.contains("AddParams: fields (acc, x, n, pad)")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("AddParams.x: at byte 0 in Rust")), "{problems:?}");
    // A kernel with no Rust type.
    let fewer: Vec<&Entry> = all.iter().filter(|e| e.family == "elementwise" && e.entry != "gather_rows").collect();
    let problems = family_problems("elementwise", src, &fewer);
    assert!(
        problems.iter().any(|p| p.contains("kernel gather_rows in elementwise.cu has no Rust kernel type")),
        "{problems:?}"
    );
}
