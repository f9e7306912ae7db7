//! The engine loop: takes jobs from the channel, gives each a slot (a row of the KV block
//! table) and the blocks its prompt needs (reusing cached prefixes), and every turn runs one
//! forward call that carries the next token of every generating sequence plus chunks of
//! waiting prompts under a token budget (chunked prefill); then samples, checks stop
//! conditions, seals full blocks into the prefix cache and sends events.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use worker_common::Sampler;
use worker_compute::{ComputeBackend, KV_BLOCK};
use worker_models::{Batch, Model, ModelError};
use worker_tokenizer::{StreamDecoder, Tokenizer};

use crate::blocks::{BlockManager, KvStats};
use crate::constraint::MaskWorker;
use crate::kv_events::{KvEventSink, KvReporter};
use crate::pace::Pace;
use crate::request::{CancelHandle, Completion, Event, EventSink, StopReason, Timings, TokenEvent};
use crate::stop::{StopCheck, StopMatcher};
use crate::EngineError;

/// A message to the engine thread.
pub(crate) enum Command {
    Submit(Box<Job>),
    /// Report what enters and leaves the prefix cache from now on to this sink (replacing
    /// any earlier one).
    ReportKvEvents(Box<dyn KvEventSink>),
    Shutdown,
}

/// A validated, tokenized request.
pub(crate) struct Job {
    pub prompt_ids: Vec<u32>,
    pub sampler: Sampler,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub logprobs: Option<usize>,
    /// The compiled constraint, at its start state.
    pub grammar: Option<llguidance::Matcher>,
    pub ends: EndRules,
    pub sink: Box<dyn EventSink>,
    pub cancel: CancelHandle,
}

/// The request's own rules for ending, beyond `max_tokens` and stop strings.
#[derive(Clone, Debug, Default)]
pub(crate) struct EndRules {
    pub min_tokens: usize,
    pub ignore_eos: bool,
    pub stop_token_ids: Vec<u32>,
    pub include_stop: bool,
    pub render_special: bool,
}

impl EndRules {
    /// Whether any rule needs the sampler to skip ending tokens at some step.
    fn bans_ends(&self) -> bool {
        self.ignore_eos || self.min_tokens > 0
    }
}

/// Where a slot's sequence stands (llama.cpp's slot states, minus idle: an idle slot holds
/// no sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The prompt is running; `n_past` of its tokens are in the cache.
    Prefill,
    /// `next` was sampled and is fed at the next decode step.
    Generating { next: u32 },
}

/// How a sequence ends.
enum Outcome {
    Stop(StopReason),
    Fail(EngineError),
}

/// One request in a slot.
struct Sequence<'t> {
    job: Job,
    phase: Phase,
    /// Prompt then generated ids (the sampler's history).
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Positions written to this slot's KV cache.
    n_past: usize,
    /// When it was admitted: prompts are prefilled in this order.
    admitted: u64,
    decoder: StreamDecoder<'t, dyn Tokenizer + 't>,
    matcher: StopMatcher,
    /// Text sent in token events so far.
    text: String,
    timings: Timings,
    /// The constraint's mask thread, for a constrained sequence.
    grammar: Option<MaskWorker>,
    /// The model's end-of-generation ids, when the request's rules ban them at some step.
    eog_ids: Vec<u32>,
}

