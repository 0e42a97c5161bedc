//! MariaDB-specific binlog events (types 160–171), which mysql_common does not know:
//! `read_data()` returns `None` for them and the body is parsed here by hand.
//!
//! Formats follow MariaDB's `log_event.h`; all integers are little-endian.

use rowlog_api::MariadbGtid;

pub const ANNOTATE_ROWS_EVENT: u8 = 160;
pub const BINLOG_CHECKPOINT_EVENT: u8 = 161;
pub const GTID_EVENT: u8 = 162;
pub const GTID_LIST_EVENT: u8 = 163;
pub const START_ENCRYPTION_EVENT: u8 = 164;
pub const QUERY_COMPRESSED_EVENT: u8 = 165;
/// 166–171: WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT v1 and v2 (`log_bin_compress=ON`).
pub const FIRST_COMPRESSED_ROWS_EVENT: u8 = 166;
pub const LAST_COMPRESSED_ROWS_EVENT: u8 = 171;

/// The group is a single statement with no BEGIN/COMMIT around it (DDL).
pub const FL_STANDALONE: u8 = 1;
const FL_GROUP_COMMIT_ID: u8 = 2;
/// The group is an XA transaction up to its XA PREPARE (MariaDB's `FL_PREPARED_XA`).
const FL_PREPARED_XA: u8 = 64;
/// The group ends an XA transaction (`XA COMMIT`/`XA ROLLBACK`): it carries the XID too.
const FL_COMPLETED_XA: u8 = 128;

/// `flags_extra` (MariaDB 10.8+), after the commit id or XID: the phases of an ALTER
/// binlogged in two (`binlog_alter_two_phase=ON`). Each phase is a standalone group
/// carrying the same ALTER statement: START ALTER is written before the ALTER runs,
/// then COMMIT ALTER when it succeeded or ROLLBACK ALTER when it failed or was killed.
const FL_EXTRA_MULTI_ENGINE: u8 = 1;
const FL_START_ALTER: u8 = 2;
const FL_COMMIT_ALTER: u8 = 4;
const FL_ROLLBACK_ALTER: u8 = 8;

/// A MariaDB GTID event: the start of an event group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GtidEvent {
    pub gtid: MariadbGtid,
    pub flags: u8,
    pub commit_id: Option<u64>,
    /// 0 when the event has none.
    pub flags_extra: u8,
}

impl GtidEvent {
    pub fn standalone(&self) -> bool {
        self.flags & FL_STANDALONE != 0
    }

    /// MariaDB: the group is an XA transaction's `XA START … XA PREPARE` part.
    pub fn prepared_xa(&self) -> bool {
        self.flags & FL_PREPARED_XA != 0
    }

