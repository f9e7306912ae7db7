//! The paged KV cache of the CPU backend: attention through any block table gives the same
//! bits as through the plain one, a row's result does not depend on the other sequences in
//! the call, nor on how its GQA groups are cut over the threads, the f32 entries match an
//! f64 softmax reference, f16 and Q8_0 entries stay within their rounding of it, and bad
//! tables are errors.

use worker_compute::{
    AttentionParams, ComputeBackend, ComputeError, CpuBackend, CpuConfig, KernelChoice,
    KvCacheConfig, KvIndex, KvType, KV_BLOCK,
};

const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 64;
const LEN: usize = 70;

use worker_testdata::Rng;

/// Queries, keys and values of one sequence of `LEN` positions.
struct Sequence {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Sequence {
    fn random(rng: &mut Rng) -> Self {
        Sequence {
            q: rng.normals(LEN * HEADS * HD),
            k: rng.normals(LEN * KV_HEADS * HD),
            v: rng.normals(LEN * KV_HEADS * HD),
        }
    }
}

fn params() -> AttentionParams {
    AttentionParams {
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HD,
        value_head_dim: HD,
        scale: 1.0 / (HD as f32).sqrt(),
        layer: 1,
        window: None,
        sinks: None,
    }
}

/// A pool and its table on `be`.
struct Pool {
    cache: worker_compute::KvCacheId,
    index: KvIndex,
}

fn pool(be: &mut CpuBackend, ty: KvType, blocks: usize, seqs: usize, table: &[u32]) -> Pool {
    let seq_blocks = LEN.div_ceil(KV_BLOCK);
    let cfg = KvCacheConfig {
        layers: 2,
        blocks,
        seqs,
        seq_blocks,
        kv_heads: KV_HEADS,
        head_dim: HD,
        value_head_dim: HD,
        ty,
    };
    let cache = be.alloc_kv_cache(cfg).unwrap();
    let index = KvIndex {
        positions: be.alloc_index(2 * LEN).unwrap(),
        seqs: be.alloc_index(2 * LEN).unwrap(),
        block_table: be.alloc_index(seqs * seq_blocks).unwrap(),
    };
    be.write_index(index.block_table, table).unwrap();
    Pool { cache, index }
}

/// One call: rows `(table row, position, sequence data)`; returns each row's output.
fn call(be: &mut CpuBackend, p: &Pool, rows: &[(u32, usize, &Sequence)]) -> Vec<Vec<f32>> {
    call_with(be, p, rows, &params())
}

/// [`call`] with other attention parameters.
fn call_with(
    be: &mut CpuBackend,
    p: &Pool,
    rows: &[(u32, usize, &Sequence)],
    params: &AttentionParams,
) -> Vec<Vec<f32>> {
    let n = rows.len();
    let pick = |f: &dyn Fn(&Sequence) -> &[f32], w: usize| -> Vec<f32> {
        rows.iter()
            .flat_map(|&(_, pos, s)| f(s)[pos * w..(pos + 1) * w].to_vec())
            .collect()
    };
    let (q, k, v) = (
        be.alloc_tensor(n, HEADS * HD).unwrap(),
        be.alloc_tensor(n, KV_HEADS * HD).unwrap(),
        be.alloc_tensor(n, KV_HEADS * HD).unwrap(),
    );
    let out = be.alloc_tensor(n, HEADS * HD).unwrap();
    be.write_rows(q, &pick(&|s| &s.q, HEADS * HD)).unwrap();
    be.write_rows(k, &pick(&|s| &s.k, KV_HEADS * HD)).unwrap();
    be.write_rows(v, &pick(&|s| &s.v, KV_HEADS * HD)).unwrap();
    let positions: Vec<u32> = rows.iter().map(|r| r.1 as u32).collect();
    let seqs: Vec<u32> = rows.iter().map(|r| r.0).collect();
    be.write_index(p.index.positions, &positions).unwrap();
    be.write_index(p.index.seqs, &seqs).unwrap();
    be.attention(out, q, k, v, p.cache, &p.index, params, n)
        .unwrap();
    let mut o = vec![0f32; n * HEADS * HD];
    be.read_rows(out, n, &mut o).unwrap();
    o.chunks(HEADS * HD).map(<[f32]>::to_vec).collect()
}

/// The sequence in chunks of `chunk` rows in table row `row`: every position's output.
fn run_chunked(
    be: &mut CpuBackend,
    p: &Pool,
    row: u32,
    s: &Sequence,
    chunk: usize,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for start in (0..LEN).step_by(chunk) {
        let rows: Vec<_> = (start..(start + chunk).min(LEN))
            .map(|pos| (row, pos, s))
            .collect();
        out.extend(call(be, p, &rows));
    }
    out
}

/// softmax(q·K/sqrt(d))·V in f64 over the entries as given.
fn reference(s: &Sequence, pos: usize) -> Vec<f64> {
    reference_window(s, pos, None)
}

/// [`reference`] over the last `window` positions up to `pos`.
fn reference_window(s: &Sequence, pos: usize, window: Option<usize>) -> Vec<f64> {
    let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let group = HEADS / KV_HEADS;
    let mut out = vec![0f64; HEADS * HD];
    for h in 0..HEADS {
        let kh = h / group;
        let q = &s.q[pos * HEADS * HD + h * HD..][..HD];
        let scores: Vec<f64> = (first..=pos)
            .map(|t| {
                let k = &s.k[t * KV_HEADS * HD + kh * HD..][..HD];
                q.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    / (HD as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = w.iter().sum();
        for (t, wt) in (first..=pos).zip(&w) {
            let v = &s.v[t * KV_HEADS * HD + kh * HD..][..HD];
            for d in 0..HD {
                out[h * HD + d] += wt / sum * v[d] as f64;
            }
        }
    }
    out
}

fn backend() -> CpuBackend {
    CpuBackend::new(CpuConfig {
        threads: 2,
        ..CpuConfig::default()
    })
}

#[test]
fn any_block_table_gives_the_bits_of_the_plain_one() {
    let mut rng = Rng::new();
    let s = Sequence::random(&mut rng);
    for ty in KvType::ALL {
        let mut be = backend();
        let nb = LEN.div_ceil(KV_BLOCK);
        let plain = pool(&mut be, ty, nb, 1, &(0..nb as u32).collect::<Vec<_>>());
        let expected = run_chunked(&mut be, &plain, 0, &s, LEN);
        // Blocks scattered over a larger pool, in table row 2 of 3, in odd chunks.
        let mut table = vec![0u32; 3 * nb];
        for j in 0..nb {
            table[2 * nb + j] = (3 * nb - 1 - 2 * j) as u32;
        }
        let scattered = pool(&mut be, ty, 3 * nb, 3, &table);
        for chunk in [1, 7, 16, 33] {
            let got = run_chunked(&mut be, &scattered, 2, &s, chunk);
            assert_eq!(got, expected, "{ty:?}, chunks of {chunk}");
        }
    }
}

/// A lone sequence on more threads than it has KV heads: each GQA group is cut into runs
/// of query heads, one per work item, where the kernels read the cache in place. Every
/// head's result is the same bits as with whole groups on one thread.
#[test]
fn cutting_gqa_groups_over_threads_keeps_the_bits() {
    let mut rng = Rng::new();
    let s = Sequence::random(&mut rng);
    let nb = LEN.div_ceil(KV_BLOCK);
    let table: Vec<u32> = (0..nb as u32).collect();
    for ty in KvType::ALL {
        let run = |threads: usize| {
            let mut be = CpuBackend::new(CpuConfig {
                threads,
                ..CpuConfig::default()
            });
            let p = pool(&mut be, ty, nb, 1, &table);
            run_chunked(&mut be, &p, 0, &s, 1)
        };
        let whole = run(1);
        assert_eq!(run(4), whole, "{ty:?}, 4 threads");
        assert_eq!(run(3), whole, "{ty:?}, 3 threads");
    }
}

/// The same past 512 cached positions, where a call wants two work items per thread: a
/// decode row at position 599 after a 599-position prompt, on 1, 2 and 4 threads.
#[test]
fn cutting_gqa_groups_at_long_contexts_keeps_the_bits() {
    const LONG: usize = 600;
    let mut rng = Rng::new();
    let (q, k, v) = (
        rng.normals(LONG * HEADS * HD),
        rng.normals(LONG * KV_HEADS * HD),
        rng.normals(LONG * KV_HEADS * HD),
    );
    let run = |threads: usize| -> Vec<f32> {
        let mut be = CpuBackend::new(CpuConfig {
            threads,
            ..CpuConfig::default()
        });
        let seq_blocks = LONG.div_ceil(KV_BLOCK);
        let cache = be
            .alloc_kv_cache(KvCacheConfig {
                layers: 2,
                blocks: seq_blocks,
                seqs: 1,
                seq_blocks,
                kv_heads: KV_HEADS,
                head_dim: HD,
                value_head_dim: HD,
                ty: KvType::F16,
            })
            .unwrap();
        let index = KvIndex {
            positions: be.alloc_index(LONG).unwrap(),
            seqs: be.alloc_index(LONG).unwrap(),
            block_table: be.alloc_index(seq_blocks).unwrap(),
        };
        let table: Vec<u32> = (0..seq_blocks as u32).collect();
        be.write_index(index.block_table, &table).unwrap();
        // The prompt in one call, then the last position alone.
        let mut out = Vec::new();
        for rows in [0..LONG - 1, LONG - 1..LONG] {
            let n = rows.len();
            let (qt, kt, vt, ot) = (
                be.alloc_tensor(n, HEADS * HD).unwrap(),
                be.alloc_tensor(n, KV_HEADS * HD).unwrap(),
                be.alloc_tensor(n, KV_HEADS * HD).unwrap(),
                be.alloc_tensor(n, HEADS * HD).unwrap(),
            );
            let (qw, kw) = (HEADS * HD, KV_HEADS * HD);
            be.write_rows(qt, &q[rows.start * qw..rows.end * qw])
                .unwrap();
            be.write_rows(kt, &k[rows.start * kw..rows.end * kw])
                .unwrap();
            be.write_rows(vt, &v[rows.start * kw..rows.end * kw])
                .unwrap();
            let positions: Vec<u32> = rows.clone().map(|p| p as u32).collect();
            be.write_index(index.positions, &positions).unwrap();
            be.write_index(index.seqs, &vec![0; n]).unwrap();
            be.attention(ot, qt, kt, vt, cache, &index, &params(), n)
                .unwrap();
            out = vec![0f32; n * HEADS * HD];
            be.read_rows(ot, n, &mut out).unwrap();
        }
        out
    };
    let one = run(1);
    assert_eq!(run(2), one, "2 threads");
    assert_eq!(run(4), one, "4 threads");
}

#[test]
fn a_row_does_not_depend_on_the_other_sequences_in_the_call() {
    let mut rng = Rng::new();
    let (a, b) = (Sequence::random(&mut rng), Sequence::random(&mut rng));
    let nb = LEN.div_ceil(KV_BLOCK);
    let table: Vec<u32> = (0..2 * nb as u32).collect();
    let mut be = backend();
    let alone = pool(&mut be, KvType::F16, 2 * nb, 2, &table);
    let a_alone = run_chunked(&mut be, &alone, 0, &a, 5);
    let b_alone = run_chunked(&mut be, &alone, 1, &b, 1);
    // Together: b's prompt in chunks of 9 beside a's rows one at a time (a decoding while b
    // prefills), in one call each.
    let mut be = backend();
    let mixed = pool(&mut be, KvType::F16, 2 * nb, 2, &table);
    let (mut a_got, mut b_got) = (Vec::new(), Vec::new());
    let mut b_next = 0;
    for pos in 0..LEN {
        let mut rows = vec![(0u32, pos, &a)];
        let b_end = (b_next + 9).min(LEN);
        rows.extend((b_next..b_end).map(|p| (1u32, p, &b)));
        let out = call(&mut be, &mixed, &rows);
        a_got.push(out[0].clone());
        b_got.extend(out[1..].iter().cloned());
        b_next = b_end;
    }
    assert_eq!(a_got, a_alone);
    assert_eq!(b_got, b_alone);
}

#[test]
fn entries_match_the_reference_within_their_rounding() {
    let mut rng = Rng::new();
    let s = Sequence::random(&mut rng);
    let nb = LEN.div_ceil(KV_BLOCK);
    let table: Vec<u32> = (0..nb as u32).collect();
    for (ty, kernels, tol) in [
        // f32 sums in f32 (measured ~1.5e-7); f16 entries carry 2^-11 relative rounding
        // (~4e-4 measured); Q8_0 1/254 of each 32-entry block's largest value (~7e-3).
        (KvType::F32, KernelChoice::Scalar, 1e-6),
        (KvType::F32, KernelChoice::Detect, 1e-6),
        (KvType::F16, KernelChoice::Detect, 2e-3),
        (KvType::Q8_0, KernelChoice::Scalar, 2e-2),
        (KvType::Q8_0, KernelChoice::Detect, 2e-2),
    ] {
        let mut be = CpuBackend::new(CpuConfig {
            threads: 2,
            kernels,
            ..CpuConfig::default()
        });
        let p = pool(&mut be, ty, nb, 1, &table);
        let got = run_chunked(&mut be, &p, 0, &s, 16);
        let mut worst = 0f64;
        for (pos, row) in got.iter().enumerate() {
            let want = reference(&s, pos);
            for (g, w) in row.iter().zip(&want) {
                worst = worst.max((*g as f64 - w).abs());
            }
        }
        eprintln!("{ty:?} {kernels:?}: max error {worst:e}");
        // Outputs are averages of unit-scale values: an absolute bound is a relative one.
        assert!(
            worst < tol,
            "{ty:?} {kernels:?}: max error {worst:e} over {tol:e}"
        );
    }
}

/// A sliding window (20 positions: windows that start inside a block and span two or three)
/// reads exactly the window, the same bits whatever the other rows of the call, and a window
/// of 0 is an error.
#[test]
fn a_sliding_window_attends_to_its_positions_only() {
    let mut rng = Rng::new();
    let s = Sequence::random(&mut rng);
    let nb = LEN.div_ceil(KV_BLOCK);
    let table: Vec<u32> = (0..nb as u32).collect();
    let windowed = AttentionParams {
        window: Some(20),
        ..params()
    };
    for kernels in [KernelChoice::Scalar, KernelChoice::Detect] {
        let mut be = CpuBackend::new(CpuConfig {
            threads: 2,
            kernels,
            ..CpuConfig::default()
        });
        let p = pool(&mut be, KvType::F32, nb, 1, &table);
        let mut by_chunk = Vec::new();
        for chunk in [1, 16, 33] {
            let mut got = Vec::new();
            for start in (0..LEN).step_by(chunk) {
                let rows: Vec<_> = (start..(start + chunk).min(LEN))
                    .map(|pos| (0, pos, &s))
                    .collect();
                got.extend(call_with(&mut be, &p, &rows, &windowed));
            }
            let mut worst = 0f64;
            for (pos, row) in got.iter().enumerate() {
                let want = reference_window(&s, pos, Some(20));
                for (g, w) in row.iter().zip(&want) {
                    worst = worst.max((*g as f64 - w).abs());
                }
            }
            assert!(worst < 1e-6, "{kernels:?} chunks of {chunk}: {worst:e}");
            by_chunk.push(got);
        }
        assert_eq!(by_chunk[0], by_chunk[1], "{kernels:?}");
        assert_eq!(by_chunk[0], by_chunk[2], "{kernels:?}");
        // Past the window the output differs from full attention.
        let full = run_chunked(&mut be, &p, 0, &s, 16);
        assert_ne!(full[LEN - 1], by_chunk[0][LEN - 1]);
        assert_eq!(
            full[10], by_chunk[0][10],
            "inside the window: the same bits"
        );
        let q = be.alloc_tensor(1, HEADS * HD).unwrap();
        let kv = be.alloc_tensor(1, KV_HEADS * HD).unwrap();
        let zero = AttentionParams {
            window: Some(0),
            ..params()
        };
        let e = be
            .attention(q, q, kv, kv, p.cache, &p.index, &zero, 1)
            .unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
    }
}

/// A sliding window reads only the blocks that hold its positions (gpt-oss and gemma3 run
/// their local layers on the paged cache this way): with every block wholly before the
/// windows of the last rows given over to another sequence's entries, those rows get the same
/// bits, with and without attention sinks, while full attention sees the change.
#[test]
fn a_sliding_window_reads_only_its_blocks() {
    let mut rng = Rng::new();
    let (s, other) = (Sequence::random(&mut rng), Sequence::random(&mut rng));
    let nb = LEN.div_ceil(KV_BLOCK);
    let window = 20;
    let sink_logits: Vec<u8> = (0..HEADS)
        .flat_map(|_| (rng.f32() * 2.0).to_le_bytes())
        .collect();
    for kernels in [KernelChoice::Scalar, KernelChoice::Detect] {
        let mut be = CpuBackend::new(CpuConfig {
            threads: 2,
            kernels,
            ..CpuConfig::default()
        });
        let sinks = be
            .upload_weight(worker_compute::WeightDesc {
                name: "sinks",
                ty: worker_gguf::GgmlType::F32,
                rows: 1,
                cols: HEADS,
                bytes: &sink_logits,
            })
            .unwrap();
        // Row 0 holds `s` in blocks 0..nb, row 1 `other` in blocks nb..2nb.
        let mut table: Vec<u32> = (0..2 * nb as u32).collect();
        let p = pool(&mut be, KvType::F16, 2 * nb, 2, &table);
        let last: Vec<_> = (LEN - 3..LEN).map(|pos| (0, pos, &s)).collect();
        for sinks in [None, Some(sinks)] {
            let windowed = AttentionParams {
                window: Some(window),
                sinks,
                ..params()
            };
            run_chunked(&mut be, &p, 1, &other, 16);
            run_chunked(&mut be, &p, 0, &s, 16);
            let (want, full) = (
                call_with(&mut be, &p, &last, &windowed),
                call(&mut be, &p, &last),
            );
            // The blocks wholly before the first window (of position LEN - 3) now hold
            // `other`'s entries.
            let first = (LEN - 3 + 1 - window) / KV_BLOCK;
            assert!(first >= 2, "the test needs whole blocks before the window");
            for (b, t) in table.iter_mut().enumerate().take(first) {
                *t = (nb + b) as u32;
            }
            be.write_index(p.index.block_table, &table).unwrap();
            let got = call_with(&mut be, &p, &last, &windowed);
            assert_eq!(
                got, want,
                "{kernels:?} sinks {sinks:?}: windowed rows changed"
            );
            assert_ne!(
                call(&mut be, &p, &last),
                full,
                "full attention must see the change"
            );
            for (b, t) in table.iter_mut().enumerate().take(first) {
                *t = b as u32;
            }
            be.write_index(p.index.block_table, &table).unwrap();
        }
    }
}

#[test]
fn tables_outside_the_pool_are_errors() {
    let mut rng = Rng::new();
    let s = Sequence::random(&mut rng);
    let nb = LEN.div_ceil(KV_BLOCK);
    let mut be = backend();
    let mut table: Vec<u32> = (0..nb as u32).collect();
    table[1] = nb as u32; // one past the pool
    let p = pool(&mut be, KvType::F16, nb, 1, &table);
    let q = be.alloc_tensor(1, HEADS * HD).unwrap();
    let kv = be.alloc_tensor(1, KV_HEADS * HD).unwrap();
    let kv2 = be.alloc_tensor(1, KV_HEADS * HD).unwrap();
    let out = be.alloc_tensor(1, HEADS * HD).unwrap();
    be.write_rows(q, &s.q[..HEADS * HD]).unwrap();
    for (seq, pos) in [(0u32, 20u32), (1, 0), (0, (nb * KV_BLOCK) as u32)] {
        be.write_index(p.index.positions, &[pos]).unwrap();
        be.write_index(p.index.seqs, &[seq]).unwrap();
        let e = be
            .attention(out, q, kv, kv2, p.cache, &p.index, &params(), 1)
            .unwrap_err();
        assert!(matches!(e, ComputeError::BadIndex { .. }), "{e}");
    }
    // Position 3 reads only block 0, which is inside the pool.
    be.write_index(p.index.positions, &[3]).unwrap();
    be.write_index(p.index.seqs, &[0]).unwrap();
    be.attention(out, q, kv, kv2, p.cache, &p.index, &params(), 1)
        .unwrap();
}

#[test]
fn a_q8_0_cache_needs_heads_of_whole_blocks() {
    let mut be = backend();
    let cfg = KvCacheConfig {
        layers: 1,
        blocks: 4,
        seqs: 1,
        seq_blocks: 4,
        kv_heads: 1,
        head_dim: 48,
        value_head_dim: 48,
        ty: KvType::Q8_0,
    };
    assert!(be.alloc_kv_cache(cfg).is_err());
    assert!(be
        .alloc_kv_cache(KvCacheConfig {
            ty: KvType::F16,
            ..cfg
        })
        .is_ok());
}