impl<'t> Sequence<'t> {
    /// A sequence whose first `cached` prompt positions are already in its blocks.
    fn new(
        job: Job,
        tok: &'t dyn Tokenizer,
        cached: usize,
        admitted: u64,
        grammar: Option<MaskWorker>,
    ) -> Self {
        let tokens = job.prompt_ids.clone();
        let eog_ids = if job.ends.bans_ends() {
            (0..tok.vocab_size() as u32)
                .filter(|&id| tok.is_eog(id))
                .collect()
        } else {
            Vec::new()
        };
        let decoder = StreamDecoder::new(tok).render_special(job.ends.render_special);
        Sequence {
            grammar,
            eog_ids,
            matcher: StopMatcher::new(&job.stop),
            prompt_len: tokens.len(),
            tokens,
            job,
            phase: Phase::Prefill,
            n_past: cached,
            admitted,
            decoder,
            text: String::new(),
            timings: Timings {
                cached_tokens: cached,
                ..Timings::default()
            },
        }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// The tokens that may not be chosen this step: end-of-generation ones under
    /// `ignore_eos`, those and the request's stop tokens before `min_tokens`.
    fn banned_now(&self) -> Vec<u32> {
        let ends = &self.job.ends;
        let early = self.generated() < ends.min_tokens;
        let mut banned = Vec::new();
        if ends.ignore_eos || early {
            banned.extend_from_slice(&self.eog_ids);
        }
        if early {
            banned.extend_from_slice(&ends.stop_token_ids);
        }
        banned
    }

    /// Whether `id` ends the sequence as the end of generation does.
    fn is_end(&self, tok: &dyn Tokenizer, id: u32) -> bool {
        (tok.is_eog(id) && !self.job.ends.ignore_eos) || self.job.ends.stop_token_ids.contains(&id)
    }

    /// Samples from `logits` (this sequence's row) and handles the token. Returns how the
    /// sequence ends, or `None` when it goes on.
    fn sample_and_accept(
        &mut self,
        tok: &dyn Tokenizer,
        logits: &mut [f32],
        context: usize,
    ) -> Option<Outcome> {
        let mut mask = match self.grammar.as_mut().map(MaskWorker::mask).transpose() {
            Ok(mask) => mask,
            Err(e) => return Some(Outcome::Fail(e)),
        };
        let banned = self.banned_now();
        match mask.as_mut() {
            // A grammar that allows only ending tokens has the last word: the output is whole.
            Some(m) => {
                let allowed_banned = banned.iter().filter(|&&id| m.is_allowed(id)).count();
                if m.num_set() > allowed_banned {
                    banned.iter().for_each(|&id| m.disallow_token(id));
                }
            }
            None => {
                for &id in &banned {
                    if let Some(l) = logits.get_mut(id as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let sampler = &mut self.job.sampler;
        let sampled = match (self.job.logprobs, &mask) {
            (Some(n), None) => sampler
                .sample_with_logprobs(logits, &self.tokens, n)
                .map(|s| (s.id, Some(s.logprob), s.top)),
            (Some(n), Some(mask)) => sampler
                .sample_with_logprobs_masked(logits, &self.tokens, n, mask.as_slice())
                .map(|s| (s.id, Some(s.logprob), s.top)),
            (None, None) => sampler
                .sample(logits, &self.tokens)
                .map(|id| (id, None, Vec::new())),
            (None, Some(mask)) => sampler
                .sample_masked(logits, &self.tokens, mask.as_slice())
                .map(|id| (id, None, Vec::new())),
        };
        let (id, logprob, top_logprobs) = match sampled {
            Ok(s) => s,
            Err(e) => return Some(Outcome::Fail(e.into())),
        };
        if self.is_end(tok, id) {
            return Some(Outcome::Stop(StopReason::Eos));
        }
        self.tokens.push(id);
        // The grammar advances now and computes its next mask during the next forward pass.
        let complete = match self.grammar.as_mut().map(|g| g.accept(id)) {
            None | Some(Ok(false)) => false,
            Some(Ok(true)) => true,
            Some(Err(e)) => return Some(Outcome::Fail(e)),
        };
        let piece = match self.decoder.push(id) {
            Ok(p) => p,
            Err(e) => return Some(Outcome::Fail(EngineError::Tokenize(e))),
        };
        let (emit, stopped) = match self.matcher.push(&piece) {
            StopCheck::Continue { emit } => (emit, None),
            StopCheck::Stopped { emit, stop } => (emit, Some(stop)),
        };
        self.text.push_str(&emit);
        let event = Event::Token(TokenEvent {
            id,
            text: emit,
            logprob,
            top_logprobs,
        });
        if !self.job.sink.send(event) {
            return Some(Outcome::Stop(StopReason::Cancelled));
        }
        if let Some(stop) = stopped {
            return Some(Outcome::Stop(StopReason::StopSequence(stop)));
        }
        if complete {
            // The constrained output is whole and nothing may follow it: as if at EOS.
            return Some(Outcome::Stop(StopReason::Eos));
        }
        if self.job.max_tokens.is_some_and(|m| self.generated() >= m) {
            return Some(Outcome::Stop(StopReason::MaxTokens));
        }
        if self.n_past >= context {
            return Some(Outcome::Stop(StopReason::ContextFull));
        }
        self.phase = Phase::Generating { next: id };
        None
    }

    /// Sends the terminal event.
    fn finish(mut self, outcome: Outcome) {
        let event = match outcome {
            Outcome::Fail(e) => Event::Error(e),
            Outcome::Stop(mut reason) => {
                let tail = match &reason {
                    StopReason::StopSequence(stop) if self.job.ends.include_stop => stop.clone(),
                    StopReason::StopSequence(_) => String::new(),
                    _ => {
                        let rest = self.decoder.flush();
                        match self.matcher.push(&rest) {
                            StopCheck::Continue { mut emit } => {
                                emit.push_str(&self.matcher.finish());
                                emit
                            }
                            StopCheck::Stopped { mut emit, stop } => {
                                if self.job.ends.include_stop {
                                    emit.push_str(&stop);
                                }
                                reason = StopReason::StopSequence(stop);
                                emit
                            }
                        }
                    }
                };
                let mut text = std::mem::take(&mut self.text);
                text.push_str(&tail);
                tracing::debug!(
                    reason = reason.as_str(),
                    prompt_tokens = self.prompt_len,
                    generated = self.generated(),
                    "sequence finished"
                );
                Event::End(Completion {
                    stop_reason: reason,
                    ids: self.tokens[self.prompt_len..].to_vec(),
                    prompt_ids: std::mem::take(&mut self.job.prompt_ids),
                    tail,
                    text,
                    timings: self.timings,
                })
            }
        };
        self.job.sink.send(event);
    }
}

/// Ends a job that never reached a slot.
fn finish_unstarted(mut job: Job, outcome: Outcome) {
    let event = match outcome {
        Outcome::Fail(e) => Event::Error(e),
        Outcome::Stop(reason) => Event::End(Completion {
            stop_reason: reason,
            prompt_ids: std::mem::take(&mut job.prompt_ids),
            ids: Vec::new(),
            tail: String::new(),
            text: String::new(),
            timings: Timings::default(),
        }),
    };
    job.sink.send(event);
}

/// Sizes and switches of the loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoopConfig {
    /// Most prompt tokens in a turn in which sequences are also generating (the pace picks
    /// fewer when that keeps their inter-token latency bounded). Alone, a prompt runs in
    /// chunks of the model's whole batch.
    pub prefill_chunk: usize,
    /// Whether full blocks are shared by prefix.
    pub prefix_cache: bool,
}

/// What a row group of the turn's batch does for its sequence.
#[derive(Clone, Copy)]
enum Part {
    /// One generated token; its logits are row `logits` of the output.
    Decode { logits: usize },
    /// Prompt positions `..end`; logits (row `logits`) when `end` completes the prompt.
    Prefill { end: usize, logits: Option<usize> },
}

/// The index vectors of one turn's forward call, and what each slot in it does.
#[derive(Default)]
struct TurnBatch {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    seqs: Vec<u32>,
    logit_rows: Vec<u32>,
    parts: Vec<(usize, Part)>,
}

impl TurnBatch {
    /// Adds `tokens` of slot `slot` from position `start`; returns the logits row of the
    /// last one when `logits`.
    fn push(&mut self, slot: usize, tokens: &[u32], start: usize, logits: bool) -> Option<usize> {
        let first = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.positions
            .extend((start..start + tokens.len()).map(|p| p as u32));
        self.seqs
            .extend(std::iter::repeat_n(slot as u32, tokens.len()));
        logits.then(|| {
            self.logit_rows.push((first + tokens.len() - 1) as u32);
            self.logit_rows.len() - 1
        })
    }
}

/// The state of the engine thread.
pub(crate) struct Scheduler<'t> {
    model: Box<dyn Model>,
    backend: Box<dyn ComputeBackend>,
    tok: &'t dyn Tokenizer,
    /// One entry per block-table row; `None` is idle.
    slots: Vec<Option<Sequence<'t>>>,
    queue: VecDeque<Box<Job>>,
    blocks: BlockManager,
    /// Where the pool's counters are published after every turn.
    stats: Arc<Mutex<KvStats>>,
    /// Who is told after every turn what entered and left the prefix cache.
    kv_reporter: Option<KvReporter>,
    admitted: u64,
    logits: Vec<f32>,
    vocab: usize,
    context: usize,
    max_batch: usize,
    pace: Pace,
}

impl<'t> Scheduler<'t> {
    pub(crate) fn new(
        model: Box<dyn Model>,
        backend: Box<dyn ComputeBackend>,
        tok: &'t dyn Tokenizer,
        config: LoopConfig,
        stats: Arc<Mutex<KvStats>>,
    ) -> Self {
        let opts = *model.options();
        let vocab = model.hparams().vocab_size as usize;
        let blocks = BlockManager::new(model.kv_cache(), backend.kv_layout(), config.prefix_cache);
        let max_batch = opts.max_batch.max(1);
        Scheduler {
            slots: (0..opts.seqs).map(|_| None).collect(),
            queue: VecDeque::new(),
            logits: vec![0.0; opts.max_logit_rows.max(1) * vocab],
            vocab,
            // A sequence ends with ContextFull where the pool would run out for it alone.
            context: opts
                .max_positions
                .min(model.kv_cache().blocks.saturating_mul(KV_BLOCK)),
            max_batch,
            pace: Pace::new(config.prefill_chunk.clamp(1, max_batch)),
            blocks,
            stats,
            kv_reporter: None,
            admitted: 0,
            model,
            backend,
            tok,
        }
    }

    /// Runs until [`Command::Shutdown`] or until every sender is gone.
    pub(crate) fn run(mut self, commands: Receiver<Command>) {
        self.publish();
        loop {
            if self.is_idle() {
                match commands.recv() {
                    Ok(Command::Shutdown) | Err(_) => return self.shutdown(),
                    Ok(command) => self.take(command),
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                        return self.shutdown()
                    }
                    Ok(command) => self.take(command),
                    Err(TryRecvError::Empty) => break,
                }
            }
            if !self.is_idle() {
                self.step();
            }
            self.publish();
        }
    }

    /// Takes a command other than [`Command::Shutdown`].
    fn take(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.queue.push_back(job),
            Command::ReportKvEvents(sink) => {
                self.blocks.record_events(true);
                self.kv_reporter = Some(KvReporter::new(sink));
            }
            Command::Shutdown => {}
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(Option::is_none)
    }

    /// Publishes the pool's counters and hands the turn's cache changes to the subscriber.
    fn publish(&mut self) {
        if let Ok(mut s) = self.stats.lock() {
            *s = self.blocks.stats();
        }
        if let Some(reporter) = &mut self.kv_reporter {
            if !reporter.deliver(self.blocks.take_events()) {
                self.kv_reporter = None;
                self.blocks.record_events(false);
            }
        }
    }

    /// One turn: drop cancelled work, admit queued jobs into free slots, then one forward
    /// call for every generating sequence and as much prompt as the budget allows.
    fn step(&mut self) {
        self.drop_cancelled();
        self.admit();
        self.run_turn();
    }

    /// Ends the sequence in slot `i` and gives its blocks back; the counters are published
    /// before its terminal event, so whoever sees the event sees the blocks released.
    fn finish_slot(&mut self, i: usize, outcome: Outcome) {
        if let Some(seq) = self.slots[i].take() {
            self.blocks.release(i);
            self.publish();
            seq.finish(outcome);
        }
    }

    fn drop_cancelled(&mut self) {
        let (cancelled, kept): (Vec<_>, Vec<_>) = self
            .queue
            .drain(..)
            .partition(|job| job.cancel.is_cancelled());
        self.queue = kept.into();
        for job in cancelled {
            finish_unstarted(*job, Outcome::Stop(StopReason::Cancelled));
        }
        for i in 0..self.slots.len() {
            if self.slots[i]
                .as_ref()
                .is_some_and(|s| s.job.cancel.is_cancelled())
            {
                self.finish_slot(i, Outcome::Stop(StopReason::Cancelled));
            }
        }
    }

    /// Moves queued jobs, in order, into free slots while the pool has blocks for their
    /// prompts; a job that must wait for blocks keeps the ones behind it waiting too.
    fn admit(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                continue;
            }
            loop {
                let Some(job) = self.queue.front() else {
                    return;
                };
                if job.max_tokens == Some(0) {
                    if let Some(job) = self.queue.pop_front() {
                        finish_unstarted(*job, Outcome::Stop(StopReason::MaxTokens));
                    }
                    continue;
                }
                let Some(cached) = self.blocks.start(i, &job.prompt_ids) else {
                    return;
                };
                if let Some(mut job) = self.queue.pop_front() {
                    let grammar = match job.grammar.take().map(MaskWorker::start).transpose() {
                        Ok(g) => g,
                        Err(e) => {
                            self.blocks.release(i);
                            finish_unstarted(*job, Outcome::Fail(e));
                            continue;
                        }
                    };
                    self.admitted += 1;
                    self.slots[i] = Some(Sequence::new(
                        *job,
                        self.tok,
                        cached,
                        self.admitted,
                        grammar,
                    ));
                }
                break;
            }
        }
    }

