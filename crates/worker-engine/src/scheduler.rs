//! The engine loop: takes jobs from the channel, assigns them to KV cache slots, runs each
//! slot's prompt as batched forward passes (one chunk per turn), decodes every generating slot
//! together in one forward call per turn, samples, checks stop conditions and sends events.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use worker_common::Sampler;
use worker_compute::{ComputeBackend, ComputeError};
use worker_models::{Batch, Model, ModelError, SequenceBatch};
use worker_tokenizer::{StreamDecoder, Tokenizer};

use crate::request::{CancelHandle, Completion, Event, EventSink, StopReason, Timings, TokenEvent};
use crate::stop::{StopCheck, StopMatcher};
use crate::EngineError;

/// A message to the engine thread.
pub(crate) enum Command {
    Submit(Box<Job>),
    Shutdown,
}

/// A validated, tokenized request.
pub(crate) struct Job {
    pub prompt_ids: Vec<u32>,
    pub sampler: Sampler,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub logprobs: Option<usize>,
    pub sink: Box<dyn EventSink>,
    pub cancel: CancelHandle,
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
    decoder: StreamDecoder<'t, dyn Tokenizer + 't>,
    matcher: StopMatcher,
    /// Text sent in token events so far.
    text: String,
    timings: Timings,
}

