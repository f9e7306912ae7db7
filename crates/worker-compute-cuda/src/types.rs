//! The type tables: which weight types have kernels, and the typed id of every kernel the
//! backend launches (the kernels stamped out per weight type, named `<kind>_<type>`, and
//! the others). Ids are positions in [`names`], the order the device loads them in.

use worker_gguf::GgmlType;

use crate::kernels::Param;
use crate::launch::*;

/// Weight types with embedding and matmul kernels, and the kernel-name suffix of each.
pub const WEIGHT_TYPES: &[(GgmlType, &str)] = &[
    (GgmlType::F32, "f32"),
    (GgmlType::F16, "f16"),
    (GgmlType::BF16, "bf16"),
    (GgmlType::Q4_0, "q4_0"),
    (GgmlType::Q4_1, "q4_1"),
    (GgmlType::Q5_0, "q5_0"),
    (GgmlType::Q5_1, "q5_1"),
    (GgmlType::Q8_0, "q8_0"),
    (GgmlType::Q4_K, "q4_k"),
    (GgmlType::Q5_K, "q5_k"),
    (GgmlType::Q6_K, "q6_k"),
    (GgmlType::IQ4_NL, "iq4_nl"),
    (GgmlType::IQ4_XS, "iq4_xs"),
    (GgmlType::Q2_K, "q2_k"),
    (GgmlType::Q3_K, "q3_k"),
    (GgmlType::MXFP4, "mxfp4"),
];

/// Weight types whose kernels have not run on a device yet: uploaded only with
/// [`crate::Experimental::types`].
pub(crate) const EXPERIMENTAL_TYPES: &[GgmlType] = &[
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
];

/// Weight types only the models of [`crate::Experimental::models`] need (gpt-oss's experts),
/// whose kernels have not run on a device yet: uploaded only with that path on.
pub(crate) const MODEL_TYPES: &[GgmlType] = &[GgmlType::MXFP4];

