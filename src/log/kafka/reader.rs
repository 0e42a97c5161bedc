//! Reading one partition of the topic in order, for the sink and the tools.
//!
//! Cancel-safe as [`PartitionReader::next_batch`] requires: a message taken from the
//! consumer is kept in the reader until it is decoded and handed out, and the only
//! wait happens before anything is taken.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::FutureExt;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use tracing::warn;

use super::client::{kafka, KafkaContext};
use super::message::record_of;
use super::KafkaLog;
use crate::log::{LogError, LogRecord, PartitionReader, PartitionedLog};

/// A message taken from the consumer but not yet handed out: kept until decoded, so a
/// cancelled [`PartitionReader::next_batch`] loses nothing.
pub(super) struct Raw {
    offset: u64,
    record: Result<Vec<u8>, String>,
}

/// Reads one partition of the topic from an offset, in order.
pub struct KafkaReader {
    pub(super) log: KafkaLog,
    pub(super) partition: u32,
    pub(super) consumer: StreamConsumer<KafkaContext>,
    pub(super) raw: VecDeque<Raw>,
    pub(super) next: u64,
}

impl Raw {
    fn of(m: &impl Message) -> Raw {
        Raw {
            offset: m.offset() as u64,
            record: record_of(m),
        }
    }

    fn bytes(&self) -> usize {
        self.record.as_ref().map_or(0, Vec::len)
    }
}

impl KafkaReader {
    fn take(&mut self, raw: Raw) {
        self.next = raw.offset + 1;
        self.raw.push_back(raw);
    }

    /// A consumer error: out of range is final, the rest librdkafka recovers from
    /// (the broker is away, a leader moves); those are reported at most every 30 s.
    fn consume_error(&mut self, e: KafkaError) -> Result<(), LogError> {
        let topic = &self.log.inner.topic;
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset)
            || e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange)
        {
            return Err(LogError::OffsetOutOfRange {
                partition: self.partition,
                requested: self.next,
                start: 0,
                end: self.log.end_offset(self.partition),
            });
        }
        if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
            return Err(kafka("consume", topic)(e));
        }
        // At most one line per partition per 30 s, like librdkafka's own reports.
        let kind = format!("consume p{}", self.partition);
        if let Some(held) = self.log.inner.context.due(&kind) {
            warn!(topic = %topic, partition = self.partition, error = %e, held_back = held, "Kafka consumer error; librdkafka retries");
        }
        Ok(())
    }
}

impl PartitionReader for KafkaReader {
    async fn next_batch_within(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let max = max.max(1);
        while self.raw.is_empty() {
            // The only wait; a message is in `raw` before any other await.
            let got = self.consumer.recv().await.map(|m| Raw::of(&m));
            match got {
                Ok(raw) => self.take(raw),
                Err(e) => {
                    self.consume_error(e)?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let mut held: usize = self.raw.iter().map(Raw::bytes).sum();
        while self.raw.len() < max && held < max_bytes {
            let got = self
                .consumer
                .recv()
                .now_or_never()
                .map(|r| r.map(|m| Raw::of(&m)));
            match got {
                Some(Ok(raw)) => {
                    held += raw.bytes();
                    self.take(raw)
                }
                Some(Err(e)) => {
                    self.consume_error(e)?;
                    break;
                }
                None => break,
            }
        }
        // Records until their bytes reach `max_bytes`; the first always.
        let mut bytes = 0;
        let n = self
            .raw
            .iter()
            .take(max)
            .take_while(|r| {
                let room = bytes < max_bytes.max(1);
                bytes += r.bytes();
                room
            })
            .count();
        let mut out = Vec::with_capacity(n);
        for raw in self.raw.iter().take(n) {
            let bytes = match &raw.record {
                Ok(b) => b,
                Err(detail) => {
                    return Err(self.log.undecodable(
                        self.partition as i32,
                        raw.offset as i64,
                        detail.clone(),
                    ))
                }
            };
            out.push(self.log.decode(self.partition, raw.offset, bytes).await?);
        }
        self.raw.drain(..n);
        Ok(out)
    }
}
