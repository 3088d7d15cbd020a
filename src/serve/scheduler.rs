//! Continuous batching: one thread owns the model; every decoding step runs all
//! active sequences together through the KV cache; a sequence that finishes (EOS,
//! stop string, `max_tokens`) or whose client has gone leaves at once, and a waiting
//! request joins as soon as there is room: a short prompt is prefilled at once, a
//! long one a chunk per step (so it never stalls the others for long); then its rows
//! are appended to the running cache, left-padded to the same length.

use crate::model::{KvCache, Llama};
use crate::sample::{finished, retain_rows, Finish, Row, SamplingConfig};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// A request for `n` continuations of one prompt.
#[derive(Debug)]
pub struct Job {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Continuations wanted (rows 0..n).
    pub n: usize,
    /// How to sample (validated by the caller).
    pub sampling: SamplingConfig,
    /// Where the rows' text goes as it is generated; closed when the client leaves.
    pub events: UnboundedSender<Event>,
}

/// What a job's rows produce, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text of row `index`.
    Delta {
        /// Row.
        index: usize,
        /// New text.
        text: String,
    },
    /// Row `index` is complete.
    Done {
        /// Row.
        index: usize,
        /// Why it stopped.
        finish: Finish,
        /// Tokens it generated.
        tokens: usize,
    },
    /// The job could not run.
    Error(String),
}

/// One sequence in the running batch.
struct Active {
    job: Arc<Job>,
    row: Row,
    /// Padding in front of this row in the cache.
    pad: usize,
    /// The token to feed at the next step.
    next: u32,
    /// Most new tokens it may generate (request and context).
    max_new: usize,
    /// Bytes of its text already sent.
    sent: usize,
}

/// The scheduler's model and limits.
pub struct Scheduler {
    /// The model (owned by the scheduler thread).
    pub model: Llama,
    /// Its tokenizer.
    pub tok: Tokenizer,
    /// Most sequences decoded together.
    pub max_batch: usize,
}

/// Prompt tokens prefilled per scheduler iteration: a long prompt delays the running
/// sequences' next token by one chunk's forward pass at most, not its whole prefill.
pub const PREFILL_CHUNK: usize = 64;

/// A job whose prompt is being prefilled, a chunk per iteration, into its own cache.
struct Prefill {
    job: Job,
    cache: KvCache,
    done: usize,
}

