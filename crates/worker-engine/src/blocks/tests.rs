use super::*;
use worker_compute::KvType;

fn config(blocks: usize, seqs: usize, seq_blocks: usize) -> KvCacheConfig {
    KvCacheConfig {
        layers: 2,
        blocks,
        seqs,
        seq_blocks,
        kv_heads: 1,
        head_dim: 4,
        value_head_dim: 4,
        ty: KvType::F32,
    }
}

fn paged(blocks: usize, seqs: usize) -> BlockManager {
    BlockManager::new(&config(blocks, seqs, 8), KvLayout::Paged, true)
}

fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

fn row_table(m: &BlockManager, row: usize, n: usize) -> Vec<u32> {
    m.table()[row * m.seq_blocks..][..n].to_vec()
}

#[test]
fn blocks_follow_the_positions_and_come_back() {
    let mut m = paged(8, 2);
    assert_eq!(m.start(0, &tokens(0..20)), Some(0));
    assert_eq!(m.stats().blocks_used, 2, "20 positions take two blocks");
    assert!(m.reserve(0, 33));
    assert_eq!(m.stats().blocks_used, 3);
    m.release(0);
    assert_eq!(m.stats().blocks_used, 0);
    assert!(m.refs().iter().all(|&r| r == 0));
    assert_eq!(m.stats().blocks_cached, 0, "nothing was sealed");
}

#[test]
fn a_second_request_reuses_the_sealed_prefix_of_a_finished_one() {
    let mut m = paged(8, 2);
    let a = tokens(0..40);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 40);
    let a_blocks = row_table(&m, 0, 2);
    m.release(0);
    assert_eq!(m.stats().blocks_cached, 2, "two full blocks kept");

    let mut b = tokens(0..35);
    b[34] = 999;
    assert_eq!(m.start(1, &b), Some(32));
    assert_eq!(row_table(&m, 1, 2), a_blocks);
    let s = m.stats();
    assert_eq!((s.prompt_tokens, s.cached_prompt_tokens), (75, 32));
    assert_eq!(s.blocks_cached, 0, "held again, out of the eviction order");
}

#[test]
fn the_last_prompt_token_is_always_computed() {
    let mut m = paged(8, 2);
    let a = tokens(0..32);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 32);
    m.release(0);
    // The same 32 tokens: only the first block is taken, so the last token runs and gives
    // logits.
    assert_eq!(m.start(1, &a), Some(16));
}

#[test]
fn running_sequences_share_blocks_and_release_them_one_by_one() {
    let mut m = paged(8, 2);
    let a = tokens(0..48);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 33); // two full blocks computed so far
    assert_eq!(m.start(1, &a), Some(32));
    let shared = row_table(&m, 0, 2);
    assert_eq!(row_table(&m, 1, 2), shared);
    for &id in &shared {
        assert_eq!(m.refs()[id as usize], 2);
    }
    assert_ne!(
        row_table(&m, 0, 3)[2],
        row_table(&m, 1, 3)[2],
        "partial blocks are own"
    );
    m.release(0);
    for &id in &shared {
        assert_eq!(m.refs()[id as usize], 1);
    }
    m.release(1);
    assert!(m.refs().iter().all(|&r| r == 0));
    assert_eq!(m.stats().blocks_used, 0);
}

#[test]
fn the_same_block_after_another_prefix_is_not_a_hit() {
    let mut m = paged(8, 2);
    let a: Vec<u32> = (0..33).map(|i| if i < 16 { 1 } else { 2 }).collect();
    m.start(0, &a).unwrap();
    m.seal(0, &a, 33);
    m.release(0);
    let b: Vec<u32> = (0..33).map(|i| if i < 16 { 3 } else { 2 }).collect();
    assert_eq!(m.start(1, &b), Some(0));
}

#[test]
fn least_recently_used_blocks_are_evicted_later_blocks_first() {
    let mut m = paged(4, 2);
    let a = tokens(0..33);
    m.start(0, &a).unwrap(); // 3 blocks
    m.seal(0, &a, 33);
    m.release(0);
    assert_eq!(m.stats().blocks_cached, 2);
    // 4 blocks for another prompt: the two free ones, then both cached ones.
    let b = tokens(100..164);
    assert_eq!(m.start(1, &b), Some(0));
    assert_eq!(m.stats().evictions, 2);
    m.release(1);
    assert_eq!(m.start(0, &a), Some(0), "both blocks of a are gone");
    m.release(0);

    let mut m = paged(4, 2);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 33);
    m.release(0);
    let c = tokens(200..240); // 3 blocks: the two free ones and a's tail
    assert_eq!(m.start(1, &c), Some(0));
    assert_eq!(m.stats().evictions, 1);
    m.release(1);
    assert_eq!(m.start(0, &a), Some(16), "a's first block survived");
}

