//! Reports of what enters and leaves the prefix cache, for routers that route a request to
//! the worker already holding its prefix (vLLM's KV events, which vllm-router's `kv_aware`
//! policy reads). The engine hands plain values to a [`KvEventSink`]; putting them on a wire
//! is the subscriber's business (the engine does no IO).

use std::sync::mpsc::{SyncSender, TrySendError};

/// One change to the prefix cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// Full blocks entered the cache: a chain in which each block follows the one before it
    /// in some sequence, and the first follows the block keyed `parent`.
    Stored {
        /// Each block's key: a hash of its tokens chained with the key of the block before
        /// it, so a key names a whole prefix. Keys are only meaningful within one process.
        hashes: Vec<u64>,
        /// The key of the block before the first; `None` when the first starts a sequence.
        parent: Option<u64>,
        /// The blocks' tokens, [`crate::KV_BLOCK`] per block, in order.
        token_ids: Vec<u32>,
    },
    /// Blocks left the cache: their slots were taken for new blocks.
    Removed {
        /// The keys of the blocks, as they were reported when stored.
        hashes: Vec<u64>,
    },
    /// Forget every block reported so far: reports were lost because the sink was full, so
    /// a view built from them can no longer be trusted. Reports go on from here.
    Cleared,
}

/// Where the engine sends each turn's [`KvEvent`]s, in order. The engine thread calls it
/// between forward passes, so it must not block: a sink with no room says
/// [`TrySendError::Full`] (the engine then reports [`KvEvent::Cleared`] once there is room
/// again), and one nobody reads says [`TrySendError::Disconnected`] (the engine stops
/// reporting).
pub trait KvEventSink: Send {
    /// Delivers one turn's events.
    fn send(&mut self, events: Vec<KvEvent>) -> Result<(), TrySendError<Vec<KvEvent>>>;
}

impl KvEventSink for SyncSender<Vec<KvEvent>> {
    fn send(&mut self, events: Vec<KvEvent>) -> Result<(), TrySendError<Vec<KvEvent>>> {
        self.try_send(events)
    }
}

/// The engine loop's side of a subscription: delivers each turn's events and remembers
/// whether some were lost.
pub(crate) struct KvReporter {
    sink: Box<dyn KvEventSink>,
    lost: bool,
}

impl KvReporter {
    pub(crate) fn new(sink: Box<dyn KvEventSink>) -> Self {
        KvReporter { sink, lost: false }
    }

    /// Delivers `events` (after a [`KvEvent::Cleared`] if earlier ones were lost); `false`
    /// when the subscriber is gone.
    pub(crate) fn deliver(&mut self, mut events: Vec<KvEvent>) -> bool {
        if events.is_empty() && !self.lost {
            return true;
        }
        if self.lost {
            events.insert(0, KvEvent::Cleared);
        }
        match self.sink.send(events) {
            Ok(()) => {
                self.lost = false;
                true
            }
            Err(TrySendError::Full(_)) => {
                if !self.lost {
                    tracing::warn!("the KV event subscriber fell behind; events dropped");
                }
                self.lost = true;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn removed(hash: u64) -> Vec<KvEvent> {
        vec![KvEvent::Removed { hashes: vec![hash] }]
    }

    #[test]
    fn events_lost_to_a_full_sink_are_followed_by_cleared() {
        let (tx, rx) = sync_channel(1);
        let mut reporter = KvReporter::new(Box::new(tx));
        assert!(reporter.deliver(Vec::new()), "nothing to say");
        assert!(rx.try_recv().is_err(), "an empty turn sends nothing");
        assert!(reporter.deliver(removed(1)));
        assert!(reporter.deliver(removed(2)), "full: dropped, not blocked");
        assert_eq!(rx.try_recv().unwrap(), removed(1));
        assert!(reporter.deliver(Vec::new()));
        assert_eq!(
            rx.try_recv().unwrap(),
            vec![KvEvent::Cleared],
            "the loss is reported even in a quiet turn"
        );
        assert!(reporter.deliver(removed(3)));
        assert_eq!(rx.try_recv().unwrap(), removed(3), "then reports go on");
        drop(rx);
        assert!(!reporter.deliver(removed(4)), "the subscriber is gone");
    }
}
