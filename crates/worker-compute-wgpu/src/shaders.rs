//! The WGSL kernels: their sources (embedded from `shaders/`), how a kernel's module is put
//! together (the kernel, its weight type's block reader, its KV entry type, its reduction),
//! and what each binds. Every module is plain WGSL that naga translates to SPIR-V (Vulkan),
//! MSL (Metal) or HLSL (DX12); `tests/naga_translate.rs` translates every one to MSL and
//! HLSL.
//!
//! Binding 0 of every kernel is its parameters (a uniform block at a dynamic offset of the
//! parameter arena); bindings 1.. are storage buffers, read-write first where the kernel
//! writes one. Every kernel runs 64 invocations per workgroup and takes its place in the
//! dispatch from `shaders/invocation.wgsl` (`Inv`, `group_index`, `global_index`: workgroups
//! numbered `wid.x + wid.y * nwg.x`, so that more than 65 535 of them fit in one dispatch).

use worker_gguf::GgmlType;

const REDUCE_SHARED: &str = include_str!("shaders/reduce_shared.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("shaders/reduce_subgroup.wgsl");
const QUANT_COMMON: &str = include_str!("shaders/quant/common.wgsl");
const INVOCATION: &str = include_str!("shaders/invocation.wgsl");

/// Invocations per workgroup in every kernel.
pub(crate) const WORKGROUP: u32 = 64;

/// Weight types with kernels, and the WGSL block reader of each (`fn quad(row, i)`: four
/// consecutive elements of a row, dequantized).
pub const WEIGHT_TYPES: &[(GgmlType, &str)] = &[
    (GgmlType::F32, include_str!("shaders/quant/f32.wgsl")),
    (GgmlType::F16, include_str!("shaders/quant/f16.wgsl")),
    (GgmlType::Q4_0, include_str!("shaders/quant/q4_0.wgsl")),
    (GgmlType::Q4_1, include_str!("shaders/quant/q4_1.wgsl")),
    (GgmlType::Q5_0, include_str!("shaders/quant/q5_0.wgsl")),
    (GgmlType::Q5_1, include_str!("shaders/quant/q5_1.wgsl")),
    (GgmlType::Q8_0, include_str!("shaders/quant/q8_0.wgsl")),
    (GgmlType::Q4_K, include_str!("shaders/quant/q4_k.wgsl")),
    (GgmlType::Q5_K, include_str!("shaders/quant/q5_k.wgsl")),
    (GgmlType::Q6_K, include_str!("shaders/quant/q6_k.wgsl")),
];

/// The weight types with kernels.
pub fn weight_types() -> impl Iterator<Item = GgmlType> {
    WEIGHT_TYPES.iter().map(|(t, _)| *t)
}

fn block_reader(ty: GgmlType) -> Option<&'static str> {
    WEIGHT_TYPES.iter().find(|(t, _)| *t == ty).map(|(_, s)| *s)
}

/// One compute pipeline: a kernel, specialised by weight or KV entry type where it reads one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `dst += src`.
    Add,
    /// `dst *= src`.
    Mul,
    /// `dst += bias` (a vector of `cols`).
    AddBias,
    /// `x *= f`.
    Scale,
    /// GELU (tanh approximation) in place.
    Gelu,
    /// `out = silu(gate) * up`.
    Swiglu,
    /// RMS norm in place over segments (rows or heads).
    RmsNorm,
    /// Layer norm in place.
    LayerNorm,
    /// Rotary embedding in place from a host-computed table.
    Rope,
    /// Rows picked by an index vector.
    Gather,
    /// Rows of an embedding table, dequantized.
    Embed(GgmlType),
    /// Mat-vec over up to 4 activation rows at a time (decode): a weight row per subgroup
    /// where there are subgroups, else per workgroup.
    Matvec(GgmlType),
    /// Tiled mat-mul (prefill).
    Matmul(GgmlType),
    /// Writes keys and values into the cache.
    KvStore(KvEntry),
    /// Attention over the cache.
    Attention(KvEntry),
}

impl Kernel {
    /// Every kernel: the generic ones and one per weight and KV entry type.
    pub fn all() -> Vec<Kernel> {
        use Kernel::*;
        let mut all = vec![
            Add, Mul, AddBias, Scale, Gelu, Swiglu, RmsNorm, LayerNorm, Rope, Gather,
        ];
        for ty in weight_types() {
            all.extend([Embed(ty), Matvec(ty), Matmul(ty)]);
        }
        for kv in [KvEntry::F32, KvEntry::F16] {
            all.extend([KvStore(kv), Attention(kv)]);
        }
        all
    }

