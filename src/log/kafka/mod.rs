//! The Kafka backend of the partitioned log (`log.backend = "kafka"`), on librdkafka.
//!
//! # Layout, for a pipeline whose topic is `T`
//! * `T`: `log.partitions` partitions, one message per log record, in the partition
//!   rowlog's partitioner chose (the same as the embedded log, so a key's changes stay
//!   in one partition in source order). Message key: `{"db","table","key":[…]}`. Value: a
//!   Debezium-shaped JSON envelope (`before`, `after`, `source`, `op`, `ts_ms`) that any
//!   Kafka consumer can read, whose extra field `rowlog` holds the record exactly as the
//!   embedded log stores it ([`super::record`], base64): that is what rowlog's own sink
//!   decodes, so the two backends carry the same bytes and replay the same values. (Not
//!   a message header: tansu, the broker the tests run against, looks headers up with a
//!   table scan per record, which makes reading quadratic in the topic's size.) The
//!   message timestamp is the source commit time, but never more than
//!   [`STAMP_LAG_MAX_MS`] before the append: the broker's retention counts from it,
//!   so catching up on a binlog older than `retention.ms` must not write messages the
//!   broker deletes at once. A timestamp is never below the commit time, so Kafka's
//!   time index gives a lower bound for a search by commit time, read exactly from the
//!   records from there on ([`PartitionedLog::offset_for_time`]).
//! * `T.schemas`: one partition; the message at offset N is table schema version N
//!   (postcard). Records refer to their schema by that id (`source.rowlog_schema_id` in
//!   the JSON), so an old record always decodes with the columns it was written with.
//! * `T.checkpoint`: one partition; its last message holds the log's identity and the
//!   source checkpoint.
//!
//! # Durability and order
//! * The producer is idempotent with `acks=all` and no delivery timeout: librdkafka
//!   retries until the broker confirms, without duplicates or reordering within a
//!   partition. [`PartitionedLog::append`] returns only once every delivery report of
//!   the batch confirmed, and only then may the source checkpoint move past it.
//! * A schema is confirmed in `T.schemas` before any record that refers to it is sent.
//! * Consumer offsets are the consumer group's (group id = the consumer's name),
//!   committed only by [`PartitionedLog::commit`] (auto-commit is off). Readers never
//!   jump: `auto.offset.reset = error`, so a record that retention removed is an
//!   "offset out of range" error, not a silent skip.
//! * Zero loss also needs the broker side: replication factor > 1 and
//!   `min.insync.replicas` > 1 (README, "Running on Kafka").
//!
//! Files: `settings.rs` (the `[kafka]` section), `message.rs` (the message format),
//! `reader.rs` (reading a partition), `client.rs` (librdkafka plumbing); this file
//! holds the log's state and the trait implementation.

mod client;
mod message;
mod reader;
mod settings;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rowlog_api::{ChangeId, ResumePoint, TableSchema};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::client::{
    base_config, blocking, ensure_topics, kafka, reader_config, settle, transient, KafkaContext,
};
use self::message::{record_of, Encoded};
pub use self::reader::KafkaReader;
pub use self::settings::{topic_problem, KafkaSettings, RESERVED};
use super::{record, AppendBatch, LogEntry, LogError, LogRecord, PartitionedLog, SourceCheckpoint};

/// What the last message of `T.checkpoint` holds.
#[derive(Serialize, Deserialize)]
struct CheckpointMessage {
    log_id: u64,
    checkpoint: Option<SourceCheckpoint>,
}

#[derive(Default)]
struct Schemas {
    by_id: HashMap<u32, Arc<TableSchema>>,
    ids: HashMap<Arc<TableSchema>, u32>,
    /// `T.schemas` has been read up to here.
    loaded_to: i64,
}

struct Inner {
    settings: KafkaSettings,
    topic: String,
    schemas_topic: String,
    checkpoint_topic: String,
    client_id: String,
    partitions: u32,
    /// Set once while opening (read from, or first written to, `T.checkpoint`).
    log_id: AtomicU64,
    /// Shared by every client of this log: their librdkafka reports, rate-limited.
    context: KafkaContext,
    producer: FutureProducer<KafkaContext>,
    /// Reads watermarks and metadata.
    meta: BaseConsumer<KafkaContext>,
    ends: Vec<AtomicU64>,
    last: Mutex<Vec<Option<ChangeId>>>,
    checkpoint: Mutex<Option<SourceCheckpoint>>,
    schemas: Mutex<Schemas>,
    /// One append at a time: a schema is sent, then the records that use it.
    append: tokio::sync::Mutex<()>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer<KafkaContext>>>>,
}

