//! Real servers for tests, the demo and benchmarks: private `mariadbd` instances with
//! their own datadir on a free loopback port, a private Kafka-protocol broker (`tansu`),
//! and row-by-row table comparison. There is no mock database or broker anywhere in
//! rowlog's tests.

mod compare;
mod mariadb;
mod port;
mod proxy;
mod tansu;

pub use compare::{compare_table, wait_until_equal, TableDiff};
pub use mariadb::{MariaDb, ServerOptions};
pub use port::{lease_port, PortLease};
pub use proxy::Proxy;
pub use tansu::{tansu_binary, Tansu};