    /// Builds this turn's batch: the next token of every generating sequence (each given a
    /// block for it first), then prompt chunks in admission order up to the budget.
    fn plan_turn(&mut self) -> TurnBatch {
        let mut batch = TurnBatch::default();
        for i in 0..self.slots.len() {
            let Some(Sequence {
                phase: Phase::Generating { next },
                n_past,
                ..
            }) = self.slots[i]
            else {
                continue;
            };
            if !self.blocks.reserve(i, n_past + 1) {
                self.finish_slot(i, Outcome::Fail(EngineError::KvCacheFull));
                continue;
            }
            if let Some(logits) = batch.push(i, &[next], n_past, true) {
                batch.parts.push((i, Part::Decode { logits }));
            }
        }
        let budget = if batch.tokens.is_empty() {
            self.max_batch
        } else {
            self.pace.chunk()
        };
        let mut left = budget.min(self.max_batch.saturating_sub(batch.tokens.len()));
        let mut prefilling: Vec<(u64, usize)> = (0..self.slots.len())
            .filter_map(|i| match &self.slots[i] {
                Some(s) if s.phase == Phase::Prefill => Some((s.admitted, i)),
                _ => None,
            })
            .collect();
        prefilling.sort_unstable();
        for (_, i) in prefilling {
            if left == 0 {
                break;
            }
            let Some(seq) = &self.slots[i] else {
                continue;
            };
            let end = (seq.n_past + left).min(seq.prompt_len);
            let last = end == seq.prompt_len;
            let logits = batch.push(i, &seq.tokens[seq.n_past..end], seq.n_past, last);
            left -= end - seq.n_past;
            batch.parts.push((i, Part::Prefill { end, logits }));
        }
        batch
    }

