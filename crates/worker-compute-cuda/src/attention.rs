//! Causal attention over the f16 KV cache (`attention.cu`), laid out by slot
//! (`KvLayout::Slots`): a sequence's block-table row is its slot, and the block table itself
//! is not read.
//!
//! One row (a decode step) is flash-decoding: `attention_decode_f16` stores the row's key and
//! value and attends over splits of [`AD_SPAN`] positions, `attention_combine` merges the
//! splits. More rows store their keys and values with `kv_store`, then attend with
//! `attention_f16` (a block per row and head), or, with the experimental `attn` path and
//! rows of one slot, `attention_prefill_f16` (16 query rows sharing tiles of positions).
//!
//! A sliding window or attention sinks (the experimental `models` path; refused by name
//! without it) run the `_window` variants of the same kernels: `attention_decode_window_f16`
//! and `attention_combine_window` for one row, `attention_window_f16` for more (never the
//! tiled kernel, which masks neither).

use worker_compute::{AttentionParams, ComputeError, KvCacheId, KvIndex, Result, TensorId};

use worker_compute::shape::{check_cols, check_rows};

use crate::backend::CudaBackend;
use crate::device::Device;
use crate::launch::{
    grid, Attention, AttentionCombine, AttentionCombineWindow, AttentionDecode,
    AttentionDecodeWindow, AttentionPrefill, AttentionWindow, KvStore,
};
use crate::memory::{i32_of, shape};

/// Largest head width the attention kernel handles (`ATT_MAX_DIM` in attention.cu).
const MAX_HEAD_DIM: usize = 256;
/// Threads of a decode attention block (`AD_WARPS` warps in attention.cu).
const AD_THREADS: u32 = 4 * 32;
/// Positions of a decode attention block (`AD_SPAN` in attention.cu).
const AD_SPAN: usize = 128;
/// Query rows of a tiled prefill attention block (`AP_BLOCK_ROWS` in attention.cu).
const AP_BLOCK_ROWS: usize = 16;
/// Widest head of the tiled prefill attention (`AP_MAX_DIM` in attention.cu).
const AP_MAX_DIM: usize = 128;

