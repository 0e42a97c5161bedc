//! rowlog's configuration: one TOML file, every key overridable by an environment
//! variable `ROWLOG__<SECTION>__<KEY>` (e.g. `ROWLOG__SOURCE__URL`,
//! `ROWLOG__SINK__WORKERS=8`). Unknown keys are errors, so a typo never silently falls
//! back to a default; every error names the key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rowlog_mysql_binlog::SourceConfig;
use rowlog_mysql_sink::SinkConfig;
use serde::Deserialize;

use crate::pipeline::apply::ApplyConfig;
use crate::pipeline::ingest::IngestConfig;

fn default_name() -> String {
    "rowlog".into()
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this pipeline in the destination's progress table and the log's consumer
    /// offsets; two pipelines sharing a destination need different names.
    #[serde(default = "default_name")]
    pub name: String,
    /// After SIGTERM/SIGINT, how long draining may take before rowlog exits anyway
    /// (nothing is lost then either: the next start replays).
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    pub source: SourceConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub sink: SinkConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// The broker, with `log.backend = "kafka"`.
    #[serde(default)]
    pub kafka: Option<crate::log::KafkaSettings>,
}

fn default_dir() -> PathBuf {
    PathBuf::from("rowlog-data")
}
fn default_partitions() -> u32 {
    8
}
fn default_segment_bytes() -> u64 {
    128 << 20
}
fn default_max_batch_changes() -> usize {
    10_000
}
fn default_checkpoint_interval_ms() -> u64 {
    200
}
fn default_fsync_interval_ms() -> u64 {
    1000
}
fn default_retention_check_ms() -> u64 {
    30_000
}

/// When appends become durable; see [`crate::log::FsyncPolicy`] for what each loses.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync every append batch before it is acknowledged (default).
    #[default]
    Batch,
    /// fsync every `log.fsync_interval_ms`; readers and checkpoints wait for it.
    Interval,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Per-partition size above which the oldest sealed segments go; 0 = unlimited.
    #[serde(default)]
    pub max_bytes: u64,
    /// Sealed segments whose newest record is older than this go; 0 = unlimited.
    #[serde(default)]
    pub max_age_secs: u64,
    /// Delete even records a consumer has not committed (it then gets "offset out of range").
    #[serde(default)]
    pub force: bool,
    /// How often retention runs.
    #[serde(default = "default_retention_check_ms")]
    pub check_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_bytes: 0,
            max_age_secs: 0,
            force: false,
            check_interval_ms: default_retention_check_ms(),
        }
    }
}

