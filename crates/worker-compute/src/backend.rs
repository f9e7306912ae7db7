//! The `ComputeBackend` trait: device memory behind opaque handles and a short, explicit op
//! list with shapes passed beside the handles.
//!
//! Design rules, so that a CUDA backend can implement the same trait and capture a decode step
//! as a graph:
//! - Every tensor lives on the device and is named by a handle; the only op that returns host
//!   data is [`ComputeBackend::read_rows`] (the logits read-out).
//! - Everything that changes from one step to the next (token ids, positions, KV slots, which
//!   rows produce logits) is written into small device index tensors *before* the step
//!   ([`ComputeBackend::write_index`]), so a step with a given row count is a fixed op
//!   sequence over fixed handles.
//! - Weights are uploaded once in their GGUF storage type. The KV cache is one pool of blocks
//!   allocated up front; which block holds which positions of which sequence is the caller's
//!   choice, passed as a block table ([`KvIndex`]), so blocks can be shared and reused.
//! - Activations are row-major f32 matrices `[rows, cols]` allocated with a row capacity; each
//!   op is told how many rows are live.

use worker_gguf::GgmlType;

use crate::error::ComputeError;

/// Result of a backend op.
pub type Result<T> = std::result::Result<T, ComputeError>;

/// An f32 activation matrix on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(pub(crate) u32);

/// A u32 index vector on the device (token ids, positions, KV slots, row indices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexId(pub(crate) u32);

/// A weight matrix or vector, stored in its GGUF type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightId(pub(crate) u32);

/// A preallocated KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvCacheId(pub(crate) u32);

impl TensorId {
    /// The raw id, for error messages and logs.
    pub fn raw(self) -> u32 {
        self.0
    }
}

/// `from_raw`/`raw` on the handle types, so that a backend in another crate can mint and
/// read its own handles. A handle is only meaningful to the backend that made it.
macro_rules! raw_handle {
    ($($t:ident),*) => {$(
        impl $t {
            /// A handle from a backend's own raw id.
            pub fn from_raw(raw: u32) -> Self {
                $t(raw)
            }
        }
    )*};
}
raw_handle!(TensorId, IndexId, WeightId, KvCacheId);

macro_rules! raw_accessor {
    ($($t:ident),*) => {$(
        impl $t {
            /// The raw id, for the backend that made it and for logs.
            pub fn raw(self) -> u32 {
                self.0
            }
        }
    )*};
}
raw_accessor!(IndexId, WeightId, KvCacheId);

/// `lookup` on the handle types, for a backend that keeps what its handles name in a list
/// indexed by raw id.
macro_rules! handle_lookup {
    ($(($t:ident, $kind:literal)),*) => {$(
        impl $t {
            /// What this handle names in `table` (indexed by raw id), or
            /// [`ComputeError::UnknownHandle`] for `op` when it is not there.
            pub fn lookup<'a, T>(self, table: &'a [T], op: &'static str) -> Result<&'a T> {
                table.get(self.0 as usize).ok_or(ComputeError::UnknownHandle {
                    op,
                    kind: $kind,
                    id: self.0,
                })
            }
        }
    )*};
}
handle_lookup!(
    (TensorId, "tensor"),
    (IndexId, "index"),
    (WeightId, "weight"),
    (KvCacheId, "kv cache")
);

/// A weight to upload: `rows` rows of `cols` elements (ggml shape `[cols, rows]`), in `ty`.
#[derive(Clone, Copy, Debug)]
pub struct WeightDesc<'a> {
    /// The tensor's name, for errors.
    pub name: &'a str,
    /// Storage type (the kernels dequantize on the fly).
    pub ty: GgmlType,
    /// Number of rows (output features of a matmul; 1 for a vector).
    pub rows: usize,
    /// Elements per row (input features of a matmul).
    pub cols: usize,
    /// The raw GGUF bytes, exactly `rows * ty.bytes_for(cols)`.
    pub bytes: &'a [u8],
}

