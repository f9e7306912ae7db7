//! Quantized dot products and dequantizers, one function per (type, instruction set), chosen
//! once at start-up into a table of function pointers ([`Kernels`]).
//!
//! `generic` holds the scalar reference for every function; `x86` holds AVX2 and AVX-512
//! versions under the same names, `aarch64` NEON ones (with the dotprod and i8mm extensions
//! where the CPU has them). Activations are quantized once per row to the weight type's
//! "vec-dot type" ([`BlockQ8`] or [`BlockQ8K`]), as llama.cpp does.

/// Defines `$name`, a safe wrapper of the `#[target_feature]` kernel `$imp` with the same
/// parameters, for a table whose builder checked those features at run time.
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_endian = "little")
))]
macro_rules! wrap {
    ($name:ident, $imp:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        // The kernel's own parameter list (attention has ten).
        #[allow(clippy::too_many_arguments)]
        fn $name($($a: $t),*) -> $r {
            // SAFETY: this wrapper is only reachable through a `Kernels` table whose builder
            // detected the features `$imp` enables.
            unsafe { $imp($($a),*) }
        }
    };
}

// The aarch64 kernels read weights and activations as little-endian bytes.
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
pub mod aarch64;
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
mod aarch64_attention;
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
mod aarch64_panel;
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
mod aarch64_panel_k;
pub mod generic;
pub mod panel;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_attention;
#[cfg(target_arch = "x86_64")]
mod x86_panel;

use worker_gguf::GgmlType;

/// Elements per block of the 32-element formats.
pub const QK: usize = 32;
/// Elements per super-block of the k-quant formats.
pub const QK_K: usize = 256;

/// An activation block for the 32-element weight types: 32 signed bytes, their scale, and
/// `s = d * sum(qs)` (used by the types with a min, Q4_1 and Q5_1).
///
/// Unlike ggml's `block_q8_0`/`block_q8_1` the scales are f32: this format never leaves
/// the process, so it need not match any file.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8 {
    /// Scale.
    pub d: f32,
    /// `d * sum(qs)`.
    pub s: f32,
    /// Quantized values, in `-127..=127`.
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8>() == 40);

/// An activation super-block for the k-quant weight types (as ggml's `block_q8_K`).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// Quantized values, in `-127..=127`.
    pub qs: [i8; QK_K],
    /// Sums of each group of 16 values.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// The dot product of one weight row (raw GGUF bytes) with one activation row, by the
/// activation format it expects.
#[derive(Clone, Copy)]
pub enum VecDot {
    /// Weights stored as floats: activations stay f32.
    F32(fn(&[u8], &[f32]) -> f32),
    /// 32-element types: activations as [`BlockQ8`].
    Q8(fn(&[u8], &[BlockQ8]) -> f32),
    /// k-quants: activations as [`BlockQ8K`].
    Q8K(fn(&[u8], &[BlockQ8K]) -> f32),
    /// No dot product of its own: a matmul dequantizes each weight row once
    /// ([`TypeKernels::dequantize_row`]) and dots it in f32 with every activation row.
    Dequantized,
}

/// One panel of sixteen weight rows ([`panel`] layout) against one activation row (`A`:
/// [`BlockQ8`] or [`BlockQ8K`]): the sixteen dot products.
pub type PanelDot<A> = fn(&[u8], &[A]) -> [f32; panel::PANEL];

/// Activation rows per call of a [`PanelDotMany`] kernel (prefill).
pub const PANEL_BATCH: usize = 4;

/// One panel against [`PANEL_BATCH`] activation rows, bit-identical to as many [`PanelDot`]
/// calls: the weights unpack once for all the rows.
pub type PanelDotMany<A> = fn(&[u8], [&[A]; PANEL_BATCH]) -> [[f32; panel::PANEL]; PANEL_BATCH];

/// The panel kernels of a type, by the activation format they take.
#[derive(Clone, Copy)]
pub enum PanelDots {
    /// 32-element types: activations as [`BlockQ8`].
    Q8(PanelDot<BlockQ8>, PanelDotMany<BlockQ8>),
    /// k-quants: activations as [`BlockQ8K`].
    Q8K(PanelDot<BlockQ8K>, PanelDotMany<BlockQ8K>),
    /// F16 and BF16: activations stay f32.
    F32(PanelDot<f32>, PanelDotMany<f32>),
}

/// The kernels of a type whose weights are repacked at load into panels.
#[derive(Clone, Copy)]
pub struct PanelKernels {
    /// The layout the kernels read.
    pub format: panel::PanelFormat,
    /// One and [`PANEL_BATCH`] activation rows.
    pub dots: PanelDots,
}

/// The signature of [`generic::attend`]:
/// `(q, keys, values, first, n, scale, sinks, out, scores, heads)`.
pub type Attend =
    fn(&[f32], &[f32], &[f32], usize, usize, f32, &[f32], &mut [f32], &mut Vec<f32>, usize);