/// A handle to a Kafka-backed log; clones share it.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only in-memory caches sit behind these locks; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message read by the blocking fetcher.
struct Fetched {
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
    record: Result<Vec<u8>, String>,
}

/// How far before its append a message's timestamp may lie. Kafka deletes a segment
/// once its newest timestamp is `retention.ms` old: a record stamped with a commit time
/// older than that (a catch-up on an old binlog) would be deleted before the sink
/// reads it. README asks for a retention well above this.
pub const STAMP_LAG_MAX_MS: u64 = 3_600_000;

/// A message's timestamp: its commit time, raised to at most [`STAMP_LAG_MAX_MS`]
/// before `now_ms`. Never below the commit time (the time search relies on it).
fn stamp(commit_time_ms: u64, now_ms: u64) -> i64 {
    commit_time_ms.max(now_ms.saturating_sub(STAMP_LAG_MAX_MS)) as i64
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl KafkaLog {
    /// Connects, creates the three topics when missing (or refuses a topic with another
    /// partition count), and loads the log's state: each partition's end and last
    /// change, the source checkpoint and every schema version.
    pub async fn open(
        settings: &KafkaSettings,
        name: &str,
        partitions: u32,
    ) -> Result<KafkaLog, LogError> {
        Self::open_with(settings, name, partitions, true).await
    }

    /// Opens the topics of an existing log without creating or writing anything (for
    /// tools beside a running daemon).
    pub async fn open_existing(
        settings: &KafkaSettings,
        name: &str,
        partitions: u32,
    ) -> Result<KafkaLog, LogError> {
        Self::open_with(settings, name, partitions, false).await
    }

    async fn open_with(
        settings: &KafkaSettings,
        name: &str,
        partitions: u32,
        create: bool,
    ) -> Result<KafkaLog, LogError> {
        let topic = settings.topic_for(name);
        let client_id = format!("rowlog-{name}");
        let base = base_config(settings, &client_id);
        let context = KafkaContext::default();
        let producer: FutureProducer<KafkaContext> = base
            .clone()
            // Deliver exactly once per send and in order, however long the broker is away.
            .set("enable.idempotence", "true")
            // A batch the broker refuses for good (too large, invalid) fails the producer
            // instead of failing alone while later messages of its partition are stored:
            // a gap there would pass for a duplicate after a restart (`last_change`).
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .create_with_context(context.clone())
            .map_err(kafka("create producer", &topic))?;
        let meta: BaseConsumer<KafkaContext> = reader_config(settings, &client_id)
            .create_with_context(context.clone())
            .map_err(kafka("create consumer", &topic))?;
        let timeout = Duration::from_millis(settings.request_timeout_ms);

        let topics = [
            (topic.clone(), partitions as i32),
            (format!("{topic}.schemas"), 1),
            (format!("{topic}.checkpoint"), 1),
        ];
        if create {
            ensure_topics(&base, &context, settings, &topics, timeout).await?;
        }

        let inner = Inner {
            settings: settings.clone(),
            schemas_topic: topics[1].0.clone(),
            checkpoint_topic: topics[2].0.clone(),
            topic,
            client_id,
            partitions,
            log_id: AtomicU64::new(0),
            context,
            producer,
            meta,
            ends: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            last: Mutex::new(vec![None; partitions as usize]),
            checkpoint: Mutex::new(None),
            schemas: Mutex::new(Schemas::default()),
            append: tokio::sync::Mutex::new(()),
            groups: Mutex::new(HashMap::new()),
        };
        let log = KafkaLog {
            inner: Arc::new(inner),
        };
        log.check_partition_count(timeout).await?;
        log.load_tails().await?;
        let (log_id, checkpoint) = log.load_checkpoint(create).await?;
        log.inner.log_id.store(log_id, Ordering::Release);
        if let Some(cp) = &checkpoint {
            for (p, &acked) in cp.ends.iter().enumerate() {
                let found = log.end_offset(p as u32);
                if found < acked {
                    return Err(LogError::LostAcknowledged {
                        partition: p as u32,
                        expected: acked,
                        found,
                    });
                }
            }
        }
        *lock(&log.inner.checkpoint) = checkpoint;
        log.refresh_schemas().await?;
        info!(topic = %log.inner.topic, partitions, log_id, "Kafka log opened");
        Ok(log)
    }

    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// [`PartitionedLog::reload`]: the state [`KafkaLog::open`] read, read again.
    async fn reload_from_broker(&self) -> Result<(), LogError> {
        self.load_tails().await?;
        let (log_id, checkpoint) = self.load_checkpoint(false).await?;
        let ours = self.inner.log_id.load(Ordering::Acquire);
        if log_id != ours {
            return Err(LogError::Failed {
                partition: u32::MAX,
                cause: format!(
                    "the log's identity in {} changed from {ours} to {log_id} while this process waited for the pipeline's lease (the topics were deleted or made again); start rowlog again",
                    self.inner.checkpoint_topic
                ),
            });
        }
        *lock(&self.inner.checkpoint) = checkpoint;
        self.refresh_schemas().await
    }

    /// Reads the partitions' ends again: what a tool beside the daemon needs to follow
    /// its appends.
    pub async fn refresh(&self) -> Result<(), LogError> {
        let this = self.clone();
        blocking(move || {
            for p in 0..this.inner.partitions {
                let (_, high) = this.watermarks(&this.inner.topic, p as i32)?;
                this.inner.ends[p as usize].fetch_max(high.max(0) as u64, Ordering::AcqRel);
            }
            Ok(())
        })
        .await
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.inner.settings.request_timeout_ms)
    }

    async fn check_partition_count(&self, timeout: Duration) -> Result<(), LogError> {
        let this = self.clone();
        let existing = blocking(move || {
            let md = this
                .inner
                .meta
                .fetch_metadata(Some(&this.inner.topic), timeout)
                .map_err(kafka("fetch metadata", &this.inner.topic))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == this.inner.topic) else {
                return Ok(0);
            };
            // A broker that has not heard of a topic just made (in a cluster, the one
            // asked may be another than the one that made it) answers with an error
            // and no partitions: that error is reported as the broker's (the open
            // fails; a later start finds the topic), not as "0 partitions", which
            // would send the operator to make a new log.
            if let Some(code) = t.error() {
                return Err(kafka("fetch metadata", &this.inner.topic)(
                    KafkaError::MetadataFetch(code.into()),
                ));
            }
            Ok(t.partitions().len() as u32)
        })
        .await?;
        if existing != self.inner.partitions {
            return Err(LogError::TopicPartitions {
                topic: self.inner.topic.clone(),
                configured: self.inner.partitions,
                existing,
            });
        }
        Ok(())
    }

    /// Each partition's end, and the source identity of its last record (what the
    /// pipeline compares with after a crash to drop changes the log already holds).
    async fn load_tails(&self) -> Result<(), LogError> {
        let this = self.clone();
        let tails = blocking(move || {
            let mut ranges = Vec::new();
            for p in 0..this.inner.partitions {
                let (low, high) = this.watermarks(&this.inner.topic, p as i32)?;
                this.inner.ends[p as usize].store(high as u64, Ordering::Release);
                if high > low {
                    ranges.push((p as i32, high - 1, high));
                }
            }
            this.fetch(&this.inner.topic, &ranges)
        })
        .await?;
        let mut last = lock(&self.inner.last);
        for m in tails {
            let bytes = m
                .record
                .map_err(|detail| self.undecodable(m.partition, m.offset, detail))?;
            let source = record::decode_source(&bytes).map_err(|detail| LogError::Decode {
                partition: m.partition as u32,
                offset: m.offset as u64,
                detail,
            })?;
            last[m.partition as usize] = Some(source.id);
        }
        Ok(())
    }

    fn undecodable(&self, partition: i32, offset: i64, detail: String) -> LogError {
        LogError::Decode {
            partition: partition as u32,
            offset: offset as u64,
            detail: format!("topic {}: {detail}", self.inner.topic),
        }
    }

    /// The log's identity and the stored checkpoint; a new log gets its identity here
    /// when `create` (a tool sees identity 0 until the daemon has run).
    async fn load_checkpoint(
        &self,
        create: bool,
    ) -> Result<(u64, Option<SourceCheckpoint>), LogError> {
        let this = self.clone();
        let topic = self.inner.checkpoint_topic.clone();
        let last = blocking(move || {
            let (low, high) = this.watermarks(&topic, 0)?;
            if high > low {
                Ok(this.fetch(&topic, &[(0, high - 1, high)])?.pop())
            } else {
                Ok(None)
            }
        })
        .await?;
        match last {
            Some(m) => {
                let bytes = m.payload.unwrap_or_default();
                let msg: CheckpointMessage =
                    postcard::from_bytes(&bytes).map_err(|e| LogError::Decode {
                        partition: 0,
                        offset: m.offset as u64,
                        detail: format!("{}: {e}", self.inner.checkpoint_topic),
                    })?;
                Ok((msg.log_id, msg.checkpoint))
            }
            None if !create => Ok((0, None)),
            None => {
                // The identity and checkpoint are written before any record, so records
                // without them mean they were lost (deleted, or expired by retention):
                // starting over as a new log would drop the sink's progress and read
                // the source from `source.start`, skipping what came in between.
                let held: u64 = self
                    .inner
                    .ends
                    .iter()
                    .map(|e| e.load(Ordering::Acquire))
                    .sum();
                if held > 0 {
                    return Err(LogError::IdentityLost {
                        topic: self.inner.topic.clone(),
                        checkpoint_topic: self.inner.checkpoint_topic.clone(),
                        held,
                    });
                }
                let log_id = super::embedded::new_log_id();
                self.write_checkpoint(&CheckpointMessage {
                    log_id,
                    checkpoint: None,
                })
                .await?;
                Ok((log_id, None))
            }
        }
    }

    async fn write_checkpoint(&self, msg: &CheckpointMessage) -> Result<(), LogError> {
        let topic = &self.inner.checkpoint_topic;
        let bytes = postcard::to_allocvec(msg).map_err(|e| LogError::Failed {
            partition: u32::MAX,
            cause: format!("encoding the checkpoint: {e}"),
        })?;
        // A constant key: a compacted checkpoint topic keeps the newest.
        let record = FutureRecord::to(topic)
            .partition(0)
            .key("checkpoint")
            .payload(bytes.as_slice());
        self.deliver(record).await.map(|_| ())
    }

    /// Sends one message and waits for its delivery report; its offset, unless it was
    /// confirmed as a duplicate (see [`settle`]).
    async fn deliver(&self, record: FutureRecord<'_, str, [u8]>) -> Result<Option<i64>, LogError> {
        let topic = record.topic.to_string();
        let mut record = record;
        let f = loop {
            match self.inner.producer.send_result(record) {
                Ok(f) => break f,
                // The queue is full of an append's records: they leave as the broker
                // takes them.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(kafka("produce", &topic)(e)),
            }
        };
        settle(f, &topic).await.map(|(_, offset)| offset)
    }

    /// Reads `T.schemas` from where it was read up to its end.
    async fn refresh_schemas(&self) -> Result<(), LogError> {
        let this = self.clone();
        let topic = self.inner.schemas_topic.clone();
        let from = lock(&self.inner.schemas).loaded_to;
        let (high, found) = blocking(move || {
            let (low, high) = this.watermarks(&topic, 0)?;
            let from = from.max(low);
            Ok((high, this.fetch(&topic, &[(0, from, high)])?))
        })
        .await?;
        let mut s = lock(&self.inner.schemas);
        for m in found {
            let schema: TableSchema = postcard::from_bytes(m.payload.as_deref().unwrap_or(&[]))
                .map_err(|e| LogError::Decode {
                    partition: 0,
                    offset: m.offset as u64,
                    detail: format!("{}: {e}", self.inner.schemas_topic),
                })?;
            let schema = Arc::new(schema);
            s.ids.entry(schema.clone()).or_insert(m.offset as u32);
            s.by_id.insert(m.offset as u32, schema);
        }
        s.loaded_to = s.loaded_to.max(high);
        Ok(())
    }

    /// The id of `schema`, storing it in `T.schemas` first if it is new.
    async fn schema_id(&self, schema: &Arc<TableSchema>) -> Result<u32, LogError> {
        if let Some(&id) = lock(&self.inner.schemas).ids.get(schema) {
            return Ok(id);
        }
        let bytes = postcard::to_allocvec(schema.as_ref()).map_err(|e| LogError::Failed {
            partition: u32::MAX,
            cause: format!("encoding the schema of {}: {e}", schema.name),
        })?;
        let topic = &self.inner.schemas_topic;
        let key = schema.name.to_string();
        let offset = self
            .deliver(
                FutureRecord::to(topic)
                    .partition(0)
                    .key(key.as_str())
                    .payload(bytes.as_slice()),
            )
            .await?;
        let Some(offset) = offset else {
            // Stored, offset unknown: read the versions stored since, which hold it.
            self.refresh_schemas().await?;
            return lock(&self.inner.schemas)
                .ids
                .get(schema)
                .copied()
                .ok_or_else(|| LogError::Failed {
                    partition: u32::MAX,
                    cause: format!(
                        "{topic} confirmed the schema of {} as already stored, but it is not there",
                        schema.name
                    ),
                });
        };
        let id = u32::try_from(offset).map_err(|_| LogError::Failed {
            partition: u32::MAX,
            cause: format!("{topic} holds more than 2^32 schema versions"),
        })?;
        let mut s = lock(&self.inner.schemas);
        s.ids.insert(schema.clone(), id);
        s.by_id.insert(id, schema.clone());
        Ok(id)
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), LogError> {
        self.inner
            .meta
            .fetch_watermarks(topic, partition, self.timeout())
            .map_err(kafka("fetch watermarks", topic))
    }

    /// Reads offsets `[from, to)` of each `(partition, from, to)` of `topic`. Blocking.
    fn fetch(&self, topic: &str, ranges: &[(i32, i64, i64)]) -> Result<Vec<Fetched>, LogError> {
        let mut out = Vec::new();
        self.scan(topic, ranges, |m| {
            out.push(m);
            Ok(false)
        })?;
        Ok(out)
    }

    /// Hands `each` the messages at offsets `[from, to)` of each `(partition, from,
    /// to)` of `topic`, in order within a partition, until it returns true (stop) or
    /// an error. Blocking. Times out when no message arrives for the request timeout.
    fn scan(
        &self,
        topic: &str,
        ranges: &[(i32, i64, i64)],
        mut each: impl FnMut(Fetched) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let mut want: HashMap<i32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for &(p, from, to) in ranges {
            if 0 <= from && from < to {
                tpl.add_partition_offset(topic, p, Offset::Offset(from))
                    .map_err(kafka("assign", topic))?;
                want.insert(p, to - 1);
            }
        }
        if want.is_empty() {
            return Ok(());
        }
        let consumer: BaseConsumer<KafkaContext> =
            reader_config(&self.inner.settings, &self.inner.client_id)
                .create_with_context(self.inner.context.clone())
                .map_err(kafka("create consumer", topic))?;
        consumer.assign(&tpl).map_err(kafka("assign", topic))?;
        let mut deadline = Instant::now() + self.timeout();
        while !want.is_empty() {
            if Instant::now() > deadline {
                return Err(LogError::Kafka {
                    action: "read",
                    topic: topic.to_string(),
                    retryable: true,
                    source: Box::new(KafkaError::MessageConsumption(
                        RDKafkaErrorCode::OperationTimedOut,
                    )),
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) if transient(&e) => {}
                Some(Err(e)) => return Err(kafka("read", topic)(e)),
                Some(Ok(m)) => {
                    deadline = Instant::now() + self.timeout();
                    let last = want.get(&m.partition()).copied();
                    if let Some(last) = last {
                        if m.offset() <= last {
                            let stop = each(Fetched {
                                partition: m.partition(),
                                offset: m.offset(),
                                payload: m.payload().map(<[u8]>::to_vec),
                                record: record_of(&m),
                            })?;
                            if stop {
                                return Ok(());
                            }
                        }
                        if m.offset() >= last {
                            want.remove(&m.partition());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The consumer of group `name`, which only reads and commits offsets.
    fn group(&self, name: &str) -> Result<Arc<BaseConsumer<KafkaContext>>, LogError> {
        let mut groups = lock(&self.inner.groups);
        if let Some(c) = groups.get(name) {
            return Ok(c.clone());
        }
        let c: BaseConsumer<KafkaContext> =
            reader_config(&self.inner.settings, &self.inner.client_id)
                .set("group.id", name)
                .create_with_context(self.inner.context.clone())
                .map_err(kafka("create consumer", &self.inner.topic))?;
        let c = Arc::new(c);
        groups.insert(name.to_string(), c.clone());
        Ok(c)
    }

    /// Decodes a record of `partition`, reading new schema versions when it refers to
    /// one this process has not seen (another process wrote it).
    async fn decode(
        &self,
        partition: u32,
        offset: u64,
        bytes: &[u8],
    ) -> Result<LogRecord, LogError> {
        let mut refreshed = false;
        loop {
            let mut missing = false;
            let decoded = record::decode(bytes, |id| {
                let s = lock(&self.inner.schemas).by_id.get(&id).cloned();
                missing = s.is_none();
                s
            });
            match decoded {
                Ok(entry) => return Ok(LogRecord { offset, entry }),
                Err(_) if missing && !refreshed => {
                    self.refresh_schemas().await?;
                    refreshed = true;
                }
                Err(detail) => {
                    return Err(LogError::Decode {
                        partition,
                        offset,
                        detail,
                    })
                }
            }
        }
    }

    /// The message of one entry (see [`message::encode`]), storing a change's table
    /// schema first when it is new.
    async fn encode(&self, entry: &LogEntry) -> Result<Encoded, LogError> {
        let schema_id = match entry {
            LogEntry::Change(c) => self.schema_id(&c.table).await?,
            LogEntry::Schema(_) => 0,
        };
        let m =
            message::encode(entry, schema_id, &self.inner.topic).map_err(|e| LogError::Failed {
                partition: u32::MAX,
                cause: format!("encoding a record: {e}"),
            })?;
        // librdkafka refuses a message over its limit with a bare "message too large",
        // and a row a few hundred KB long reaches it: the change is named instead. The
        // message's framing adds a few dozen bytes, hence the margin.
        let limit = max_message_bytes(&self.inner.settings);
        let bytes = m.value.len() + m.key.as_ref().map_or(0, String::len);
        if bytes + MESSAGE_FRAMING > limit {
            return Err(LogError::MessageTooLarge {
                topic: self.inner.topic.clone(),
                what: match (entry, &m.key) {
                    (LogEntry::Change(c), Some(key)) => {
                        format!(
                            "the change of {} at {} (message key {key})",
                            c.table.name, c.source.id.event
                        )
                    }
                    _ => format!("a schema change at {}", entry.source().id.event),
                },
                bytes,
                limit,
            });
        }
        Ok(m)
    }
}

/// Bytes librdkafka adds to a message's key and value when it checks the size.
const MESSAGE_FRAMING: usize = 128;

/// The producer's `message.max.bytes`: the operator's, else librdkafka's default.
fn max_message_bytes(settings: &KafkaSettings) -> usize {
    settings
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000)
}

/// The same error, not to be retried in this process (see `append`).
fn definite(e: LogError) -> LogError {
    match e {
        LogError::Kafka {
            action,
            topic,
            source,
            ..
        } => LogError::Kafka {
            action,
            topic,
            retryable: false,
            source,
        },
        other => other,
    }
}

impl PartitionedLog for KafkaLog {
    type Reader = KafkaReader;

    fn reload(&self) -> impl Future<Output = Result<(), LogError>> + Send {
        self.reload_from_broker()
    }

    fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    fn log_id(&self) -> u64 {
        self.inner.log_id.load(Ordering::Acquire)
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), LogError> {
        let _one = self.inner.append.lock().await;
        let topic = self.inner.topic.as_str();
        let producer = &self.inner.producer;
        let p_count = self.inner.partitions as usize;
        let mut inflight: VecDeque<DeliveryFuture> = VecDeque::new();
        // Per partition: the highest offset a delivery report gave.
        let mut top: Vec<Option<i64>> = vec![None; p_count];
        let mut last: Vec<Option<ChangeId>> = vec![None; p_count];
        let mut counts = vec![0u64; p_count];
        // Whether a record of this append is with librdkafka yet.
        let mut sent = false;
        let now = now_ms();
        let note = |top: &mut Vec<Option<i64>>, (p, off): (i32, Option<i64>)| {
            if let (Some(t), Some(off)) = (top.get_mut(p as usize), off) {
                *t = Some(t.map_or(off, |t| t.max(off)));
            }
        };
        for (p, entries) in batch.partitions.into_iter().enumerate() {
            if p >= p_count {
                return Err(LogError::NoSuchPartition {
                    partition: p as u32,
                    partitions: self.inner.partitions,
                });
            }
            for entry in entries {
                // Once records of this append are with librdkafka they get delivered
                // whatever happens here, but this log's ends and tails will not count
                // them: an error is then definite, so no retry in this process appends
                // them again. Opened again, the log reads both from the broker.
                let m = self
                    .encode(&entry)
                    .await
                    .map_err(|e| if sent { definite(e) } else { e })?;
                let mut rec: FutureRecord<'_, str, str> = FutureRecord::to(topic)
                    .partition(p as i32)
                    .payload(m.value.as_str())
                    .timestamp(stamp(m.time_ms, now));
                if let Some(k) = &m.key {
                    rec = rec.key(k.as_str());
                }
                loop {
                    match producer.send_result(rec) {
                        Ok(f) => {
                            inflight.push_back(f);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            // librdkafka's queue is full: wait for the oldest delivery.
                            rec = back;
                            match inflight.pop_front() {
                                Some(f) => note(&mut top, settle(f, topic).await?),
                                None => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                        // Earlier messages of the batch may be on their way: as in
                        // `settle`, the caches are no longer known, so it is definite.
                        Err((source, _)) => {
                            return Err(LogError::Kafka {
                                action: "produce",
                                topic: topic.to_string(),
                                retryable: false,
                                source: Box::new(source),
                            })
                        }
                    }
                }
                counts[p] += 1;
                sent = true;
                last[p] = Some(entry.source().id.clone());
            }
        }
        for f in inflight {
            note(&mut top, settle(f, topic).await?);
        }
        // Each partition's end is where it was plus what this append sent: the
        // producer is idempotent, so each message is in the partition once, and this
        // log is the topic's only writer. The delivery reports' offsets usually say
        // the same, but not always: a send confirmed as a duplicate (see `settle`) has
        // offsets librdkafka counted from the broker's "none" (-1, 0, 1, …), which look
        // valid. Where the two disagree, the broker's high watermark decides; if it
        // cannot be read, the count stands: every message is confirmed either way.
        let mut ends: Vec<Option<u64>> = (0..p_count)
            .map(|p| {
                (counts[p] > 0).then(|| self.inner.ends[p].load(Ordering::Acquire) + counts[p])
            })
            .collect();
        let disputed: Vec<u32> = (0..p_count)
            .filter(|&p| ends[p].is_some() && top[p].map(|t| (t + 1) as u64) != ends[p])
            .map(|p| p as u32)
            .collect();
        if !disputed.is_empty() {
            let this = self.clone();
            let highs = blocking(move || {
                disputed
                    .into_iter()
                    .map(|p| Ok((p, this.watermarks(&this.inner.topic, p as i32)?.1)))
                    .collect::<Result<Vec<_>, LogError>>()
            })
            .await
            .unwrap_or_else(|e| {
                warn!(topic, error = %e, "delivery reports disagree with the count of sent messages and the broker's ends cannot be read; the count stands");
                Vec::new()
            });
            for (p, high) in highs {
                let high = high.max(0) as u64;
                let counted = ends[p as usize];
                let reported = top[p as usize].map(|t| t + 1);
                let counted = counted.unwrap_or(0);
                if high == counted {
                    info!(topic, partition = p, end = high, ?reported, "delivery reports gave no usable offsets for sends the broker confirmed as duplicates (their replies were lost); the partition's end is the broker's");
                } else if high > counted {
                    warn!(topic, partition = p, counted, end = high, ?reported, "the partition's end is past where this append put it: another producer writes the topic");
                    ends[p as usize] = Some(high);
                } else {
                    // A high watermark behind confirmed messages: followers still
                    // catching up. What was confirmed is in the partition.
                    warn!(topic, partition = p, counted, high_watermark = high, ?reported, "the broker's high watermark is behind this append's confirmed messages; the count stands");
                }
            }
        }
        let mut last_known = lock(&self.inner.last);
        for p in 0..p_count {
            let Some(end) = ends[p] else { continue };
            self.inner.ends[p].store(end, Ordering::Release);
            last_known[p] = last[p].take();
        }
        Ok(())
    }

    async fn reader(&self, partition: u32, from: u64) -> Result<KafkaReader, LogError> {
        if partition >= self.inner.partitions {
            return Err(LogError::NoSuchPartition {
                partition,
                partitions: self.inner.partitions,
            });
        }
        let this = self.clone();
        let (low, high) =
            blocking(move || this.watermarks(&this.inner.topic, partition as i32)).await?;
        let (start, end) = (low.max(0) as u64, high.max(0) as u64);
        if from < start || from > end {
            return Err(LogError::OffsetOutOfRange {
                partition,
                requested: from,
                start,
                end,
            });
        }
        let consumer: StreamConsumer<KafkaContext> =
            reader_config(&self.inner.settings, &self.inner.client_id)
                .create_with_context(self.inner.context.clone())
                .map_err(kafka("create consumer", &self.inner.topic))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.inner.topic,
            partition as i32,
            Offset::Offset(from as i64),
        )
        .map_err(kafka("assign", &self.inner.topic))?;
        consumer
            .assign(&tpl)
            .map_err(kafka("assign", &self.inner.topic))?;
        Ok(KafkaReader {
            log: self.clone(),
            partition,
            consumer,
            raw: VecDeque::new(),
            next: from,
        })
    }

    fn end_offset(&self, partition: u32) -> u64 {
        self.inner
            .ends
            .get(partition as usize)
            .map(|e| e.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    async fn start_offset(&self, partition: u32) -> Result<u64, LogError> {
        let this = self.clone();
        let (low, _) =
            blocking(move || this.watermarks(&this.inner.topic, partition as i32)).await?;
        Ok(low.max(0) as u64)
    }

    async fn offset_for_time(&self, partition: u32, time_ms: u64) -> Result<u64, LogError> {
        // Message timestamps are at or after commit times: Kafka's time index finds the
        // first message stamped at or after `time_ms`, before which no record was
        // committed at or after it. From there the records' own commit times say; only
        // messages whose stamp was raised above their commit time (a catch-up on an
        // old binlog) are read through.
        let this = self.clone();
        blocking(move || {
            let topic = &this.inner.topic;
            let p = partition as i32;
            let (low, high) = this.watermarks(topic, p)?;
            let end = high.max(0) as u64;
            if high <= low {
                return Ok(end);
            }
            // Not "the end when the last record is older": commit times need not rise
            // within a partition (a binlog stamps a transaction with its statement's
            // start), so a newer record may come before an older last one. A broker
            // that does not answer a time after every record (tansu 0.6 says offset
            // 0) costs a scan, not a wrong answer.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(time_ms as i64))
                .map_err(kafka("look up offsets by time", topic))?;
            let by_stamp = this
                .inner
                .meta
                .offsets_for_times(tpl, this.timeout())
                .map_err(kafka("look up offsets by time", topic))?;
            let offset = by_stamp.find_partition(topic, p).map(|e| e.offset());
            let from = match offset {
                Some(Offset::Offset(n)) if n >= 0 => n.clamp(low.max(0), high),
                _ => return Ok(end),
            };
            let mut found = end;
            this.scan(topic, &[(p, from, high)], |m| {
                let committed = m
                    .record
                    .and_then(|r| record::decode_source(&r))
                    .map_err(|detail| LogError::Decode {
                        partition,
                        offset: m.offset as u64,
                        detail,
                    })?
                    .commit_time_ms;
                if committed >= time_ms {
                    found = m.offset as u64;
                }
                Ok(committed >= time_ms)
            })?;
            Ok(found)
        })
        .await
    }

    fn last_change(&self, partition: u32) -> Option<ChangeId> {
        lock(&self.inner.last)
            .get(partition as usize)
            .cloned()
            .flatten()
    }

    async fn committed(&self, consumer: &str, partition: u32) -> Result<Option<u64>, LogError> {
        let c = self.group(consumer)?;
        let (topic, timeout) = (self.inner.topic.clone(), self.timeout());
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition as i32);
            let got = c
                .committed_offsets(tpl, timeout)
                .map_err(kafka("read committed offsets", &topic))?;
            let offset = got
                .find_partition(&topic, partition as i32)
                .map(|e| e.offset());
            Ok(match offset {
                Some(Offset::Offset(n)) if n >= 0 => Some(n as u64),
                _ => None,
            })
        })
        .await
    }

    async fn commit(&self, consumer: &str, partition: u32, next: u64) -> Result<(), LogError> {
        let c = self.group(consumer)?;
        let topic = self.inner.topic.clone();
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(next as i64))
                .map_err(kafka("commit", &topic))?;
            c.commit(&tpl, CommitMode::Sync)
                .map_err(kafka("commit", &topic))
        })
        .await
    }

    async fn checkpoint(&self) -> Result<Option<SourceCheckpoint>, LogError> {
        Ok(lock(&self.inner.checkpoint).clone())
    }

    async fn store_checkpoint(&self, resume: ResumePoint) -> Result<(), LogError> {
        // Appends return only after delivery, so every change the position covers is
        // already confirmed; the ends say how far.
        let ends: Vec<u64> = (0..self.inner.partitions)
            .map(|p| self.end_offset(p))
            .collect();
        let cp = SourceCheckpoint { resume, ends };
        self.write_checkpoint(&CheckpointMessage {
            log_id: self.log_id(),
            checkpoint: Some(cp.clone()),
        })
        .await?;
        *lock(&self.inner.checkpoint) = Some(cp);
        Ok(())
    }
}
