//! Source positions. A binlog position is (file sequence number, byte offset): the file
//! base name is kept for display and for asking the server, but ordering uses the
//! number, so `binlog.000010` sorts after `binlog.000009`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A binlog file name split into its base and its sequence number (`binlog.000042`).
///
/// The base is shared (`Arc<str>`): every change carries two positions, and a string
/// allocated and freed per change was a fifth of the allocations a change costs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BinlogFileName {
    #[serde(with = "shared_str")]
    pub base: Arc<str>,
    pub seq: u32,
    /// Digits in the numeric suffix, to print the name back exactly as the server wrote it.
    pub width: u8,
}

/// Serde for `Arc<str>` as a plain string, without serde's `rc` feature (which would
/// rebuild serde for every crate of the build).
mod shared_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(d).map(Arc::from)
    }
}

impl BinlogFileName {
    /// Parses `base.NNNNNN`. Returns `None` when the name has no numeric extension.
    pub fn parse(name: &str) -> Option<Self> {
        let (base, digits) = name.rsplit_once('.')?;
        if base.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq = digits.parse().ok()?;
        let width = u8::try_from(digits.len()).ok()?;
        Some(Self {
            base: base.into(),
            seq,
            width,
        })
    }
}

impl fmt::Display for BinlogFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:0width$}",
            self.base,
            self.seq,
            width = self.width as usize
        )
    }
}

impl Ord for BinlogFileName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.seq
            .cmp(&other.seq)
            .then_with(|| self.base.cmp(&other.base))
    }
}
impl PartialOrd for BinlogFileName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A byte position in the source's binlog: the place a replica asks the server to
/// stream from. Only positions at a transaction boundary are valid resume points.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct BinlogPosition {
    pub file: BinlogFileName,
    pub pos: u64,
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePositionError(pub String);

impl fmt::Display for ParsePositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a binlog position of the form FILE.NNNNNN:POS",
            self.0
        )
    }
}
impl std::error::Error for ParsePositionError {}

impl FromStr for BinlogPosition {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_owned());
        let (file, pos) = s.rsplit_once(':').ok_or_else(err)?;
        let file = BinlogFileName::parse(file).ok_or_else(err)?;
        let pos = pos.parse().map_err(|_| err())?;
        Ok(Self { file, pos })
    }
}

/// The identity of one change in the source stream: the reading epoch, the end position
/// of the rows event that carried it and the change's index within that event.
/// Strictly increasing along the binlog of one server within an epoch, so after a
/// restart the pipeline can drop changes a log partition already holds instead of
/// appending them twice.
///
/// The epoch grows whenever reading deliberately starts over somewhere positions do
/// not continue: `rowlog source reset` to an earlier position, or a resume by GTID on
/// another server of the topology (whose file numbers are its own). Everything read
/// in a new epoch sorts after everything before it, so nothing is taken for a
/// duplicate of what the log already holds.
///
/// Indexes from [`ChangeId::COPY_INDEX`] up are rows a copy placed into the stream at a
/// transaction boundary `event` (a re-snapshot while streaming): after every change of
/// the binlog up to there, before every later one. No rows event holds 2³¹ rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChangeId {
    pub epoch: u32,
    pub event: BinlogPosition,
    pub index: u32,
}

impl ChangeId {
    /// The first index of copied rows.
    pub const COPY_INDEX: u32 = 1 << 31;

    /// Whether this is a copied row rather than a change read from the binlog.
    pub fn is_copy(&self) -> bool {
        self.index >= Self::COPY_INDEX
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch > 0 {
            write!(f, "e{}/", self.epoch)?;
        }
        write!(f, "{}#{}", self.event, self.index)
    }
}

/// MariaDB's GTID position: the last GTID applied in each replication domain, e.g.
/// `0-1-120,1-2-7` (`@@gtid_binlog_pos`, `@slave_connect_state`). One entry per
/// domain, sorted by domain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MariadbGtidPos(Vec<MariadbGtid>);

impl MariadbGtidPos {
    pub fn new(gtids: impl IntoIterator<Item = MariadbGtid>) -> Self {
        let mut s = Self::default();
        for g in gtids {
            s.apply(g);
        }
        s
    }

    /// The state after a transaction with GTID `g` committed.
    pub fn apply(&mut self, g: MariadbGtid) {
        match self.0.binary_search_by_key(&g.domain, |x| x.domain) {
            Ok(i) => self.0[i] = g,
            Err(i) => self.0.insert(i, g),
        }
    }

    pub fn gtids(&self) -> &[MariadbGtid] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for MariadbGtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for MariadbGtidPos {
    type Err = ParsePositionError;
    /// `D-S-N[,D-S-N…]`; the empty string is the empty state.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_owned());
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (Some(d), Some(srv), Some(n), None) = (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(err());
            };
            let g = MariadbGtid {
                domain: d.parse().map_err(|_| err())?,
                server: srv.parse().map_err(|_| err())?,
                seq: n.parse().map_err(|_| err())?,
            };
            if out.0.iter().any(|x| x.domain == g.domain) {
                return Err(err());
            }
            out.apply(g);
        }
        Ok(out)
    }
}

