//! What rowlog asks of the source server before streaming: the settings it depends on
//! and the binlog files it still has.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use rowlog_api::{BinlogFileName, BinlogPosition, GtidState, MariadbGtidPos};

use crate::SourceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerFlavor {
    MariaDb,
    MySql,
}

/// The source's replication settings as read from its global variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    pub flavor: ServerFlavor,
    pub version: String,
    pub log_bin: String,
    pub binlog_format: String,
    pub binlog_row_image: String,
    /// `None` on servers too old to have the variable.
    pub binlog_row_metadata: Option<String>,
    pub binlog_checksum: String,
    /// `@@lower_case_table_names`: at 1 the server stores and compares table and
    /// database names in lower case, and its binlog's table maps name them so, while
    /// a statement keeps the case its author typed.
    pub lower_case_table_names: String,
}

impl ServerSettings {
    pub(crate) async fn read(conn: &mut Conn) -> Result<Self, SourceError> {
        let query =
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('version', 'log_bin', 'binlog_format', \
                     'binlog_row_image', 'binlog_row_metadata', 'binlog_checksum', \
                     'lower_case_table_names')";
        let rows: Vec<(String, String)> =
            conn.query(query)
                .await
                .map_err(|source| SourceError::Query {
                    query: query.into(),
                    source,
                })?;
        let get = |name: &str| {
            rows.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let version = get("version").unwrap_or_default();
        Ok(Self {
            flavor: if version.to_ascii_lowercase().contains("mariadb") {
                ServerFlavor::MariaDb
            } else {
                ServerFlavor::MySql
            },
            version,
            log_bin: get("log_bin").unwrap_or_else(|| "OFF".into()),
            binlog_format: get("binlog_format").unwrap_or_default(),
            binlog_row_image: get("binlog_row_image").unwrap_or_else(|| "FULL".into()),
            binlog_row_metadata: get("binlog_row_metadata"),
            binlog_checksum: get("binlog_checksum").unwrap_or_else(|| "NONE".into()),
            lower_case_table_names: get("lower_case_table_names").unwrap_or_else(|| "0".into()),
        })
    }

    /// Names in statements are to be read in lower case (`lower_case_table_names=1`).
    pub fn lowercase_names(&self) -> bool {
        self.lower_case_table_names.trim() == "1"
    }

    /// Refuses settings under which rows would be missing or incomplete.
    pub fn check(&self) -> Result<(), SourceError> {
        if !self.log_bin.eq_ignore_ascii_case("ON") && self.log_bin != "1" {
            return Err(SourceError::Setting {
                variable: "log_bin",
                actual: self.log_bin.clone(),
                required: "ON",
                fix: "start the server with --log-bin",
            });
        }
        if !self.binlog_format.eq_ignore_ascii_case("ROW") {
            return Err(SourceError::Setting {
                variable: "binlog_format",
                actual: self.binlog_format.clone(),
                required: "ROW",
                fix: "SET GLOBAL binlog_format=ROW and binlog_format=ROW in the server config (new sessions pick it up)",
            });
        }
        if !self.binlog_row_image.eq_ignore_ascii_case("FULL") {
            return Err(SourceError::Setting {
                variable: "binlog_row_image",
                actual: self.binlog_row_image.clone(),
                required: "FULL",
                fix: "SET GLOBAL binlog_row_image=FULL and binlog_row_image=FULL in the server config",
            });
        }
        Ok(())
    }

    /// Whether table maps carry column names and the primary key.
    pub fn has_full_metadata(&self) -> bool {
        self.binlog_row_metadata
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case("FULL"))
    }

    pub fn checksum_enabled(&self) -> bool {
        !self.binlog_checksum.eq_ignore_ascii_case("NONE")
    }
}

fn privilege_error(e: &mysql_async::Error) -> Option<SourceError> {
    match e {
        // 1227: access denied, you need (at least one of) the X privilege(s)
        mysql_async::Error::Server(s) if s.code == 1227 || s.code == 1045 => {
            Some(SourceError::Privileges {
                detail: s.message.clone(),
            })
        }
        _ => None,
    }
}

pub(crate) fn query_error(query: &str, source: mysql_async::Error) -> SourceError {
    privilege_error(&source).unwrap_or(SourceError::Query {
        query: query.into(),
        source,
    })
}

/// The binlog files the server has, oldest first, with their sizes.
pub(crate) async fn binary_logs(conn: &mut Conn) -> Result<Vec<(String, u64)>, SourceError> {
    let query = "SHOW BINARY LOGS";
    let rows: Vec<Row> = conn.query(query).await.map_err(|e| query_error(query, e))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect())
}

