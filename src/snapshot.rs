//! The initial snapshot: copy the replicated tables to the destination, then stream
//! the binlog from exactly where the copies leave off, with no change lost or applied
//! twice in effect.
//!
//! # How the hand-off is exact
//! Each table is copied through its own consistent read of the source, which comes
//! with the binlog position it corresponds to (the table's *floor*; see
//! `rowlog_mysql_binlog::SnapshotSession`). The copy holds every change at or before
//! the floor and none after it. Streaming then starts at a position taken before the
//! tables were listed (at or before every floor), and the sink drops each change whose
//! table has a floor at or after the change's position (compared as [`ChangeId`]s,
//! epoch first): what is dropped is in the copy, what is applied is not. A table
//! created after the listing has no copy and is streamed from its CREATE on. Schema changes at or before the floors of all their tables are
//! skipped the same way (a TRUNCATE before a table's floor must not empty its copy).
//!
//! The copy and the stream do not overlap in time: streaming starts once every table is
//! copied, so no streamed change can be overwritten by an older copied row. The source
//! must keep its binlogs from that start until then.
//!
//! # Resuming
//! Progress is saved to `<log.dir>/snapshot.state` after every chunk: per table its
//! floor, the last primary key copied, and whether it is done. After a crash a table
//! goes on after its last chunk, through a new consistent read at a later position;
//! its floor stays the earliest one, so the changes between are applied again over the
//! later rows, each key's in order, ending at the right state (upserts and deletes are
//! idempotent). A table without a primary key cannot be resumed that way (its rows
//! cannot be told apart): it is emptied and copied again.
//!
//! Destination tables are emptied when their copy starts, and created from the
//! source's `SHOW CREATE TABLE` when missing (`snapshot.create_tables`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rowlog_api::{
    BinlogPosition, ChangeEvent, ChangeId, Op, ResumePoint, SourceMeta, TableName, TableSchema,
    Value,
};
use rowlog_mysql_binlog::{SnapshotSession, SnapshotTable, SourceError, TableFilter};
use rowlog_mysql_sink::{MySqlSink, SinkError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{Config, SnapshotMode};
use crate::log::{atomic_file, LogError, PartitionedLog, SourceCheckpoint};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: reading the source failed")]
    Source(#[from] SourceError),
    #[error("snapshot: writing {table} to the destination failed")]
    Sink {
        table: TableName,
        #[source]
        source: Box<SinkError>,
    },
    #[error("snapshot: the destination has no table {table} and snapshot.create_tables is false; create it, or set create_tables = true")]
    MissingTable { table: TableName },
    #[error("snapshot state")]
    State(#[from] LogError),
    #[error("snapshot state {path} cannot be decoded: {detail}")]
    StateCorrupt { path: PathBuf, detail: String },
}

/// One table's copy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableProgress {
    pub table: TableName,
    /// The earliest consistent read rows of this table were copied at: changes at or
    /// before it are in the copy.
    pub floor: Option<ResumePoint>,
    /// The last primary key copied (resume after it).
    pub last_key: Option<Vec<Value>>,
    pub rows: u64,
    pub chunks: u64,
    pub estimated_rows: u64,
    pub done: bool,
    /// The table's shape on the source when its copy started: a copy resumed after
    /// the source table changed shape starts over (state files of earlier versions
    /// have none, and resume as before).
    #[serde(default)]
    pub shape: Option<TableSchema>,
}

impl TableProgress {
    fn new(table: TableName) -> Self {
        Self {
            table,
            floor: None,
            last_key: None,
            rows: 0,
            chunks: 0,
            estimated_rows: 0,
            done: false,
            shape: None,
        }
    }
}

/// Everything a snapshot stores, in `<log.dir>/snapshot.state`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The reading epoch of this run's floors: that of the checkpoint the stream goes on
    /// from (each floor keeps the epoch it was taken in).
    pub epoch: u32,
    pub tables: Vec<TableProgress>,
    /// Every table copied and the source checkpoint set to `start`.
    pub done: bool,
    /// Where streaming starts once every table is copied: a position taken before the
    /// tables were listed (see [`run`]). None in states of earlier versions.
    #[serde(default)]
    pub start: Option<ResumePoint>,
    /// Tables whose copy had not started when they disappeared from the source (an
    /// interrupted snapshot, resumed after they were dropped), each with a floor
    /// taken after they were gone: their changes up to there, the DROP included, are
    /// dropped by the sink, since the destination never got the table.
    #[serde(default)]
    pub abandoned: Vec<AbandonedTable>,
}