impl WeightDesc<'_> {
    /// Checks what every backend needs of a weight's bytes (a non-empty shape, rows of
    /// whole blocks of its type, exactly `rows` rows of bytes) and returns the bytes of one
    /// row; a bad weight is [`ComputeError::BadWeight`] naming it.
    pub fn row_bytes(&self) -> Result<usize> {
        let bad = |reason: String| ComputeError::BadWeight {
            name: self.name.to_string(),
            reason,
        };
        if self.rows == 0 || self.cols == 0 {
            return Err(bad(format!("empty shape [{} x {}]", self.rows, self.cols)));
        }
        let row_bytes = self.ty.bytes_for(self.cols as u64).ok_or_else(|| {
            bad(format!(
                "row length {} is not a multiple of the {} block size {}",
                self.cols,
                self.ty,
                self.ty.block_size()
            ))
        })? as usize;
        let want = row_bytes.checked_mul(self.rows);
        if want != Some(self.bytes.len()) {
            return Err(bad(format!(
                "{} bytes for [{} x {}] {}, expected {want:?}",
                self.bytes.len(),
                self.rows,
                self.cols,
                self.ty
            )));
        }
        Ok(row_bytes)
    }
}

/// Positions per KV cache block: the unit in which the cache is allocated, shared between
/// sequences and looked up by prefix.
pub const KV_BLOCK: usize = 16;

/// Storage type of KV cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// f32 entries: exact; the reference the other types are measured against.
    F32,
    /// f16 entries (what llama.cpp stores by default): half the bytes of f32.
    F16,
    /// ggml's Q8_0 blocks (32 entries, one f16 scale, 34 bytes) along each head.
    Q8_0,
}

impl KvType {
    /// Every type, for parsing and tests.
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8_0];

    /// The name used on the command line and in reports (`f32`, `f16`, `q8_0`).
    pub fn as_str(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// The type named `name` ([`Self::as_str`]).
    pub fn parse(name: &str) -> Option<KvType> {
        KvType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Bytes of `n` entries (for Q8_0, `n` a multiple of 32).
    pub fn bytes_for(self, n: u64) -> u64 {
        match self {
            KvType::F32 => n.saturating_mul(4),
            KvType::F16 => n.saturating_mul(2),
            KvType::Q8_0 => (n / 32).saturating_mul(34),
        }
    }
}

/// How a backend lays out its KV cache, which decides what the engine may do with blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// Any block of the pool may hold any positions of any sequence: attention follows the
    /// block table, so blocks can be allocated on demand and shared by prefix.
    Paged,
    /// Table row `s` always owns blocks `s * seq_blocks .. (s + 1) * seq_blocks`, in order: the
    /// backend addresses the cache by sequence row and position and ignores the table
    /// contents, so the engine must allocate exactly that way and cannot share blocks.
    Slots,
}

/// Shape of a KV cache: a pool of `blocks` blocks of [`KV_BLOCK`] positions, each holding
/// the keys and values of every layer and KV head for its positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Transformer layers.
    pub layers: usize,
    /// Blocks in the pool.
    pub blocks: usize,
    /// Rows of the block table: the sequences one forward call may name.
    pub seqs: usize,
    /// Entries per block-table row: the most blocks one sequence holds.
    pub seq_blocks: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Width of one key head.
    pub head_dim: usize,
    /// Width of one value head.
    pub value_head_dim: usize,
    /// Entry type, as the backend stores it.
    pub ty: KvType,
}

impl KvCacheConfig {
    /// Positions one sequence can hold.
    pub fn max_positions(&self) -> usize {
        self.seq_blocks.saturating_mul(KV_BLOCK)
    }

    /// Bytes of one block: keys and values of every layer and KV head for [`KV_BLOCK`]
    /// positions. Saturates on absurd sizes.
    pub fn block_bytes(&self) -> u64 {
        let per_position = |width: usize| {
            [self.layers, self.kv_heads, width, KV_BLOCK]
                .iter()
                .fold(1u64, |a, &b| a.saturating_mul(b as u64))
        };
        self.ty
            .bytes_for(per_position(self.head_dim))
            .saturating_add(self.ty.bytes_for(per_position(self.value_head_dim)))
    }

    /// Bytes of the whole pool.
    pub fn bytes(&self) -> u64 {
        self.block_bytes().saturating_mul(self.blocks as u64)
    }

    /// Checks the sizes every backend needs: positive counts, Q8_0 heads a multiple of its
    /// block, and a table whose rows fit the pool.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(ComputeError::Shape {
                op: "kv cache",
                reason,
            })
        };
        if [
            self.layers,
            self.blocks,
            self.seqs,
            self.seq_blocks,
            self.kv_heads,
            self.head_dim,
        ]
        .contains(&0)
            || self.value_head_dim == 0
        {
            return bad(format!("{self:?}: every size must be positive"));
        }
        if self.ty == KvType::Q8_0
            && !(self.head_dim.is_multiple_of(32) && self.value_head_dim.is_multiple_of(32))
        {
            return bad(format!(
                "q8_0 needs head widths that are multiples of 32, not {} and {}",
                self.head_dim, self.value_head_dim
            ));
        }
        Ok(())
    }
}

