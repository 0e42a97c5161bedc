//! The dead-letter file (`sink.dead_letter_file`, off by default): changes the
//! destination rejects for good are written here, one JSON line each, and the
//! partition goes on instead of halting. A line is fsynced (and a new file's directory
//! entry) before the change's offset is recorded as passed, so a rejected change is
//! never dropped without a trace. A crash between the two writes the line again after
//! the restart: a line is unique by its record's partition and offset.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use rowlog_api::ChangeEvent;
use serde_json::json;

#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub path: PathBuf,
}

impl DeadLetter {
    /// Appends one rejected change with the destination's error. Blocking, and rare.
    pub fn write(
        &self,
        partition: u32,
        offset: u64,
        change: &ChangeEvent,
        error: &str,
    ) -> std::io::Result<()> {
        let line = json!({
            "rejected_at_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            "error": error,
            "record": crate::tools::json::change_record(partition, offset, change),
        });
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        // One write per line: appends from several workers never interleave within a line.
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()?;
        // The file's name is durable only once its directory is synced. Every line
        // syncs it (they are rare): a worker that opened the file another had just
        // created must not count on that one's sync.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
}
