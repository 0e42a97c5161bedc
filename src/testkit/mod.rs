//! Real servers for tests, the demo and benchmarks: private `mariadbd` instances with
//! their own datadir on a free loopback port, and row-by-row table comparison. There
//! is no mock database anywhere in rowlog's tests.

mod compare;
mod mariadb;
mod proxy;

pub use compare::{compare_table, wait_until_equal, TableDiff};
pub use mariadb::{MariaDb, ServerOptions};
pub use proxy::Proxy;
