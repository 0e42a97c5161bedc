//! # rowlog
//!
//! rowlog replicates MySQL/MariaDB into MySQL/MariaDB by change data capture, in three
//! stages connected by a durable, partitioned log:
//!
//! ```text
//!  source (connectors/mysql-binlog)      log (src/log)                sink (connectors/mysql-sink)
//!  binlog → ChangeEvent ──ingest──▶ partition = hash(db,table,pk) ──apply──▶ N workers per partition
//!                         (src/pipeline/ingest.rs)    mod P        (src/pipeline/apply.rs)
//! ```
//!
//! * **Source → log** ([`pipeline::ingest`]): changes are appended in batches; an append
//!   returns only once durable, and only then is the source position stored as the
//!   log's checkpoint. After a crash the source resumes from the checkpoint and each
//!   partition drops the changes it already holds (changes carry an ordered
//!   [`rowlog_api::ChangeId`]), so the log holds each change once, in source order per key.
//! * **Log → sink** ([`pipeline::apply`]): one task per partition reads in order and
//!   dispatches by key hash to N bounded worker queues. Each worker applies batches of
//!   idempotent upserts/deletes and writes its last applied offset into the
//!   destination's progress table in the same transaction. The partition's committed
//!   offset is the lowest offset every worker has passed (the watermark).
//! * **Delivery**: a crash replays from the watermark, never skips; changes a stored
//!   worker offset covers (under the worker count that stored it) are skipped, and
//!   idempotent statements make any other replay harmless. The destination's progress table is the truth; the log's consumer
//!   offsets only bound retention and restart reads.
//!
//! * **Observability** ([`metrics`], [`http`], [`status`]): every stage updates one
//!   shared [`metrics::Metrics`] (all Prometheus metrics are defined there); the daemon
//!   serves `/metrics`, `/healthz`, `/readyz` and `/status` on `[http] listen`.
//!
//! * **Log backends** ([`log`]): the embedded on-disk log ([`log::EmbeddedLog`], the
//!   default, no external service) or Kafka ([`log::KafkaLog`], `log.backend =
//!   "kafka"`), behind one trait ([`log::PartitionedLog`]) and one conformance test
//!   suite (tests/suite/log_conformance.rs).
//!
//! Positions are stored in two places: the source's in the log's checkpoint
//! (`<log.dir>/source.checkpoint`, or `<topic>.checkpoint` on Kafka), the sink's in `<progress_database>.rowlog_progress`.

pub mod config;
pub mod daemon;
pub mod demo;
pub mod http;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod resnapshot;
pub mod shutdown;
pub mod snapshot;
pub mod status;
pub mod testkit;
pub mod tools;