    /// The group's statement is an ALTER's first phase (START ALTER) or its undoing
    /// (ROLLBACK ALTER) under `binlog_alter_two_phase`: neither changes the table. Only
    /// its COMMIT ALTER does, carrying the same statement.
    pub fn alter_not_done_here(&self) -> bool {
        self.flags_extra & (FL_START_ALTER | FL_ROLLBACK_ALTER) != 0
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses a GTID event body; `server_id` comes from the event header.
pub fn parse_gtid(body: &[u8], server_id: u32) -> Option<GtidEvent> {
    let seq = u64_at(body, 0)?;
    let domain = u32_at(body, 8)?;
    let flags = *body.get(12)?;
    let mut at = 13;
    let commit_id = if flags & FL_GROUP_COMMIT_ID != 0 {
        at += 8;
        Some(u64_at(body, 13)?)
    } else {
        None
    };
    if flags & (FL_PREPARED_XA | FL_COMPLETED_XA) != 0 {
        // formatID (4), gtrid length (1), bqual length (1), then both.
        let gtrid = *body.get(at + 4)? as usize;
        let bqual = *body.get(at + 5)? as usize;
        at += 6 + gtrid + bqual;
    }
    // Then `flags_extra`, when the body goes on; a body shorter than the fixed 19
    // bytes is padded with zeros, which read as "none".
    let flags_extra = body.get(at).copied().unwrap_or(0);
    if flags_extra & (FL_COMMIT_ALTER | FL_ROLLBACK_ALTER) != 0 {
        // The START ALTER's sequence number follows (after the engine count when
        // there is one): the phases must be whole.
        let seq_at = at + 1 + usize::from(flags_extra & FL_EXTRA_MULTI_ENGINE != 0);
        u64_at(body, seq_at)?;
    }
    Some(GtidEvent {
        gtid: MariadbGtid {
            domain,
            server: server_id,
            seq,
        },
        flags,
        commit_id,
        flags_extra,
    })
}

/// Parses a GTID_LIST event body: the binlog state at the start of a file.
pub fn parse_gtid_list(body: &[u8]) -> Option<Vec<MariadbGtid>> {
    let count = (u32_at(body, 0)? & 0x0fff_ffff) as usize;
    // Bound by the bytes actually present before allocating.
    if body.len() < 4 + count.checked_mul(16)? {
        return None;
    }
    (0..count)
        .map(|i| {
            let at = 4 + i * 16;
            Some(MariadbGtid {
                domain: u32_at(body, at)?,
                server: u32_at(body, at + 4)?,
                seq: u64_at(body, at + 8)?,
            })
        })
        .collect()
}

/// Parses a BINLOG_CHECKPOINT event body: the oldest binlog file still needed for crash recovery.
pub fn parse_binlog_checkpoint(body: &[u8]) -> Option<String> {
    let len = u32_at(body, 0)? as usize;
    let name = body.get(4..4usize.checked_add(len)?)?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// A human name for any event type code, for error messages.
pub fn event_name(code: u8) -> &'static str {
    match code {
        0 => "UNKNOWN",
        1 => "START_V3",
        2 => "QUERY",
        3 => "STOP",
        4 => "ROTATE",
        5 => "INTVAR",
        6 => "LOAD",
        7 => "SLAVE",
        8 => "CREATE_FILE",
        9 => "APPEND_BLOCK",
        10 => "EXEC_LOAD",
        11 => "DELETE_FILE",
        12 => "NEW_LOAD",
        13 => "RAND",
        14 => "USER_VAR",
        15 => "FORMAT_DESCRIPTION",
        16 => "XID",
        17 => "BEGIN_LOAD_QUERY",
        18 => "EXECUTE_LOAD_QUERY",
        19 => "TABLE_MAP",
        20 => "PRE_GA_WRITE_ROWS",
        21 => "PRE_GA_UPDATE_ROWS",
        22 => "PRE_GA_DELETE_ROWS",
        23 => "WRITE_ROWS_V1",
        24 => "UPDATE_ROWS_V1",
        25 => "DELETE_ROWS_V1",
        26 => "INCIDENT",
        27 => "HEARTBEAT",
        28 => "IGNORABLE",
        29 => "ROWS_QUERY",
        30 => "WRITE_ROWS",
        31 => "UPDATE_ROWS",
        32 => "DELETE_ROWS",
        33 => "GTID",
        34 => "ANONYMOUS_GTID",
        35 => "PREVIOUS_GTIDS",
        36 => "TRANSACTION_CONTEXT",
        37 => "VIEW_CHANGE",
        38 => "XA_PREPARE_LOG",
        39 => "PARTIAL_UPDATE_ROWS",
        40 => "TRANSACTION_PAYLOAD",
        41 => "HEARTBEAT_V2",
        42 => "GTID_TAGGED_LOG",
        ANNOTATE_ROWS_EVENT => "MARIADB_ANNOTATE_ROWS",
        BINLOG_CHECKPOINT_EVENT => "MARIADB_BINLOG_CHECKPOINT",
        GTID_EVENT => "MARIADB_GTID",
        GTID_LIST_EVENT => "MARIADB_GTID_LIST",
        START_ENCRYPTION_EVENT => "MARIADB_START_ENCRYPTION",
        QUERY_COMPRESSED_EVENT => "MARIADB_QUERY_COMPRESSED",
        166 => "MARIADB_WRITE_ROWS_COMPRESSED_V1",
        167 => "MARIADB_UPDATE_ROWS_COMPRESSED_V1",
        168 => "MARIADB_DELETE_ROWS_COMPRESSED_V1",
        169 => "MARIADB_WRITE_ROWS_COMPRESSED",
        170 => "MARIADB_UPDATE_ROWS_COMPRESSED",
        171 => "MARIADB_DELETE_ROWS_COMPRESSED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_event_with_commit_id() {
        let mut body = 42u64.to_le_bytes().to_vec();
        body.extend_from_slice(&3u32.to_le_bytes());
        body.push(FL_GROUP_COMMIT_ID | FL_STANDALONE);
        body.extend_from_slice(&7u64.to_le_bytes());
        let ev = parse_gtid(&body, 9).unwrap();
        assert_eq!(ev.gtid.to_string(), "3-9-42");
        assert!(ev.standalone());
        assert_eq!(ev.commit_id, Some(7));
        assert!(
            parse_gtid(&body[..12], 9).is_none(),
            "truncated body must not parse"
        );
    }

    #[test]
    fn gtid_event_phases_of_a_two_phase_alter() {
        let head = |flags: u8| {
            let mut body = 42u64.to_le_bytes().to_vec();
            body.extend_from_slice(&0u32.to_le_bytes());
            body.push(flags);
            body
        };
        // START ALTER: no commit id, flags_extra right after flags.
        let mut start = head(FL_STANDALONE);
        start.push(FL_START_ALTER);
        start.resize(19, 0);
        assert!(parse_gtid(&start, 1).unwrap().alter_not_done_here());
        // COMMIT ALTER with a commit id: flags_extra after it, then the START's seq.
        let mut commit = head(FL_STANDALONE | FL_GROUP_COMMIT_ID);
        commit.extend_from_slice(&7u64.to_le_bytes());
        commit.push(FL_COMMIT_ALTER);
        commit.extend_from_slice(&41u64.to_le_bytes());
        let ev = parse_gtid(&commit, 1).unwrap();
        assert!(!ev.alter_not_done_here());
        assert_eq!(ev.commit_id, Some(7));
        assert!(parse_gtid(&commit[..commit.len() - 1], 1).is_none());
        let mut rollback = head(FL_STANDALONE);
        rollback.push(FL_ROLLBACK_ALTER);
        rollback.extend_from_slice(&41u64.to_le_bytes());
        assert!(parse_gtid(&rollback, 1).unwrap().alter_not_done_here());
        // A plain group: zero padding, no flags_extra.
        let mut plain = head(FL_STANDALONE);
        plain.resize(19, 0);
        assert!(!parse_gtid(&plain, 1).unwrap().alter_not_done_here());
    }

    #[test]
    fn gtid_list_rejects_counts_larger_than_the_body() {
        let mut body = 2u32.to_le_bytes().to_vec();
        for (d, s, n) in [(0u32, 1u32, 5u64), (1, 2, 6)] {
            body.extend_from_slice(&d.to_le_bytes());
            body.extend_from_slice(&s.to_le_bytes());
            body.extend_from_slice(&n.to_le_bytes());
        }
        assert_eq!(parse_gtid_list(&body).unwrap().len(), 2);
        let mut huge = 0x0fff_ffffu32.to_le_bytes().to_vec();
        huge.extend_from_slice(&body[4..]);
        assert!(parse_gtid_list(&huge).is_none());
    }

    #[test]
    fn binlog_checkpoint_name() {
        let mut body = 13u32.to_le_bytes().to_vec();
        body.extend_from_slice(b"binlog.000001");
        assert_eq!(parse_binlog_checkpoint(&body).unwrap(), "binlog.000001");
        assert!(parse_binlog_checkpoint(&body[..10]).is_none());
    }
}