#[test]
fn a_prompt_the_pool_cannot_hold_now_takes_nothing() {
    let mut m = paged(4, 2);
    m.start(0, &tokens(0..40)).unwrap(); // 3 of 4 blocks
    let before = m.refs();
    assert_eq!(m.start(1, &tokens(0..40)), None);
    assert_eq!(m.refs(), before);
    assert!(!m.reserve(0, 80), "5 blocks do not fit");
    m.release(0);
    assert!(m.refs().iter().all(|&r| r == 0));
}

#[test]
fn the_slots_layout_gives_each_row_its_own_region_and_caches_nothing() {
    let mut m = BlockManager::new(&config(6, 2, 3), KvLayout::Slots, true);
    let a = tokens(0..40);
    assert_eq!(m.start(1, &a), Some(0));
    assert_eq!(row_table(&m, 1, 3), vec![3, 4, 5]);
    m.seal(1, &a, 40);
    m.release(1);
    assert_eq!(m.start(0, &a), Some(0), "no prefix is shared");
    assert_eq!(row_table(&m, 0, 3), vec![0, 1, 2]);
    m.release(0);
    assert!(m.refs().iter().all(|&r| r == 0));
}

#[test]
fn without_the_prefix_cache_nothing_is_reused() {
    let mut m = BlockManager::new(&config(8, 2, 8), KvLayout::Paged, false);
    let a = tokens(0..40);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 40);
    m.release(0);
    assert_eq!(m.stats().blocks_cached, 0);
    assert_eq!(m.start(1, &a), Some(0));
}

/// The chains and removals recorded since the last call.
fn events(m: &mut BlockManager) -> Vec<KvEvent> {
    m.take_events()
}

fn stored(e: &KvEvent) -> (&[u64], Option<u64>, &[u32]) {
    match e {
        KvEvent::Stored {
            hashes,
            parent,
            token_ids,
        } => (hashes, *parent, token_ids),
        other => panic!("not a store: {other:?}"),
    }
}

#[test]
fn sealed_blocks_are_reported_as_chains_that_continue_across_turns() {
    let mut m = paged(8, 2);
    m.record_events(true);
    let a = tokens(0..56);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 20);
    m.seal(0, &a, 50);
    let got = events(&mut m);
    assert_eq!(
        got.len(),
        2,
        "one chain per call that cached blocks: {got:?}"
    );
    let (first, parent, ids) = stored(&got[0]);
    assert_eq!((first.len(), parent, ids), (1, None, &a[..16]));
    let (rest, parent, ids) = stored(&got[1]);
    assert_eq!(rest.len(), 2);
    assert_eq!(
        parent,
        Some(first[0]),
        "the chain goes on from the first block"
    );
    assert_eq!(ids, &a[16..48]);
    assert!(events(&mut m).is_empty(), "taken once");

    // The same prompt again is a hit: nothing new enters the cache.
    m.start(1, &a).unwrap();
    m.seal(1, &a, 56);
    assert!(events(&mut m).is_empty());
}

#[test]
fn a_block_another_sequence_cached_first_is_not_reported_twice() {
    let mut m = paged(12, 2);
    m.record_events(true);
    let a = tokens(0..48);
    // Both start before either has computed a block, so neither hits.
    m.start(0, &a).unwrap();
    m.start(1, &a).unwrap();
    m.seal(0, &a, 16);
    let first = stored(&events(&mut m)[0]).0[0];
    let mut b = a.clone();
    b[20] = 999; // row 1 shares the first block's tokens only
    m.seal(1, &b, 48);
    let got = events(&mut m);
    assert_eq!(got.len(), 1, "{got:?}");
    let (keys, parent, ids) = stored(&got[0]);
    assert_eq!(keys.len(), 2, "the duplicate first block is left out");
    assert_eq!(
        parent,
        Some(first),
        "and chained to the one already reported"
    );
    assert_eq!(ids, &b[16..48]);
}

#[test]
fn evicted_blocks_are_reported_removed_with_the_keys_they_were_stored_under() {
    let mut m = paged(4, 2);
    m.record_events(true);
    let a = tokens(0..33);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 33);
    m.release(0);
    let mut stored_keys = stored(&events(&mut m)[0]).0.to_vec();
    m.start(1, &tokens(100..164)).unwrap(); // takes both cached blocks
    let got = events(&mut m);
    let [KvEvent::Removed { hashes }] = got.as_slice() else {
        panic!("one removal: {got:?}");
    };
    let mut hashes = hashes.clone();
    hashes.sort_unstable();
    stored_keys.sort_unstable();
    assert_eq!(hashes, stored_keys);
}

#[test]
fn nothing_is_recorded_unless_asked_or_after_being_told_to_stop() {
    let mut m = paged(8, 2);
    let a = tokens(0..40);
    m.start(0, &a).unwrap();
    m.seal(0, &a, 20);
    assert!(events(&mut m).is_empty());
    m.record_events(true);
    m.record_events(false);
    m.seal(0, &a, 40);
    assert!(events(&mut m).is_empty());
}
