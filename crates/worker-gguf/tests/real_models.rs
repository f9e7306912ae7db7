//! The two real fixture models: their hyper-parameters, an exact rewrite through our writer,
//! and ten thousand seeded mutations of their headers that must never panic the reader.

use std::collections::BTreeMap;
use std::time::Instant;

use worker_gguf::{GgmlType, GgufContent, GgufFile, GgufWriter, HyperParams, RopeScaling};
use worker_testdata::{model, QWEN25, SMOLLM2};

#[test]
fn smollm2_hyper_parameters() {
    let f = GgufFile::open(model(SMOLLM2)).unwrap();
    let hp = HyperParams::from_file(&f).unwrap();
    assert_eq!(hp.architecture, "llama");
    assert_eq!(
        (hp.block_count, hp.embedding_length, hp.feed_forward_length),
        (30, 576, 1536)
    );
    assert_eq!((hp.head_count, hp.head_count_kv, hp.head_dim), (9, 3, 64));
    assert_eq!((hp.context_length, hp.vocab_size), (8192, 49152));
    assert_eq!(hp.rope_dimension_count, 64);
    assert_eq!(hp.rope_freq_base, 100_000.0);
    assert_eq!(hp.rope_scaling, RopeScaling::None);
    assert_eq!(hp.rms_norm_epsilon, Some(1e-5));
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(
        f.tensor_info("token_embd.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    assert_eq!(
        f.tensor_info("blk.0.attn_q.weight").unwrap().ty,
        GgmlType::Q4_1
    );
}

#[test]
fn qwen25_hyper_parameters() {
    let f = GgufFile::open(model(QWEN25)).unwrap();
    let hp = HyperParams::from_file(&f).unwrap();
    assert_eq!(hp.architecture, "qwen2");
    assert_eq!(
        (hp.block_count, hp.embedding_length, hp.feed_forward_length),
        (24, 896, 4864)
    );
    assert_eq!((hp.head_count, hp.head_count_kv, hp.head_dim), (14, 2, 64));
    assert_eq!(hp.context_length, 32768);
    assert_eq!(hp.vocab_size, 151_936);
    assert_eq!(hp.rope_freq_base, 1_000_000.0);
    assert_eq!(hp.rms_norm_epsilon, Some(1e-6));
    assert!(f.tensor_info("blk.0.attn_q.bias").is_ok());
}

/// Reading a real model and writing it back with our writer reproduces the file byte for byte:
/// the reader missed nothing and the writer lays files out as gguf-py does.
/// Releasing a tensor's pages takes them out of the process's resident memory, and the
/// tensor still reads back the same bytes, faulted in again from the file.
#[test]
fn released_tensor_pages_leave_rss_and_read_back_the_same() {
    let f = GgufFile::open(model(SMOLLM2)).unwrap();
    let (info, bytes) = f.tensor("token_embd.weight").unwrap();
    let copy = bytes.to_vec();
    let map = f.as_bytes().as_ptr() as usize;
    let before = mapping_rss_kb(map);
    f.release_tensor_pages(info);
    let after = mapping_rss_kb(map);
    if cfg!(target_os = "linux") {
        let (before, after) = (before.unwrap(), after.unwrap());
        // The copy made the 30 MiB of Q8_0 embeddings resident; releasing them takes them
        // all out, give or take the rounding to whole kB.
        let tensor_kb = info.n_bytes / 1024;
        assert!(before >= tensor_kb, "{before} kB resident before");
        assert!(after + tensor_kb <= before + 4, "{before} kB -> {after} kB");
    }
    assert!(f.tensor_bytes(info) == &copy[..]);
}

/// Resident kB of the mapping of this process that starts at `start`, from
/// `/proc/self/smaps`; `None` off Linux.
fn mapping_rss_kb(start: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut lines = smaps.lines();
    lines.find(|l| {
        l.split('-')
            .next()
            .and_then(|a| usize::from_str_radix(a, 16).ok())
            == Some(start)
    })?;
    lines.find_map(|l| {
        l.strip_prefix("Rss:")?
            .trim()
            .strip_suffix(" kB")?
            .parse()
            .ok()
    })
}

#[test]
fn real_models_rewrite_byte_for_byte() {
    for name in [SMOLLM2, QWEN25] {
        let f = GgufFile::open(model(name)).unwrap();
        let mut w = GgufWriter::new();
        w.set_all(f.metadata());
        for t in f.tensors() {
            w.add_tensor(&t.name, t.ty, &t.shape, f.tensor_bytes(t).to_vec())
                .unwrap();
        }
        let bytes = w.to_bytes().unwrap();
        assert_eq!(bytes.len(), f.as_bytes().len(), "{name}: length differs");
        if let Some(i) = bytes.iter().zip(f.as_bytes()).position(|(a, b)| a != b) {
            panic!("{name}: first difference at byte {i}");
        }
    }
}

/// A small deterministic PRNG (splitmix64) so the mutations are the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Offsets of the fields that steer parsing (counts, lengths, type tags, tensor dims and
/// offsets), found by walking a header we know is valid; mutations aim at them half the time.
fn structural_offsets(content: &GgufContent, header: &[u8]) -> Vec<usize> {
    let mut offsets = vec![4, 8, 16];
    // Tensor infos are at the end of the header: walk them backwards from their names.
    let mut pos = 24usize;
    // Metadata: walk generically.
    fn skip_value(h: &[u8], pos: &mut usize, ty: u32, out: &mut Vec<usize>) {
        let u32_at = |p: usize| u32::from_le_bytes(h[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(h[p..p + 8].try_into().unwrap());
        match ty {
            0 | 1 | 7 => *pos += 1,
            2 | 3 => *pos += 2,
            4..=6 => *pos += 4,
            10..=12 => *pos += 8,
            8 => {
                out.push(*pos);
                *pos += 8 + u64_at(*pos) as usize;
            }
            9 => {
                let ety = u32_at(*pos);
                out.push(*pos);
                out.push(*pos + 4);
                let n = u64_at(*pos + 4) as usize;
                *pos += 12;
                for i in 0..n {
                    // Only the first few string lengths of a long array are interesting.
                    let before = out.len();
                    skip_value(h, pos, ety, out);
                    if i > 4 {
                        out.truncate(before);
                    }
                }
            }
            _ => unreachable!("valid header"),
        }
    }
    for _ in 0..content.metadata.len() {
        offsets.push(pos);
        let klen = u64::from_le_bytes(header[pos..pos + 8].try_into().unwrap()) as usize;
        pos += 8 + klen;
        offsets.push(pos);
        let ty = u32::from_le_bytes(header[pos..pos + 4].try_into().unwrap());
        pos += 4;
        skip_value(header, &mut pos, ty, &mut offsets);
    }
    for t in &content.tensors {
        offsets.push(pos);
        pos += 8 + t.name.len();
        offsets.push(pos);
        pos += 4;
        for _ in &t.shape {
            offsets.push(pos);
            pos += 8;
        }
        offsets.push(pos);
        offsets.push(pos + 4);
        pos += 12;
    }
    offsets
}

/// Applies 1–4 random mutations (bit flips, random bytes, 0xff/0x00 runs, truncation, insertion,
/// deletion) to `buf`, aiming at a structural field half the time.
fn mutate(buf: &mut Vec<u8>, structural: &[usize], rng: &mut SplitMix) {
    for _ in 0..1 + rng.below(4) {
        if buf.is_empty() {
            return;
        }
        let at = if rng.below(2) == 0 {
            structural[rng.below(structural.len())] + rng.below(8)
        } else {
            rng.below(buf.len())
        }
        .min(buf.len() - 1);
        match rng.below(6) {
            0 => buf[at] ^= 1 << rng.below(8),
            1 => buf[at] = rng.next() as u8,
            2 => {
                let end = (at + 8).min(buf.len());
                let fill = [0xffu8, 0x00, 0x7f, 0x80][rng.below(4)];
                buf[at..end].fill(fill);
            }
            3 => buf.truncate(at),
            4 => buf.insert(at, rng.next() as u8),
            _ => {
                buf.remove(at);
            }
        }
    }
}

/// Parses `count` mutations of `name`'s header; returns how often each outcome occurred.
fn mutation_outcomes(name: &str, seed: u64, count: usize) -> BTreeMap<String, usize> {
    let f = GgufFile::open(model(name)).unwrap();
    let content = f.content();
    // The header plus the start of the data section, so that mutated offsets can land both
    // inside and outside the data.
    let len = (content.data_offset as usize + 4096).min(f.as_bytes().len());
    let original = &f.as_bytes()[..len];
    let structural = structural_offsets(content, original);
    let mut rng = SplitMix(seed);
    let mut outcomes = BTreeMap::new();
    let mut buf = Vec::with_capacity(len + 8);
    for _ in 0..count {
        buf.clear();
        buf.extend_from_slice(original);
        mutate(&mut buf, &structural, &mut rng);
        let outcome = match GgufContent::parse(&buf) {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    outcomes
}

/// Ten thousand seeded mutations of the real headers (6,000 SmolLM2, 4,000 Qwen: the Qwen
/// header is 6 MB with 300k strings and takes three times as long to parse), on two threads.
#[test]
fn ten_thousand_header_mutations_never_panic() {
    let start = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| mutation_outcomes(SMOLLM2, 1, 6_000));
        let b = s.spawn(|| mutation_outcomes(QWEN25, 2, 4_000));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut outcomes = a;
    for (k, v) in b {
        *outcomes.entry(k).or_default() += v;
    }
    let total: usize = outcomes.values().sum();
    assert_eq!(total, 10_000);
    eprintln!("{total} mutations in {:.1?}: {outcomes:?}", start.elapsed());
    // The mutations must reach deep enough to produce many kinds of error.
    assert!(
        outcomes.len() >= 8,
        "too few distinct outcomes: {outcomes:?}"
    );
}