impl<D: Device> CudaBackend<D> {
    /// [`worker_compute::ComputeBackend::attention`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &mut self,
        out: TensorId,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        cache: KvCacheId,
        index: &KvIndex,
        p: &AttentionParams,
        rows: usize,
    ) -> Result<()> {
        const OP: &str = "attention";
        if p.sinks.is_some() && !self.experimental.models {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: "attention sinks have no CUDA kernel yet".into(),
            });
        }
        let (pos, pp) = self.index(OP, index.positions, rows)?;
        let (slot, sp) = self.index(OP, index.seqs, rows)?;
        let kv = self.cache(OP, cache)?;
        let cfg = kv.cfg;
        let (slots, max_positions) = (cfg.seqs, cfg.max_positions());
        let (hd, vhd) = (p.head_dim, p.value_head_dim);
        p.validate(&cfg)?;
        match p.window {
            // The window kernels are experimental: without them refuse rather than attend to
            // every position.
            Some(w) if !self.experimental.models => {
                return Err(ComputeError::Unsupported {
                    op: OP,
                    reason: format!("a sliding window ({w} positions)"),
                });
            }
            _ => {}
        }
        let sinks = match p.sinks {
            Some(w) => self.vector(OP, w, p.heads)?,
            None => 0,
        };
        // A window at least as long as the cache masks nothing; 0 is "no window" to the kernels.
        let window = p.window.map_or(0, |w| w.min(max_positions));
        let masked = window > 0 || sinks != 0;
        if hd > MAX_HEAD_DIM || vhd > MAX_HEAD_DIM || p.heads > 65_535 {
            return Err(ComputeError::Unsupported {
                op: OP,
                reason: format!(
                    "head widths {hd}/{vhd} or {} heads (the kernel handles widths up to {MAX_HEAD_DIM})",
                    p.heads
                ),
            });
        }
        for (&ps, &sl) in pos.iter().zip(slot) {
            if ps as usize >= max_positions || sl as usize >= slots {
                return Err(ComputeError::BadIndex {
                    op: OP,
                    reason: format!(
                        "position {ps} in slot {sl}; the cache holds {} positions x {} slots",
                        max_positions, slots
                    ),
                });
            }
        }
        if [q, k, v].contains(&out) {
            return Err(ComputeError::Aliased { op: OP });
        }
        let mut ptrs = [0u64; 4];
        for (i, (id, what, cols)) in [
            (q, "q", p.heads * hd),
            (k, "k", p.kv_heads * hd),
            (v, "v", p.kv_heads * vhd),
            (out, "out", p.heads * vhd),
        ]
        .into_iter()
        .enumerate()
        {
            let t = self.tensor(OP, id)?;
            check_rows(OP, t.rows, rows, what)?;
            check_cols(OP, t.cols, cols, what)?;
            ptrs[i] = t.ptr;
        }
        if rows == 0 {
            return Ok(());
        }
        let one_slot = slot.iter().all(|&s| Some(&s) == slot.first());
        let [qp, kp, vp, op] = ptrs;
        let (kc, vc, have) = (kv.k, kv.v, kv.partials.as_ref().map_or(0, |(_, n)| *n));
        let i = |v: usize| i32_of(OP, v);
        let (heads, kv_heads, hd_i, vhd_i) = (i(p.heads)?, i(p.kv_heads)?, i(hd)?, i(vhd)?);
        let (layer, slots_i, max_pos) = (i(p.layer)?, i(slots)?, i(max_positions)?);
        let window_i = i(window)?;
        let kernels = self.kernels;
        if rows == 1 && hd.is_multiple_of(8) && vhd.is_multiple_of(2) {
            // Decode: one kernel stores this row's key/value and attends over splits of the
            // positions, a second merges the splits.
            let nsplit = max_positions.div_ceil(AD_SPAN);
            let part = self.partials(cache, have, p.heads * nsplit * (vhd + 2))?;
            let nsplit_i = i(nsplit)?;
            if nsplit > 65_535 {
                return Err(shape(
                    OP,
                    format!("{} positions in the cache", max_positions),
                ));
            }
            let decode = AttentionDecode {
                q: qp,
                k: kp,
                v: vp,
                kc,
                vc,
                pos: pp,
                slot: sp,
                heads,
                kv_heads,
                hd: hd_i,
                vhd: vhd_i,
                scale: p.scale,
                layer,
                slots: slots_i,
                max_pos,
                part,
                nsplit: nsplit_i,
            };
            let dims = grid(p.heads, nsplit, AD_THREADS);
            let combine = AttentionCombine {
                out: op,
                part,
                pos: pp,
                nsplit: nsplit_i,
                vhd: vhd_i,
            };
            let combine_dims = grid(p.heads, 1, 128);
            if masked {
                let decode = AttentionDecodeWindow {
                    base: decode,
                    window: window_i,
                };
                self.launch(kernels.attention_decode_window, dims, decode);
                let combine = AttentionCombineWindow {
                    base: combine,
                    window: window_i,
                    sinks,
                };
                self.launch(kernels.attention_combine_window, combine_dims, combine);
            } else {
                self.launch(kernels.attention_decode, dims, decode);
                self.launch(kernels.attention_combine, combine_dims, combine);
            }
            return Ok(());
        }
        let store = KvStore {
            kc,
            vc,
            k: kp,
            v: vp,
            pos: pp,
            slot: sp,
            layer,
            slots: slots_i,
            max_pos,
            kv_heads,
            hd: hd_i,
            vhd: vhd_i,
        };
        self.launch(kernels.kv_store, grid(rows, p.kv_heads, 128), store);
        // The tiled kernel masks neither a window nor sinks: those go to attention_window_f16.
        let use_tiles = !masked && self.experimental.attn && one_slot;
        if use_tiles && hd <= AP_MAX_DIM && vhd <= AP_MAX_DIM {
            let tiled = AttentionPrefill {
                out: op,
                q: qp,
                kc,
                vc,
                pos: pp,
                slot: sp,
                rows: i(rows)?,
                heads,
                kv_heads,
                hd: hd_i,
                vhd: vhd_i,
                scale: p.scale,
                layer,
                slots: slots_i,
                max_pos,
            };
            let dims = grid(rows.div_ceil(AP_BLOCK_ROWS), p.heads, 128);
            self.launch(kernels.attention_prefill, dims, tiled);
            return Ok(());
        }
        let attend = Attention {
            out: op,
            q: qp,
            kc,
            vc,
            pos: pp,
            slot: sp,
            heads,
            kv_heads,
            hd: hd_i,
            vhd: vhd_i,
            scale: p.scale,
            layer,
            slots: slots_i,
            max_pos,
        };
        let dims = grid(rows, p.heads, 128);
        if masked {
            let attend = AttentionWindow {
                base: attend,
                window: window_i,
                sinks,
            };
            self.launch(kernels.attention_window, dims, attend);
        } else {
            self.launch(kernels.attention, dims, attend);
        }
        Ok(())
    }

    /// The address of `cache`'s buffer for `need` floats of decode partials, which holds
    /// `have` now (grown, replacing the old one, when short).
    fn partials(&mut self, cache: KvCacheId, have: usize, need: usize) -> Result<u64> {
        if have < need {
            let buf = self.alloc::<f32>("attention partials", need)?;
            if let Some(kv) = self.caches.get_mut(cache.raw() as usize) {
                if let Some((old, _)) = kv.partials.replace((buf, need)) {
                    self.dev.free(old);
                }
            }
        }
        self.caches
            .get(cache.raw() as usize)
            .and_then(|kv| kv.partials.as_ref().map(|(b, _)| b.ptr))
            .ok_or(ComputeError::Alloc {
                what: "attention partials",
                bytes: need as u128 * 4,
            })
    }
}
