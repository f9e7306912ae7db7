//! The KV block manager: which pool block holds which positions of which sequence, blocks
//! allocated as sequences grow and released when they end, and the prefix cache (vLLM's
//! automatic prefix caching).
//!
//! A full block is keyed by a hash of its tokens chained with the hash of every block
//! before it, so a key names a whole prefix. A new sequence takes the longest run of cached
//! blocks that starts its prompt, from any running or finished sequence, and computes only
//! the rest. Only full blocks are shared and a sequence writes only its own last, partial
//! block, so a shared block is never written. Unreferenced cached blocks stay in the pool
//! until it runs short; then the least recently used goes first, the later blocks of a
//! sequence before the earlier ones (a prefix is worthless without its start).
//!
//! Every cached block's tokens and parent key are kept and compared on a hit, so a hash
//! collision can never hand a sequence another prefix's entries.
//!
//! When asked to, the manager also records what enters the cache (a [`KvEvent::Stored`]
//! chain per run of newly cached blocks) and what leaves it ([`KvEvent::Removed`]), for
//! the scheduler to hand to a subscriber after each turn.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use worker_compute::{KvCacheConfig, KvLayout, KV_BLOCK};

use crate::kv_events::KvEvent;

/// The chain key of the (empty) prefix before the first block.
const ROOT: u64 = 0x6c6c_616d_612d_6f72;

/// Counters and gauges of the pool, for `/health` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Blocks in the pool.
    pub blocks_total: usize,
    /// Blocks some sequence holds.
    pub blocks_used: usize,
    /// Unreferenced blocks kept for the prefix cache (reclaimable).
    pub blocks_cached: usize,
    /// Bytes of one block.
    pub block_bytes: u64,
    /// Cached blocks reclaimed for new ones.
    pub evictions: u64,
    /// Prompt tokens of the requests that started, all together.
    pub prompt_tokens: u64,
    /// Of those, tokens whose KV came from the prefix cache.
    pub cached_prompt_tokens: u64,
}

struct Block {
    /// Sequences holding it.
    refs: u32,
    /// When it was last released (its place in the eviction order while nobody holds it).
    released: u64,
    /// Its chain key, while it is in the prefix cache.
    key: Option<u64>,
    /// What the key stands for: the previous block's key and this block's tokens.
    parent: u64,
    tokens: [u32; KV_BLOCK],
}

/// What one block-table row holds.
#[derive(Clone, Copy)]
struct Row {
    /// Blocks in the table row.
    blocks: usize,
    /// Leading blocks already sealed (full and offered to the cache).
    sealed: usize,
    /// Chain key of the last sealed block.
    last_key: u64,
}

impl Default for Row {
    fn default() -> Self {
        Row {
            blocks: 0,
            sealed: 0,
            last_key: ROOT,
        }
    }
}

/// The block manager of one engine.
pub(crate) struct BlockManager {
    layout: KvLayout,
    prefix_cache: bool,
    seq_blocks: usize,
    blocks: Vec<Block>,
    /// Blocks holding nothing worth keeping.
    free: Vec<u32>,
    /// Cached blocks nobody holds, by (last use, block): the first is evicted first.
    evictable: BTreeSet<(u64, u32)>,
    by_key: HashMap<u64, u32>,
    tick: u64,
    /// Blocks with at least one holder.
    used: usize,
    /// `seqs x seq_blocks` block ids.
    table: Vec<u32>,
    rows: Vec<Row>,
    stats: KvStats,
    /// What entered and left the cache since the last [`Self::take_events`], while
    /// recording.
    events: Option<Vec<KvEvent>>,
}

