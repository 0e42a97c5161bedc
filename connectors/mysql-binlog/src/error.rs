//! Errors of the binlog source. Each says what failed and where, keeps its cause, and
//! says whether reconnecting may help ([`Retry`]).

use rowlog_api::{BinlogPosition, GtidState, Retry, TableName};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source.url is not a valid mysql:// URL")]
    BadUrl(#[source] mysql_async::UrlError),

    #[error("cannot connect to the source at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: mysql_async::Error,
    },

    #[error("source query `{query}` failed")]
    Query {
        query: String,
        #[source]
        source: mysql_async::Error,
    },

    #[error("the source refused the login ({detail}); check the user and password in source.url")]
    AccessDenied { detail: String },

    #[error("the source user lacks a privilege rowlog needs ({detail}); grant it with: GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO <user> (MariaDB: BINLOG MONITOR instead of REPLICATION CLIENT)")]
    Privileges { detail: String },

    #[error("the source has {variable}={actual}, rowlog needs {required}: {fix}")]
    Setting {
        variable: &'static str,
        actual: String,
        required: &'static str,
        fix: &'static str,
    },

    #[error("binlog position {position} is no longer on the source (oldest binlog there: {oldest}): the changes between are lost to rowlog. Either take a new snapshot of the destination, or accept the gap explicitly with `rowlog source reset --to {oldest}:4` (or a later position)")]
    PositionPurged {
        position: BinlogPosition,
        oldest: String,
    },

    #[error("the stored position {position} belongs to the server with server_id {stored}, but the source now is server_id {found}; a file:pos means nothing on another server. Set source.resume_by = \"gtid\" to continue from the stored GTID state, or move the position with `rowlog source reset`")]
    ServerChanged {
        stored: u32,
        found: u32,
        position: BinlogPosition,
    },

    #[error("the source refused to stream from GTID state {state}: {message}. The state is not in its binlogs (purged, or from another topology); `rowlog source reset --to-gtid` or a new snapshot moves past it")]
    GtidRefused { state: GtidState, message: String },

    #[error("the source refused to stream from {position}: {message} (error {code})")]
    DumpRefused {
        position: BinlogPosition,
        code: u16,
        message: String,
    },

    #[error("another replica registered with the same server_id {server_id} took over the stream; give rowlog a unique source.server_id")]
    DuplicateServerId { server_id: u32 },

    #[error("the binlog stream failed after {position}")]
    Stream {
        position: BinlogPosition,
        #[source]
        source: mysql_async::Error,
    },

    #[error("the source closed the binlog stream after {position}")]
    StreamEnded { position: BinlogPosition },

    #[error("cannot decode {event} event ending at {position}: {detail}")]
    Decode {
        event: &'static str,
        position: BinlogPosition,
        detail: String,
    },

    #[error("binlog event type {code} ({name}) ending at {position} is not supported: {hint}")]
    UnsupportedEvent {
        code: u8,
        name: &'static str,
        position: BinlogPosition,
        hint: &'static str,
    },

    #[error(
        "rows event ending at {position} refers to table id {table_id} with no preceding table map"
    )]
    MissingTableMap {
        position: BinlogPosition,
        table_id: u64,
    },

    #[error("table {table} has no primary key; rowlog keys every change by it. Add a primary key, or exclude the table with source.exclude = [\"{table}\"]")]
    NoPrimaryKey { table: TableName },

    #[error("rows event ending at {position} for {table} carries {got} of {expected} columns: the session that wrote it used binlog_row_image other than FULL")]
    PartialRowImage {
        position: BinlogPosition,
        table: TableName,
        got: usize,
        expected: usize,
    },

    #[error("cannot read binlog file {path}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("binlog file {path} ends inside an event: {trailing} bytes from byte {byte} do not make a whole event (the file was cut while being written or copied)")]
    Truncated {
        path: std::path::PathBuf,
        byte: u64,
        trailing: u64,
    },

    #[error("table {table} at {position}: {detail}")]
    Schema {
        table: TableName,
        position: BinlogPosition,
        detail: String,
    },

    #[error("statement-based change at {position} (`{statement}`) cannot be replicated row by row: the writing session used binlog_format=STATEMENT")]
    StatementBased {
        position: BinlogPosition,
        statement: String,
    },

    #[error("statement inside a transaction at {position} (`{statement}`) is neither row events nor transaction control: rowlog cannot tell which rows it changed (a statement-based change, or CREATE … SELECT), so it stops rather than skip it")]
    UnknownInTransaction {
        position: BinlogPosition,
        statement: String,
    },

    #[error("XA PREPARE at {position}: the prepared XA transaction may still be rolled back, and rowlog does not hold its rows until XA COMMIT, so it stops before any of them is logged (one-phase XA, XA COMMIT … ONE PHASE, is replicated)")]
    PreparedXa { position: BinlogPosition },

    #[error("the source sent nothing, not even a heartbeat, for {waited_ms} ms after {position}: the connection is taken as gone and opened again")]
    Silent {
        position: BinlogPosition,
        waited_ms: u64,
    },

    #[error("schema change at {position} (`{statement}`) moves {moves}, across source.include/exclude: the changes made under the name rowlog does not replicate would be lost. Include both names or neither, then copy the table again (rowlog snapshot --tables)")]
    AcrossFilter {
        position: BinlogPosition,
        statement: String,
        /// "`from` to `to`".
        moves: String,
    },

    #[error("XA transaction at {position} holds {changes} changes ({bytes} bytes of values) before its end, past the limit of {max_changes} changes or {max_bytes} bytes: rowlog holds an XA transaction's changes until it is known to commit in one phase, and does not hold more")]
    XaTooLarge {
        position: BinlogPosition,
        changes: usize,
        bytes: usize,
        max_changes: usize,
        max_bytes: usize,
    },
}

/// Server error codes that mean the connection is fine to retry.
fn retryable_server_code(code: u16) -> bool {
    matches!(
        code,
        1040 /* too many connections */ | 1053 /* shutdown in progress */ | 1205 | 1213
    )
}

pub(crate) fn mysql_error_is_retryable(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => true,
        mysql_async::Error::Driver(mysql_async::DriverError::PoolDisconnected) => true,
        mysql_async::Error::Server(s) => retryable_server_code(s.code),
        _ => false,
    }
}

impl Retry for SourceError {
    fn is_retryable(&self) -> bool {
        match self {
            SourceError::Connect { source, .. }
            | SourceError::Query { source, .. }
            | SourceError::Stream { source, .. } => mysql_error_is_retryable(source),
            SourceError::StreamEnded { .. } | SourceError::Silent { .. } => true,
            _ => false,
        }
    }
}