/// The signature of [`generic::attend_f16`]:
/// `(q, blocks, first, n, scale, sinks, out, scores, heads)`.
pub type AttendF16 = fn(
    &[f32],
    &[generic::F16Block<'_>],
    usize,
    usize,
    f32,
    &[f32],
    &mut [f32],
    &mut Vec<f32>,
    usize,
);

/// Whether the SIMD attention bodies take these shapes: `q` and `out` whole heads, a value
/// head a multiple of `lanes` wide, `first < n`, one sink per head or none. The kernels send
/// any other to the scalar one.
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_endian = "little")
))]
fn attention_vector_shapes(
    q: &[f32],
    out: &[f32],
    heads: usize,
    (first, n): (usize, usize),
    sinks: &[f32],
    lanes: usize,
) -> bool {
    let (hd, vhd) = (q.len() / heads, out.len() / heads);
    vhd.is_multiple_of(lanes)
        && q.len() == heads * hd
        && out.len() == heads * vhd
        && first < n
        && (sinks.is_empty() || sinks.len() == heads)
}

/// The kernels of one weight type.
#[derive(Clone, Copy)]
pub struct TypeKernels {
    /// Dot product with a quantized (or f32) activation row.
    pub vec_dot: VecDot,
    /// Row dequantization (embeddings, the f32-activation reference path).
    pub dequantize_row: fn(&[u8], &mut [f32]),
    /// Where the table has them: kernels for weights repacked into panels, used instead of
    /// the row kernels above for the matmul.
    pub panel: Option<PanelKernels>,
}

/// Which instruction set a table was filled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The scalar reference kernels.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/DQ with VNNI: the 512-bit panel kernels, AVX2 elsewhere.
    Avx512,
    /// aarch64 NEON (Advanced SIMD): integer dot products by widening multiplies.
    Neon,
    /// NEON with the dot product extension (`sdot`, Armv8.2 `dotprod`).
    Dotprod,
    /// NEON with dotprod and the 8-bit matrix multiply extension (`usmmla`, Armv8.6 `i8mm`)
    /// for the many-row panel kernels.
    I8mm,
}

/// The kernels a SIMD table replaces beside the panel kernels: activation quantization,
/// f32 helpers, attention, SwiGLU, the F32 row dot product and the F16 row conversion (f16
/// embeddings, and every read of an f16 KV cache).
#[cfg(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_endian = "little")
))]
pub(crate) struct RowKernels {
    pub(crate) quantize_row_q8: fn(&[f32], &mut [BlockQ8]),
    pub(crate) quantize_row_q8k: fn(&[f32], &mut [BlockQ8K]),
    pub(crate) dot_f32: fn(&[f32], &[f32]) -> f32,
    pub(crate) attend: Attend,
    pub(crate) attend_f16: Option<AttendF16>,
    pub(crate) swiglu: fn(&mut [f32], &[f32], &[f32]),
    pub(crate) gelu: fn(&mut [f32]),
    pub(crate) vec_dot_f32: fn(&[u8], &[f32]) -> f32,
    pub(crate) dequantize_row_f16: fn(&[u8], &mut [f32]),
}

/// The table of kernels the CPU backend calls, filled once after feature detection.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// The instruction set chosen.
    pub isa: Isa,
    /// Activation row to [`BlockQ8`].
    pub quantize_row_q8: fn(&[f32], &mut [BlockQ8]),
    /// Activation row to [`BlockQ8K`].
    pub quantize_row_q8k: fn(&[f32], &mut [BlockQ8K]),
    /// f32 dot product.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// One query head's attention over cached keys and values ([`generic::attend`]).
    pub attend: Attend,
    /// Where the table has one: [`generic::attend_f16`], reading an f16 KV cache's blocks
    /// where they lie; without one the cache is converted to f32 for [`Self::attend`].
    pub attend_f16: Option<AttendF16>,
    /// `out = silu(gate) * up`, element-wise.
    pub swiglu: fn(&mut [f32], &[f32], &[f32]),
    /// `x = gelu(x)` (tanh approximation), element-wise.
    pub gelu: fn(&mut [f32]),
    /// Per weight type; `None` where no kernel exists.
    types: [Option<TypeKernels>; N_TYPES],
}

/// The weight types with kernels, in table order. The last five have no row kernels of their
/// own ([`VecDot::Dequantized`]: rows dequantized by worker-gguf, dotted in f32); those with a
/// panel layout run on the panel kernels where the table has them.
pub const SUPPORTED_TYPES: [GgmlType; 16] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::MXFP4,
    GgmlType::BF16,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];
const N_TYPES: usize = SUPPORTED_TYPES.len();

fn slot(ty: GgmlType) -> Option<usize> {
    SUPPORTED_TYPES.iter().position(|t| *t == ty)
}

