//! Errors of the MySQL sink, classified as retryable (the same batch may succeed later)
//! or definite (the destination rejects it; retrying cannot help).

use rowlog_api::{Retry, TableName};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink.url is not a valid mysql:// URL")]
    BadUrl(#[source] mysql_async::UrlError),

    #[error("cannot connect to the destination at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: mysql_async::Error,
    },

    #[error("destination rejected changes to {table}{} (log offsets up to {offset}, source {source_position})", key.as_ref().map(|k| format!(" key {k}")).unwrap_or_default())]
    Apply {
        table: TableName,
        /// The primary key of the rejected row, when it could be isolated.
        key: Option<String>,
        offset: u64,
        source_position: String,
        #[source]
        source: mysql_async::Error,
    },

    #[error("destination rejected the schema change at {position}: `{statement}`")]
    SchemaChange {
        position: String,
        statement: String,
        #[source]
        source: mysql_async::Error,
    },

    #[error("this process no longer holds pipeline `{pipeline}`'s lease on the destination (another process took it, or it ran out{}): nothing more was committed (the transaction was rolled back), and the pipeline stops", if cause.is_some() { ", or the lease could not be read" } else { "" })]
    Fenced {
        pipeline: String,
        /// Why the lease could not be read, when that is what stopped the transaction.
        #[source]
        cause: Option<mysql_async::Error>,
    },

    #[error("the destination did not answer {action} within {secs} s (sink.call_timeout_secs); the connection is taken for dead")]
    NoAnswer { action: &'static str, secs: u64 },

    #[error("destination progress table `{table}`: {action} failed")]
    Progress {
        table: String,
        action: &'static str,
        #[source]
        source: mysql_async::Error,
    },
}

/// Error codes after which the same statement may succeed: deadlock, lock wait timeout,
/// too many connections, server shutting down, lost connection, a query killed, and a
/// destination that is read-only for now (during a failover the old primary turns
/// read-only before the address moves: 1290 `--read-only`, 1836 read-only mode, 1792
/// a read-only transaction).
fn retryable_code(code: u16) -> bool {
    matches!(
        code,
        1205 | 1213
            | 1040
            | 1053
            | 2006
            | 2013
            | 1927 /* connection killed */
            | 1317 /* query interrupted */
            | 1290
            | 1836
            | 1792
    )
}

/// Connect errors that retrying cannot fix: access denied (1044, 1045, 1698), an
/// unknown database in the URL (1049), a host the server does not let in (1130), an
/// authentication plugin the client lacks (1251), an expired password (1820, 1862).
fn definite_connect_code(code: u16) -> bool {
    matches!(code, 1044 | 1045 | 1049 | 1130 | 1251 | 1698 | 1820 | 1862)
}

pub(crate) fn is_retryable(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(
            mysql_async::DriverError::ConnectionClosed | mysql_async::DriverError::PoolDisconnected,
        ) => true,
        mysql_async::Error::Server(s) => retryable_code(s.code),
        _ => false,
    }
}

impl SinkError {
    /// The server error code, when the destination answered with one.
    pub fn server_code(&self) -> Option<u16> {
        match self {
            SinkError::Connect { source, .. }
            | SinkError::Apply { source, .. }
            | SinkError::SchemaChange { source, .. }
            | SinkError::Progress { source, .. } => match source {
                mysql_async::Error::Server(s) => Some(s.code),
                _ => None,
            },
            SinkError::BadUrl(_) | SinkError::Fenced { .. } | SinkError::NoAnswer { .. } => None,
        }
    }
}

impl Retry for SinkError {
    fn is_retryable(&self) -> bool {
        match self {
            SinkError::BadUrl(_) | SinkError::Fenced { .. } => false,
            // Another connection may well answer (the batch is checked first: it may
            // have committed).
            SinkError::NoAnswer { .. } => true,
            SinkError::Connect { source, .. } => match source {
                // What only the operator can fix stops the pipeline with the server's
                // message instead of retrying forever.
                mysql_async::Error::Server(s) if definite_connect_code(s.code) => false,
                other => is_retryable(other) || matches!(other, mysql_async::Error::Server(_)),
            },
            SinkError::Apply { source, .. }
            | SinkError::SchemaChange { source, .. }
            | SinkError::Progress { source, .. } => is_retryable(source),
        }
    }

    fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Fenced { .. })
    }
}