impl BlockManager {
    /// A manager for the pool `cfg` of a backend laid out as `layout`; the prefix cache only
    /// where asked and where the layout can share blocks.
    pub(crate) fn new(cfg: &KvCacheConfig, layout: KvLayout, prefix_cache: bool) -> Self {
        let blocks = (0..cfg.blocks)
            .map(|_| Block {
                refs: 0,
                released: 0,
                key: None,
                parent: ROOT,
                tokens: [0; KV_BLOCK],
            })
            .collect();
        BlockManager {
            layout,
            prefix_cache: prefix_cache && layout == KvLayout::Paged,
            seq_blocks: cfg.seq_blocks,
            blocks,
            // Popped from the end: hand out low block ids first.
            free: (0..cfg.blocks as u32).rev().collect(),
            evictable: BTreeSet::new(),
            by_key: HashMap::new(),
            tick: 0,
            used: 0,
            table: vec![0; cfg.seqs * cfg.seq_blocks],
            rows: vec![Row::default(); cfg.seqs],
            stats: KvStats {
                blocks_total: cfg.blocks,
                block_bytes: cfg.block_bytes(),
                ..KvStats::default()
            },
            events: None,
        }
    }

    /// Starts (or stops) recording what enters and leaves the cache.
    pub(crate) fn record_events(&mut self, on: bool) {
        self.events = on.then(Vec::new);
    }

    /// The events recorded since the last call, oldest first.
    pub(crate) fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Blocks a sequence of `positions` positions holds.
    fn blocks_for(positions: usize) -> usize {
        positions.div_ceil(KV_BLOCK)
    }

