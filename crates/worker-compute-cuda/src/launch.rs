//! Launch plumbing: every kernel's parameters as a typed struct (one per C signature), the
//! ids of loaded kernels typed by those structs, grid shapes, and recording a launch.
//!
//! A launch can only pass a kernel the struct its id was declared with (see
//! [`crate::types`]), and each struct lists the parameters in the order of the kernel's C
//! signature; `tests/nvrtc_compile.rs` checks every struct against the kernel's entry in the
//! compiled PTX (count, width and integer or float of each parameter), so an argument list
//! that does not match its kernel fails without a GPU.

use std::marker::PhantomData;

use crate::backend::CudaBackend;
use crate::device::Device;
use crate::kernels::Param;
use crate::queue::Launch;

/// A kernel argument as the launch passes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device address (0 for "none" where a kernel allows it).
    P(u64),
    /// A C `int`.
    I(i32),
    /// A C `long long`.
    L(i64),
    /// A C `float`.
    F(f32),
}

impl Arg {
    /// The argument's bits and kind in one word, for hashing a launch list.
    pub(crate) fn bits(&self) -> u64 {
        match *self {
            Arg::P(v) => v,
            Arg::I(v) => (1 << 40) | u64::from(v as u32),
            Arg::L(v) => (2 << 40) ^ v as u64,
            Arg::F(v) => (3 << 40) | u64::from(v.to_bits()),
        }
    }
}

/// Most arguments a kernel of this crate takes.
pub(crate) const MAX_ARGS: usize = 20;

/// A kernel's arguments, inline (no allocation per launch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Args {
    list: [Arg; MAX_ARGS],
    len: usize,
}

impl Args {
    /// The arguments `list`, checked at compile time to fit.
    pub(crate) fn of<const N: usize>(list: [Arg; N]) -> Self {
        const { assert!(N <= MAX_ARGS) };
        let mut all = [Arg::I(0); MAX_ARGS];
        all[..N].copy_from_slice(&list);
        Args { list: all, len: N }
    }

    /// The arguments, in order.
    pub(crate) fn as_slice(&self) -> &[Arg] {
        &self.list[..self.len]
    }

    /// These arguments followed by `more` (the caller's parameter count is checked at compile
    /// time to fit, see `kernel_args_extended!`).
    fn then<const N: usize>(mut self, more: [Arg; N]) -> Self {
        let end = (self.len + N).min(MAX_ARGS);
        self.list[self.len..end].copy_from_slice(&more[..end - self.len]);
        self.len = end;
        self
    }
}

/// `a` followed by `b`, as an array of `N = a.len() + b.len()` parameter types.
const fn join<const N: usize>(a: &[Param], b: &[Param]) -> [Param; N] {
    assert!(a.len() + b.len() == N);
    let mut out = [Param::Int; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < a.len() { a[i] } else { b[i - a.len()] };
        i += 1;
    }
    out
}

/// A Rust value passed as one kernel parameter: `u64` for a device address, `i32` for an
/// `int`, `i64` for a `long long`, `f32` for a `float`.
pub(crate) trait ToArg: Copy {
    /// The C type it is passed as.
    const PARAM: Param;
    /// The argument.
    fn to_arg(self) -> Arg;
}

impl ToArg for u64 {
    const PARAM: Param = Param::Pointer;
    fn to_arg(self) -> Arg {
        Arg::P(self)
    }
}

impl ToArg for i32 {
    const PARAM: Param = Param::Int;
    fn to_arg(self) -> Arg {
        Arg::I(self)
    }
}

impl ToArg for i64 {
    const PARAM: Param = Param::LongLong;
    fn to_arg(self) -> Arg {
        Arg::L(self)
    }
}

impl ToArg for f32 {
    const PARAM: Param = Param::Float;
    fn to_arg(self) -> Arg {
        Arg::F(self)
    }
}

/// The parameters of a kernel, in the order of its C signature.
pub(crate) trait KernelArgs: Copy {
    /// Their C types.
    const PARAMS: &'static [Param];
    /// The arguments of one launch.
    fn to_args(&self) -> Args;
}

/// Declares a struct of a kernel's parameters (field order = C parameter order) and its
/// [`KernelArgs`].
macro_rules! kernel_args {
    ($($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? })*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name {
            $(pub $field: $ty,)*
        }

        impl KernelArgs for $name {
            const PARAMS: &'static [Param] = &[$(<$ty as ToArg>::PARAM),*];
            fn to_args(&self) -> Args {
                Args::of([$(self.$field.to_arg()),*])
            }
        }
    )*};
}

