//! librdkafka plumbing shared by the backend: client settings, error classification,
//! topic creation, delivery reports, and running its blocking calls off the async
//! threads.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::DeliveryFuture;
use tracing::info;

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

/// Waits for a delivery report: the partition and offset the broker gave the message.
///
/// With no delivery timeout, librdkafka reports a failure only when the idempotent
/// producer cannot go on (say, the broker lost its sequence state). Messages of the
/// batch may then be in the log or not, so the cached partition ends and last changes
/// are no longer known: the error is definite, and the next start reads them again.
pub(super) async fn settle(f: DeliveryFuture, topic: &str) -> Result<(i32, i64), LogError> {
    match f.await {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
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
    c
}

pub(super) async fn ensure_topics(
    base: &ClientConfig,
    settings: &KafkaSettings,
    topics: &[(String, i32)],
    timeout: Duration,
) -> Result<(), LogError> {
    let main = &topics[0].0;
    let admin: AdminClient<DefaultClientContext> =
        base.create().map_err(kafka("create admin client", main))?;
    let rf = settings.replication_factor;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(rf)))
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