    /// The block table, `seqs x seq_blocks`, for the next forward call.
    pub(crate) fn table(&self) -> &[u32] {
        &self.table
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> KvStats {
        KvStats {
            blocks_used: self.used,
            blocks_cached: self.evictable.len(),
            ..self.stats
        }
    }

    /// Starts the sequence of table row `row` (which holds nothing) on `prompt`: takes the
    /// longest cached prefix of whole blocks that leaves at least the last prompt token to
    /// compute, then blocks for the rest of the prompt. Returns the cached tokens, or `None`
    /// (holding nothing) when the pool cannot hold the prompt now.
    pub(crate) fn start(&mut self, row: usize, prompt: &[u32]) -> Option<usize> {
        debug_assert_eq!(self.rows[row].blocks, 0);
        let mut hits = 0;
        if self.prefix_cache {
            let mut parent = ROOT;
            for chunk in prompt[..prompt.len().saturating_sub(1)].chunks_exact(KV_BLOCK) {
                let key = chain_key(parent, chunk);
                let Some(&id) = self.by_key.get(&key) else {
                    break;
                };
                let b = &self.blocks[id as usize];
                if b.parent != parent || b.tokens != chunk {
                    break;
                }
                self.hold(id);
                self.table[row * self.seq_blocks + hits] = id;
                hits += 1;
                self.rows[row] = Row {
                    blocks: hits,
                    sealed: hits,
                    last_key: key,
                };
                parent = key;
            }
        }
        let needed = Self::blocks_for(prompt.len()).saturating_sub(hits);
        if self.layout == KvLayout::Paged && needed > self.free.len() + self.evictable.len()
            || !self.reserve(row, prompt.len())
        {
            self.release(row);
            return None;
        }
        self.stats.prompt_tokens += prompt.len() as u64;
        self.stats.cached_prompt_tokens += (hits * KV_BLOCK) as u64;
        Some(hits * KV_BLOCK)
    }

    /// Gives table row `row` blocks for its first `positions` positions; `false` when the
    /// pool has too few (the row keeps what it got).
    pub(crate) fn reserve(&mut self, row: usize, positions: usize) -> bool {
        let want = Self::blocks_for(positions);
        if want > self.seq_blocks {
            return false;
        }
        while self.rows[row].blocks < want {
            let j = self.rows[row].blocks;
            let id = match self.layout {
                KvLayout::Slots => (row * self.seq_blocks + j) as u32,
                KvLayout::Paged => match self.take_block() {
                    Some(id) => id,
                    None => return false,
                },
            };
            self.hold(id);
            self.table[row * self.seq_blocks + j] = id;
            self.rows[row].blocks += 1;
        }
        true
    }

    /// Offers the full blocks among the first `computed` positions of row `row` (whose
    /// tokens are `tokens[..computed]`) to the prefix cache.
    pub(crate) fn seal(&mut self, row: usize, tokens: &[u32], computed: usize) {
        if !self.prefix_cache {
            return;
        }
        let full = (computed.min(tokens.len()) / KV_BLOCK).min(self.rows[row].blocks);
        let mut r = self.rows[row];
        // The run of blocks this call caches, reported as one chain; a block another
        // sequence cached first is not this row's to report, and ends the run.
        let mut run: Option<KvEvent> = None;
        while r.sealed < full {
            let chunk = &tokens[r.sealed * KV_BLOCK..(r.sealed + 1) * KV_BLOCK];
            let key = chain_key(r.last_key, chunk);
            let id = self.table[row * self.seq_blocks + r.sealed];
            if let std::collections::hash_map::Entry::Vacant(e) = self.by_key.entry(key) {
                e.insert(id);
                let b = &mut self.blocks[id as usize];
                b.key = Some(key);
                b.parent = r.last_key;
                b.tokens.copy_from_slice(chunk);
                if self.events.is_some() {
                    extend_run(&mut run, r.last_key, key, chunk);
                }
            } else if let Some(done) = run.take() {
                self.record(done);
            }
            r.sealed += 1;
            r.last_key = key;
        }
        if let Some(done) = run {
            self.record(done);
        }
        self.rows[row] = r;
    }

    fn record(&mut self, event: KvEvent) {
        if let Some(events) = &mut self.events {
            events.push(event);
        }
    }

    /// Ends the sequence of table row `row`: each of its blocks loses a holder; cached ones
    /// nobody holds become evictable (the row's later blocks first), the others free.
    pub(crate) fn release(&mut self, row: usize) {
        let n = self.rows[row].blocks;
        for j in (0..n).rev() {
            let id = self.table[row * self.seq_blocks + j];
            let b = &mut self.blocks[id as usize];
            b.refs -= 1;
            if b.refs > 0 {
                continue;
            }
            self.used -= 1;
            self.tick += 1;
            b.released = self.tick;
            if b.key.is_some() {
                self.evictable.insert((self.tick, id));
            } else if self.layout == KvLayout::Paged {
                self.free.push(id);
            }
        }
        self.rows[row] = Row::default();
    }

    /// Takes a reference on a block (out of the eviction order if it was there).
    fn hold(&mut self, id: u32) {
        let b = &mut self.blocks[id as usize];
        if b.refs == 0 {
            self.evictable.remove(&(b.released, id));
            self.used += 1;
        }
        b.refs += 1;
    }

    /// A block nobody holds: a free one, else the least recently used cached one.
    fn take_block(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        let (_, id) = self.evictable.pop_first()?;
        let b = &mut self.blocks[id as usize];
        if let Some(key) = b.key.take() {
            self.by_key.remove(&key);
            match self.events.as_mut().and_then(|e| e.last_mut()) {
                Some(KvEvent::Removed { hashes }) => hashes.push(key),
                _ => self.record(KvEvent::Removed { hashes: vec![key] }),
            }
        }
        self.stats.evictions += 1;
        Some(id)
    }

    /// Holders of every block, for tests.
    #[cfg(test)]
    fn refs(&self) -> Vec<u32> {
        self.blocks.iter().map(|b| b.refs).collect()
    }
}

/// Adds the block keyed `key` (holding `tokens`, after the block keyed `parent`) to the
/// chain `run`, starting one if there is none.
fn extend_run(run: &mut Option<KvEvent>, parent: u64, key: u64, tokens: &[u32]) {
    match run {
        Some(KvEvent::Stored {
            hashes, token_ids, ..
        }) => {
            hashes.push(key);
            token_ids.extend_from_slice(tokens);
        }
        _ => {
            *run = Some(KvEvent::Stored {
                hashes: vec![key],
                parent: (parent != ROOT).then_some(parent),
                token_ids: tokens.to_vec(),
            })
        }
    }
}

/// The key of the block holding `tokens` after the prefix keyed `parent`.
fn chain_key(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests;
