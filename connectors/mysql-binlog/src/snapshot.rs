//! Reading tables for a snapshot: a consistent view of the source together with the
//! exact binlog position it corresponds to.
//!
//! # Why the position is exact
//! * MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT` and, in that transaction,
//!   the session status `binlog_snapshot_file` / `binlog_snapshot_position`: the binlog
//!   position of the last transaction the snapshot sees. No lock is taken.
//! * MySQL: `FLUSH TABLES WITH READ LOCK` for the moment it takes to start the
//!   snapshot and read `SHOW MASTER STATUS`, then `UNLOCK TABLES` (what mysqldump
//!   --single-transaction --master-data does; needs the RELOAD privilege). Only a
//!   MySQL server can prove this path; it is not tested here.
//!
//! Every row the snapshot reads is then exactly the state at that position: a change
//! at a later position is not in it, a change at an earlier one is.
//!
//! Rows are read in primary-key order in chunks (keyset pagination: `WHERE key > last
//! ORDER BY key LIMIT n`), so a copy can resume after its last finished chunk. Values
//! are read with the binary protocol and turned into [`Value`]s the sink writes back
//! as typed parameters; ENUM and SET are read by index and bitmask (the empty ENUM
//! value survives), text in other character sets as its raw bytes.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Row};
use rowlog_api::{
    BinlogPosition, Column, ColumnType, GtidState, ResumePoint, TableName, TableSchema, Value,
};

use crate::server::{self, ServerFlavor, ServerSettings};
use crate::{SourceConfig, SourceError, TableFilter};

/// A table as the snapshot reads it.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    pub schema: Arc<TableSchema>,
    /// `SHOW CREATE TABLE` on the source, to create it on the destination.
    pub create: String,
    /// The server's row estimate, for progress.
    pub estimated_rows: u64,
    /// Per column, what SELECT reads it as.
    select: Vec<String>,
    /// Per column, `information_schema.COLUMNS.DATA_TYPE`, lower case.
    data_types: Vec<String>,
}

/// One consistent read of the source.
pub struct SnapshotSession {
    conn: Conn,
    /// The binlog position the snapshot corresponds to.
    pub position: ResumePoint,
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

fn query_error(q: &str) -> impl FnOnce(mysql_async::Error) -> SourceError + '_ {
    move |e| server::query_error(q, e)
}

/// The replicated base tables of the source (include/exclude applied), in name order.
pub async fn list_tables(
    config: &SourceConfig,
    only: &TableFilter,
) -> Result<Vec<TableName>, SourceError> {
    let filter =
        TableFilter::new(&config.include, &config.exclude).map_err(|e| SourceError::Setting {
            variable: "source.include/exclude",
            actual: e.to_string(),
            required: "db.table globs",
            fix: "fix the pattern in the config",
        })?;
    let opts =
        Opts::from_url(&rowlog_api::url::tcp_as_given(&config.url)).map_err(SourceError::BadUrl)?;
    let mut conn = crate::reader::connect(&opts).await?;
    let q = "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_SCHEMA, TABLE_NAME";
    let rows: Vec<(String, String)> = conn.query(q).await.map_err(query_error(q))?;
    let _ = conn.disconnect().await;
    Ok(rows
        .into_iter()
        .map(|(db, t)| TableName::new(db, t))
        .filter(|t| filter.includes(t) && only.includes(t))
        .collect())
}

