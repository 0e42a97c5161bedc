//! Commands for people, beside the daemon: they open the log read-only (no lock, no
//! writes), so they work while `rowlog run` is writing and when it is stopped.

pub mod bench_log;
pub mod bench_replication;
pub mod binlog_decode;
pub mod chaos;
pub mod json;
pub mod log_cmd;
pub mod offsets;
pub mod snapshot_cmd;
pub mod verify_tables;