/// Declares the parameters of a variant of a kernel that takes another kernel's parameters
/// (`base`) followed by more, and its [`KernelArgs`].
macro_rules! kernel_args_extended {
    ($($(#[$doc:meta])* $name:ident: $base:ty => { $($field:ident: $ty:ty),* $(,)? })*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name {
            /// The base kernel's parameters, first.
            pub base: $base,
            $(pub $field: $ty,)*
        }

        impl $name {
            const MORE: &'static [Param] = &[$(<$ty as ToArg>::PARAM),*];
            const COUNT: usize = <$base as KernelArgs>::PARAMS.len() + Self::MORE.len();
            const ALL: [Param; Self::COUNT] = join(<$base as KernelArgs>::PARAMS, Self::MORE);
        }

        impl KernelArgs for $name {
            const PARAMS: &'static [Param] = &Self::ALL;
            fn to_args(&self) -> Args {
                const { assert!(Self::COUNT <= MAX_ARGS) };
                self.base.to_args().then([$(self.$field.to_arg()),*])
            }
        }
    )*};
}

kernel_args! {
    /// `add_f32`, `mul_f32`: `dst[i] += src[i]` (`*=`) for `i < n`.
    Binary { dst: u64, src: u64, n: i64 }
    /// `scale_f32`: `x[i] *= s`.
    Scale { x: u64, s: f32, n: i64 }
    /// `add_bias_f32`: `dst[i] += bias[i % cols]`.
    AddBias { dst: u64, bias: u64, n: i64, cols: i32 }
    /// `swiglu_f32`: `out[i] = silu(gate[i]) * up[i]`.
    Swiglu { out: u64, gate: u64, up: u64, n: i64 }
    /// `gelu_f32`, in place.
    Gelu { x: u64, n: i64 }
    /// `gather_rows_f32`: row `r` of `out` is row `index[r]` of `src`.
    GatherRows { out: u64, src: u64, index: u64, cols: i32 }
    /// `rms_norm_f32`: one block per row.
    RmsNorm { out: u64, x: u64, w: u64, eps: f32, cols: i32 }
    /// `layer_norm_f32`: one block per row.
    LayerNorm { out: u64, x: u64, w: u64, b: u64, eps: f32, cols: i32 }
    /// `rope_f32`: heads of `x`, then (when `x2` is not 0) of `x2`, at positions `pos`.
    Rope {
        x: u64,
        pos: u64,
        cols: i32,
        head_dim: i32,
        n_rot: i32,
        base: f32,
        freq_scale: f32,
        neox: i32,
        heads: i32,
        x2: u64,
        cols2: i32,
    }
    /// `add_rms_norm_f32`: `x += y`, then `out = rms_norm(x) * w`.
    AddRmsNorm { out: u64, x: u64, y: u64, w: u64, eps: f32, cols: i32 }
    /// `argmax_f32`: one block per row.
    Argmax { out: u64, x: u64, cols: i32 }
    /// `kv_store`: the rows' keys and values into the f16 cache.
    KvStore {
        kc: u64,
        vc: u64,
        k: u64,
        v: u64,
        pos: u64,
        slot: u64,
        layer: i32,
        slots: i32,
        max_pos: i32,
        kv_heads: i32,
        hd: i32,
        vhd: i32,
    }
    /// `attention_f16`: one block per (row, head), over the stored cache.
    Attention {
        out: u64,
        q: u64,
        kc: u64,
        vc: u64,
        pos: u64,
        slot: u64,
        heads: i32,
        kv_heads: i32,
        hd: i32,
        vhd: i32,
        scale: f32,
        layer: i32,
        slots: i32,
        max_pos: i32,
    }
    /// `moe_route`: each row's `used` experts by rank (`ids`) and their softmax weights.
    MoeRoute { ids: u64, weights: u64, logits: u64, rows: i32, experts: i32, used: i32 }
    /// `moe_combine`: each row's ranked expert outputs summed with their weights.
    MoeCombine { out: u64, ranked: u64, weights: u64, used: i32, cols: i32 }
    /// `moe_glu_<type>`: the chosen experts' gate and up products of each row, their biases
    /// and the activation (`oai` 1: gpt-oss's clamped SwiGLU with `alpha` and `limit`), the
    /// weights found by expert id in the address tables `wg`, `wu`, `bg`, `bu`.
    MoeGlu {
        act: u64,
        x: u64,
        ids: u64,
        wg: u64,
        wu: u64,
        bg: u64,
        bu: u64,
        used: i32,
        n: i32,
        k: i32,
        row_bytes: i64,
        seg_bytes: i32,
        oai: i32,
        alpha: f32,
        limit: f32,
    }
    /// `moe_down_<type>`: the chosen experts' down products of each (row, rank) slot plus
    /// their biases, the weights found by expert id in the address tables `wd`, `bd`.
    MoeDown {
        out: u64,
        act: u64,
        ids: u64,
        wd: u64,
        bd: u64,
        n: i32,
        k: i32,
        row_bytes: i64,
        seg_bytes: i32,
    }
    /// `attention_decode_f16`: stores one row's key and value, then attends over splits of
    /// the positions into `part`.
    AttentionDecode {
        q: u64,
        k: u64,
        v: u64,
        kc: u64,
        vc: u64,
        pos: u64,
        slot: u64,
        heads: i32,
        kv_heads: i32,
        hd: i32,
        vhd: i32,
        scale: f32,
        layer: i32,
        slots: i32,
        max_pos: i32,
        part: u64,
        nsplit: i32,
    }
    /// `attention_combine`: merges the decode splits of `part`.
    AttentionCombine { out: u64, part: u64, pos: u64, nsplit: i32, vhd: i32 }
    /// `attention_prefill_f16`: tiles of positions shared by 16 query rows of one slot.
    AttentionPrefill {
        out: u64,
        q: u64,
        kc: u64,
        vc: u64,
        pos: u64,
        slot: u64,
        rows: i32,
        heads: i32,
        kv_heads: i32,
        hd: i32,
        vhd: i32,
        scale: f32,
        layer: i32,
        slots: i32,
        max_pos: i32,
    }
    /// `embed_<type>`: row `r` of `out` is row `ids[r]` of `table`, dequantized.
    Embed { out: u64, table: u64, ids: u64, cols: i32, row_bytes: i64 }
    /// `dequant_<type>`: one row of `w` per block, to f32.
    Dequant { out: u64, w: u64, cols: i32, row_bytes: i64 }
    /// `matmul_<type>`: `rows` rows of `x` times `w`ᵀ.
    Matmul { out: u64, x: u64, w: u64, rows: i32, n: i32, k: i32, row_bytes: i64 }
    /// `matvec_<type>`, `matvec_wide_<type>`: one row of `x` times `w`ᵀ, plus `bias` (0:
    /// none).
    Matvec {
        out: u64,
        x: u64,
        w: u64,
        bias: u64,
        n: i32,
        k: i32,
        row_bytes: i64,
        seg_bytes: i32,
    }
    /// `matvec_glu_<type>`: the gate and up mat-vecs of one row and the SwiGLU of them.
    MatvecGlu {
        act: u64,
        gate: u64,
        up: u64,
        x: u64,
        w_gate: u64,
        w_up: u64,
        n: i32,
        k: i32,
        row_bytes: i64,
        seg_bytes: i32,
    }
    /// `matvec3_<type>`: up to three mat-vecs of one row of `x` (an unused set is all 0).
    Matvec3 {
        x: u64,
        k: i32,
        row_bytes: i64,
        seg_bytes: i32,
        out0: u64,
        w0: u64,
        bias0: u64,
        n0: i32,
        out1: u64,
        w1: u64,
        bias1: u64,
        n1: i32,
        out2: u64,
        w2: u64,
        bias2: u64,
        n2: i32,
    }
}