impl SnapshotSession {
    /// Opens a consistent snapshot and reads the position it corresponds to.
    pub async fn open(config: &SourceConfig) -> Result<Self, SourceError> {
        let opts = Opts::from_url(&rowlog_api::url::tcp_as_given(&config.url))
            .map_err(SourceError::BadUrl)?;
        let mut conn = crate::reader::connect(&opts).await?;
        let settings = ServerSettings::read(&mut conn).await?;
        for q in [
            // TIMESTAMPs read in UTC, as the sink writes them.
            "SET SESSION time_zone = '+00:00'",
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        ] {
            conn.query_drop(q).await.map_err(query_error(q))?;
        }
        let (position, gtid_state) = match settings.flavor {
            ServerFlavor::MariaDb => {
                let q = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
                conn.query_drop(q).await.map_err(query_error(q))?;
                let q = "SHOW SESSION STATUS LIKE 'binlog_snapshot_%'";
                let vars: Vec<(String, String)> = conn.query(q).await.map_err(query_error(q))?;
                let get = |name: &str| {
                    vars.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let (Some(file), Some(pos)) = (
                    get("binlog_snapshot_file"),
                    get("binlog_snapshot_position").and_then(|p| p.parse().ok()),
                ) else {
                    return Err(SourceError::Setting {
                        variable: "binlog_snapshot_file",
                        actual: "absent".into(),
                        required: "a binlog (log_bin=ON)",
                        fix: "start the server with --log-bin",
                    });
                };
                let position = BinlogPosition {
                    file: server::parse_file(&file)?,
                    pos,
                };
                let state = server::gtid_state_at(&mut conn, &position)
                    .await?
                    .map(GtidState::MariaDb);
                (position, state)
            }
            ServerFlavor::MySql => {
                for q in [
                    "FLUSH TABLES WITH READ LOCK",
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
                ] {
                    conn.query_drop(q).await.map_err(query_error(q))?;
                }
                let current = server::current_position(&mut conn).await;
                let q = "UNLOCK TABLES";
                conn.query_drop(q).await.map_err(query_error(q))?;
                current?
            }
        };
        let server_id = server::server_id(&mut conn).await?;
        Ok(Self {
            conn,
            position: ResumePoint {
                position,
                gtid_state,
                server_id,
                epoch: 0,
            },
        })
    }

    /// Columns, keys and the CREATE statement of a table, from `information_schema`.
    pub async fn describe(&mut self, name: &TableName) -> Result<SnapshotTable, SourceError> {
        let q = "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME, IS_NULLABLE, \
                 COALESCE(GENERATION_EXPRESSION, '') FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";
        let cols: Vec<(String, String, String, Option<String>, String, String)> = self
            .conn
            .exec(q, (&name.db, &name.table))
            .await
            .map_err(query_error(q))?;
        let q = "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                 ORDER BY ORDINAL_POSITION";
        let pk: Vec<String> = self
            .conn
            .exec(q, (&name.db, &name.table))
            .await
            .map_err(query_error(q))?;
        let q = "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX";
        let uniques: Vec<(String, String)> = self
            .conn
            .exec(q, (&name.db, &name.table))
            .await
            .map_err(query_error(q))?;
        let q = "SELECT COALESCE(TABLE_ROWS, 0) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";
        let estimated_rows: Option<u64> = self
            .conn
            .exec_first(q, (&name.db, &name.table))
            .await
            .map_err(query_error(q))?;
        let create_q = format!(
            "SHOW CREATE TABLE {}.{}",
            quote(&name.db),
            quote(&name.table)
        );
        let create: Option<(String, String)> = self
            .conn
            .query_first(&create_q)
            .await
            .map_err(|e| server::query_error(&create_q, e))?;
        let create = create.map(|(_, c)| c).unwrap_or_default();

        let mut columns = Vec::with_capacity(cols.len());
        let mut select = Vec::with_capacity(cols.len());
        let mut data_types = Vec::with_capacity(cols.len());
        for (col, data_type, column_type, charset, nullable, generation) in &cols {
            let dt = data_type.to_ascii_lowercase();
            data_types.push(dt.clone());
            let binary = matches!(
                dt.as_str(),
                "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
            );
            let ty = match dt.as_str() {
                "char" | "binary" => ColumnType::FixedString { max_bytes: 0 },
                "varchar" | "varbinary" => ColumnType::VarString { max_bytes: 0 },
                "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob"
                | "mediumblob" | "longblob" => ColumnType::Blob,
                "enum" => ColumnType::Enum,
                "set" => ColumnType::Set,
                "date" => ColumnType::Date,
                _ => ColumnType::Other(0),
            };
            let q = quote(col);
            select.push(match (&ty, charset.as_deref()) {
                // By index and bitmask: the empty ENUM value is index 0, which a
                // strict session accepts back only as a number.
                (ColumnType::Enum | ColumnType::Set, _) => format!("{q} + 0"),
                // Text in another character set: its stored bytes, not a conversion.
                (_, Some(cs)) if !utf8_compatible(cs) => format!("CAST({q} AS BINARY)"),
                _ => q,
            });
            columns.push(Column {
                name: col.clone(),
                ty,
                unsigned: column_type.to_ascii_lowercase().contains("unsigned"),
                charset: binary.then_some(63),
                charset_name: charset.clone(),
                nullable: nullable.eq_ignore_ascii_case("YES"),
                generated: !generation.is_empty(),
            });
        }
        let position_of = |c: &String| columns.iter().position(|x| &x.name == c);
        let primary_key: Vec<usize> = pk.iter().filter_map(position_of).collect();
        let mut unique_keys: Vec<(String, Vec<usize>)> = Vec::new();
        for (index, column) in &uniques {
            let Some(i) = position_of(column) else {
                continue;
            };
            match unique_keys.last_mut() {
                Some((n, cols)) if n == index => cols.push(i),
                _ => unique_keys.push((index.clone(), vec![i])),
            }
        }
        let keyless = primary_key.is_empty();
        let schema = TableSchema {
            name: name.clone(),
            primary_key: if keyless {
                (0..columns.len()).collect()
            } else {
                primary_key
            },
            unique_keys: unique_keys.into_iter().map(|(_, c)| c).collect(),
            keyless,
            columns,
        };
        Ok(SnapshotTable {
            select,
            data_types,
            schema: Arc::new(schema),
            create,
            estimated_rows: estimated_rows.unwrap_or(0),
        })
    }

    /// Up to `limit` rows after the primary key `after` (from the start when `None`),
    /// in key order. For a table with a primary key (see [`Self::read_keyless`]).
    pub async fn read_chunk(
        &mut self,
        t: &SnapshotTable,
        after: Option<&[Value]>,
        limit: u64,
    ) -> Result<Vec<Vec<Value>>, SourceError> {
        self.read_range(t, after, None, limit).await
    }

    /// The rows of a table without a primary key, in one pass over the consistent
    /// read, handed out a chunk at a time as the server streams them: there is no key
    /// to go on after, so the copy cannot resume after a chunk, but it holds no more
    /// than one chunk in memory.
    pub async fn read_keyless<'a>(
        &'a mut self,
        t: &'a SnapshotTable,
    ) -> Result<KeylessRows<'a>, SourceError> {
        // The server waits for rowlog to take each packet, while rowlog writes each
        // chunk to the destination: for longer than `net_write_timeout` (60 s by
        // default) the server would drop the connection, and the copy start over.
        let timeout = "SET SESSION net_write_timeout = 86400";
        self.conn
            .query_drop(timeout)
            .await
            .map_err(|e| server::query_error(timeout, e))?;
        let q = format!(
            "SELECT {} FROM {}",
            t.select.join(", "),
            ident(&t.schema.name)
        );
        let (opts, id) = (self.conn.opts().clone(), self.conn.id());
        let result = self
            .conn
            .exec_iter(q.as_str(), ())
            .await
            .map_err(|e| server::query_error(&q, e))?;
        Ok(KeylessRows {
            result,
            table: t,
            position: &self.position.position,
            query: q,
            killer: (opts, id),
        })
    }

    /// Up to `limit` rows with a primary key after `after` and at most `upto`, in key
    /// order.
    pub async fn read_range(
        &mut self,
        t: &SnapshotTable,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
        limit: u64,
    ) -> Result<Vec<Vec<Value>>, SourceError> {
        let (q, params) = key_range_query(t, &t.select.join(", "), after, upto, limit);
        let rows: Vec<Row> = self
            .conn
            .exec(&q, params)
            .await
            .map_err(|e| server::query_error(&q, e))?;
        rows.into_iter()
            .map(|r| row_values(t, r, &self.position.position))
            .collect()
    }

    /// The snapshot's row whose key the server calls equal to `key` (collations
    /// included), as the source spells it: 'ABC' for 'abc' under a case-insensitive
    /// collation. `None` when the snapshot has no such row.
    pub async fn equal_row(
        &mut self,
        t: &SnapshotTable,
        key: &[Value],
    ) -> Result<Option<Vec<Value>>, SourceError> {
        let (cond, params) = key_condition(t, "=", key);
        let q = format!(
            "SELECT {} FROM {} WHERE {cond} LIMIT 1",
            t.select.join(", "),
            ident(&t.schema.name)
        );
        let row: Option<Row> = self
            .conn
            .exec_first(&q, params)
            .await
            .map_err(|e| server::query_error(&q, e))?;
        row.map(|r| row_values(t, r, &self.position.position))
            .transpose()
    }

    /// Ends the snapshot's transaction.
    pub async fn close(mut self) {
        let _ = self.conn.query_drop("COMMIT").await;
        let _ = self.conn.disconnect().await;
    }
}