/// MySQL's GTID set (`@@gtid_executed`): per origin (server UUID, and tag since 8.4)
/// the transaction numbers executed, as sorted, disjoint, non-adjacent half-open
/// intervals. Printed as MySQL prints it: `uuid:1-5:7,uuid:tag:1-3`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MysqlGtidSet(Vec<MysqlGtidRanges>);

/// The part of a [`MysqlGtidSet`] of one origin.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MysqlGtidRanges {
    pub sid: [u8; 16],
    pub tag: Option<String>,
    /// `[start, end)` intervals, sorted, disjoint and non-adjacent.
    pub intervals: Vec<(u64, u64)>,
}

impl MysqlGtidSet {
    /// Adds the interval `[start, end)` of an origin.
    pub fn add_interval(&mut self, sid: [u8; 16], tag: Option<&str>, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let key = |r: &MysqlGtidRanges| (r.sid, r.tag.clone());
        let want = (sid, tag.map(str::to_owned));
        let i = match self.0.binary_search_by(|r| key(r).cmp(&want)) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(
                    i,
                    MysqlGtidRanges {
                        sid,
                        tag: want.1.clone(),
                        intervals: Vec::new(),
                    },
                );
                i
            }
        };
        let iv = &mut self.0[i].intervals;
        iv.push((start, end));
        iv.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(iv.len());
        for &(a, b) in iv.iter() {
            match merged.last_mut() {
                Some((_, e)) if a <= *e => *e = (*e).max(b),
                _ => merged.push((a, b)),
            }
        }
        *iv = merged;
    }

    /// The set after the transaction `g` committed.
    pub fn add(&mut self, g: &MysqlGtid) {
        self.add_interval(g.sid, g.tag.as_deref(), g.gno, g.gno + 1);
    }

    pub fn ranges(&self) -> &[MysqlGtidRanges] {
        &self.0
    }
}

fn write_uuid(f: &mut fmt::Formatter<'_>, sid: &[u8; 16]) -> fmt::Result {
    for (i, b) in sid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            f.write_str("-")?;
        }
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl fmt::Display for MysqlGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write_uuid(f, &r.sid)?;
            if let Some(tag) = &r.tag {
                write!(f, ":{tag}")?;
            }
            for &(a, b) in &r.intervals {
                if b == a + 1 {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{}", b - 1)?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for MysqlGtidSet {
    type Err = ParsePositionError;
    /// `uuid[:tag]:N[-M][:N[-M]…][,…]`, as `@@gtid_executed` prints it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_owned());
        let mut out = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.split(':');
            let sid = parse_uuid(fields.next().ok_or_else(err)?).ok_or_else(err)?;
            let mut tag: Option<&str> = None;
            let mut any = false;
            for field in fields {
                if field.starts_with(|c: char| c.is_ascii_digit()) {
                    let (a, b) = field.split_once('-').unwrap_or((field, field));
                    let (a, b): (u64, u64) =
                        (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?);
                    if a == 0 || b < a {
                        return Err(err());
                    }
                    out.add_interval(sid, tag, a, b + 1);
                    any = true;
                } else {
                    tag = Some(field);
                }
            }
            if !any {
                return Err(err());
            }
        }
        Ok(out)
    }
}

/// A server's GTID position, in its own dialect.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GtidState {
    MariaDb(MariadbGtidPos),
    MySql(MysqlGtidSet),
}

impl GtidState {
    /// The position after the transaction `g` committed (a GTID of the other dialect
    /// leaves it as it is).
    pub fn apply(&mut self, g: &Gtid) {
        match (self, g) {
            (GtidState::MariaDb(s), Gtid::MariaDb(g)) => s.apply(*g),
            (GtidState::MySql(s), Gtid::MySql(g)) => s.add(g),
            _ => {}
        }
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtidState::MariaDb(s) => s.fmt(f),
            GtidState::MySql(s) => s.fmt(f),
        }
    }
}

impl FromStr for GtidState {
    type Err = ParsePositionError;
    /// MariaDB's `D-S-N,…` or MySQL's `uuid:N-M,…`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(GtidState::MySql)
        } else {
            s.parse().map(GtidState::MariaDb)
        }
    }
}

/// Where a source resumes: a binlog position on the server `server_id`, the GTID state
/// there when the server has GTIDs (MariaDB), and the reading epoch (see [`ChangeId`]).
/// Stored as the source checkpoint once everything before it is durable in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    pub position: BinlogPosition,
    pub gtid_state: Option<GtidState>,
    /// `@@server_id` of the server the position belongs to.
    pub server_id: u32,
    pub epoch: u32,
}

