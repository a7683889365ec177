//! Typed kernel calls. Every WGSL entry point reads its parameters as one struct declared in its .wgsl file
//! (`struct MatmulParams { m: u32, ... }`); the host fills the `#[repr(C)]` twin of the same name, declared
//! here with [`params!`], and [`crate::gpu::Gpu::dispatch`] copies its bytes into the dispatch's uniform
//! slot. Entry points are named by enums ([`kernels!`]) whose type fixes the parameter struct, so a call
//! cannot pair an entry point with another kernel's parameters. `tests/layout.rs` checks every pair against
//! Naga's reading of the WGSL: the struct's field names, types and offsets, and which struct each entry
//! point (and every function it calls) loads.
//!
//! In WGSL the struct is loaded with `load_<Name>()`, a function [`loaders`] generates from the declaration
//! (field i is word i of the uniform slot), so the declaration is the only statement of the layout.

use crate::shader::Shader;

/// A kernel's parameter struct: `#[repr(C)]`, 4-byte fields, at most [`MAX_PARAM_BYTES`].
// The name, fields and variant lists serve the layout test.
#[cfg_attr(not(test), allow(dead_code))]
pub trait Params: bytemuck::Pod {
    /// The struct's name, the same in the .wgsl file.
    const NAME: &'static str;
    /// (field name, byte offset, Rust type) in declaration order.
    fn fields() -> Vec<(&'static str, usize, &'static str)>;
}

/// The uniform block every entry point reads its parameters from holds 16 words.
pub const MAX_PARAM_BYTES: usize = 64;

/// An entry point: its .wgsl file, its name and the parameter struct it loads.
#[cfg_attr(not(test), allow(dead_code))]
pub trait Kernel: Copy + std::fmt::Debug + 'static {
    type Params: Params;
    fn shader(self) -> Shader;
    fn entry(self) -> &'static str;
    /// Every variant, for the layout test.
    fn all() -> &'static [Self];
}

/// Declares parameter structs: `#[repr(C)]`, Pod, with their field list for the layout test.
macro_rules! params {
    ($($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ident),* $(,)? })*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl $crate::kernel::Params for $name {
            const NAME: &'static str = stringify!($name);
            fn fields() -> Vec<(&'static str, usize, &'static str)> {
                vec![$((stringify!($f), std::mem::offset_of!($name, $f), stringify!($t))),*]
            }
        }
    )*};
}
pub(crate) use params;

/// Declares an enum of entry points of one .wgsl file that share one parameter struct.
macro_rules! kernels {
    ($(#[$m:meta])* pub enum $name:ident: $shader:ident, $params:ident { $($(#[$vm:meta])* $v:ident => $entry:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $crate::kernel::Kernel for $name {
            type Params = $params;
            fn shader(self) -> $crate::shader::Shader {
                $crate::shader::Shader::$shader
            }
            fn entry(self) -> &'static str {
                match self { $($name::$v => $entry),* }
            }
            fn all() -> &'static [Self] {
                &[$($name::$v),*]
            }
        }
    };
}
pub(crate) use kernels;

/// `fn load_<Name>() -> <Name>` for every `struct <Name>Params { .. }` in `source`: field i is word i of the
/// uniform `params` block (u32 as is, f32 and i32 bitcast). A field of another type makes an invalid
/// shader whose error names it.
pub(crate) fn loaders(source: &str) -> String {
    let mut out = String::new();
    let mut rest = source;
    while let Some(at) = rest.find("struct ") {
        rest = &rest[at + 7..];
        let Some(open) = rest.find('{') else { break };
        let name = rest[..open].trim();
        let Some(close) = rest[open..].find('}') else { break };
        let body = &rest[open + 1..open + close];
        rest = &rest[open + close..];
        if !name.ends_with("Params") || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let fields: Vec<String> = body
            .split(',')
            .filter_map(|f| f.split_once(':'))
            .enumerate()
            .map(|(i, (_, ty))| match ty.trim() {
                "u32" => format!("pu({i}u)"),
                "f32" => format!("bitcast<f32>(pu({i}u))"),
                "i32" => format!("bitcast<i32>(pu({i}u))"),
                other => format!("unsupported_parameter_type_{}", other.replace(|c: char| !c.is_alphanumeric(), "_")),
            })
            .collect();
        out.push_str(&format!("fn load_{name}() -> {name} {{ return {name}({}); }}\n", fields.join(", ")));
    }
    out
}

/// Workgroups for `n` items, `per` per workgroup.
pub(crate) fn groups(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
}