/// The position the server will write next, and (MySQL) the GTID set executed up to it,
/// read together from one `SHOW MASTER STATUS` row.
pub(crate) async fn current_position(
    conn: &mut Conn,
) -> Result<(BinlogPosition, Option<GtidState>), SourceError> {
    let query = "SHOW MASTER STATUS";
    let row: Option<Row> = conn
        .query_first(query)
        .await
        .map_err(|e| query_error(query, e))?;
    let row = row.ok_or(SourceError::Setting {
        variable: "log_bin",
        actual: "OFF (SHOW MASTER STATUS is empty)".into(),
        required: "ON",
        fix: "start the server with --log-bin",
    })?;
    let (Some(file), Some(pos)) = (row.get::<String, _>(0), row.get::<u64, _>(1)) else {
        return Err(SourceError::Query {
            query: query.into(),
            source: mysql_async::Error::Other("unexpected row shape".into()),
        });
    };
    // MySQL's fifth column; MariaDB has four.
    let executed = row
        .get_opt::<String, _>(4)
        .and_then(Result::ok)
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| s.replace('\n', "").parse().ok())
        .map(GtidState::MySql);
    parse_file(&file).map(|file| (BinlogPosition { file, pos }, executed))
}

/// The server's `@@server_id`: what a stored position belongs to.
pub(crate) async fn server_id(conn: &mut Conn) -> Result<u32, SourceError> {
    let query = "SELECT @@server_id";
    let id: Option<u64> = conn
        .query_first(query)
        .await
        .map_err(|e| query_error(query, e))?;
    Ok(id.and_then(|i| u32::try_from(i).ok()).unwrap_or(0))
}

/// MariaDB: the GTID state at a binlog position (`BINLOG_GTID_POS`), i.e. the last GTID
/// of each domain before it; empty when the binlog has no GTIDs yet, `None` when the
/// server cannot tell for that position.
pub(crate) async fn gtid_state_at(
    conn: &mut Conn,
    position: &BinlogPosition,
) -> Result<Option<MariadbGtidPos>, SourceError> {
    let query = "SELECT BINLOG_GTID_POS(?, ?)";
    let state: Option<Option<String>> = conn
        .exec_first(query, (position.file.to_string(), position.pos))
        .await
        .map_err(|e| query_error(query, e))?;
    let Some(text) = state.flatten() else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| SourceError::Decode {
        event: "BINLOG_GTID_POS",
        position: position.clone(),
        detail: format!("unexpected GTID state `{text}`"),
    })
}

pub(crate) fn parse_file(name: &str) -> Result<BinlogFileName, SourceError> {
    BinlogFileName::parse(name).ok_or_else(|| SourceError::Setting {
        variable: "log_bin_basename",
        actual: name.to_owned(),
        required: "a binlog file name ending in .NNNNNN",
        fix: "use the server's default binlog naming",
    })
}

/// Checks that `position`'s file is still on the server.
pub(crate) fn ensure_available(
    position: &BinlogPosition,
    logs: &[(String, u64)],
) -> Result<(), SourceError> {
    let name = position.file.to_string();
    match logs.iter().find(|(n, _)| *n == name) {
        Some((_, size)) if position.pos <= *size => Ok(()),
        Some((_, size)) => Err(SourceError::DumpRefused {
            position: position.clone(),
            code: 0,
            message: format!("the file is only {size} bytes long"),
        }),
        None => Err(SourceError::PositionPurged {
            position: position.clone(),
            oldest: logs
                .first()
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| "none".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServerSettings {
        ServerSettings {
            flavor: ServerFlavor::MariaDb,
            version: "10.11.19-MariaDB".into(),
            log_bin: "ON".into(),
            binlog_format: "ROW".into(),
            binlog_row_image: "FULL".into(),
            binlog_row_metadata: Some("FULL".into()),
            binlog_checksum: "CRC32".into(),
            lower_case_table_names: "0".into(),
        }
    }

    #[test]
    fn statement_and_mixed_formats_are_refused_with_the_fix() {
        for format in ["STATEMENT", "MIXED"] {
            let err = ServerSettings {
                binlog_format: format.into(),
                ..settings()
            }
            .check()
            .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("binlog_format") && msg.contains("SET GLOBAL binlog_format=ROW"),
                "{msg}"
            );
        }
    }

    #[test]
    fn minimal_row_image_is_refused() {
        let err = ServerSettings {
            binlog_row_image: "MINIMAL".into(),
            ..settings()
        }
        .check()
        .unwrap_err();
        assert!(
            err.to_string().contains("binlog_row_image=MINIMAL"),
            "{err}"
        );
        assert!(settings().check().is_ok());
    }

    #[test]
    fn a_purged_position_names_the_oldest_file() {
        let logs = vec![("binlog.000007".to_string(), 1000)];
        let err = ensure_available(&"binlog.000003:4".parse().unwrap(), &logs).unwrap_err();
        assert!(matches!(err, SourceError::PositionPurged { .. }));
        assert!(err.to_string().contains("binlog.000007"), "{err}");
        assert!(ensure_available(&"binlog.000007:4".parse().unwrap(), &logs).is_ok());
    }
}