impl fmt::Display for ResumePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.position)?;
        if let Some(g) = &self.gtid_state {
            write!(f, " (gtid {g})")?;
        }
        Ok(())
    }
}

/// A MariaDB GTID: replication domain, originating server, sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct MariadbGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for MariadbGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A MySQL GTID: the originating server's UUID, an optional tag (MySQL 8.4+) and the
/// transaction number, printed as `uuid[:tag]:gno`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct MysqlGtid {
    pub sid: [u8; 16],
    pub tag: Option<String>,
    pub gno: u64,
}

impl fmt::Display for MysqlGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_uuid(f, &self.sid)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        write!(f, ":{}", self.gno)
    }
}

/// A transaction's global id, in the dialect of the server that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Gtid {
    MariaDb(MariadbGtid),
    MySql(MysqlGtid),
}

impl Gtid {
    /// The number that grows with each transaction of its origin (MariaDB's sequence,
    /// MySQL's gno): what a progress gauge can show.
    pub fn sequence(&self) -> u64 {
        match self {
            Gtid::MariaDb(g) => g.seq,
            Gtid::MySql(g) => g.gno,
        }
    }
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MariaDb(g) => g.fmt(f),
            Gtid::MySql(g) => g.fmt(f),
        }
    }
}

impl From<MariadbGtid> for Gtid {
    fn from(g: MariadbGtid) -> Self {
        Gtid::MariaDb(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_file_number_then_offset() {
        let a: BinlogPosition = "binlog.000009:900".parse().unwrap();
        let b: BinlogPosition = "binlog.000010:4".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "binlog.000010:4");
    }

    #[test]
    fn gtid_states_parse_print_and_advance_per_domain() {
        let mut s: MariadbGtidPos = "1-2-7, 0-1-120".parse().unwrap();
        assert_eq!(s.to_string(), "0-1-120,1-2-7");
        s.apply(MariadbGtid {
            domain: 1,
            server: 3,
            seq: 8,
        });
        s.apply(MariadbGtid {
            domain: 5,
            server: 1,
            seq: 1,
        });
        assert_eq!(s.to_string(), "0-1-120,1-3-8,5-1-1");
        assert_eq!(
            "".parse::<MariadbGtidPos>().unwrap(),
            MariadbGtidPos::default()
        );
        for bad in ["0-1", "0-1-2-3", "a-1-2", "0-1-2,0-3-4"] {
            assert!(bad.parse::<MariadbGtidPos>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mysql_gtid_sets_merge_intervals_and_print_like_gtid_executed() {
        let text = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,3e11fa47-71ca-11e1-9e33-c80aa9429562:orders:1-3";
        let mut set: MysqlGtidSet = text.parse().unwrap();
        assert_eq!(set.to_string(), text);
        let sid = set.ranges()[0].sid;
        set.add(&MysqlGtid {
            sid,
            tag: None,
            gno: 6,
        });
        assert_eq!(
            set.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-7,3e11fa47-71ca-11e1-9e33-c80aa9429562:orders:1-3"
        );
        for bad in [
            "3e11fa47:1-5",
            "3e11fa47-71ca-11e1-9e33-c80aa9429562",
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:5-1",
        ] {
            assert!(bad.parse::<MysqlGtidSet>().is_err(), "{bad}");
        }
        assert!(matches!(
            "0-1-5".parse::<GtidState>(),
            Ok(GtidState::MariaDb(_))
        ));
        assert!(matches!(text.parse::<GtidState>(), Ok(GtidState::MySql(_))));
    }

    #[test]
    fn a_new_epoch_sorts_after_every_position_of_the_old_one() {
        let id = |epoch, p: &str| ChangeId {
            epoch,
            event: p.parse().unwrap(),
            index: 0,
        };
        assert!(id(1, "binlog.000001:4") > id(0, "binlog.009999:999999"));
        assert_eq!(id(2, "binlog.000001:4").to_string(), "e2/binlog.000001:4#0");
    }

    #[test]
    fn mysql_gtids_print_as_uuid_tag_and_number() {
        let mut sid = [0u8; 16];
        sid[0] = 0x3e;
        sid[15] = 0x01;
        let g = MysqlGtid {
            sid,
            tag: None,
            gno: 42,
        };
        assert_eq!(g.to_string(), "3e000000-0000-0000-0000-000000000001:42");
        let tagged = MysqlGtid {
            tag: Some("orders".into()),
            ..g
        };
        assert_eq!(
            Gtid::MySql(tagged).to_string(),
            "3e000000-0000-0000-0000-000000000001:orders:42"
        );
    }

    #[test]
    fn malformed_positions_are_rejected() {
        for s in [
            "binlog:4",
            "binlog.00001x:4",
            "binlog.000001",
            "binlog.000001:x",
            ".000001:4",
        ] {
            assert!(s.parse::<BinlogPosition>().is_err(), "{s}");
        }
    }
}