kernel_args_extended! {
    /// `rope_yarn_f32`: `rope_f32` with YaRN scaling (`ext_factor` 0: the cosines and sines
    /// only scaled by `mscale`), `low` and `high` the ramp's correction dimensions.
    RopeYarn: Rope => { ext_factor: f32, low: f32, high: f32, mscale: f32 }
    /// `attention_window_f16`: `attention_f16` over the last `window` positions (0: all) with
    /// a sink logit per head (`sinks`, 0: none).
    AttentionWindow: Attention => { window: i32, sinks: u64 }
    /// `attention_decode_window_f16`: `attention_decode_f16` over the last `window`
    /// positions (0: all).
    AttentionDecodeWindow: AttentionDecode => { window: i32 }
    /// `attention_combine_window`: merges the splits of `attention_decode_window_f16` (the
    /// same `window`), with a sink logit per head (`sinks`, 0: none).
    AttentionCombineWindow: AttentionCombine => { window: i32, sinks: u64 }
}

/// A loaded kernel whose parameters are `A`: its id, the kernel's position in
/// [`crate::kernels::names`].
pub(crate) struct Func<A> {
    pub id: usize,
    args: PhantomData<fn(A)>,
}

impl<A> Func<A> {
    /// The kernel with id `id`.
    pub(crate) fn new(id: usize) -> Self {
        Func {
            id,
            args: PhantomData,
        }
    }
}

impl<A> Clone for Func<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Func<A> {}

impl<A> PartialEq for Func<A> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<A> std::fmt::Debug for Func<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Func({})", self.id)
    }
}

/// Grid and block of a launch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// One thread per element, in blocks of 256.
pub(crate) fn grid_1d(n: usize) -> Dims {
    Dims {
        grid: (n.div_ceil(256) as u32, 1, 1),
        block: (256, 1, 1),
    }
}

/// A grid of `x` by `y` blocks of `threads` threads.
pub(crate) fn grid(x: usize, y: usize, threads: u32) -> Dims {
    Dims {
        grid: (x as u32, y as u32, 1),
        block: (threads, 1, 1),
    }
}

impl<D: Device> CudaBackend<D> {
    /// Records a launch of `func` with `args`; it runs at the next flush.
    pub(crate) fn launch<A: KernelArgs>(&mut self, func: Func<A>, dims: Dims, args: A) {
        self.pending.push(Launch {
            func: func.id,
            grid: dims.grid,
            block: dims.block,
            args: args.to_args(),
        });
    }
}