    /// A label for logs and errors (`matvec q4_k`).
    pub fn label(self) -> String {
        use Kernel::*;
        let (name, of) = match self {
            Add => ("add", None),
            Mul => ("mul", None),
            AddBias => ("add_bias", None),
            Scale => ("scale", None),
            Gelu => ("gelu", None),
            Swiglu => ("swiglu", None),
            RmsNorm => ("rms_norm", None),
            LayerNorm => ("layer_norm", None),
            Rope => ("rope", None),
            Gather => ("gather_rows", None),
            Embed(t) => ("embed", Some(t.to_string())),
            Matvec(t) => ("matvec", Some(t.to_string())),
            Matmul(t) => ("matmul", Some(t.to_string())),
            KvStore(k) => ("kv_store", Some(k.name().to_string())),
            Attention(k) => ("attention", Some(k.name().to_string())),
        };
        match of {
            Some(t) => format!("{name} {}", t.to_lowercase()),
            None => name.to_string(),
        }
    }

    /// Whether each storage binding (1, 2, …) is read-only.
    pub(crate) fn read_only(self) -> &'static [bool] {
        use Kernel::*;
        match self {
            Scale | Gelu => &[false],
            Add | Mul | AddBias | RmsNorm | Rope => &[false, true],
            Swiglu | Gather | LayerNorm | Embed(_) | Matvec(_) | Matmul(_) => &[false, true, true],
            KvStore(_) => &[false, false, true, true, true],
            Attention(_) => &[false, true, true, true, true],
        }
    }

    /// Whether the kernel reduces over its workgroup (and so takes the reduction functions).
    fn reduces(self) -> bool {
        matches!(
            self,
            Kernel::RmsNorm | Kernel::LayerNorm | Kernel::Matvec(_) | Kernel::Attention(_)
        )
    }

    /// The WGSL module, with subgroup reductions when `subgroups` (the kernels that reduce),
    /// or `None` for a weight type without a block reader.
    pub fn source(self, subgroups: bool) -> Option<String> {
        use Kernel::*;
        let elementwise = include_str!("shaders/elementwise.wgsl");
        let unary = include_str!("shaders/unary.wgsl");
        let mut src = match self {
            Add => elementwise.replace("SRC_INDEX", "i").replace("OP", "a + b"),
            Mul => elementwise.replace("SRC_INDEX", "i").replace("OP", "a * b"),
            AddBias => elementwise
                .replace("SRC_INDEX", "i % p.cols")
                .replace("OP", "a + b"),
            Scale => unary.replace("OP", "a * p.f"),
            // 0.797_884_6 = sqrt(2/pi), as ggml and the CPU backend.
            Gelu => unary.replace(
                "OP",
                "0.5 * a * (1.0 + tanh(0.7978846 * (a + 0.044715 * a * a * a)))",
            ),
            Swiglu => include_str!("shaders/swiglu.wgsl").into(),
            RmsNorm => include_str!("shaders/rms_norm.wgsl").into(),
            LayerNorm => include_str!("shaders/layer_norm.wgsl").into(),
            Rope => include_str!("shaders/rope.wgsl").into(),
            Gather => include_str!("shaders/gather.wgsl").into(),
            Embed(t) | Matvec(t) | Matmul(t) => {
                let kernel = match self {
                    Embed(_) => include_str!("shaders/embed.wgsl"),
                    Matvec(_) if subgroups => include_str!("shaders/matvec_subgroup.wgsl"),
                    Matvec(_) => include_str!("shaders/matvec.wgsl"),
                    _ => include_str!("shaders/matmul.wgsl"),
                };
                let bindings = match self {
                    Embed(_) => "",
                    _ => include_str!("shaders/matmul_bindings.wgsl"),
                };
                [bindings, kernel, QUANT_COMMON, block_reader(t)?].join("\n")
            }
            KvStore(kv) => [
                include_str!("shaders/kv_store.wgsl"),
                kv_reader(kv),
                match kv {
                    KvEntry::F32 => include_str!("shaders/kv_store_f32.wgsl"),
                    KvEntry::F16 => include_str!("shaders/kv_store_f16.wgsl"),
                },
            ]
            .join("\n"),
            Attention(kv) => [include_str!("shaders/attention.wgsl"), kv_reader(kv)].join("\n"),
        };
        src.push('\n');
        src.push_str(INVOCATION);
        if self.reduces() {
            src.push('\n');
            src.push_str(if subgroups {
                REDUCE_SUBGROUP
            } else {
                REDUCE_SHARED
            });
        }
        Some(src)
    }
}

/// How the KV cache stores its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvEntry {
    /// One f32 per entry.
    F32,
    /// f16 entries, two to a word.
    F16,
}

impl KvEntry {
    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            KvEntry::F32 => "f32",
            KvEntry::F16 => "f16",
        }
    }
}

fn kv_reader(kv: KvEntry) -> &'static str {
    match kv {
        KvEntry::F32 => include_str!("shaders/kv_f32.wgsl"),
        KvEntry::F16 => include_str!("shaders/kv_f16.wgsl"),
    }
}