/// Where the rows of a forward call sit in the KV cache: row `r` is at position
/// `positions[r]` of the sequence in block-table row `seqs[r]`; position `p` of table row `s`
/// lives in block `block_table[s * seq_blocks + p / KV_BLOCK]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvIndex {
    /// Position of each row.
    pub positions: IndexId,
    /// Block-table row of each row.
    pub seqs: IndexId,
    /// `seqs x seq_blocks` block ids, row-major (see [`KvCacheConfig`]).
    pub block_table: IndexId,
}

/// Which pairs of a head rotary embedding rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs `(x[2i], x[2i+1])` (ggml "normal"; llama as converted to GGUF).
    Normal,
    /// Halves `(x[i], x[i + n_rot/2])` (ggml "neox"; qwen2, phi3, gpt-neox).
    Neox,
}

/// Parameters of [`ComputeBackend::rope`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    /// Heads packed in each row (`cols = heads * head_dim`).
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Leading dimensions of each head that are rotated (even, at most `head_dim`).
    pub n_rot: usize,
    /// Frequency base (`theta_i = pos * freq_scale * base^(-2i/n_rot)`).
    pub base: f32,
    /// Position scale (1 for no scaling, `1/factor` for linear scaling).
    pub freq_scale: f32,
    /// Pair layout.
    pub mode: RopeMode,
    /// YaRN context extension (gpt-oss); `None` for plain rope.
    pub yarn: Option<Yarn>,
}

/// YaRN rotary scaling (ggml's `rope_yarn`): dimension pair `i` rotates by
/// `theta = interp·(1 - ramp_i) + extrap·ramp_i`, where `extrap = pos·base^(-2i/n_rot)`,
/// `interp = freq_scale·extrap` and `ramp_i` falls from `ext_factor` to 0 between the
/// correction dimensions of `beta_fast` and `beta_slow` rotations over `original_context`;
/// cosines and sines are multiplied by `attn_factor·(1 + 0.1·ln(1/freq_scale))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    /// The context the model was trained with (`rope.scaling.original_context_length`).
    pub original_context: u32,
    /// Rotations per original context at which extrapolation stops (32 by default).
    pub beta_fast: f32,
    /// Rotations per original context at which interpolation starts (1 by default).
    pub beta_slow: f32,
    /// Weight of extrapolation in the mix (1 for YaRN).
    pub ext_factor: f32,
    /// Extra magnitude factor (`rope.scaling.attn_factor`, 1 by default).
    pub attn_factor: f32,
}

impl Yarn {
    /// The first and last dimension pair of the ramp, as ggml's `ggml_rope_yarn_corr_dims`.
    pub fn correction_dims(&self, n_rot: usize, base: f32) -> [f32; 2] {
        let dim = |rotations: f32| {
            n_rot as f32
                * (self.original_context as f32 / (rotations * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let start = dim(self.beta_fast).floor().max(0.0);
        let end = dim(self.beta_slow).ceil().min(n_rot as f32 - 1.0);
        [start, end]
    }
}

/// Parameters of [`ComputeBackend::attention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Query heads (`q` has `heads * head_dim` columns).
    pub heads: usize,
    /// Key/value heads; each serves `heads / kv_heads` query heads (GQA).
    pub kv_heads: usize,
    /// Width of one query/key head.
    pub head_dim: usize,
    /// Width of one value head (`out` has `heads * value_head_dim` columns).
    pub value_head_dim: usize,
    /// Multiplier of the scores, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// Layer of the cache to read and write.
    pub layer: usize,
    /// Sliding window: the row at position `p` attends to positions
    /// `max(0, p + 1 - w)..=p` only; `None` for all of `0..=p`.
    pub window: Option<usize>,
    /// Attention sinks (gpt-oss): a vector of one logit per query head that joins each
    /// head's softmax (its denominator only: a sink has no value).
    pub sinks: Option<WeightId>,
}

/// One product of [`ComputeBackend::linear`]: `out = x · weightᵀ + bias`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Where the product goes.
    pub out: TensorId,
    /// The weight, `[out cols, x cols]`.
    pub weight: WeightId,
    /// A vector of `out`'s width added to every row, if any.
    pub bias: Option<WeightId>,
}

/// One expert of a mixture-of-experts MLP: gate, up and down projections (each a weight of
/// its own, usually cut from the GGUF's stacked expert tensors) and their optional biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertWeights {
    /// `[ff, d]` gate projection.
    pub gate: WeightId,
    /// `[ff, d]` up projection.
    pub up: WeightId,
    /// `[d, ff]` down projection.
    pub down: WeightId,
    /// `ff` bias of the gate projection.
    pub gate_bias: Option<WeightId>,
    /// `ff` bias of the up projection.
    pub up_bias: Option<WeightId>,
    /// `d` bias of the down projection.
    pub down_bias: Option<WeightId>,
}

