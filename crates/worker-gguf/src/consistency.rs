//! The hyper-parameters of a model file checked against sane bounds and against the tensors
//! the file actually holds, before anything is allocated from them.
//!
//! A count read from metadata is only a claim: `block_count = 2^32-1` once made a loader
//! reserve 257 GB for its layer table, and `block_count = 7` on a 30-layer file loaded seven
//! layers without a word. [`HyperParams::from_file`] refuses both, naming the key or tensor.

use std::collections::BTreeSet;

use crate::error::GgufError;
use crate::file::GgufFile;
use crate::hparams::{HyperParams, RopeScaling};
use crate::reader::TensorInfo;

/// The largest value each dimension may take. Far above every published model (the largest
/// have about 130 layers, width 25k, a 260k vocabulary and a 10M context) and far below what
/// would overflow or exhaust memory when multiplied into a buffer size.
pub const HPARAM_LIMITS: &[(&str, u32)] = &[
    ("block_count", 4096),
    ("embedding_length", 1 << 17),
    ("feed_forward_length", 1 << 20),
    ("attention.head_count", 4096),
    ("attention.key_length", 4096),
    ("attention.value_length", 4096),
    ("context_length", 1 << 24),
    ("vocab_size", 1 << 22),
    ("expert_count", 4096),
    ("expert_feed_forward_length", 1 << 20),
];

fn limit(name: &str) -> u32 {
    HPARAM_LIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(u32::MAX, |&(_, max)| max)
}