/// See [`SnapshotState::abandoned`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AbandonedTable {
    pub table: TableName,
    pub floor: ResumePoint,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("snapshot.state")
}

impl SnapshotState {
    pub fn load(dir: &Path) -> Result<Option<Self>, SnapshotError> {
        let path = state_path(dir);
        match atomic_file::read(&path)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| SnapshotError::StateCorrupt {
                        path,
                        detail: e.to_string(),
                    })
            }
        }
    }

    fn save(&self, dir: &Path) -> Result<(), SnapshotError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| SnapshotError::StateCorrupt {
            path: state_path(dir),
            detail: e.to_string(),
        })?;
        atomic_file::write(&state_path(dir), &bytes)?;
        Ok(())
    }

    /// The changes each copied table already holds, for the sink to drop: everything
    /// up to its floor, in this snapshot's epoch.
    pub fn floors(&self) -> Floors {
        let mut map: HashMap<TableName, ChangeId> = HashMap::new();
        let copied = self
            .tables
            .iter()
            .filter_map(|t| Some((&t.table, t.floor.as_ref()?)));
        let abandoned = self.abandoned.iter().map(|a| (&a.table, &a.floor));
        for (table, f) in abandoned.chain(copied) {
            let id = ChangeId {
                epoch: f.epoch,
                event: f.position.clone(),
                index: u32::MAX,
            };
            // A table dropped and made again has both: the later floor holds.
            match map.get(table) {
                Some(had) if *had >= id => {}
                _ => {
                    map.insert(table.clone(), id);
                }
            }
        }
        Floors(Arc::new(map))
    }
}

/// Per copied table, the last change its copy holds.
#[derive(Clone, Debug, Default)]
pub struct Floors(Arc<HashMap<TableName, ChangeId>>);