impl<'t> Sequence<'t> {
    fn new(job: Job, tok: &'t dyn Tokenizer) -> Self {
        let tokens = job.prompt_ids.clone();
        Sequence {
            matcher: StopMatcher::new(&job.stop),
            prompt_len: tokens.len(),
            tokens,
            job,
            phase: Phase::Prefill,
            n_past: 0,
            decoder: StreamDecoder::new(tok),
            text: String::new(),
            timings: Timings::default(),
        }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Samples from `logits` (this sequence's row) and handles the token. Returns how the
    /// sequence ends, or `None` when it goes on.
    fn sample_and_accept(
        &mut self,
        tok: &dyn Tokenizer,
        logits: &mut [f32],
        context: usize,
    ) -> Option<Outcome> {
        let sampled = match self.job.logprobs {
            Some(n) => self
                .job
                .sampler
                .sample_with_logprobs(logits, &self.tokens, n)
                .map(|s| (s.id, Some(s.logprob), s.top)),
            None => self
                .job
                .sampler
                .sample(logits, &self.tokens)
                .map(|id| (id, None, Vec::new())),
        };
        let (id, logprob, top_logprobs) = match sampled {
            Ok(s) => s,
            Err(e) => return Some(Outcome::Fail(e.into())),
        };
        if tok.is_eog(id) {
            return Some(Outcome::Stop(StopReason::Eos));
        }
        self.tokens.push(id);
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
                let tail = match reason {
                    StopReason::StopSequence(_) => String::new(),
                    _ => {
                        let rest = self.decoder.flush();
                        match self.matcher.push(&rest) {
                            StopCheck::Continue { mut emit } => {
                                emit.push_str(&self.matcher.finish());
                                emit
                            }
                            StopCheck::Stopped { emit, stop } => {
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

/// The state of the engine thread.
pub(crate) struct Scheduler<'t> {
    model: Box<dyn Model>,
    backend: Box<dyn ComputeBackend>,
    tok: &'t dyn Tokenizer,
    /// One entry per KV cache slot; `None` is idle.
    slots: Vec<Option<Sequence<'t>>>,
    queue: VecDeque<Box<Job>>,
    logits: Vec<f32>,
    vocab: usize,
    context: usize,
    max_batch: usize,
    /// Most sequences in one decode forward call.
    max_rows: usize,
}

impl<'t> Scheduler<'t> {
    pub(crate) fn new(
        model: Box<dyn Model>,
        backend: Box<dyn ComputeBackend>,
        tok: &'t dyn Tokenizer,
    ) -> Self {
        let opts = *model.options();
        let vocab = model.hparams().vocab_size as usize;
        let max_rows = opts.max_logit_rows.min(opts.max_batch).max(1);
        Scheduler {
            slots: (0..opts.slots).map(|_| None).collect(),
            queue: VecDeque::new(),
            logits: vec![0.0; max_rows * vocab],
            vocab,
            context: opts.max_positions,
            max_batch: opts.max_batch.max(1),
            max_rows,
            model,
            backend,
            tok,
        }
    }

    /// Runs until [`Command::Shutdown`] or until every sender is gone.
    pub(crate) fn run(mut self, commands: Receiver<Command>) {
        loop {
            if self.is_idle() {
                match commands.recv() {
                    Ok(Command::Submit(job)) => self.queue.push_back(job),
                    Ok(Command::Shutdown) | Err(_) => return self.shutdown(),
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(Command::Submit(job)) => self.queue.push_back(job),
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                        return self.shutdown()
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.step();
        }
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(Option::is_none)
    }

    /// One turn: drop cancelled work, admit queued jobs into free slots, run one prompt chunk
    /// of every prefilling slot, then one decode step for every generating slot.
    fn step(&mut self) {
        self.drop_cancelled();
        self.admit();
        for i in 0..self.slots.len() {
            if matches!(&self.slots[i], Some(s) if s.phase == Phase::Prefill) {
                self.prefill(i);
            }
        }
        self.decode();
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
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|s| s.job.cancel.is_cancelled()) {
                if let Some(seq) = slot.take() {
                    seq.finish(Outcome::Stop(StopReason::Cancelled));
                }
            }
        }
    }

    fn admit(&mut self) {
        for slot in &mut self.slots {
            if slot.is_some() {
                continue;
            }
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            if job.max_tokens == Some(0) {
                finish_unstarted(*job, Outcome::Stop(StopReason::MaxTokens));
                continue;
            }
            *slot = Some(Sequence::new(*job, self.tok));
        }
    }

    /// Runs the next chunk (at most `max_batch` tokens) of the prompt of the sequence in slot
    /// `i` as one forward call; after the last chunk, samples its first token. One chunk per
    /// turn keeps a long prompt from stalling the other slots' decoding.
    fn prefill(&mut self, i: usize) {
        let Some(seq) = self.slots[i].as_mut() else {
            return;
        };
        let vocab = self.vocab;
        let start = Instant::now();
        let end = (seq.n_past + self.max_batch).min(seq.prompt_len);
        let b = SequenceBatch::new(
            &seq.tokens[seq.n_past..end],
            seq.n_past as u32,
            i as u32,
            false,
        );
        let result =
            self.model
                .forward(self.backend.as_mut(), &b.batch(), &mut self.logits[..vocab]);
        let outcome = match result {
            Err(e) => Some(Outcome::Fail(forward_error(&e))),
            Ok(()) => {
                seq.n_past = end;
                seq.timings.prompt_tokens = end;
                seq.timings.prefill += start.elapsed();
                if end == seq.prompt_len {
                    seq.sample_and_accept(self.tok, &mut self.logits[..vocab], self.context)
                } else {
                    None
                }
            }
        };
        if let Some(outcome) = outcome {
            if let Some(seq) = self.slots[i].take() {
                seq.finish(outcome);
            }
        }
    }

    /// One decode step: every generating slot's next token goes through the model together
    /// (in groups of at most `max_rows`), then each slot samples from its row.
    fn decode(&mut self) {
        let ready: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(&self.slots[i], Some(s) if matches!(s.phase, Phase::Generating { .. })))
            .collect();
        for group in ready.chunks(self.max_rows) {
            self.decode_group(group);
        }
    }

    fn decode_group(&mut self, group: &[usize]) {
        let vocab = self.vocab;
        let n = group.len();
        let mut tokens = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        for &i in group {
            if let Some(Sequence {
                phase: Phase::Generating { next },
                n_past,
                ..
            }) = &self.slots[i]
            {
                tokens.push(*next);
                positions.push(*n_past as u32);
            }
        }
        let slots: Vec<u32> = group.iter().map(|&i| i as u32).collect();
        let rows: Vec<u32> = (0..n as u32).collect();
        let batch = Batch {
            tokens: &tokens,
            positions: &positions,
            slots: &slots,
            logit_rows: &rows,
        };
        let start = Instant::now();
        let result =
            self.model
                .forward(self.backend.as_mut(), &batch, &mut self.logits[..n * vocab]);
        let forward_time = start.elapsed();
        for (r, &i) in group.iter().enumerate() {
            let outcome = match &result {
                Err(e) => Some(Outcome::Fail(forward_error(e))),
                Ok(()) => self.slots[i].as_mut().and_then(|seq| {
                    let t = Instant::now();
                    seq.n_past += 1;
                    let row = &mut self.logits[r * vocab..(r + 1) * vocab];
                    let outcome = seq.sample_and_accept(self.tok, row, self.context);
                    seq.timings.decode_steps += 1;
                    seq.timings.decode += forward_time + t.elapsed();
                    outcome
                }),
            };
            if let Some(outcome) = outcome {
                if let Some(seq) = self.slots[i].take() {
                    seq.finish(outcome);
                }
            }
        }
    }

    /// Ends every request with [`EngineError::ShutDown`].
    fn shutdown(mut self) {
        for job in self.queue.drain(..) {
            finish_unstarted(*job, Outcome::Fail(EngineError::ShutDown));
        }
        for seq in self.slots.iter_mut().filter_map(Option::take) {
            seq.finish(Outcome::Fail(EngineError::ShutDown));
        }
    }
}

/// The engine error of a failed forward pass: an allocation failure is
/// [`EngineError::OutOfMemory`] (reported as `VRAM_OOM`), anything else
/// [`EngineError::Forward`].
fn forward_error(e: &ModelError) -> EngineError {
    match e {
        ModelError::Compute(ComputeError::Alloc { .. }) => EngineError::OutOfMemory(e.to_string()),
        _ => EngineError::Forward(e.to_string()),
    }
}