impl HyperParams {
    /// [`HyperParams::from_metadata`], then every count and dimension checked against
    /// [`HPARAM_LIMITS`] and against the tensors of `file`: the blocks `blk.0` … `blk.{n-1}` are
    /// exactly `block_count`, `token_embd.weight` is `embedding_length x vocab_size`, the
    /// projections that name a dimension (`attn_q`/`attn_k`/`attn_v`, `ffn_down`) agree with
    /// it, no tensor has a zero dimension, and the tokenizer has no id beyond the embedding.
    /// A model loader calls this before it allocates anything sized by the metadata.
    pub fn from_file(file: &GgufFile) -> Result<Self, GgufError> {
        let hp = Self::from_metadata(file.metadata())?;
        hp.check_bounds()?;
        hp.check_tensors(file)?;
        Ok(hp)
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.architecture)
    }

    fn bad(&self, suffix: &str, reason: String) -> GgufError {
        GgufError::BadValue {
            key: self.key(suffix),
            reason,
        }
    }

    fn check_bounds(&self) -> Result<(), GgufError> {
        let dims = [
            ("block_count", self.block_count),
            ("embedding_length", self.embedding_length),
            ("feed_forward_length", self.feed_forward_length),
            ("attention.head_count", self.head_count),
            ("attention.key_length", self.head_dim),
            ("attention.value_length", self.value_head_dim),
            ("context_length", self.context_length),
            ("vocab_size", self.vocab_size),
        ];
        for (name, value) in dims {
            let max = limit(name);
            if value == 0 || value > max {
                return Err(self.bad(name, format!("{value} is outside 1..={max}")));
            }
        }
        if let Some(w) = self.sliding_window {
            if w == 0 || w > self.context_length {
                return Err(self.bad(
                    "attention.sliding_window",
                    format!("{w} is outside 1..=context_length {}", self.context_length),
                ));
            }
        }
        if let Some(e) = self.experts {
            for (name, value) in [
                ("expert_count", e.count),
                ("expert_feed_forward_length", e.feed_forward_length),
            ] {
                let max = limit(name);
                if value == 0 || value > max {
                    return Err(self.bad(name, format!("{value} is outside 1..={max}")));
                }
            }
        }
        let mut positive = vec![];
        if let RopeScaling::Yarn {
            original_context_length: n,
            beta_fast,
            beta_slow,
            attn_factor,
            ..
        } = self.rope_scaling
        {
            if n == 0 || n > limit("context_length") {
                return Err(self.bad(
                    "rope.scaling.original_context_length",
                    format!("{n} is outside 1..={}", limit("context_length")),
                ));
            }
            positive.extend([
                ("rope.scaling.yarn_beta_fast", Some(beta_fast)),
                ("rope.scaling.yarn_beta_slow", Some(beta_slow)),
                ("rope.scaling.attn_factor", Some(attn_factor)),
            ]);
        }
        let factor = match self.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } | RopeScaling::Yarn { factor, .. } => factor,
        };
        positive.extend([
            ("rope.freq_base", Some(self.rope_freq_base)),
            ("rope.scaling.factor", Some(factor)),
            ("attention.layer_norm_rms_epsilon", self.rms_norm_epsilon),
            ("attention.layer_norm_epsilon", self.layer_norm_epsilon),
        ]);
        for (name, value) in positive {
            if let Some(v) = value {
                if !(v.is_finite() && v > 0.0) {
                    return Err(self.bad(name, format!("{v} must be a finite number above 0")));
                }
            }
        }
        Ok(())
    }

    fn check_tensors(&self, file: &GgufFile) -> Result<(), GgufError> {
        let tensors = file.tensors();
        let mismatch = |name: &str, reason: String| GgufError::TensorMismatch {
            name: name.to_string(),
            reason,
        };
        if let Some(t) = tensors.iter().find(|t| t.shape.contains(&0)) {
            return Err(mismatch(
                &t.name,
                format!("has a zero dimension (shape {:?})", t.shape),
            ));
        }
        // Blocks: the indices named by `blk.N.` must be exactly 0..block_count.
        let blocks: BTreeSet<u64> = tensors.iter().filter_map(|t| block_of(&t.name)).collect();
        let n = u64::from(self.block_count);
        if blocks.len() as u64 != n || blocks.last().is_some_and(|&last| last >= n) {
            let found = match (blocks.first(), blocks.last()) {
                (Some(a), Some(b)) => format!(
                    "the file has tensors for {} blocks (blk.{a} to blk.{b})",
                    blocks.len()
                ),
                _ => "the file has no blk.N tensors".to_string(),
            };
            return Err(self.bad("block_count", format!("{n} but {found}")));
        }
        // The embedding fixes the width and the vocabulary.
        let embd = file.tensor_info("token_embd.weight")?;
        let (cols, rows) = matrix(embd);
        if cols != u64::from(self.embedding_length) {
            return Err(self.bad(
                "embedding_length",
                format!(
                    "{} but token_embd.weight has rows of {cols}",
                    self.embedding_length
                ),
            ));
        }
        if rows != u64::from(self.vocab_size) {
            return Err(GgufError::TensorMismatch {
                name: "token_embd.weight".into(),
                reason: format!(
                    "has {rows} rows but the vocabulary ({}) has {}",
                    self.vocab_key(file),
                    self.vocab_size
                ),
            });
        }
        if file.metadata().get("tokenizer.ggml.tokens").is_some() {
            let len = file
                .metadata()
                .get_str_array("tokenizer.ggml.tokens")?
                .len();
            if len as u64 > u64::from(self.vocab_size) {
                return Err(GgufError::BadValue {
                    key: "tokenizer.ggml.tokens".into(),
                    reason: format!(
                        "{len} tokens, more than the {} rows of token_embd.weight",
                        self.vocab_size
                    ),
                });
            }
        }
        // Projections whose sizes name a dimension, where the file has them.
        let (nh, nkv) = (u64::from(self.head_count), u64::from(self.head_count_kv));
        let (hd, vhd) = (u64::from(self.head_dim), u64::from(self.value_head_dim));
        let ff = u64::from(self.feed_forward_length);
        let d = u64::from(self.embedding_length);
        for t in tensors {
            let Some(i) = block_of(&t.name) else { continue };
            let part = &t.name[format!("blk.{i}.").len()..];
            self.check_experts(t, part)?;
            let (cols, rows) = matrix(t);
            if part == "ffn_gate_inp.weight" && cols != d {
                return Err(mismatch(
                    &t.name,
                    format!("has rows of {cols} where embedding_length gives {d}"),
                ));
            }
            let expected = match part {
                "attn_q.weight" => Some(("attention.head_count x key_length", rows, nh * hd)),
                "attn_k.weight" => Some(("attention.head_count_kv x key_length", rows, nkv * hd)),
                "attn_v.weight" => {
                    Some(("attention.head_count_kv x value_length", rows, nkv * vhd))
                }
                "ffn_down.weight" => Some(("feed_forward_length", cols, ff)),
                _ => None,
            };
            if let Some((what, found, want)) = expected {
                if found != want {
                    return Err(mismatch(
                        &t.name,
                        format!(
                            "has {found} where {what} gives {want} (shape {:?})",
                            t.shape
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A mixture-of-experts tensor (`ffn_{gate,up,down}_exps` and their biases, the router
    /// `ffn_gate_inp`) against `expert_count` and `expert_feed_forward_length`: the experts are
    /// its last dimension, and a file that has such tensors must say how many experts it has.
    fn check_experts(&self, t: &TensorInfo, part: &str) -> Result<(), GgufError> {
        // (the dimension holding the experts, the dimension holding the expert width)
        let dims: (usize, Option<usize>) = match part {
            "ffn_gate_exps.weight" | "ffn_up_exps.weight" => (2, Some(1)),
            "ffn_down_exps.weight" => (2, Some(0)),
            "ffn_gate_exps.bias" | "ffn_up_exps.bias" => (1, Some(0)),
            "ffn_down_exps.bias" => (1, None),
            "ffn_gate_inp.weight" => (1, None),
            "ffn_gate_inp.bias" => (0, None),
            _ => return Ok(()),
        };
        let Some(e) = self.experts else {
            return Err(self.bad(
                "expert_count",
                format!(
                    "is missing or 0, but the file has the expert tensor {}",
                    t.name
                ),
            ));
        };
        let at = |i: usize| t.shape.get(i).copied().unwrap_or(1);
        let mismatch = |what: &str, i: usize, want: u32| GgufError::TensorMismatch {
            name: t.name.clone(),
            reason: format!(
                "has {} where {what} gives {want} (shape {:?})",
                at(i),
                t.shape
            ),
        };
        if t.shape.len() > dims.0 + 1 || at(dims.0) != u64::from(e.count) {
            return Err(mismatch(&self.key("expert_count"), dims.0, e.count));
        }
        if let Some(i) = dims.1 {
            if at(i) != u64::from(e.feed_forward_length) {
                return Err(mismatch(
                    &self.key("expert_feed_forward_length"),
                    i,
                    e.feed_forward_length,
                ));
            }
        }
        Ok(())
    }

    fn vocab_key(&self, file: &GgufFile) -> String {
        let key = self.key("vocab_size");
        if file.metadata().get(&key).is_some() {
            key
        } else {
            "tokenizer.ggml.tokens".into()
        }
    }
}

/// `N` of a tensor named `blk.N.…`.
fn block_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("blk.")?;
    let (digits, _) = rest.split_once('.')?;
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `(row length, rows)` of a tensor: ggml's first dimension, and the product of the others.
fn matrix(t: &TensorInfo) -> (u64, u64) {
    (t.row_len(), t.n_rows())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Array, GgmlType, GgufWriter, Value};

    /// A two-block llama-shaped file (width 8, 2 heads of 4, vocabulary 5), with `edit`
    /// applied to its metadata and tensor list before writing.
    fn model(
        edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, Vec<u64>)>),
    ) -> GgufFile {
        let mut md: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("llama.context_length".into(), Value::U32(64)),
            ("llama.embedding_length".into(), Value::U32(8)),
            ("llama.block_count".into(), Value::U32(2)),
            ("llama.feed_forward_length".into(), Value::U32(16)),
            ("llama.attention.head_count".into(), Value::U32(2)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-5),
            ),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(Array::String((0..5).map(|i| format!("t{i}")).collect())),
            ),
        ];
        let mut tensors: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![8, 5])];
        for i in 0..2 {
            for (part, shape) in [
                ("attn_q.weight", vec![8, 8]),
                ("attn_k.weight", vec![8, 8]),
                ("attn_v.weight", vec![8, 8]),
                ("ffn_down.weight", vec![16, 8]),
            ] {
                tensors.push((format!("blk.{i}.{part}"), shape));
            }
        }
        edit(&mut md, &mut tensors);
        let mut w = GgufWriter::new();
        for (k, v) in md {
            w.set(&k, v);
        }
        for (name, shape) in tensors {
            let n: u64 = shape.iter().product();
            w.add_tensor(&name, GgmlType::F32, &shape, vec![0u8; n as usize * 4])
                .unwrap();
        }
        GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    fn set(md: &mut Vec<(String, Value)>, key: &str, v: Value) {
        md.retain(|(k, _)| k != key);
        md.push((key.into(), v));
    }

    fn refused(file: &GgufFile, needle: &str) {
        let e = HyperParams::from_file(file).expect_err(needle).to_string();
        assert!(e.contains(needle), "{e}");
    }

    #[test]
    fn a_consistent_file_passes() {
        let hp = HyperParams::from_file(&model(|_, _| {})).unwrap();
        assert_eq!((hp.block_count, hp.vocab_size), (2, 5));
    }

    #[test]
    fn counts_beyond_the_limits_are_refused_before_anything_is_sized_by_them() {
        let f = model(|md, _| set(md, "llama.block_count", Value::U32(u32::MAX)));
        refused(&f, "llama.block_count");
        let f = model(|md, _| set(md, "llama.context_length", Value::U32(u32::MAX)));
        refused(&f, "llama.context_length");
        let f = model(|md, _| set(md, "llama.attention.value_length", Value::U32(0)));
        refused(&f, "llama.attention.value_length");
        let f = model(|md, _| set(md, "llama.rope.freq_base", Value::F32(f32::NAN)));
        refused(&f, "llama.rope.freq_base");
        let f = model(|md, _| set(md, "llama.attention.sliding_window", Value::U32(0)));
        refused(&f, "sliding_window");
    }

    #[test]
    fn tensors_and_hyper_parameters_must_agree() {
        // Fewer blocks claimed than the file holds, and more.
        let f = model(|md, _| set(md, "llama.block_count", Value::U32(1)));
        refused(
            &f,
            "1 but the file has tensors for 2 blocks (blk.0 to blk.1)",
        );
        let f = model(|md, _| set(md, "llama.block_count", Value::U32(3)));
        refused(&f, "llama.block_count");
        // A gap in the block numbers.
        let f = model(|_, t| {
            for (name, _) in t.iter_mut() {
                *name = name.replace("blk.1.", "blk.2.");
            }
        });
        refused(&f, "blk.0 to blk.2");
        // No tensors at all.
        refused(&model(|_, t| t.clear()), "no blk.N tensors");
        let f = model(|_, t| t.retain(|(n, _)| n != "token_embd.weight"));
        refused(&f, "token_embd.weight");
        let f = model(|md, _| set(md, "llama.embedding_length", Value::U32(16)));
        refused(&f, "llama.embedding_length");
        let f = model(|md, _| set(md, "llama.vocab_size", Value::U32(6)));
        refused(&f, "has 5 rows but the vocabulary (llama.vocab_size) has 6");
        let f = model(|md, _| set(md, "llama.feed_forward_length", Value::U32(32)));
        refused(&f, "blk.0.ffn_down.weight");
        let f = model(|md, _| set(md, "llama.attention.head_count_kv", Value::U32(1)));
        refused(&f, "blk.0.attn_k.weight");
        let f = model(|_, t| t[1].1 = vec![8, 0]);
        refused(&f, "zero dimension");
    }

    #[test]
    fn sliding_windows_fit_the_context() {
        let f = model(|md, _| set(md, "llama.attention.sliding_window", Value::U32(64)));
        HyperParams::from_file(&f).unwrap();
        let f = model(|md, _| set(md, "llama.attention.sliding_window", Value::U32(65)));
        refused(&f, "llama.attention.sliding_window");
    }

    /// A two-block model with a mixture of experts: 4 experts of width 12, 2 used.
    fn moe(edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, Vec<u64>)>)) -> GgufFile {
        model(|md, t| {
            set(md, "llama.expert_count", Value::U32(4));
            set(md, "llama.expert_used_count", Value::U32(2));
            set(md, "llama.expert_feed_forward_length", Value::U32(12));
            for i in 0..2 {
                for (part, shape) in [
                    ("ffn_gate_inp.weight", vec![8, 4]),
                    ("ffn_gate_inp.bias", vec![4]),
                    ("ffn_gate_exps.weight", vec![8, 12, 4]),
                    ("ffn_up_exps.weight", vec![8, 12, 4]),
                    ("ffn_down_exps.weight", vec![12, 8, 4]),
                    ("ffn_gate_exps.bias", vec![12, 4]),
                    ("ffn_up_exps.bias", vec![12, 4]),
                    ("ffn_down_exps.bias", vec![8, 4]),
                ] {
                    t.push((format!("blk.{i}.{part}"), shape));
                }
            }
            edit(md, t);
        })
    }

    #[test]
    fn expert_tensors_and_counts_must_agree() {
        let hp = HyperParams::from_file(&moe(|_, _| {})).unwrap();
        assert_eq!(hp.experts.map(|e| (e.count, e.used)), Some((4, 2)));
        // The count claimed is not the tensors'.
        let f = moe(|md, _| set(md, "llama.expert_count", Value::U32(5)));
        refused(&f, "blk.0.ffn_gate_inp.weight");
        let f = moe(|md, t| {
            set(md, "llama.expert_count", Value::U32(5));
            t.retain(|(n, _)| !n.contains("gate_inp"));
        });
        let e = HyperParams::from_file(&f).unwrap_err().to_string();
        assert!(
            e.contains("blk.0.ffn_gate_exps.weight") && e.contains("llama.expert_count gives 5"),
            "{e}"
        );
        // Expert tensors without an expert count.
        let f = moe(|md, _| md.retain(|(k, _)| !k.starts_with("llama.expert")));
        refused(&f, "llama.expert_count");
        // More experts used than there are.
        let f = moe(|md, _| set(md, "llama.expert_used_count", Value::U32(5)));
        refused(&f, "llama.expert_used_count");
        // The expert width.
        let f = moe(|md, _| set(md, "llama.expert_feed_forward_length", Value::U32(16)));
        refused(&f, "llama.expert_feed_forward_length");
        let f = moe(|_, t| {
            t.iter_mut()
                .filter(|(n, _)| n == "blk.1.ffn_down_exps.bias")
                .for_each(|(_, s)| *s = vec![8, 3]);
        });
        refused(&f, "blk.1.ffn_down_exps.bias");
        // Absurd counts are refused before anything is sized by them.
        let f = moe(|md, _| set(md, "llama.expert_count", Value::U32(u32::MAX)));
        refused(&f, "llama.expert_count");
    }
}