/// A table without a primary key being read by [`SnapshotSession::read_keyless`].
pub struct KeylessRows<'a> {
    result: mysql_async::QueryResult<'a, 'static, mysql_async::BinaryProtocol>,
    table: &'a SnapshotTable,
    position: &'a BinlogPosition,
    query: String,
    /// How to reach the server and which connection streams the rows, to stop it.
    killer: (Opts, u32),
}

impl KeylessRows<'_> {
    /// Stops the server streaming the rest of the table (a copy cut short by
    /// shutdown): otherwise ending the session would first read every remaining row.
    pub async fn cancel(self) {
        let (opts, id) = self.killer;
        if let Ok(mut c) = Conn::new(opts).await {
            let _ = c.query_drop(format!("KILL QUERY {id}")).await;
            let _ = c.disconnect().await;
        }
    }

    /// The next `limit` rows (fewer at the end; none once every row was handed out).
    pub async fn next_chunk(&mut self, limit: u64) -> Result<Vec<Vec<Value>>, SourceError> {
        let mut out = Vec::new();
        while (out.len() as u64) < limit {
            let row = self
                .result
                .next()
                .await
                .map_err(|e| server::query_error(&self.query, e))?;
            match row {
                Some(r) => out.push(row_values(self.table, r, self.position)?),
                None => break,
            }
        }
        Ok(out)
    }
}

