//! InitProducerId for idempotent producers: ids handed out from blocks the controller allocates
//! to this node (`AllocateProducerIds`, committed in the metadata log, so blocks never overlap
//! across nodes or controllers), and KIP-360's epoch bump for a producer that asks with its
//! existing id.

use std::collections::VecDeque;

use super::api::{InitProducerIdRequest, ProducerIdReply, Reply, RequestId};
use super::{ControllerRequest, Node};
use crate::time::Instant;
use crate::ErrorCode;

/// How long an InitProducerId waits for a block of ids before a retriable error.
const PRODUCER_ID_WAIT_MS: u64 = 5_000;
/// InitProducerId requests waiting for a block at most; more are refused at once (retriable).
const PRODUCER_ID_WAITERS_MAX: usize = 4_096;

#[derive(Default)]
pub(super) struct ProducerIds {
    /// `[first, end)` ranges from the controller, the current one first.
    blocks: VecDeque<(i64, i64)>,
    waiters: VecDeque<(RequestId, Instant)>,
}

impl ProducerIds {
    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.waiters.iter().map(|(_, d)| *d)
    }
}

fn refused(error: ErrorCode) -> ProducerIdReply {
    ProducerIdReply {
        error,
        producer_id: -1,
        producer_epoch: -1,
    }
}

impl Node {
    pub(super) fn init_producer_id(&mut self, request: RequestId, init: InitProducerIdRequest) {
        if init.transactional_id.is_some() {
            tracing::warn!(
                "InitProducerId with a transactional id: transactions are not supported yet"
            );
            let reply = refused(ErrorCode::TransactionalIdAuthorizationFailed);
            return self.reply(request, Reply::InitProducerId(reply));
        }
        // KIP-360: an idempotent producer may ask to bump its epoch after an error. Any id the
        // cluster handed out is known by the image's allocation watermark.
        if init.producer_id >= 0 && init.producer_epoch >= 0 && init.producer_epoch < i16::MAX - 1 {
            let handed_out = self
                .meta
                .quorum()
                .map_or(0, |q| q.image().producer_id_end());
            let reply = if init.producer_id < handed_out {
                ProducerIdReply {
                    error: ErrorCode::None,
                    producer_id: init.producer_id,
                    producer_epoch: init.producer_epoch + 1,
                }
            } else {
                refused(ErrorCode::InvalidProducerEpoch)
            };
            return self.reply(request, Reply::InitProducerId(reply));
        }
        if self.producer_ids.waiters.len() >= PRODUCER_ID_WAITERS_MAX {
            let reply = refused(ErrorCode::CoordinatorLoadInProgress);
            return self.reply(request, Reply::InitProducerId(reply));
        }
        let deadline = self.now.instant.plus_millis(PRODUCER_ID_WAIT_MS);
        self.producer_ids.waiters.push_back((request, deadline));
        self.answer_producer_id_waiters();
    }

    /// A block of ids arrived from the controller.
    pub(super) fn on_producer_ids(&mut self, first: i64, end: i64) {
        assert!(first < end, "a block holds ids");
        self.producer_ids.blocks.push_back((first, end));
        self.answer_producer_id_waiters();
    }

    /// Hands out ids from the blocks, asking for another block when they run out, and times out
    /// waiters past their deadline (REQUEST_TIMED_OUT: the producer retries).
    pub(super) fn answer_producer_id_waiters(&mut self) {
        while !self.producer_ids.waiters.is_empty() {
            let Some((first, end)) = self.producer_ids.blocks.front_mut() else {
                break;
            };
            let id = *first;
            *first += 1;
            if *first >= *end {
                self.producer_ids.blocks.pop_front();
            }
            let (request, _) = self.producer_ids.waiters.pop_front().expect("non-empty");
            let reply = ProducerIdReply {
                error: ErrorCode::None,
                producer_id: id,
                producer_epoch: 0,
            };
            self.reply(request, Reply::InitProducerId(reply));
        }
        let now = self.now.instant;
        while self
            .producer_ids
            .waiters
            .front()
            .is_some_and(|(_, deadline)| *deadline <= now)
        {
            let (request, _) = self.producer_ids.waiters.pop_front().expect("non-empty");
            self.reply(
                request,
                Reply::InitProducerId(refused(ErrorCode::RequestTimedOut)),
            );
        }
        let asked = self
            .cluster
            .calling(|r| matches!(r, ControllerRequest::AllocateProducerIds { .. }));
        if !self.producer_ids.waiters.is_empty() && !asked {
            self.pending_controller_calls
                .push(ControllerRequest::AllocateProducerIds {
                    node_id: self.config.node_id,
                });
        }
    }
}
