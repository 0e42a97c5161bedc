//! rowlog's integration tests, against real MariaDB servers (and a real Kafka-protocol
//! broker, Prometheus and sysbench where a test says so): one module per subject.
//!
//! Why one test binary rather than one per file: each file under `tests/` is a crate
//! of its own that links the whole of rowlog and its dependencies, and compiles again
//! every generic of tokio and mysql_async it uses. With 27 of them, building the tests
//! took longer than running them. `cargo nextest` still runs every test in a process
//! of its own, so no test shares state with another; pick tests by module, e.g.
//! `cargo nextest run --workspace -E 'test(/^sink_apply::/)'`.

mod common;

mod bad_input;
mod binlog_fixtures;
mod chaos;
mod cli;
mod crash_restart;
mod dashboards;
mod ddl;
mod decode_fuzz;
mod faults;
mod gtid;
mod kafka;
mod log_conformance;
mod log_properties;
mod log_recovery;
mod log_storage;
mod log_tools;
mod memory;
mod observability;
mod offsets_replay;
mod replication;
mod scale;
mod sink_apply;
mod snapshot;
mod source_rules;
mod types;
mod verify;

/// Where proptest keeps the seeds of the failures it found, to run them first next
/// time: beside the test's own file (`decode_fuzz.proptest-regressions`), where they
/// were kept when each file was a binary of its own. Its default would now put them in
/// a `tests/proptest-regressions/` folder.
fn regressions_beside_this_file() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(
        proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
    ))
}