impl RetentionConfig {
    pub fn policy(&self) -> crate::log::Retention {
        crate::log::Retention {
            max_bytes: self.max_bytes,
            max_age: Duration::from_secs(self.max_age_secs),
            force: self.force,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Where the log lives: `embedded` (on disk in `dir`) or `kafka` (the `[kafka]`
    /// section's broker; `dir` then keeps only rowlog's local state).
    #[serde(default)]
    pub backend: LogBackend,
    /// Directory of the embedded log (created if missing).
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Number of partitions; fixed once the log exists.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// A segment file rolls when it reaches this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// At most this many changes per durable append (one fsync per partition each).
    #[serde(default = "default_max_batch_changes")]
    pub max_batch_changes: usize,
    /// How often the source checkpoint is stored while changes flow.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    #[serde(default)]
    pub fsync: FsyncMode,
    /// With `fsync = "interval"`: how often the flusher fsyncs.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    #[serde(default)]
    pub retention: RetentionConfig,
}

impl LogConfig {
    pub fn fsync_policy(&self) -> crate::log::FsyncPolicy {
        match self.fsync {
            FsyncMode::Batch => crate::log::FsyncPolicy::Batch,
            FsyncMode::Interval => {
                crate::log::FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms))
            }
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            backend: LogBackend::default(),
            dir: default_dir(),
            partitions: default_partitions(),
            segment_bytes: default_segment_bytes(),
            max_batch_changes: default_max_batch_changes(),
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            fsync: FsyncMode::default(),
            fsync_interval_ms: default_fsync_interval_ms(),
            retention: RetentionConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    #[default]
    Embedded,
    Kafka,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` or `json`. Levels come from `RUST_LOG` (default `info`).
    #[serde(default)]
    pub format: LogFormat,
}

/// When the destination gets a copy of the source's tables (`snapshot.mode`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Never: the destination already holds the rows before `source.start`.
    #[default]
    Never,
    /// On the first start (no source checkpoint yet), then stream from there.
    Initial,
    /// As `initial`, and again whenever the stored position is no longer on the source.
    WhenNeeded,
}

fn default_snapshot_concurrency() -> u32 {
    2
}
fn default_snapshot_chunk_rows() -> u64 {
    10_000
}
fn default_create_tables() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    #[serde(default)]
    pub mode: SnapshotMode,
    /// Tables copied at the same time, each through its own consistent read.
    #[serde(default = "default_snapshot_concurrency")]
    pub concurrency: u32,
    /// Rows per chunk: one read on the source, one destination transaction, one
    /// saved resume point.
    #[serde(default = "default_snapshot_chunk_rows")]
    pub chunk_rows: u64,
    /// Create destination tables that are missing, from the source's SHOW CREATE TABLE.
    #[serde(default = "default_create_tables")]
    pub create_tables: bool,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            mode: SnapshotMode::default(),
            concurrency: default_snapshot_concurrency(),
            chunk_rows: default_snapshot_chunk_rows(),
            create_tables: default_create_tables(),
        }
    }
}

fn default_http_enabled() -> bool {
    true
}
fn default_http_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_stall_after_secs() -> u64 {
    60
}

/// The operations port: `/metrics`, `/healthz`, `/readyz`, `/status`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `false` runs without the port (and without anything to scrape).
    #[serde(default = "default_http_enabled")]
    pub enabled: bool,
    /// `host:port`; port 0 picks a free port (logged at start).
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// A partition with a backlog whose committed offset has not moved for this long
    /// marks the pipeline stalled (`rowlog_pipeline_stalled`, `/readyz` fails).
    #[serde(default = "default_stall_after_secs")]
    pub stall_after_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: default_http_enabled(),
            listen: default_http_listen(),
            stall_after_secs: default_stall_after_secs(),
        }
    }
}

impl HttpConfig {
    /// No port: for embedded runs such as `rowlog demo`.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// The keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 2] = ["source.include", "source.exclude"];
/// `[kafka.properties]`: its keys come from the environment spelled with `_`.
const KAFKA_PROPERTIES: &str = "kafka.properties";

/// The variable that overrides `key`: `source.include` → `ROWLOG__SOURCE__INCLUDE`.
fn env_var(key: &str) -> String {
    format!("ROWLOG__{}", key.to_ascii_uppercase().replace('.', "__"))
}

/// `ROWLOG_SINK__WORKERS` and the like: rowlog's prefix with one underscore. The test
/// harness's own `ROWLOG_KEEP_SERVERS` is not a configuration key.
fn misspelt_override(var: &str) -> bool {
    let upper = var.to_ascii_uppercase();
    upper.starts_with("ROWLOG_") && !upper.starts_with("ROWLOG__") && upper != "ROWLOG_KEEP_SERVERS"
}

/// Removes and returns the variables whose names, in upper case (the config crate
/// matches them in any case), satisfy `wanted`.
fn take_vars(
    env: &mut HashMap<String, String>,
    wanted: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let names: Vec<String> = env
        .keys()
        .filter(|k| wanted(&k.to_ascii_uppercase()))
        .cloned()
        .collect();
    names
        .into_iter()
        .filter_map(|k| env.remove(&k).map(|v| (k, v)))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {detail}")]
    Load { path: PathBuf, detail: String },
    #[error("invalid config {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

impl Config {
    /// Loads `path` with `ROWLOG__…` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars().collect())
    }

    /// Loads `path` with overrides from `env` (tests pass their own).
    ///
    /// Environment values stay strings until each key's own type reads them: the
    /// config crate's guessing (`try_parsing`) turned `ROWLOG__NAME=007` into the
    /// number 7 and back into the name "7" (another pipeline, whose offsets start
    /// from nothing) and rounded `ROWLOG__SINK__WORKERS=1.5` to 2. Its guessing was
    /// also what split lists, so the two list keys are split here, and each item
    /// trimmed: `"app.*, shop.orders"` must not name a database " shop".
    pub fn load_with_env(
        path: &Path,
        mut env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Load {
                path: path.into(),
                detail: "no such file".into(),
            });
        }
        // A variable meant as an override but spelled with one underscore after the
        // prefix would be ignored without a word, as a misspelt key in the file is not.
        if let Some(var) = env.keys().find(|k| misspelt_override(k)) {
            return Err(ConfigError::Invalid {
                path: path.into(),
                detail: format!(
                    "environment variable {var}: overrides are spelled ROWLOG__<SECTION>__<KEY>, with two underscores after ROWLOG (e.g. ROWLOG__SINK__WORKERS)"
                ),
            });
        }
        let load_err = |e: config::ConfigError| ConfigError::Load {
            path: path.into(),
            detail: e.to_string(),
        };
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml));
        for key in LIST_KEYS {
            let var = env_var(key);
            for value in take_vars(&mut env, |k| k == var).into_values() {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(String::from)
                    .collect();
                builder = builder.set_override(key, items).map_err(load_err)?;
            }
        }
        let properties_prefix = format!("{}__", env_var(KAFKA_PROPERTIES));
        let kafka_properties = take_vars(&mut env, |k| {
            k.len() > properties_prefix.len() && k.starts_with(&properties_prefix)
        });
        let raw = builder
            .add_source(
                config::Environment::with_prefix("ROWLOG")
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .map_err(load_err)?;
        let mut cfg: Config = raw.try_deserialize().map_err(|e| ConfigError::Invalid {
            path: path.into(),
            detail: e.to_string(),
        })?;
        if !kafka_properties.is_empty() {
            let Some(kafka) = cfg.kafka.as_mut() else {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    detail: format!(
                        "{} sets kafka.properties, but there is no [kafka] section",
                        kafka_properties.keys().next().map_or("", |k| k.as_str())
                    ),
                });
            };
            // librdkafka's names are dotted, which neither a shell nor the key
            // separator can carry: `…__SASL_PASSWORD` is `sasl.password` (no
            // librdkafka property has an underscore in its name).
            for (var, value) in kafka_properties {
                let name = var[properties_prefix.len()..]
                    .to_ascii_lowercase()
                    .replace('_', ".");
                kafka.properties.insert(name, value);
            }
        }
        cfg.validate().map_err(|detail| ConfigError::Invalid {
            path: path.into(),
            detail,
        })?;
        Ok(cfg)
    }

    /// Checks what types cannot; messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 128
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "name: `{}` must be 1-128 characters of [A-Za-z0-9._-]",
                self.name
            ));
        }
        self.source.validate()?;
        self.sink.validate()?;
        // Contradictions between sections.
        let endpoint = |url: &str| {
            mysql_async::Opts::from_url(url)
                .ok()
                .map(|o| (o.ip_or_hostname().to_ascii_lowercase(), o.tcp_port()))
        };
        if endpoint(&self.source.url).is_some()
            && endpoint(&self.source.url) == endpoint(&self.sink.url)
        {
            return Err(format!(
                "sink.url: points at the same server as source.url ({}); rowlog would replicate a server into itself",
                self.sink.url.split('@').next_back().unwrap_or(&self.sink.url)
            ));
        }
        match (self.log.backend, &self.kafka) {
            (LogBackend::Kafka, None) => {
                return Err(
                    "log.backend is \"kafka\" but there is no [kafka] section with brokers".into(),
                )
            }
            (LogBackend::Kafka, Some(k)) => {
                if let Some(problem) = k.problem() {
                    return Err(problem);
                }
                let topic = k.topic_for(&self.name);
                if let Some(why) = crate::log::kafka::topic_problem(&topic) {
                    return Err(format!("kafka.topic: {topic:?} (from name): {why}"));
                }
            }
            (LogBackend::Embedded, _) => {}
        }
        if !(1..=4096).contains(&self.log.partitions) {
            return Err(format!(
                "log.partitions: must be between 1 and 4096, got {}",
                self.log.partitions
            ));
        }
        if self.log.segment_bytes < 1 << 16 {
            return Err(format!(
                "log.segment_bytes: must be at least 65536, got {}",
                self.log.segment_bytes
            ));
        }
        if !(1..=1_000_000).contains(&self.log.max_batch_changes) {
            return Err(format!(
                "log.max_batch_changes: must be between 1 and 1000000, got {}",
                self.log.max_batch_changes
            ));
        }
        if !(1..=60_000).contains(&self.log.fsync_interval_ms) {
            return Err(format!(
                "log.fsync_interval_ms: must be between 1 and 60000, got {}",
                self.log.fsync_interval_ms
            ));
        }
        if !(100..=86_400_000).contains(&self.log.retention.check_interval_ms) {
            return Err(format!(
                "log.retention.check_interval_ms: must be between 100 and 86400000, got {}",
                self.log.retention.check_interval_ms
            ));
        }
        if self.log.checkpoint_interval_ms > 60_000 {
            return Err(format!(
                "log.checkpoint_interval_ms: must be at most 60000, got {}",
                self.log.checkpoint_interval_ms
            ));
        }
        if !(1..=64).contains(&self.snapshot.concurrency) {
            return Err(format!(
                "snapshot.concurrency: must be between 1 and 64, got {}",
                self.snapshot.concurrency
            ));
        }
        if !(1..=10_000_000).contains(&self.snapshot.chunk_rows) {
            return Err(format!(
                "snapshot.chunk_rows: must be between 1 and 10000000, got {}",
                self.snapshot.chunk_rows
            ));
        }
        if self.http.enabled && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "http.listen: `{}` is not an address of the form IP:PORT",
                self.http.listen
            ));
        }
        // Zero would end every shutdown before it drains (nothing lost, but an exit
        // with the error code each time).
        if !(1..=86_400).contains(&self.shutdown_timeout_secs) {
            return Err(format!(
                "shutdown_timeout_secs: must be between 1 and 86400, got {}",
                self.shutdown_timeout_secs
            ));
        }
        if !(1..=86_400).contains(&self.http.stall_after_secs) {
            return Err(format!(
                "http.stall_after_secs: must be between 1 and 86400, got {}",
                self.http.stall_after_secs
            ));
        }
        Ok(())
    }

    pub fn ingest(&self) -> IngestConfig {
        IngestConfig {
            max_batch_changes: self.log.max_batch_changes,
            checkpoint_interval: Duration::from_millis(self.log.checkpoint_interval_ms),
            ..IngestConfig::default()
        }
    }

    pub fn apply(&self) -> ApplyConfig {
        ApplyConfig {
            workers: self.sink.workers,
            batch_max_rows: self.sink.batch_max_rows,
            batch_max_wait: Duration::from_millis(self.sink.batch_max_wait_ms),
            consumer: format!("sink-{}", self.name),
            commit_interval: Duration::from_secs(1),
            batch_max_bytes: self.sink.batch_max_bytes,
            queue_max_bytes: self.sink.queue_max_bytes,
            dead_letter: self
                .sink
                .dead_letter_file
                .clone()
                .map(|path| crate::pipeline::dead_letter::DeadLetter { path }),
            ddl: self.sink.ddl,
            floors: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("rowlog.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    const MINIMAL: &str = "[source]\nurl = \"mysql://root@127.0.0.1:3306/\"\n[sink]\nurl = \"mysql://root@127.0.0.1:3307/\"\n";

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load_with_env(&write(dir.path(), MINIMAL), HashMap::new()).unwrap();
        assert_eq!(cfg.log.partitions, 8);
        assert_eq!(cfg.sink.workers, 1);
        assert_eq!(cfg.source.start, rowlog_mysql_binlog::StartFrom::Current);
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([
            ("ROWLOG__SINK__WORKERS".to_string(), "7".to_string()),
            (
                "ROWLOG__SOURCE__URL".to_string(),
                "mysql://u:p@10.0.0.1:3310/".to_string(),
            ),
            (
                "ROWLOG__SOURCE__INCLUDE".to_string(),
                "app.*,shop.orders".to_string(),
            ),
        ]);
        let cfg = Config::load_with_env(&write(dir.path(), MINIMAL), env).unwrap();
        assert_eq!(cfg.sink.workers, 7);
        assert_eq!(cfg.source.url, "mysql://u:p@10.0.0.1:3310/");
        assert_eq!(
            cfg.source.include,
            vec!["app.*".to_string(), "shop.orders".to_string()]
        );
    }

    #[test]
    fn environment_values_keep_their_spelling_and_lists_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([
            ("ROWLOG__NAME".to_string(), "007".to_string()),
            ("ROWLOG__HTTP__ENABLED".to_string(), "FALSE".to_string()),
            (
                "ROWLOG__SOURCE__INCLUDE".to_string(),
                " app.* , shop.orders,,".to_string(),
            ),
            (
                "rowlog__source__exclude".to_string(),
                "app.secrets".to_string(),
            ),
        ]);
        let cfg = Config::load_with_env(&write(dir.path(), MINIMAL), env).unwrap();
        assert_eq!(cfg.name, "007");
        assert!(!cfg.http.enabled);
        assert_eq!(cfg.source.include, ["app.*", "shop.orders"]);
        assert_eq!(cfg.source.exclude, ["app.secrets"]);
    }

    #[test]
    fn an_override_with_one_underscore_after_the_prefix_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([("ROWLOG_SINK__WORKERS".to_string(), "4".to_string())]);
        let err = Config::load_with_env(&write(dir.path(), MINIMAL), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ROWLOG_SINK__WORKERS"), "{err}");
        let harness = HashMap::from([("ROWLOG_KEEP_SERVERS".to_string(), "1".to_string())]);
        assert!(Config::load_with_env(&write(dir.path(), MINIMAL), harness).is_ok());
    }

    #[test]
    fn a_number_from_the_environment_is_not_rounded() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([("ROWLOG__SINK__WORKERS".to_string(), "1.5".to_string())]);
        let err = Config::load_with_env(&write(dir.path(), MINIMAL), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink.workers"), "{err}");
    }

    #[test]
    fn kafka_properties_come_from_the_environment_with_underscores_for_dots() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("{MINIMAL}[kafka]\nbrokers = \"k:9092\"\n[kafka.properties]\n\"ssl.ca.location\" = \"/ca.pem\"\n");
        let env = HashMap::from([(
            "ROWLOG__KAFKA__PROPERTIES__SASL_PASSWORD".to_string(),
            "secret".to_string(),
        )]);
        let cfg = Config::load_with_env(&write(dir.path(), &body), env.clone()).unwrap();
        let props = &cfg.kafka.unwrap().properties;
        assert_eq!(
            props.get("sasl.password").map(String::as_str),
            Some("secret")
        );
        assert_eq!(
            props.get("ssl.ca.location").map(String::as_str),
            Some("/ca.pem")
        );

        let err = Config::load_with_env(&write(dir.path(), MINIMAL), env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ROWLOG__KAFKA__PROPERTIES__SASL_PASSWORD"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rowlog.example.toml");
        let cfg = Config::load_with_env(&example, HashMap::new()).unwrap();
        assert_eq!(cfg.log.partitions, 8);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                format!("{MINIMAL}[log]\npartitions = 0\n"),
                "log.partitions",
            ),
            (
                MINIMAL.replace("[sink]", "[sink]\nworkers = 0"),
                "sink.workers",
            ),
            (
                MINIMAL.replace("[sink]", "[sink]\nlease_secs = 1"),
                "sink.lease_secs",
            ),
            (
                MINIMAL.replace("[sink]", "[sink]\nqueue_max_bytes = 100"),
                "sink.queue_max_bytes",
            ),
            (
                MINIMAL.replace("[source]", "[source]\nstart = \"yesterday\""),
                "yesterday",
            ),
            (
                MINIMAL.replace("[source]", "[source]\nurll = \"x\""),
                "urll",
            ),
            (
                MINIMAL.replace("mysql://root@127.0.0.1:3306/", "postgres://x"),
                "source.url",
            ),
            (
                "[sink]\nurl = \"mysql://root@127.0.0.1:3307/\"\n".to_string(),
                "source",
            ),
            (
                format!("{MINIMAL}[http]\nlisten = \"localhost\"\n"),
                "http.listen",
            ),
            (
                format!("shutdown_timeout_secs = 0\n{MINIMAL}"),
                "shutdown_timeout_secs",
            ),
            (
                format!("{MINIMAL}[log]\nbackend = \"kafka\"\n"),
                "[kafka]",
            ),
            (
                format!("{MINIMAL}[log]\nbackend = \"kafka\"\n[kafka]\nbrokers = \"k:9092\"\n[kafka.properties]\nacks = \"1\"\n"),
                "kafka.properties.acks",
            ),
            (
                format!("{MINIMAL}[log]\nbackend = \"kafka\"\n[kafka]\nbrokers = \"k:9092\"\ntopic = \"a b\"\n"),
                "kafka.topic",
            ),
            (
                format!("{MINIMAL}[log]\nbackend = \"kafka\"\n[kafka]\nbrokers = \"\"\n"),
                "kafka.brokers",
            ),
        ];
        for (body, needle) in cases {
            let err = Config::load_with_env(&write(dir.path(), &body), HashMap::new())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle),
                "error for {needle:?} does not name it: {err}"
            );
        }
    }
}
