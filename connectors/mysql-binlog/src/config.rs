//! The `[source]` section of rowlog's configuration.

use std::fmt;
use std::str::FromStr;

use rowlog_api::BinlogPosition;
use serde::{Deserialize, Deserializer};

/// Where to start reading when no position is stored yet. A stored position always wins.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The current end of the binlog: only changes made from now on.
    #[default]
    Current,
    /// The oldest binlog file the server still has.
    Earliest,
    /// An explicit position; must be a transaction boundary.
    At(BinlogPosition),
}

impl FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "current" => Ok(Self::Current),
            "earliest" => Ok(Self::Earliest),
            other => other.parse().map(Self::At).map_err(|_| {
                format!(
                    "`{other}` is neither \"current\", \"earliest\" nor a position FILE.NNNNNN:POS"
                )
            }),
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Current => f.write_str("current"),
            Self::Earliest => f.write_str("earliest"),
            Self::At(p) => write!(f, "{p}"),
        }
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What to do with a table that has no primary key (`source.no_pk`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoPrimaryKey {
    /// Stop with an error naming the table (the default: nothing is replicated in a
    /// way the operator did not choose).
    #[default]
    Halt,
    /// Leave the table out, with a log line when it is first seen.
    Skip,
    /// Key its changes by the whole row: inserts are plain INSERTs, deletes remove one
    /// row equal to the before-image (`LIMIT 1`), updates are both.
    FullRow,
}

/// How a stored checkpoint is resumed (`source.resume_by`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeBy {
    /// The stored binlog file and position, on the same server (the default).
    #[default]
    Position,
    /// The stored GTID state, so any server of the same replication topology can
    /// continue, e.g. after a failover: MariaDB with `@slave_connect_state`, MySQL
    /// with COM_BINLOG_DUMP_GTID and the executed set.
    Gtid,
}

fn default_server_id() -> u32 {
    // High enough not to collide with the ids operators give their own replicas.
    4_280_001
}
fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_exclude() -> Vec<String> {
    [
        "mysql.*",
        "sys.*",
        "performance_schema.*",
        "information_schema.*",
    ]
    .map(String::from)
    .to_vec()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `mysql://user:password@host:port/` of the source server.
    pub url: String,
    /// The replica id rowlog registers with; unique among the source's replicas.
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    #[serde(default)]
    pub start: StartFrom,
    /// `db.table` globs (`*`, `?`) of tables to read; empty means all.
    #[serde(default)]
    pub include: Vec<String>,
    /// `db.table` globs of tables to skip; wins over `include`.
    #[serde(default = "default_exclude")]
    pub exclude: Vec<String>,
    /// How often an idle source sends a heartbeat, so lag stays truthful.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Tables without a primary key: "halt" (default), "skip" or "full_row".
    #[serde(default)]
    pub no_pk: NoPrimaryKey,
    /// How a stored checkpoint is resumed: "position" (default) or "gtid".
    #[serde(default)]
    pub resume_by: ResumeBy,
}

impl SourceConfig {
    /// Checks the values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        mysql_async::Opts::from_url(&self.url)
            .map_err(|e| format!("source.url: not a valid mysql:// URL: {e}"))?;
        if self.server_id == 0 {
            return Err("source.server_id: must be between 1 and 4294967295 (0 is not allowed for a replica)".into());
        }
        crate::TableFilter::new(&self.include, &self.exclude).map_err(|e| e.to_string())?;
        if self.heartbeat_ms == 0 || self.heartbeat_ms > 4_294_967 {
            return Err("source.heartbeat_ms: must be between 1 and 4294967".into());
        }
        Ok(())
    }
}