impl Kernels {
    /// The scalar reference table.
    pub fn scalar() -> Self {
        use generic as g;
        let tk = |vec_dot, dequantize_row| {
            Some(TypeKernels {
                vec_dot,
                dequantize_row,
                panel: None,
            })
        };
        Kernels {
            isa: Isa::Scalar,
            quantize_row_q8: g::quantize_row_q8,
            quantize_row_q8k: g::quantize_row_q8k,
            dot_f32: g::dot_f32,
            attend: g::attend,
            attend_f16: None,
            swiglu: crate::cpu::ops::swiglu_row,
            gelu: crate::cpu::ops::gelu_row,
            types: [
                tk(VecDot::F32(g::vec_dot_f32), g::dequantize_row_f32),
                tk(VecDot::F32(g::vec_dot_f16), g::dequantize_row_f16),
                tk(VecDot::Q8(g::vec_dot_q4_0), g::dequantize_row_q4_0),
                tk(VecDot::Q8(g::vec_dot_q4_1), g::dequantize_row_q4_1),
                tk(VecDot::Q8(g::vec_dot_q5_0), g::dequantize_row_q5_0),
                tk(VecDot::Q8(g::vec_dot_q5_1), g::dequantize_row_q5_1),
                tk(VecDot::Q8(g::vec_dot_q8_0), g::dequantize_row_q8_0),
                tk(VecDot::Q8K(g::vec_dot_q4_k), g::dequantize_row_q4_k),
                tk(VecDot::Q8K(g::vec_dot_q5_k), g::dequantize_row_q5_k),
                tk(VecDot::Q8K(g::vec_dot_q6_k), g::dequantize_row_q6_k),
                tk(VecDot::Q8(g::vec_dot_mxfp4), g::dequantize_row_mxfp4),
                tk(VecDot::Dequantized, g::dequantize_row_bf16),
                tk(VecDot::Dequantized, g::dequantize_row_q2_k),
                tk(VecDot::Dequantized, g::dequantize_row_q3_k),
                tk(VecDot::Dequantized, g::dequantize_row_iq4_nl),
                tk(VecDot::Dequantized, g::dequantize_row_iq4_xs),
            ],
        }
    }

    /// The best table this CPU supports (run-time feature detection).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(k) = x86::avx512_kernels() {
                return k;
            }
            if let Some(k) = x86::avx2_kernels() {
                return k;
            }
        }
        #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
        {
            let best = aarch64::i8mm_kernels()
                .or_else(aarch64::dotprod_kernels)
                .or_else(aarch64::neon_kernels);
            if let Some(k) = best {
                return k;
            }
        }
        Self::scalar()
    }

    /// The scalar table with `row`'s kernels in place, for instruction set `isa` (whose
    /// features the caller detected).
    #[cfg(any(
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_endian = "little")
    ))]
    pub(crate) fn with_row_kernels(isa: Isa, row: RowKernels) -> Self {
        let mut k = Kernels::scalar();
        k.isa = isa;
        k.quantize_row_q8 = row.quantize_row_q8;
        k.quantize_row_q8k = row.quantize_row_q8k;
        k.dot_f32 = row.dot_f32;
        k.attend = row.attend;
        k.attend_f16 = row.attend_f16;
        k.swiglu = row.swiglu;
        k.gelu = row.gelu;
        // F32 matrices have no panel layout: a SIMD row kernel. The matmuls of the types with
        // one (F16 included) run on repacked weights.
        if let Some(s) = k.for_type(GgmlType::F32).copied() {
            let vec_dot = VecDot::F32(row.vec_dot_f32);
            k.set(GgmlType::F32, TypeKernels { vec_dot, ..s });
        }
        if let Some(s) = k.for_type(GgmlType::F16).copied() {
            let dequantize_row = row.dequantize_row_f16;
            k.set(
                GgmlType::F16,
                TypeKernels {
                    dequantize_row,
                    ..s
                },
            );
        }
        k
    }

    /// Gives every type with a panel layout the panel kernels `kernels` makes for it.
    #[cfg(any(
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_endian = "little")
    ))]
    pub(crate) fn set_panels(&mut self, kernels: fn(panel::PanelFormat) -> PanelKernels) {
        for ty in SUPPORTED_TYPES {
            if let (Some(s), Some(format)) =
                (self.for_type(ty).copied(), panel::PanelFormat::of(ty))
            {
                let panel = Some(kernels(format));
                self.set(ty, TypeKernels { panel, ..s });
            }
        }
    }

    /// The kernels of `ty`, or `None` when it has none.
    pub fn for_type(&self, ty: GgmlType) -> Option<&TypeKernels> {
        slot(ty).and_then(|i| self.types[i].as_ref())
    }

    /// Replaces the kernels of `ty` (used by the SIMD tables to override the scalar ones).
    #[cfg(any(
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_endian = "little")
    ))]
    pub(crate) fn set(&mut self, ty: GgmlType, k: TypeKernels) {
        if let Some(i) = slot(ty) {
            self.types[i] = Some(k);
        }
    }
}