    /// Runs this turn's forward call and hands each sequence its result.
    fn run_turn(&mut self) {
        let batch = self.plan_turn();
        if batch.tokens.is_empty() {
            return;
        }
        let vocab = self.vocab;
        let n_logits = batch.logit_rows.len();
        let forward = Batch {
            tokens: &batch.tokens,
            positions: &batch.positions,
            seqs: &batch.seqs,
            block_table: self.blocks.table(),
            logit_rows: &batch.logit_rows,
        };
        let start = Instant::now();
        let result = self.model.forward(
            self.backend.as_mut(),
            &forward,
            &mut self.logits[..n_logits * vocab],
        );
        let elapsed = start.elapsed();
        let decode_rows = batch
            .parts
            .iter()
            .filter(|(_, p)| matches!(p, Part::Decode { .. }))
            .count();
        self.pace
            .record(decode_rows, batch.tokens.len() - decode_rows, elapsed);
        if let Err(e) = result {
            let e = Arc::new(e);
            for &(i, _) in &batch.parts {
                self.finish_slot(i, Outcome::Fail(forward_error(&e)));
            }
            return;
        }
        for &(i, part) in &batch.parts {
            let Some(seq) = self.slots[i].as_mut() else {
                continue;
            };
            let t = Instant::now();
            let logits_row = match part {
                Part::Decode { logits } => {
                    seq.n_past += 1;
                    Some(logits)
                }
                Part::Prefill { end, logits } => {
                    seq.timings.prompt_tokens += end - seq.n_past;
                    seq.n_past = end;
                    seq.timings.prefill += elapsed;
                    logits
                }
            };
            let outcome = logits_row.and_then(|r| {
                let row = &mut self.logits[r * vocab..(r + 1) * vocab];
                seq.sample_and_accept(self.tok, row, self.context)
            });
            if let Part::Decode { .. } = part {
                seq.timings.decode_steps += 1;
                seq.timings.decode += elapsed + t.elapsed();
            }
            self.blocks.seal(i, &seq.tokens, seq.n_past);
            if let Some(outcome) = outcome {
                self.finish_slot(i, outcome);
            }
        }
    }

    /// Ends every request with [`EngineError::ShutDown`].
    fn shutdown(mut self) {
        for job in self.queue.drain(..) {
            finish_unstarted(*job, Outcome::Fail(EngineError::ShutDown));
        }
        for i in 0..self.slots.len() {
            self.finish_slot(i, Outcome::Fail(EngineError::ShutDown));
        }
        self.publish();
    }
}

/// The engine error of a failed forward pass: an allocation failure is
/// [`EngineError::OutOfMemory`] (reported as `VRAM_OOM`), anything else
/// [`EngineError::Forward`].
fn forward_error(e: &Arc<ModelError>) -> EngineError {
    if e.is_oom() {
        EngineError::OutOfMemory(Arc::clone(e))
    } else {
        EngineError::Forward(Arc::clone(e))
    }
}

#[cfg(test)]
mod tests;
