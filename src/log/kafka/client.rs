//! librdkafka plumbing shared by the backend: client settings, error classification,
//! topic creation, delivery reports, and running its blocking calls off the async
//! threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::DeliveryFuture;
use tracing::{error, info, warn};

use super::KafkaSettings;
use crate::log::LogError;

/// Whether a Kafka error is one the broker or network recovers from.
pub(super) fn transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::NetworkException
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::CoordinatorLoadInProgress
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::UnknownTopicOrPartition
                | C::QueueFull
        )
    )
}

/// Where the log's librdkafka clients send their own log lines and global errors.
///
/// While a broker is away librdkafka reports it once per connection attempt of every
/// client (the producer, the metadata consumer, one reader per partition): hundreds of
/// lines a minute, which bury everything else, an operator's view and a failing test's
/// output alike. rowlog retries through such outages, so those reports are warnings,
/// and one line per kind per [`QUIET`] stands for all the log's clients, saying how
/// many it stands for. Other errors are logged every time.
#[derive(Clone, Default)]
pub(super) struct KafkaContext {
    /// Per kind of report: when one was last logged, and how many were held back since.
    last: Arc<Mutex<HashMap<String, (Instant, u64)>>>,
}

/// How long repeats of one kind of retried report are held back (librdkafka's, and
/// the readers' consumer errors).
const QUIET: Duration = Duration::from_secs(30);

impl KafkaContext {
    /// Whether a report of `kind` is due now, and how many were held back before it.
    pub(super) fn due(&self, kind: &str) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get_mut(kind) {
            Some((at, held)) if now.duration_since(*at) < QUIET => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let before = std::mem::take(held);
                *at = now;
                Some(before)
            }
            None => {
                last.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        // FAIL is a broker connection that failed or dropped; librdkafka reconnects.
        if fac == "FAIL" {
            if let Some(held) = self.due(fac) {
                warn!(target: "librdkafka", held_back = held, "librdkafka: {fac} {message}");
            }
            return;
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            L::Warning => warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            L::Notice | L::Info => info!(target: "librdkafka", "librdkafka: {fac} {message}"),
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
    }

    fn error(&self, e: KafkaError, reason: &str) {
        if transient(&e) {
            let kind = format!("{:?}", e.rdkafka_error_code());
            if let Some(held) = self.due(&kind) {
                warn!(target: "librdkafka", held_back = held, "Kafka unreachable, librdkafka retries: {e}: {reason}");
            }
        } else {
            error!(target: "librdkafka", "Kafka client error: {e}: {reason}");
        }
    }
}

impl ConsumerContext for KafkaContext {}

pub(super) fn kafka(action: &'static str, topic: &str) -> impl FnOnce(KafkaError) -> LogError {
    let topic = topic.to_string();
    move |source| LogError::Kafka {
        action,
        topic,
        retryable: transient(&source),
        source: Box::new(source),
    }
}

/// Runs blocking librdkafka calls off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Failed {
            partition: u32::MAX,
            cause: format!("Kafka client task: {e}"),
        })?
}

/// Waits for a delivery report: the partition, and the offset it gives, unless that
/// offset is negative and so certainly not where the message is.
///
/// A report's offset can be wrong without being negative. When the broker stored a
/// batch but the connection dropped before its reply came back, the idempotent
/// producer's retry is answered `DUPLICATE_SEQUENCE_NUMBER`. librdkafka counts that
/// as delivered, and numbers the batch's messages from the offset that error reply
/// holds, -1 from a Kafka broker: -1, 0, 1, … (rdkafka_request.c, "Treat as success,
/// however offset and timestamp will be invalid"). Callers that need to know where a
/// message went check the offsets against what they expect.
///
/// With no delivery timeout, librdkafka reports a failure only when the idempotent
/// producer cannot go on (say, the broker lost its sequence state). Messages of the
/// batch may then be in the log or not, so the cached partition ends and last changes
/// are no longer known: the error is definite, and the next start reads them again.
pub(super) async fn settle(f: DeliveryFuture, topic: &str) -> Result<(i32, Option<i64>), LogError> {
    match f.await {
        Ok(Ok(d)) => Ok((d.partition, (d.offset >= 0).then_some(d.offset))),
        Ok(Err((source, _))) => Err(LogError::Kafka {
            action: "deliver",
            topic: topic.to_string(),
            retryable: false,
            source: Box::new(source),
        }),
        Err(_) => Err(LogError::Failed {
            partition: u32::MAX,
            cause: format!("the Kafka producer for {topic} went away before confirming delivery"),
        }),
    }
}

/// Settings every client shares: brokers, identity, the operator's extra properties.
pub(super) fn base_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers)
        .set("client.id", client_id)
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &settings.properties {
        c.set(k, v);
    }
    c
}

/// A consumer that only reads what it is assigned and never moves by itself.
pub(super) fn reader_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut c = base_config(settings, client_id);
    // librdkafka wants a group even for assigned partitions; this one never joins
    // (no subscribe) and never commits.
    c.set("group.id", format!("{client_id}.reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    // librdkafka prefetches up to 64 MiB per client by default, and each partition's
    // reader is a client of its own: 8 partitions behind a slow destination would hold
    // half a GiB. 16 MiB each still keeps a reader's next batches at hand. An
    // operator's own value wins.
    for (key, value) in [
        ("queued.max.messages.kbytes", "16384"),
        ("queued.min.messages", "10000"),
    ] {
        if !settings.properties.contains_key(key) {
            c.set(key, value);
        }
    }
    c
}

pub(super) async fn ensure_topics(
    base: &ClientConfig,
    context: &KafkaContext,
    settings: &KafkaSettings,
    topics: &[(String, i32)],
    timeout: Duration,
) -> Result<(), LogError> {
    let main = &topics[0].0;
    let admin: AdminClient<KafkaContext> = base
        .create_with_context(context.clone())
        .map_err(kafka("create admin client", main))?;
    let rf = settings.replication_factor;
    // The schema and checkpoint topics must outlive any retention: a record refers to
    // its schema for as long as it is kept, and the checkpoint holds the log's identity.
    // Schemas are kept whole (each table's versions share a key, so no compaction);
    // the checkpoint topic keeps its newest record (a constant key, compacted). The
    // other two keep the broker's default cleanup policy (Kafka's is "delete"; README
    // asks for it where the default is "compact"). Setting `cleanup.policy=delete`
    // on them explicitly was tried: tansu 0.6 then lost the schemas topic's records
    // across a broker restart, and the records referring to them could not be read
    // (kafka::sigterm_while_the_broker_is_away_exits_in_time_and_loses_nothing).
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(rf));
            if name.ends_with(".schemas") {
                topic.set("retention.ms", "-1").set("retention.bytes", "-1")
            } else if name.ends_with(".checkpoint") {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(kafka("create topics", main))?;
    for r in results {
        match r {
            Ok(name) => info!(topic = %name, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(kafka("create topic", &name)(KafkaError::AdminOp(code)));
            }
        }
    }
    Ok(())
}