/// A row as read from the source, as rowlog's values.
fn row_values(t: &SnapshotTable, r: Row, at: &BinlogPosition) -> Result<Vec<Value>, SourceError> {
    r.unwrap()
        .into_iter()
        .zip(&t.schema.columns)
        .map(|(v, c)| from_row_value(v, c))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|detail| SourceError::Schema {
            table: t.schema.name.clone(),
            position: at.clone(),
            detail,
        })
}

fn ident(name: &TableName) -> String {
    format!("{}.{}", quote(&name.db), quote(&name.table))
}

/// `pk OP (?, …)` with its parameters; key text in another character set goes back as
/// hex, relabelled.
fn key_condition(t: &SnapshotTable, op: &str, key: &[Value]) -> (String, Vec<mysql_async::Value>) {
    let s = &t.schema;
    let key_cols: Vec<String> = s.pk_columns().map(|c| quote(&c.name)).collect();
    let holes: Vec<String> = s
        .pk_columns()
        .map(|c| match foreign_charset(c) {
            Some(cs) => format!("CONVERT(UNHEX(?) USING {cs})"),
            None => "?".into(),
        })
        .collect();
    let tuple = |v: &[String]| {
        if v.len() == 1 {
            v[0].clone()
        } else {
            format!("({})", v.join(", "))
        }
    };
    let params = key
        .iter()
        .zip(s.pk_columns())
        .map(|(v, c)| match (foreign_charset(c), v) {
            (Some(_), Value::Bytes(b)) => rowlog_api::hex_param(b),
            _ => v.to_param(),
        })
        .collect();
    (
        format!("{} {op} {}", tuple(&key_cols), tuple(&holes)),
        params,
    )
}

/// `SELECT columns … WHERE after < pk <= upto ORDER BY pk LIMIT n`.
fn key_range_query(
    t: &SnapshotTable,
    columns: &str,
    after: Option<&[Value]>,
    upto: Option<&[Value]>,
    limit: u64,
) -> (String, Vec<mysql_async::Value>) {
    let mut conds = vec!["1 = 1".to_string()];
    let mut params = Vec::new();
    for (op, bound) in [(">", after), ("<=", upto)] {
        if let Some(k) = bound {
            let (c, p) = key_condition(t, op, k);
            conds.push(c);
            params.extend(p);
        }
    }
    let order: Vec<String> = t.schema.pk_columns().map(|c| quote(&c.name)).collect();
    (
        format!(
            "SELECT {columns} FROM {} WHERE {} ORDER BY {} LIMIT {limit}",
            ident(&t.schema.name),
            conds.join(" AND "),
            order.join(", ")
        ),
        params,
    )
}