impl Floors {
    /// Whether the copy of `table` already holds the change `id`.
    pub fn covers(&self, table: &TableName, id: &ChangeId) -> bool {
        self.0.get(table).is_some_and(|f| {
            if id.is_copy() {
                // A re-snapshot places each copied row at or after the position its
                // read was taken at, so a row placed before this copy's floor holds an
                // older state than the copy (it was left in the log by an earlier
                // re-snapshot the sink had not applied). A row placed at the floor
                // itself is newer than anything the copy could know of: applied.
                (id.epoch, &id.event) < (f.epoch, &f.event)
            } else {
                id <= f
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the copies already hold the schema change `s`: every table it names has
    /// a floor at or after it, or (a database statement) every copied table of its
    /// database does. A TRUNCATE or DROP before a copy must not reach it.
    pub fn cover_schema_change(&self, s: &rowlog_api::SchemaChange) -> bool {
        let id = &s.source.id;
        match &s.database {
            Some(db) => {
                let mut of_db = self.0.iter().filter(|(t, _)| &t.db == db).peekable();
                of_db.peek().is_some() && of_db.all(|(_, f)| id <= f)
            }
            None => !s.tables.is_empty() && s.tables.iter().all(|t| self.covers(t, id)),
        }
    }
}

/// The reading epoch of a fresh snapshot. Over an existing log it is a new one: the
/// snapshot's positions are not comparable with what the log holds, and its floors
/// must sort after every change there, also one of a later epoch than the checkpoint
/// (rowlog moved to another server after its last checkpoint). Floors in the log's
/// epoch would sort before the stream, which then reads in an epoch after the log's:
/// every change before a floor would be applied over the copy, twice for a keyless
/// table.
fn fresh_epoch<L: PartitionedLog>(log: &L, checkpoint: Option<&SourceCheckpoint>) -> u32 {
    checkpoint
        .map(|c| c.resume.epoch)
        .max(log.last_epoch())
        .map_or(0, |e| e + 1)
}

/// What a snapshot run did: the tables it copied (or finished copying).
pub struct Outcome {
    pub rows: u64,
    pub tables: usize,
    pub seconds: f64,
}

/// Called by the daemon before streaming starts: runs (or resumes) the snapshot when
/// `snapshot.mode` asks for one, and returns the floors the sink must respect (also
/// those of an earlier, finished snapshot). `None` when shutdown came first.
pub async fn before_streaming<L: PartitionedLog>(
    cfg: &Config,
    log: &L,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<Option<Floors>, SnapshotError> {
    let dir = &cfg.log.dir;
    let state = SnapshotState::load(dir)?;
    let checkpoint = log.checkpoint().await?;
    let unfinished = state.as_ref().is_some_and(|s| !s.done);
    let wanted = match cfg.snapshot.mode {
        SnapshotMode::Never => unfinished,
        SnapshotMode::Initial => unfinished || checkpoint.is_none(),
        SnapshotMode::WhenNeeded => {
            unfinished
                || match &checkpoint {
                    None => true,
                    Some(c) => purged(cfg, &c.resume.position).await?,
                }
        }
    };
    if !wanted {
        return Ok(Some(state.map(|s| s.floors()).unwrap_or_default()));
    }
    let epoch = fresh_epoch(log, checkpoint.as_ref());
    let state = match state {
        Some(s) if !s.done => s,
        _ => SnapshotState {
            epoch,
            tables: Vec::new(),
            done: false,
            start: None,
            abandoned: Vec::new(),
        },
    };
    let Some(outcome) = run(
        cfg,
        log,
        state,
        &TableFilter::default(),
        true,
        metrics,
        shutdown,
        |_| {},
    )
    .await?
    else {
        return Ok(None);
    };
    info!(
        tables = outcome.tables,
        rows = outcome.rows,
        seconds = outcome.seconds,
        "snapshot done; streaming from its position"
    );
    Ok(Some(
        SnapshotState::load(dir)?
            .map(|s| s.floors())
            .unwrap_or_default(),
    ))
}

/// Whether the binlog file of `position` is gone from the source.
async fn purged(cfg: &Config, position: &BinlogPosition) -> Result<bool, SnapshotError> {
    match rowlog_mysql_binlog::locate_position(&cfg.source, position.clone()).await {
        Ok(_) => Ok(false),
        Err(SourceError::PositionPurged { .. }) => {
            warn!(%position, "the stored position is no longer on the source; snapshot.mode = \"when_needed\" copies the tables again");
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// A line of progress, for `rowlog snapshot` to print.
pub struct Progress<'a> {
    pub table: &'a TableName,
    pub rows: u64,
    pub estimated_rows: u64,
    pub done: bool,
}

/// Copies the replicated tables `only` selects, except those `state` shows this snapshot
/// has finished (a finished snapshot's tables are copied anew). With `set_checkpoint` the
/// source checkpoint then moves to the snapshot's start, taken before the tables were
/// listed, where streaming starts; without it the stream goes on from the stored
/// checkpoint. Either way the floors filter what the copies hold. `None` when shutdown
/// came first (progress is saved).
#[allow(clippy::too_many_arguments)]
pub async fn run<L: PartitionedLog>(
    cfg: &Config,
    log: &L,
    mut state: SnapshotState,
    only: &TableFilter,
    set_checkpoint: bool,
    metrics: &Metrics,
    shutdown: &Shutdown,
    progress: impl Fn(Progress<'_>) + Send + Sync,
) -> Result<Option<Outcome>, SnapshotError> {
    let started = Instant::now();
    let dir = cfg.log.dir.clone();
    // Where streaming will start: a position taken before the tables are listed, kept
    // across resumes. Every floor is after it, so a copied table's changes from there
    // to its floor are dropped as the copy's; a table created after the listing (not
    // copied) has its CREATE and every row after it. (Starting at the lowest floor
    // instead lost such a table when it was created before that floor.) A state saved
    // by an earlier version that is resumed has none: it starts at the lowest floor.
    let fresh = state.done || state.tables.is_empty();
    if set_checkpoint && fresh {
        state.start = Some(source_position(cfg, state.epoch).await?);
    }
    // Every replicated table `only` selects is (re)copied unless this very snapshot
    // has finished it already.
    let listed = rowlog_mysql_binlog::list_tables(&cfg.source, only).await?;
    // A table dropped (or renamed, or no longer replicated) since an interrupted copy
    // began is not copied on: describing it would fail the same way at every start.
    // Its changes up to the drop are in the log, and the drop with them.
    let mut gone_unstarted = Vec::new();
    state.tables.retain(|t| {
        let gone = !t.done && only.includes(&t.table) && !listed.contains(&t.table);
        if gone {
            warn!(table = %t.table, "table no longer on the source (or no longer replicated); its unfinished copy is abandoned");
            if t.floor.is_none() {
                gone_unstarted.push(t.table.clone());
            }
        }
        !gone
    });
    if set_checkpoint && !gone_unstarted.is_empty() {
        abandon(cfg, &mut state, gone_unstarted).await?;
    }
    for table in listed {
        match state.tables.iter_mut().find(|t| t.table == table) {
            Some(t) if !t.done || state.done => {
                if state.done {
                    *t = TableProgress::new(table);
                }
            }
            Some(_) => {}
            None => state.tables.push(TableProgress::new(table)),
        }
    }
    state.done = false;
    state.save(&dir)?;
    metrics.snapshot_tables(
        state.tables.len(),
        state.tables.iter().filter(|t| t.done).count(),
    );
    let queue: VecDeque<usize> = (0..state.tables.len())
        .filter(|&i| !state.tables[i].done)
        .collect();
    let copied: Vec<usize> = queue.iter().copied().collect();
    info!(tables = queue.len(), epoch = state.epoch, "snapshot starts");
    let shared = Shared {
        state: Mutex::new(state),
        queue: Mutex::new(queue),
        dir: dir.clone(),
    };
    let workers = cfg.snapshot.concurrency.max(1) as usize;
    // The first worker that fails ends the copy: the others are dropped where they
    // are (a chunk cut short is rolled back with its connection, and copied again on
    // the next start, after the last chunk the state file holds), instead of copying
    // every remaining table before the error is reported.
    futures_util::future::try_join_all(
        (0..workers).map(|_| copy_tables(cfg, &shared, metrics, shutdown, &progress)),
    )
    .await?;
    let mut state = shared.state.into_inner().unwrap_or_else(|e| e.into_inner());
    if state.tables.iter().any(|t| !t.done) {
        info!("snapshot interrupted; it resumes after its last chunk on the next start");
        return Ok(None);
    }
    if set_checkpoint {
        let lowest_floor = state
            .tables
            .iter()
            .filter_map(|t| t.floor.clone())
            .filter(|f| f.epoch == state.epoch)
            .min_by(|a, b| a.position.cmp(&b.position));
        let start = match state.start.clone().or(lowest_floor) {
            Some(s) => s,
            // Nothing to copy, from a state without a start: stream from now.
            None => source_position(cfg, state.epoch).await?,
        };
        log.store_checkpoint(start).await?;
    }
    state.done = true;
    state.save(&dir)?;
    Ok(Some(Outcome {
        rows: copied.iter().map(|&i| state.tables[i].rows).sum(),
        tables: copied.len(),
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// Tables whose copy never started and that are gone from the source now: changes to
/// them from before the stream's start (the lowest floor) up to their DROP are still
/// in the binlog, and the destination never got the table (the copy makes it), so
/// applying them would halt their partition. They get a floor taken now, after the
/// listing found them gone, which drops those changes. (A table of the same name made
/// again in the moment between the listing and that floor would lose its CREATE.) A
/// destination that has such a table of its own gets the changes as before.
async fn abandon(
    cfg: &Config,
    state: &mut SnapshotState,
    tables: Vec<TableName>,
) -> Result<(), SnapshotError> {
    let sink_error = |table: &TableName, source| SnapshotError::Sink {
        table: table.clone(),
        source: Box::new(source),
    };
    let mut sink = MySqlSink::connect(&cfg.sink, &cfg.name)
        .await
        .map_err(|e| sink_error(&tables[0], e))?;
    let floor = source_position(cfg, state.epoch).await?;
    for table in tables {
        let exists = sink
            .table_exists(&table)
            .await
            .map_err(|e| sink_error(&table, e))?;
        if !exists {
            info!(table = %table, floor = %floor.position, "the destination never got this table: its changes up to here are not applied");
            state.abandoned.push(AbandonedTable {
                table,
                floor: floor.clone(),
            });
        }
    }
    state.save(&cfg.log.dir)
}

/// The source's position now (a consistent read's), in reading epoch `epoch`.
async fn source_position(cfg: &Config, epoch: u32) -> Result<ResumePoint, SnapshotError> {
    let s = SnapshotSession::open(&cfg.source).await?;
    let p = ResumePoint {
        epoch,
        ..s.position.clone()
    };
    s.close().await;
    Ok(p)
}

struct Shared {
    state: Mutex<SnapshotState>,
    queue: Mutex<VecDeque<usize>>,
    dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under these locks is one step; a panicking holder leaves them whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One snapshot worker: takes tables from the queue until it is empty or shutdown.
async fn copy_tables(
    cfg: &Config,
    shared: &Shared,
    metrics: &Metrics,
    shutdown: &Shutdown,
    progress: &(impl Fn(Progress<'_>) + Send + Sync),
) -> Result<(), SnapshotError> {
    let mut sink: Option<MySqlSink> = None;
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        let Some(i) = lock(&shared.queue).pop_front() else {
            return Ok(());
        };
        let entry = lock(&shared.state).tables[i].clone();
        let name = entry.table.clone();
        let sink_error = |source| SnapshotError::Sink {
            table: name.clone(),
            source: Box::new(source),
        };
        let s = match &mut sink {
            Some(s) => s,
            None => sink.insert(
                MySqlSink::connect(&cfg.sink, &cfg.name)
                    .await
                    .map_err(sink_error)?,
            ),
        };
        let mut session = SnapshotSession::open(&cfg.source).await?;
        let table = session.describe(&name).await?;
        let created = if cfg.snapshot.create_tables {
            s.create_table_if_missing(&name, &table.create)
                .await
                .map_err(sink_error)?
        } else {
            let exists = s.table_exists(&name).await.map_err(sink_error)?;
            if !exists {
                return Err(SnapshotError::MissingTable { table: name });
            }
            false
        };
        // A copy that started before made the destination table in the shape the
        // source table had then; if that shape changed since, the rows read now would
        // not fit it (the stream applies the ALTER only later): the copy starts over,
        // into a table made anew (when rowlog does not make tables, the destination's
        // must have the new shape: if it has not, the copy fails naming the column).
        let reshaped = !created
            && entry
                .shape
                .as_ref()
                .is_some_and(|was| was != &*table.schema);
        if reshaped {
            warn!(table = %name, "the table changed shape on the source while its copy was interrupted; copying it again from the start");
            if cfg.snapshot.create_tables {
                s.recreate_table(&name, &table.create)
                    .await
                    .map_err(sink_error)?;
            }
        }
        // A table starts over (emptied) unless chunks of it are copied, it has a key to
        // go on after, and its shape is the one its copy started with.
        let resume = entry.last_key.is_some() && !table.schema.keyless && !reshaped;
        let epoch = lock(&shared.state).epoch;
        let here = ResumePoint {
            epoch,
            ..session.position.clone()
        };
        let (mut last_key, mut rows, mut chunks, floor) = if resume {
            (
                entry.last_key.clone(),
                entry.rows,
                entry.chunks,
                entry.floor.clone().unwrap_or(here),
            )
        } else {
            if !created {
                s.empty_table(&name).await.map_err(sink_error)?;
            }
            (None, 0, 0, here)
        };
        {
            let mut st = lock(&shared.state);
            let t = &mut st.tables[i];
            t.floor = Some(floor.clone());
            t.estimated_rows = table.estimated_rows;
            t.shape = Some((*table.schema).clone());
            t.last_key = last_key.clone();
            t.rows = rows;
            t.chunks = chunks;
            st.save(&shared.dir)?;
        }
        info!(table = %name, floor = %floor.position, resume, "copying table");
        // A keyless table is read in one streamed pass (no key to go on after); a table
        // with a key chunk by chunk in key order.
        let mut reader = if table.schema.keyless {
            Chunks::Keyless(session.read_keyless(&table).await?)
        } else {
            Chunks::Keyed(&mut session)
        };
        loop {
            if shutdown.is_triggered() {
                if let Chunks::Keyless(rows) = reader {
                    rows.cancel().await;
                }
                session.close().await;
                return Ok(());
            }
            let batch = match &mut reader {
                Chunks::Keyless(rows) => rows.next_chunk(cfg.snapshot.chunk_rows).await?,
                Chunks::Keyed(session) => {
                    session
                        .read_chunk(&table, last_key.as_deref(), cfg.snapshot.chunk_rows)
                        .await?
                }
            };
            let n = batch.len() as u64;
            let last = batch
                .last()
                .filter(|_| !table.schema.keyless)
                .map(|r| key_of(&table, r));
            let changes: Vec<ChangeEvent> = batch
                .into_iter()
                .map(|row| snapshot_change(&table, row, &floor))
                .collect();
            s.apply_without_progress(&changes)
                .await
                .map_err(sink_error)?;
            rows += n;
            chunks += 1;
            let finished = n < cfg.snapshot.chunk_rows;
            if last.is_some() {
                last_key = last;
            }
            {
                let mut st = lock(&shared.state);
                let t = &mut st.tables[i];
                t.last_key = last_key.clone();
                t.rows = rows;
                t.chunks = chunks;
                t.done = finished;
                st.save(&shared.dir)?;
                metrics.snapshot_chunk(&name, n);
                if finished {
                    metrics.snapshot_tables(
                        st.tables.len(),
                        st.tables.iter().filter(|t| t.done).count(),
                    );
                }
            }
            progress(Progress {
                table: &name,
                rows,
                estimated_rows: table.estimated_rows,
                done: finished,
            });
            if finished {
                break;
            }
        }
        drop(reader);
        session.close().await;
        info!(table = %name, rows, chunks, "table copied");
    }
}

/// Where a table's copy reads its chunks from.
enum Chunks<'a> {
    Keyed(&'a mut SnapshotSession),
    Keyless(rowlog_mysql_binlog::KeylessRows<'a>),
}

fn key_of(t: &SnapshotTable, row: &[Value]) -> Vec<Value> {
    t.schema
        .primary_key
        .iter()
        .map(|&i| row[i].clone())
        .collect()
}

/// A copied row as an insert the sink applies (upsert, or REPLACE, or plain INSERT for
/// a keyless table), marked with the snapshot's position.
fn snapshot_change(t: &SnapshotTable, row: Vec<Value>, floor: &ResumePoint) -> ChangeEvent {
    ChangeEvent {
        table: t.schema.clone(),
        op: Op::Insert,
        before: None,
        after: Some(row),
        source: SourceMeta {
            id: ChangeId {
                epoch: floor.epoch,
                event: floor.position.clone(),
                index: 0,
            },
            txn_start: floor.position.clone(),
            gtid: None,
            commit_time_ms: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u32, pos: &str, index: u32) -> ChangeId {
        ChangeId {
            epoch,
            event: pos.parse().expect("a binlog position"),
            index,
        }
    }

    /// A log that holds changes of a later epoch than its checkpoint (an older rowlog
    /// moved to another server and stopped before its next checkpoint): a fresh
    /// snapshot's floors sort after them, as the stream after the snapshot does.
    #[tokio::test]
    async fn a_fresh_snapshot_reads_in_an_epoch_after_everything_the_log_holds() {
        use crate::log::{AppendBatch, EmbeddedLog};
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), 2, 1 << 20).unwrap();
        let checkpoint = |epoch| SourceCheckpoint {
            resume: ResumePoint {
                position: "binlog.000001:4".parse().unwrap(),
                gtid_state: None,
                server_id: 1,
                epoch,
            },
            ends: vec![0, 0],
        };
        assert_eq!(fresh_epoch(&log, None), 0, "an empty log, no checkpoint");
        assert_eq!(fresh_epoch(&log, Some(&checkpoint(1))), 2);

        let mut c = crate::tools::bench_log::change(&crate::tools::bench_log::schema(), 1);
        c.source.id.epoch = 2;
        let mut batch = AppendBatch::new(2);
        batch.partitions[1].push(c.into());
        log.append(batch).await.unwrap();
        assert_eq!(
            fresh_epoch(&log, Some(&checkpoint(1))),
            3,
            "after the log's epoch 2, not in it"
        );
        assert_eq!(fresh_epoch(&log, None), 3);
        assert_eq!(fresh_epoch(&log, Some(&checkpoint(4))), 5);
    }

    #[test]
    fn copied_rows_placed_before_a_floor_are_older_than_its_copy() {
        let t = TableName::new("app", "t");
        let floors = Floors(Arc::new(HashMap::from([(
            t.clone(),
            id(2, "binlog.000002:500", u32::MAX),
        )])));
        let copy = ChangeId::COPY_INDEX;
        // Left in the log by an earlier re-snapshot: older than the copy.
        assert!(floors.covers(&t, &id(2, "binlog.000002:400", copy)));
        assert!(floors.covers(&t, &id(2, "binlog.000001:900", copy + 7)));
        assert!(floors.covers(&t, &id(1, "binlog.000003:4", copy)));
        // Placed at the floor or after it, or in a later epoch: newer, applied.
        assert!(!floors.covers(&t, &id(2, "binlog.000002:500", copy)));
        assert!(!floors.covers(&t, &id(2, "binlog.000002:501", copy)));
        assert!(!floors.covers(&t, &id(3, "binlog.000001:4", copy)));
        // Binlog changes: covered up to the floor's whole event.
        assert!(floors.covers(&t, &id(2, "binlog.000002:500", 12)));
        assert!(!floors.covers(&t, &id(2, "binlog.000002:501", 0)));
        // Another table has no copy.
        let other = TableName::new("app", "u");
        assert!(!floors.covers(&other, &id(2, "binlog.000002:400", copy)));
    }
}
