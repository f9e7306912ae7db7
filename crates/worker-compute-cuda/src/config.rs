//! How a [`crate::CudaBackend`] is set up: the device, graphs, and which paths not yet
//! checked on a device are on.

use std::fmt;
use std::str::FromStr;

/// Where the backend runs.
#[derive(Clone, Copy, Debug)]
pub struct CudaConfig {
    /// CUDA device ordinal.
    pub device: usize,
    /// Capture repeated launch sequences (decode steps) as CUDA graphs and replay them.
    pub graphs: bool,
    /// Paths not yet checked on a device; all off by default.
    pub experimental: Experimental,
}

impl Default for CudaConfig {
    fn default() -> Self {
        CudaConfig {
            device: 0,
            graphs: true,
            experimental: Experimental::default(),
        }
    }
}

/// Paths written after the last device run, each switched on by name so that a device
/// check can try them one at a time (`--cuda-experimental matvec,gemm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Experimental {
    /// `matvec`: the split-row mat-vec for rows longer than 2048 elements, and q/k/v (and
    /// gate/up) mat-vecs of one input merged into one launch.
    pub matvec: bool,
    /// `gemm`: matmuls of 32 rows or more (prefill) through cuBLAS, on weights dequantized
    /// to f32 a tile at a time.
    pub gemm: bool,
    /// `pdl`: programmatic dependent launch (sm_90 and later), so a kernel's launch overlaps
    /// the end of the one before.
    pub pdl: bool,
    /// `attn`: prefill attention in tiles of positions shared by 16 query rows
    /// (`attention_prefill_f16`), for batches in one slot with heads up to 128 wide.
    pub attn: bool,
    /// `types`: IQ4_NL, IQ4_XS, Q2_K and Q3_K weights (their kernels have not run on a device
    /// yet; without this they are refused at load, naming the type).
    pub types: bool,
    /// `bias`: the biases of a `linear` group of several one-row products (qwen2's q, k, v)
    /// stored by their mat-vecs, as the H200 runs measured before `matmul_group` (11
    /// kernels per Qwen layer, not 14), instead of three `add_bias_f32` launches after them.
    pub bias: bool,
    /// `models`: what gemma3, qwen3 and gpt-oss need beyond the measured ops: attention with a
    /// sliding window and sinks, YaRN rope, MXFP4 weights and the mixture-of-experts op
    /// (without this each is refused by name, as before).
    pub models: bool,
}

impl Experimental {
    /// Every experimental path.
    pub const ALL: Experimental = Experimental {
        matvec: true,
        gemm: true,
        pdl: true,
        attn: true,
        types: true,
        bias: true,
        models: true,
    };

    /// The paths' names, in the order of [`Experimental::flags_mut`].
    const NAMES: [&'static str; 7] = ["matvec", "gemm", "pdl", "attn", "types", "bias", "models"];

    fn flags_mut(&mut self) -> [&mut bool; 7] {
        [
            &mut self.matvec,
            &mut self.gemm,
            &mut self.pdl,
            &mut self.attn,
            &mut self.types,
            &mut self.bias,
            &mut self.models,
        ]
    }

    /// The names of the paths that are on.
    fn names(&self) -> Vec<&'static str> {
        let mut e = *self;
        Self::NAMES
            .into_iter()
            .zip(e.flags_mut())
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }
}

impl FromStr for Experimental {
    type Err = String;

    /// `false`/`none` (nothing), `true`/`all` (everything), or a comma-separated list of
    /// `matvec`, `gemm`, `pdl`, `attn`, `types`, `bias`, `models`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "false" | "none" => return Ok(Experimental::default()),
            "true" | "all" => return Ok(Experimental::ALL),
            _ => {}
        }
        let mut e = Experimental::default();
        for name in s.split(',').map(str::trim) {
            let Some(i) = Self::NAMES.iter().position(|n| *n == name) else {
                return Err(format!(
                    "unknown experimental path {name:?} (expected all, none, or a list of {})",
                    Self::NAMES.join(", ")
                ));
            };
            *e.flags_mut()[i] = true;
        }
        Ok(e)
    }
}

impl fmt::Display for Experimental {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_round_trips() {
        assert_eq!("false".parse(), Ok(Experimental::default()));
        assert_eq!("true".parse(), Ok(Experimental::ALL));
        let e: Experimental = "gemm, pdl".parse().unwrap();
        assert_eq!(
            e,
            Experimental {
                matvec: false,
                gemm: true,
                pdl: true,
                attn: false,
                types: false,
                bias: false,
                models: false,
            }
        );
        let m: Experimental = "models".parse().unwrap();
        assert!(m.models && m.to_string() == "models");
        assert_eq!(e.to_string(), "gemm,pdl");
        assert_eq!(Experimental::ALL.to_string().parse(), Ok(Experimental::ALL));
        assert_eq!(Experimental::default().to_string(), "none");
        let err = "gemm,fast".parse::<Experimental>().unwrap_err();
        assert!(err.contains("\"fast\""), "{err}");
    }
}