/// The gated activation between an expert's up and down projections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpertActivation {
    /// `silu(gate) * up`.
    Swiglu,
    /// gpt-oss's clamped variant (ggml `swiglu_oai`): `g = min(gate, limit)`,
    /// `u = clamp(up, -limit, limit)`, `out = g·sigmoid(alpha·g)·(u + 1)`.
    SwigluOai {
        /// Slope inside the sigmoid (1.702).
        alpha: f32,
        /// Clamp bound (7).
        limit: f32,
    },
}

/// Parameters of [`ComputeBackend::moe`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeParams {
    /// Experts each row uses: the `used` largest router logits (ties to the lower index).
    /// Their weights are the softmax of those logits (llama.cpp's `SOFTMAX_WEIGHT` gating).
    pub used: usize,
    /// The experts' activation.
    pub activation: ExpertActivation,
}

impl RopeParams {
    /// Checks what every backend needs before running `rope`: an even `n_rot` that fits the
    /// head. Shapes of the tensors are the backend's to check.
    pub fn validate(&self) -> Result<()> {
        if !self.n_rot.is_multiple_of(2) || self.n_rot > self.head_dim {
            return Err(ComputeError::Shape {
                op: "rope",
                reason: format!("n_rot {} with head_dim {}", self.n_rot, self.head_dim),
            });
        }
        Ok(())
    }
}

impl AttentionParams {
    /// Checks what every backend needs before running `attention` on a cache shaped `cache`:
    /// query heads a whole multiple of the key/value heads, and head widths and layer that
    /// fit the cache.
    pub fn validate(&self, cache: &KvCacheConfig) -> Result<()> {
        let shape = |reason: String| ComputeError::Shape {
            op: "attention",
            reason,
        };
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(shape(format!(
                "{} heads over {} kv heads",
                self.heads, self.kv_heads
            )));
        }
        if self.window == Some(0) {
            return Err(shape("a sliding window of 0 positions".into()));
        }
        if cache.kv_heads != self.kv_heads
            || cache.head_dim != self.head_dim
            || cache.value_head_dim != self.value_head_dim
            || self.layer >= cache.layers
        {
            return Err(shape(format!(
                "params {self:?} do not fit the cache {cache:?}"
            )));
        }
        Ok(())
    }
}

/// A compute device. Model adapters call only these ops; they never touch raw memory.
///
/// Ops validate the handles and shapes they are given and return an error instead of
/// panicking. Unless stated, an op's output must be a different tensor from its inputs.
pub trait ComputeBackend: Send {
    /// A short name for logs (`"cpu"`, `"cuda"`).
    fn name(&self) -> &'static str;

    /// Device bytes this backend holds (weights, tensors, KV caches), where it counts them
    /// exactly (the CUDA backend); `None` where memory is the host's and not tracked.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }

