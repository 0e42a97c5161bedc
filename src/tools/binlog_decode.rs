//! `rowlog binlog decode FILE`: a binlog file's row changes as JSON lines, decoded by
//! the same code the live reader runs (like `mysqlbinlog --verbose`, but printing what
//! rowlog would append to its log). Each transaction end prints as a `commit` line.
//! An event rowlog cannot decode stops the command with its named error (exit 1):
//! what the live pipeline would do at that event.

use std::io::Write;
use std::path::Path;

use rowlog_api::SourceEvent;
use rowlog_mysql_binlog::{BinlogFileReader, FileDecodeOptions, SourceError};
use serde_json::json;

use super::json;

/// What one file held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub changes: u64,
    pub schema_changes: u64,
    pub commits: u64,
}

/// Prints every change and commit of `path` to `out`; stops at the first error.
pub async fn decode(
    path: &Path,
    opts: FileDecodeOptions,
    out: &mut impl Write,
) -> Result<Decoded, DecodeError> {
    let mut reader = BinlogFileReader::open(path, opts)?;
    let mut n = Decoded::default();
    while let Some(ev) = reader.next_event().await? {
        let line = match ev {
            SourceEvent::Change(c) => {
                n.changes += 1;
                json::change(&c)
            }
            SourceEvent::Committed {
                resume,
                gtid,
                commit_time_ms,
            } => {
                n.commits += 1;
                json!({ "commit": {
                    "position": resume.position.to_string(),
                    "gtid": gtid.map(|g| g.to_string()),
                    "gtid_state": resume.gtid_state.map(|s| s.to_string()),
                    "commit_time_ms": commit_time_ms,
                }})
            }
            SourceEvent::Schema(s) => {
                n.schema_changes += 1;
                json::schema_change(&s)
            }
            SourceEvent::Heartbeat { .. } => continue,
        };
        writeln!(out, "{line}").map_err(DecodeError::Output)?;
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}