/// Declares a table of kernel ids, one field per kernel with its parameter struct, its name
/// (for the per-type table, the name's `<kind>` part) and the file that defines it.
macro_rules! kernel_table {
    ($(#[$doc:meta])* $table:ident {
        $($(#[$fdoc:meta])* $field:ident: $args:ty = $name:literal in $file:literal,)*
    }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub(crate) struct $table {
            $($(#[$fdoc])* pub $field: Func<$args>,)*
        }

        impl $table {
            /// The kernels' names, in id order.
            const NAMES: &'static [&'static str] = &[$($name),*];
            /// Each kernel's file and parameter types, in id order.
            const ENTRIES: &'static [(&'static str, &'static [Param])] =
                &[$(($file, <$args as KernelArgs>::PARAMS)),*];

            /// The table whose first kernel has id `first`.
            fn starting_at(first: usize) -> Self {
                let mut id = first;
                $(let $field = Func::new(id); id += 1;)*
                let _ = id;
                $table { $($field,)* }
            }
        }
    };
}

kernel_table! {
    /// The kernels not stamped out per weight type (`elementwise.cu`, `attention.cu`,
    /// `moe.cu`).
    Kernels {
        add: Binary = "add_f32" in "elementwise.cu",
        mul: Binary = "mul_f32" in "elementwise.cu",
        scale: Scale = "scale_f32" in "elementwise.cu",
        add_bias: AddBias = "add_bias_f32" in "elementwise.cu",
        swiglu: Swiglu = "swiglu_f32" in "elementwise.cu",
        gelu: Gelu = "gelu_f32" in "elementwise.cu",
        gather_rows: GatherRows = "gather_rows_f32" in "elementwise.cu",
        rms_norm: RmsNorm = "rms_norm_f32" in "elementwise.cu",
        add_rms_norm: AddRmsNorm = "add_rms_norm_f32" in "elementwise.cu",
        layer_norm: LayerNorm = "layer_norm_f32" in "elementwise.cu",
        rope: Rope = "rope_f32" in "elementwise.cu",
        argmax: Argmax = "argmax_f32" in "elementwise.cu",
        kv_store: KvStore = "kv_store" in "attention.cu",
        attention: Attention = "attention_f16" in "attention.cu",
        attention_decode: AttentionDecode = "attention_decode_f16" in "attention.cu",
        attention_combine: AttentionCombine = "attention_combine" in "attention.cu",
        attention_prefill: AttentionPrefill = "attention_prefill_f16" in "attention.cu",
        rope_yarn: RopeYarn = "rope_yarn_f32" in "elementwise.cu",
        attention_window: AttentionWindow = "attention_window_f16" in "attention.cu",
        attention_decode_window: AttentionDecodeWindow =
            "attention_decode_window_f16" in "attention.cu",
        attention_combine_window: AttentionCombineWindow =
            "attention_combine_window" in "attention.cu",
        moe_route: MoeRoute = "moe_route" in "moe.cu",
        moe_combine: MoeCombine = "moe_combine" in "moe.cu",
    }
}

kernel_table! {
    /// The kernels of one weight type, `<kind>_<type suffix>` (`quant.cu`, `matvec.cu`).
    TypeKernels {
        /// Rows of an embedding table by token id.
        embed: Embed = "embed" in "quant.cu",
        /// Many activation rows times the weight.
        matmul: Matmul = "matmul" in "quant.cu",
        /// Rows of the weight to f32 (the cuBLAS prefill's tiles).
        dequant: Dequant = "dequant" in "quant.cu",
        /// One activation row: a warp per output row.
        matvec: Matvec = "matvec" in "matvec.cu",
        /// The gate and up mat-vecs and the SwiGLU between them.
        matvec_glu: MatvecGlu = "matvec_glu" in "matvec.cu",
        /// One activation row: a block per output row (experimental `matvec`).
        matvec_wide: Matvec = "matvec_wide" in "matvec.cu",
        /// Up to three mat-vecs of one row (experimental `matvec`).
        matvec3: Matvec3 = "matvec3" in "matvec.cu",
        /// The chosen experts' gate and up mat-vecs and activation, weights by expert id.
        moe_glu: MoeGlu = "moe_glu" in "matvec.cu",
        /// The chosen experts' down mat-vecs, weights by expert id.
        moe_down: MoeDown = "moe_down" in "matvec.cu",
    }
}

impl Kernels {
    /// The table, ids from 0.
    pub(crate) fn new() -> Self {
        Kernels::starting_at(0)
    }
}

impl TypeKernels {
    /// The kernels of `ty`, when it has any.
    pub(crate) fn of(ty: GgmlType) -> Option<Self> {
        let i = WEIGHT_TYPES.iter().position(|(t, _)| *t == ty)?;
        Some(TypeKernels::starting_at(
            Kernels::NAMES.len() + i * TypeKernels::NAMES.len(),
        ))
    }
}

/// Every kernel the backend loads, by id: its name, its file and its parameter types.
pub(crate) fn kernel_list() -> Vec<(String, &'static str, &'static [Param])> {
    let fixed = Kernels::NAMES
        .iter()
        .zip(Kernels::ENTRIES)
        .map(|(name, &(file, params))| (name.to_string(), file, params));
    let per_type = WEIGHT_TYPES.iter().flat_map(|(_, suffix)| {
        TypeKernels::NAMES
            .iter()
            .zip(TypeKernels::ENTRIES)
            .map(move |(kind, &(file, params))| (format!("{kind}_{suffix}"), file, params))
    });
    fixed.chain(per_type).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positions_in_the_name_list() {
        let names: Vec<String> = kernel_list().into_iter().map(|(n, _, _)| n).collect();
        let k = Kernels::new();
        assert_eq!(names[k.add_rms_norm.id], "add_rms_norm_f32");
        assert_eq!(names[k.attention_prefill.id], "attention_prefill_f16");
        let q6 = TypeKernels::of(GgmlType::Q6_K).expect("q6_k has kernels");
        assert_eq!(names[q6.embed.id], "embed_q6_k");
        assert_eq!(names[q6.matvec3.id], "matvec3_q6_k");
        assert_eq!(names[k.moe_combine.id], "moe_combine");
        let last = TypeKernels::of(GgmlType::MXFP4).expect("mxfp4 has kernels");
        assert_eq!(names[last.moe_glu.id], "moe_glu_mxfp4");
        assert_eq!(last.moe_down.id, names.len() - 1);
        assert_eq!(TypeKernels::of(GgmlType::Q8_K), None);
    }
}