    /// Uploads a weight once, in its storage type. An unsupported type is an error naming it.
    fn upload_weight(&mut self, desc: WeightDesc<'_>) -> Result<WeightId>;
    /// Allocates an f32 activation matrix with room for `rows` rows of `cols` columns.
    fn alloc_tensor(&mut self, rows: usize, cols: usize) -> Result<TensorId>;
    /// Allocates an index vector of `len` entries.
    fn alloc_index(&mut self, len: usize) -> Result<IndexId>;
    /// How this backend lays out a KV cache (what the engine may do with blocks).
    fn kv_layout(&self) -> KvLayout {
        KvLayout::Paged
    }
    /// The entry type this backend stores when asked for `requested` (a backend may store
    /// one type only); the figure every memory report uses.
    fn kv_storage(&self, requested: KvType) -> KvType {
        requested
    }
    /// Allocates a zeroed KV cache; `config.ty` must be what [`Self::kv_storage`] returns.
    fn alloc_kv_cache(&mut self, config: KvCacheConfig) -> Result<KvCacheId>;

    /// Copies host indices into the first `data.len()` entries of `dst`.
    fn write_index(&mut self, dst: IndexId, data: &[u32]) -> Result<()>;
    /// Copies host values into the first `data.len() / cols` rows of `dst` (inputs for tests
    /// and for models that take embeddings directly).
    fn write_rows(&mut self, dst: TensorId, data: &[f32]) -> Result<()>;
    /// Copies the first `rows` rows of `src` to the host: the logits read-out.
    fn read_rows(&mut self, src: TensorId, rows: usize, out: &mut [f32]) -> Result<()>;

    /// `out[r] = table[ids[r]]`, dequantized, for `r < rows`.
    fn embed(&mut self, out: TensorId, table: WeightId, ids: IndexId, rows: usize) -> Result<()>;
    /// `out[r] = src[index[r]]` for `r < rows` (selects the rows that produce logits).
    fn gather_rows(
        &mut self,
        out: TensorId,
        src: TensorId,
        index: IndexId,
        rows: usize,
    ) -> Result<()>;
    /// `out[r] = x[r] / rms(x[r]) * weight` (weight: a vector of `cols` elements).
    fn rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()>;
    /// In place, each of the `heads` heads of each row (`cols / heads` wide) divided by its
    /// own RMS and multiplied by `weight` (a vector of one head's width): the per-head q/k
    /// norms of qwen3 and gemma3. A backend without it says so
    /// ([`ComputeError::Unsupported`] naming the op) rather than skip it.
    fn rms_norm_heads(
        &mut self,
        x: TensorId,
        weight: WeightId,
        eps: f32,
        heads: usize,
        rows: usize,
    ) -> Result<()> {
        let _ = (x, weight, eps, heads, rows);
        Err(ComputeError::Unsupported {
            op: "rms_norm_heads",
            reason: format!("the {} backend has no per-head RMS norm", self.name()),
        })
    }
    /// `out[r] = (x[r] - mean) / std * weight + bias`.
    fn layer_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        weight: WeightId,
        bias: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()>;
    /// `out[r][j] = dot(x[r], w[j])`: activations times the transpose of a weight of shape
    /// `[out cols, x cols]`, all `rows` rows at once (prefill is one batched matmul).
    fn matmul(&mut self, out: TensorId, x: TensorId, w: WeightId, rows: usize) -> Result<()>;
    /// [`ComputeBackend::matmul`] of one input by several weights, `outs[i] = x · w_iᵀ`
    /// (q, k and v; gate and up): one op, so that a backend can prepare `x` once and run the
    /// products as one parallel job. The outputs must be distinct tensors.
    fn matmul_group(
        &mut self,
        x: TensorId,
        outs: &[(TensorId, WeightId)],
        rows: usize,
    ) -> Result<()> {
        for &(out, w) in outs {
            self.matmul(out, x, w, rows)?;
        }
        Ok(())
    }
    /// `outs[i].out = x · outs[i].weightᵀ + outs[i].bias` for each product: the projections
    /// of one input with their biases (q, k and v of qwen2; each of gpt2's), as one op so
    /// that a backend can add a bias as it stores the product. The outputs must be distinct.
    /// By default [`ComputeBackend::matmul_group`], then [`ComputeBackend::add_bias`] per
    /// bias, in order.
    fn linear(&mut self, x: TensorId, outs: &[Linear], rows: usize) -> Result<()> {
        let products: Vec<(TensorId, WeightId)> = outs.iter().map(|l| (l.out, l.weight)).collect();
        self.matmul_group(x, &products, rows)?;
        for l in outs {
            if let Some(bias) = l.bias {
                self.add_bias(l.out, bias, rows)?;
            }
        }
        Ok(())
    }
    /// The gate and up projections of a SwiGLU MLP and the activation between them:
    /// `gate.0 = x · gate.1ᵀ`, `up.0 = x · up.1ᵀ`, then `out = silu(gate.0) * up.0`, as one
    /// op so that a backend can compute all three in one pass. By default
    /// [`ComputeBackend::matmul_group`] of the two, then [`ComputeBackend::swiglu`].
    fn matmul_swiglu(
        &mut self,
        out: TensorId,
        x: TensorId,
        gate: (TensorId, WeightId),
        up: (TensorId, WeightId),
        rows: usize,
    ) -> Result<()> {
        self.matmul_group(x, &[gate, up], rows)?;
        self.swiglu(out, gate.0, up.0, rows)
    }
    /// `dst[r] += src[r]` (the residual add).
    fn add(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()>;
    /// The residual add and the RMS norm after it: `x[r] += y[r]`, then
    /// `out[r] = x[r] / rms(x[r]) * weight`, as one op so that a backend can normalize each
    /// row as it adds. `out` may be `y` (not `x`). By default [`ComputeBackend::add`], then
    /// [`ComputeBackend::rms_norm`].
    fn add_rms_norm(
        &mut self,
        out: TensorId,
        x: TensorId,
        y: TensorId,
        weight: WeightId,
        eps: f32,
        rows: usize,
    ) -> Result<()> {
        self.add(x, y, rows)?;
        self.rms_norm(out, x, weight, eps, rows)
    }
    /// `dst[r] += bias` for a bias vector of `cols` elements.
    fn add_bias(&mut self, dst: TensorId, bias: WeightId, rows: usize) -> Result<()>;
    /// `x[r] *= factor` in place (gemma's embedding scale). A backend without it says so
    /// ([`ComputeError::Unsupported`] naming the op).
    fn scale(&mut self, x: TensorId, factor: f32, rows: usize) -> Result<()> {
        let _ = (x, factor, rows);
        Err(ComputeError::Unsupported {
            op: "scale",
            reason: format!("the {} backend has no scale", self.name()),
        })
    }
    /// `dst[r] *= src[r]`, element-wise.
    fn mul(&mut self, dst: TensorId, src: TensorId, rows: usize) -> Result<()>;
    /// Rotary embedding in place; row `r` is at position `positions[r]`.
    fn rope(
        &mut self,
        x: TensorId,
        positions: IndexId,
        params: &RopeParams,
        rows: usize,
    ) -> Result<()>;
    /// [`ComputeBackend::rope`] of `q` with `q_params`, then of `k` with `k_params`, at the
    /// same positions, as one op so that a backend can rotate both in one pass. By default
    /// the two ropes, in that order.
    fn rope_qk(
        &mut self,
        q: TensorId,
        k: TensorId,
        positions: IndexId,
        q_params: &RopeParams,
        k_params: &RopeParams,
        rows: usize,
    ) -> Result<()> {
        self.rope(q, positions, q_params, rows)?;
        self.rope(k, positions, k_params, rows)
    }
    /// Stores the keys and values of each row in `cache` where `index` places it, then
    /// computes causal attention: row `r` attends to positions `0..=positions[r]` of its
    /// sequence (the last [`AttentionParams::window`] of them, when set), query head `h`
    /// reading key/value head `h / (heads / kv_heads)`. Rows of one
    /// sequence in one call are stored before any of them is read.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        out: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        cache: KvCacheId,
        index: &KvIndex,
        params: &AttentionParams,
        rows: usize,
    ) -> Result<()>;
    /// The mixture-of-experts MLP of `rows` rows of `x`: for each row, the
    /// [`MoeParams::used`] experts with the largest `router_logits` (one column per entry of
    /// `experts`), each applied to the row as `down(act(gate(x) + bg, up(x) + bu)) + bd`,
    /// summed into `out` with the softmax of the chosen logits as weights, in order of rank.
    /// A backend computes each chosen expert once for all the rows that chose it. A backend
    /// without it says so ([`ComputeError::Unsupported`] naming the op).
    #[allow(clippy::too_many_arguments)]
    fn moe(
        &mut self,
        out: TensorId,
        x: TensorId,
        router_logits: TensorId,
        experts: &[ExpertWeights],
        params: &MoeParams,
        rows: usize,
    ) -> Result<()> {
        let _ = (out, x, router_logits, experts, params, rows);
        Err(ComputeError::Unsupported {
            op: "moe",
            reason: format!("the {} backend has no mixture-of-experts op", self.name()),
        })
    }
    /// `out = silu(gate) * up`.
    fn swiglu(&mut self, out: TensorId, gate: TensorId, up: TensorId, rows: usize) -> Result<()>;
    /// `x = gelu(x)` in place (tanh approximation, as ggml and GPT-2).
    fn gelu(&mut self, x: TensorId, rows: usize) -> Result<()>;
}