impl Scheduler {
    /// Serves jobs from `queue` until every sender is gone. Each iteration admits
    /// every waiting request that fits (a short prompt is prefilled at once), runs
    /// one chunk of the oldest long prompt, then one decoding step of every active
    /// sequence: a long prompt delays the others by one chunk per step, never more.
    pub fn run(self, queue: Receiver<Job>) {
        let mut active: Vec<Active> = Vec::new();
        let mut cache = KvCache::default();
        let mut waiting: Option<Job> = None;
        let mut long: VecDeque<Prefill> = VecDeque::new();
        loop {
            loop {
                // block only when there is nothing to decode or prefill
                let job = match waiting.take() {
                    Some(j) => j,
                    None if active.is_empty() && long.is_empty() => match queue.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    },
                    None => match queue.try_recv() {
                        Ok(j) => j,
                        Err(_) => break,
                    },
                };
                let rows = active.len() + long.iter().map(|p| p.job.n).sum::<usize>();
                if rows > 0 && rows + job.n > self.max_batch {
                    waiting = Some(job);
                    break;
                }
                let Some(mut p) = self.start(job) else { continue };
                if p.job.prompt.len() > PREFILL_CHUNK {
                    long.push_back(p);
                    continue;
                }
                match self.prefill_chunk(&mut p) {
                    Ok(Some(logits)) => self.join(p, &logits, &mut active, &mut cache),
                    Ok(None) => unreachable!("a short prompt is one chunk"),
                    Err(e) => Err(e),
                }
                .unwrap_or_else(|e| eprintln!("serve: a request failed: {e:#}"));
            }
            if let Some(p) = long.front_mut() {
                match self.prefill_chunk(p) {
                    Ok(None) => {}
                    Ok(Some(logits)) => {
                        let p = long.pop_front().expect("in progress");
                        if let Err(e) = self.join(p, &logits, &mut active, &mut cache) {
                            eprintln!("serve: a request failed: {e:#}");
                        }
                    }
                    Err(e) => {
                        let _ = p.job.events.send(Event::Error(format!("{e:#}")));
                        long.pop_front();
                    }
                }
            }
            if active.is_empty() {
                cache = KvCache::default();
                continue;
            }
            if let Err(e) = self.step(&mut active, &mut cache) {
                for a in active.drain(..) {
                    let _ = a.job.events.send(Event::Error(format!("{e:#}")));
                }
                cache = KvCache::default();
            }
        }
    }

    /// A job's prefill, or `None` (with an error sent) when its prompt cannot fit.
    fn start(&self, job: Job) -> Option<Prefill> {
        let context = self.model.config().max_position_embeddings;
        let len = job.prompt.len();
        if len == 0 || len >= context {
            let msg = format!("a prompt of {len} tokens does not fit the model's context of {context}");
            let _ = job.events.send(Event::Error(msg));
            return None;
        }
        Some(Prefill { job, cache: KvCache::default(), done: 0 })
    }

    /// Runs the next chunk of a prompt (`n` identical rows); the last chunk returns
    /// the next-token logits of every row. A job whose client has gone is dropped.
    fn prefill_chunk(&self, p: &mut Prefill) -> Result<Option<Vec<Vec<f32>>>> {
        anyhow::ensure!(!p.job.events.is_closed(), "the client has gone");
        let end = (p.done + PREFILL_CHUNK).min(p.job.prompt.len());
        let chunk = &p.job.prompt[p.done..end];
        let ids: Vec<u32> = (0..p.job.n).flat_map(|_| chunk.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (p.job.n, chunk.len()), self.model.device())?;
        let logits = self.model.forward_cached(&ids, &vec![0; p.job.n], &mut p.cache)?;
        p.done = end;
        Ok((end == p.job.prompt.len()).then(|| logits.to_vec2::<f32>()).transpose()?)
    }

    /// Samples each prefilled row's first token and appends the rows to the batch.
    fn join(&self, p: Prefill, logits: &[Vec<f32>], active: &mut Vec<Active>, cache: &mut KvCache) -> Result<()> {
        let context = self.model.config().max_position_embeddings;
        let (grow_old, grow_new) = cache.append_rows(p.cache)?;
        active.iter_mut().for_each(|a| a.pad += grow_old);
        let max_new = p.job.sampling.max_new_tokens.min(context - p.job.prompt.len());
        let job = Arc::new(p.job);
        for (i, l) in logits.iter().enumerate() {
            let mut row = Row::new(i, job.sampling.seed);
            let next = row.advance(l, &job.sampling);
            active.push(Active { job: job.clone(), row, pad: grow_new, next, max_new, sent: 0 });
        }
        self.settle(active, cache)
    }

    /// One decoding step of every active row.
    fn step(&self, active: &mut Vec<Active>, cache: &mut KvCache) -> Result<()> {
        let next: Vec<u32> = active.iter().map(|a| a.next).collect();
        let pads: Vec<usize> = active.iter().map(|a| a.pad).collect();
        let input = Tensor::from_vec(next, (active.len(), 1), self.model.device())?;
        let logits = self.model.forward_cached(&input, &pads, cache)?.to_vec2::<f32>()?;
        for (a, l) in active.iter_mut().zip(&logits) {
            a.next = a.row.advance(l, &a.job.sampling);
        }
        self.settle(active, cache)
    }

    /// Sends every row's new text, drops the rows that finished or whose client
    /// left (from the batch and the cache), and trims padding no row needs.
    fn settle(&self, active: &mut Vec<Active>, cache: &mut KvCache) -> Result<()> {
        let mut keep = Vec::with_capacity(active.len());
        for (r, a) in active.iter_mut().enumerate() {
            if a.job.events.is_closed() {
                continue; // the client has gone: cancelled at this step
            }
            let last = a.row.tokens.len() >= a.max_new;
            match finished(&self.tok, &a.row, &a.job.sampling, last)? {
                Some(sample) => {
                    let rest = sample.text.get(a.sent..).unwrap_or_default().to_string();
                    if !rest.is_empty() {
                        let _ = a.job.events.send(Event::Delta { index: a.row.index, text: rest });
                    }
                    let done =
                        Event::Done { index: a.row.index, finish: sample.finish_reason, tokens: sample.tokens.len() };
                    let _ = a.job.events.send(done);
                }
                None => {
                    self.send_safe_text(a)?;
                    keep.push(r as u32);
                }
            }
        }
        if keep.len() < active.len() {
            retain_rows(active, &keep);
            if active.is_empty() {
                *cache = KvCache::default();
                return Ok(());
            }
            cache.select_rows(&Tensor::new(keep.as_slice(), self.model.device())?)?;
        }
        let common = active.iter().map(|a| a.pad).min().unwrap_or(0);
        cache.trim_front(common)?;
        active.iter_mut().for_each(|a| a.pad -= common);
        Ok(())
    }

    /// Sends the part of a running row's text that cannot change any more: not a
    /// partial character, not a possible beginning of a stop string.
    fn send_safe_text(&self, a: &mut Active) -> Result<()> {
        let text = self.tok.decode(&a.row.tokens)?;
        let complete = text.trim_end_matches('\u{FFFD}').len();
        let held = (a.job.sampling.stop.iter())
            .flat_map(|stop| (1..stop.len()).filter(|&k| stop.is_char_boundary(k)).map(move |k| &stop[..k]))
            .filter(|prefix| text[..complete].ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let safe = complete - held;
        if safe > a.sent && text.is_char_boundary(a.sent) && text.is_char_boundary(safe) {
            let _ = a.job.events.send(Event::Delta { index: a.row.index, text: text[a.sent..safe].to_string() });
            a.sent = safe;
        }
        Ok(())
    }
}