impl SnapshotTable {
    /// Up to `limit` primary keys of this table on another server (the destination),
    /// after `after` and at most `upto`, in key order, shaped as [`Self::binlog_shaped`].
    /// Errors are described in text: they are the other server's.
    pub async fn read_keys(
        &self,
        conn: &mut Conn,
        after: Option<&[Value]>,
        upto: Option<&[Value]>,
        limit: u64,
    ) -> Result<Vec<Vec<Value>>, String> {
        let (q, params) = key_range_query(self, &self.key_select(), after, upto, limit);
        let rows: Vec<Row> = conn
            .exec(&q, params)
            .await
            .map_err(|e| format!("query `{q}` failed: {e}"))?;
        rows.into_iter().map(|r| self.key_of(r)).collect()
    }

    /// The select list of the primary key's columns.
    fn key_select(&self) -> String {
        let columns: Vec<&str> = self
            .schema
            .primary_key
            .iter()
            .map(|&i| self.select[i].as_str())
            .collect();
        columns.join(", ")
    }

    /// A row of [`Self::key_select`] as key values, shaped as [`Self::binlog_shaped`].
    fn key_of(&self, row: Row) -> Result<Vec<Value>, String> {
        let s = &self.schema;
        row.unwrap()
            .into_iter()
            .zip(&s.primary_key)
            .map(|(v, &i)| from_row_value(v, &s.columns[i]).and_then(|v| self.shape(i, v)))
            .collect()
    }

    /// A snapshot row with its primary-key values in the form the binlog decoder gives
    /// them: changes are partitioned and coalesced by those bytes, so a copied row and a
    /// streamed change of the same key must agree. A key column type whose binlog form
    /// differs in a way not converted here is refused.
    pub fn binlog_shaped(&self, mut row: Vec<Value>) -> Result<Vec<Value>, String> {
        for &i in &self.schema.primary_key {
            if let Some(v) = row.get_mut(i) {
                *v = self.shape(i, std::mem::replace(v, Value::Null))?;
            }
        }
        Ok(row)
    }

    fn shape(&self, i: usize, v: Value) -> Result<Value, String> {
        let c = &self.schema.columns[i];
        let dt = self.data_types.get(i).map(String::as_str).unwrap_or("");
        Ok(match (dt, v) {
            (_, Value::Null) => Value::Null,
            (
                "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint",
                Value::Int(x),
            ) if c.unsigned => Value::UInt(x as u64),
            (
                "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint",
                Value::UInt(x),
            ) if !c.unsigned => Value::Int(x as i64),
            ("tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint", v) => v,
            ("decimal" | "numeric", Value::Bytes(b)) => Value::Decimal(
                rowlog_api::SmallText::from_utf8(b).map_err(|e| format!("decimal text: {e}"))?,
            ),
            (
                "char" | "varchar" | "binary" | "varbinary" | "tinytext" | "text" | "mediumtext"
                | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "date"
                | "datetime" | "time" | "decimal" | "numeric",
                v,
            ) => v,
            (other, _) => {
                return Err(format!(
                "key column `{}` is of type {other}, which a copy cannot key like the binlog does",
                c.name
            ))
            }
        })
    }
}

fn utf8_compatible(cs: &str) -> bool {
    matches!(cs, "utf8mb4" | "utf8mb3" | "utf8" | "ascii" | "binary")
}

/// The character set of a text column whose bytes are not utf8 (read raw, written
/// back relabelled).
fn foreign_charset(c: &Column) -> Option<&str> {
    let cs = c.charset_name.as_deref()?;
    (!utf8_compatible(cs) && cs.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then_some(cs)
}

/// A value read with the binary protocol, as the pipeline carries it.
fn from_row_value(v: mysql_async::Value, c: &Column) -> Result<Value, String> {
    use mysql_async::Value as My;
    Ok(match v {
        My::NULL => Value::Null,
        My::Int(i) => Value::Int(i),
        My::UInt(u) => Value::UInt(u),
        My::Float(f) => Value::Float(f),
        My::Double(d) => Value::Double(d),
        My::Bytes(b) => Value::Bytes(b.into()),
        My::Date(year, month, day, ..) if c.ty == ColumnType::Date => {
            Value::Date { year, month, day }
        }
        My::Date(year, month, day, hour, minute, second, micros) => Value::DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            micros,
        },
        My::Time(negative, days, h, minutes, seconds, micros) => Value::Time {
            negative,
            hours: days.saturating_mul(24).saturating_add(h as u32),
            minutes,
            seconds,
            micros,
        },
    })
}
