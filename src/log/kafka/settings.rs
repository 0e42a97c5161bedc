//! The `[kafka]` section: brokers, topic, replication factor, extra librdkafka
//! properties, and the checks that name a bad key before anything connects.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `[kafka]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// The pipeline's topic; `rowlog.<name>` when unset. `<topic>.schemas` and
    /// `<topic>.checkpoint` are created beside it.
    #[serde(default)]
    pub topic: Option<String>,
    /// Replication factor of topics rowlog creates. Zero loss needs ≥ 3 with the
    /// broker's `min.insync.replicas` ≥ 2; a single test broker needs 1.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// How long metadata, admin and offset requests may take before they fail.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Extra librdkafka properties (TLS, SASL, …), passed as given. Properties that
    /// rowlog's delivery guarantees rest on are refused (see [`RESERVED`]).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_replication_factor() -> i32 {
    3
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

/// librdkafka properties rowlog sets itself: changing them would lose, reorder or
/// skip records.
pub const RESERVED: &[&str] = &[
    "enable.idempotence",
    "enable.gapless.guarantee",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "group.id",
    "isolation.level",
];

impl KafkaSettings {
    /// Why the settings cannot work, naming the key; `None` when they can.
    pub fn problem(&self) -> Option<String> {
        if self.brokers.trim().is_empty() {
            return Some("kafka.brokers is empty; give host:port of at least one broker".into());
        }
        if self.replication_factor < 1 {
            return Some(format!(
                "kafka.replication_factor is {}; it must be at least 1",
                self.replication_factor
            ));
        }
        if let Some(t) = &self.topic {
            if let Some(why) = topic_problem(t) {
                return Some(format!("kafka.topic {t:?}: {why}"));
            }
        }
        self.properties
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
            .map(|k| {
                format!("kafka.properties.{k} is set by rowlog itself: its delivery guarantees depend on it")
            })
    }

    /// The topic of pipeline `name`.
    pub fn topic_for(&self, name: &str) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("rowlog.{name}"))
    }
}

/// Kafka's rules for topic names (the `.schemas`/`.checkpoint` suffixes included).
pub fn topic_problem(t: &str) -> Option<&'static str> {
    if t.is_empty() || t.len() > 249 - ".checkpoint".len() {
        return Some("a topic name has 1 to 238 characters here");
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Some("a topic name may hold only ASCII letters, digits, '.', '_' and '-'");
    }
    None
}
