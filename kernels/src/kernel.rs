//! Typed kernel calls. Every CUDA entry point takes one argument, its parameter struct, declared in its .cu
//! file (`struct MatmulParams { const float* x; ... }`, read by name in the kernel: `p.x`); the host fills
//! the `#[repr(C)]` twin of the same name, declared here with [`params!`], and `CudaBackend::launch` passes
//! its bytes as that argument. Entry points are values of types that implement [`Kernel`] (declared with
//! [`kernel!`]), whose type fixes the parameter struct, so a call cannot pair an entry point with another
//! kernel's parameters. `layout_tests.rs` compiles every .cu file with the C++ compiler and checks every pair:
//! the fields' names, order, offsets, sizes and kinds, the struct's size, and that each entry point takes
//! the struct its Rust type names (and that every kernel in the .cu files has a Rust type).
//!
//! Pointers are [`DevPtr`]s: a device address, or a place in the step's metadata ([`DevPtr::meta`]) that
//! becomes an address when the command list is submitted (the metadata arena is allocated then).

use std::borrow::Cow;

use herd_core::quant::DType;

/// A device pointer parameter (a `T*` in the .cu struct).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DevPtr(u64);

/// Marks a [`DevPtr`] that is an offset into the step's metadata. No device address has this bit (CUDA's
/// unified address space and the emulator's heap addresses lie far below it).
const META: u64 = 1 << 63;

impl DevPtr {
    pub(crate) const NULL: DevPtr = DevPtr(0);
    pub(crate) fn new(addr: u64) -> DevPtr {
        DevPtr(addr)
    }
    /// `off` bytes into the step's metadata.
    pub(crate) fn meta(off: usize) -> DevPtr {
        DevPtr(META | off as u64)
    }
    /// The metadata offset, for a pointer made by [`DevPtr::meta`].
    pub(crate) fn meta_offset(self) -> Option<usize> {
        (self.0 & META != 0).then_some((self.0 & !META) as usize)
    }
    /// The device address, with the step's metadata at `meta_dev`.
    pub(crate) fn resolve(word: u64, meta_dev: u64) -> u64 {
        if word & META != 0 {
            meta_dev + (word & !META)
        } else {
            word
        }
    }
}

/// What a parameter field is, as the layout test compares it with the C++ declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FieldKind {
    Ptr,
    U32,
    U64,
    F32,
}

/// The C++-side kind of a Rust field type.
pub(crate) trait Field: bytemuck::Pod {
    const KIND: FieldKind;
}
impl Field for DevPtr {
    const KIND: FieldKind = FieldKind::Ptr;
}
impl Field for u32 {
    const KIND: FieldKind = FieldKind::U32;
}
impl Field for u64 {
    const KIND: FieldKind = FieldKind::U64;
}
impl Field for f32 {
    const KIND: FieldKind = FieldKind::F32;
}

/// One field of a parameter struct: name, byte offset, size and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FieldInfo {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
    pub kind: FieldKind,
}

/// A kernel's parameter struct: `#[repr(C)]`, Pod, the twin of the .cu struct of the same name.
pub(crate) trait Params: bytemuck::Pod {
    /// The struct's name, the same in the .cu file.
    #[cfg_attr(not(test), allow(dead_code))]
    const NAME: &'static str;
    /// Its fields in declaration order.
    const FIELDS: &'static [FieldInfo];

    /// The struct's bytes as 8-byte words (the launch argument; every struct holds a pointer, so its size is
    /// a multiple of 8).
    fn words(&self) -> Vec<u64> {
        let bytes = bytemuck::bytes_of(self);
        let mut w = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut w)[..bytes.len()].copy_from_slice(bytes);
        w
    }
}

/// Declares parameter structs: `#[repr(C)]`, Pod, with their field list.
macro_rules! params {
    ($($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident: $t:ty),* $(,)? })*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name { $(pub $f: $t),* }
        impl $crate::kernel::Params for $name {
            const NAME: &'static str = stringify!($name);
            const FIELDS: &'static [$crate::kernel::FieldInfo] = &[$($crate::kernel::FieldInfo {
                name: stringify!($f),
                offset: std::mem::offset_of!($name, $f),
                size: std::mem::size_of::<$t>(),
                kind: <$t as $crate::kernel::Field>::KIND,
            }),*];
        }
    )*};
}
pub(crate) use params;

/// A CUDA entry point: its family (.cu file), its name, and the parameter struct it takes.
pub(crate) trait Kernel: Sized {
    type Params: Params;
    /// The .cu file (a name of `nvrtc::FAMILIES`).
    const FAMILY: &'static str;
    fn entry(&self) -> Cow<'static, str>;
    /// Every entry point of this type, for the layout test.
    #[cfg_attr(not(test), allow(dead_code))]
    fn all() -> Vec<Self>;
}

/// Declares a kernel type. `kernel!(Add: "elementwise", AddParams => "add");` for one entry point;
/// `kernel!(Embed { dt: DType }: "elementwise", EmbedParams => |k| format!(..), all [..]);` for a family of
/// instantiations named by the type's fields.
macro_rules! kernel {
    ($name:ident: $family:literal, $params:ident => $entry:literal) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) struct $name;
        impl $crate::kernel::Kernel for $name {
            type Params = $params;
            const FAMILY: &'static str = $family;
            fn entry(&self) -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($entry)
            }
            fn all() -> Vec<Self> {
                vec![$name]
            }
        }
    };
    ($name:ident { $($f:ident: $t:ty),* }: $family:literal, $params:ident => |$k:ident| $entry:expr, all $all:expr) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) struct $name { $(pub $f: $t),* }
        impl $crate::kernel::Kernel for $name {
            type Params = $params;
            const FAMILY: &'static str = $family;
            fn entry(&self) -> std::borrow::Cow<'static, str> {
                let $k = self;
                std::borrow::Cow::Owned($entry)
            }
            fn all() -> Vec<Self> {
                $all
            }
        }
    };
}
pub(crate) use kernel;

/// The float weight formats, as the .cu files name their instantiations.
pub(crate) const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// The name a .cu file gives a weight format's instantiation.
pub(crate) fn dts(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::Q8(_) => "q8",
        DType::Q4(_) => "q4",
    }
}

/// `""` for the vectorised variant of a kernel, `"_scalar"` for the other.
pub(crate) fn scalar(vec: bool) -> &'static str {
    if vec {
        ""
    } else {
        "_scalar"
    }
}
