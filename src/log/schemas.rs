//! The schema store: every table schema version the log's records refer to, in one
//! append-only file of frames (`schemas.log`), where a frame's offset is the schema id.
//! A schema is made durable before any record that refers to it, so a record's schema
//! can always be found.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rowlog_api::TableSchema;
use tracing::warn;

use super::frame::{self, Frame};
use super::{io, LogError};

#[derive(Default)]
struct Inner {
    by_id: Vec<Arc<TableSchema>>,
    ids: HashMap<Arc<TableSchema>, u32>,
    file: Option<File>,
    /// Where the last whole, synced frame ends: a failed write is cut back to here.
    len: u64,
    /// Set when a failed write could not be cut back: the file may end in a torn
    /// frame, after which a new one would be lost on reopen, so nothing more is
    /// written until the store is reopened (and its tail truncated).
    failed: Option<String>,
}

pub struct SchemaStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves only in-memory maps, which stay consistent
    // (entries are pushed after the file write succeeds).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SchemaStore {
    /// Opens (or creates, when `writable`) the store, truncating a torn last frame.
    pub fn open(path: &Path, writable: bool) -> Result<Self, LogError> {
        let store = Self {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner::default()),
        };
        let valid_len = store.load()?;
        if writable {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(path)
                .map_err(io("open", path))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len > valid_len {
                warn!(file = %path.display(), dropped_bytes = len - valid_len, "truncating torn tail of schema store");
                file.set_len(valid_len)
                    .and_then(|_| file.sync_data())
                    .map_err(io("truncate", path))?;
            }
            file.flush().ok();
            let mut inner = lock(&store.inner);
            inner.file = Some(file);
            inner.len = valid_len;
        }
        Ok(store)
    }

    /// Reads every whole frame; returns the length of the valid prefix.
    fn load(&self) -> Result<u64, LogError> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io("read", &self.path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(LogError::Io {
                    action: "open",
                    path: self.path.clone(),
                    source,
                })
            }
        }
        let mut inner = lock(&self.inner);
        let mut at = 0usize;
        loop {
            match frame::decode(&bytes[at..]) {
                Frame::Valid {
                    offset,
                    payload,
                    len,
                    ..
                } => {
                    let corrupt = |detail: String| LogError::Corrupt {
                        path: self.path.clone(),
                        byte: at as u64,
                        detail,
                    };
                    if offset as usize != inner.by_id.len() {
                        return Err(corrupt(format!(
                            "schema id {offset} where {} was expected",
                            inner.by_id.len()
                        )));
                    }
                    let schema: TableSchema =
                        postcard::from_bytes(payload).map_err(|e| corrupt(e.to_string()))?;
                    schema.validate().map_err(corrupt)?;
                    let schema = Arc::new(schema);
                    inner.ids.insert(schema.clone(), offset as u32);
                    inner.by_id.push(schema);
                    at += len;
                }
                // A torn last frame is an interrupted append of a schema no record uses yet.
                Frame::Torn { .. } => break,
                Frame::Corrupt { reason } if at + frame::HEADER_LEN >= bytes.len() => {
                    warn!(file = %self.path.display(), reason, "ignoring damaged last schema frame");
                    break;
                }
                Frame::Corrupt { reason } => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        byte: at as u64,
                        detail: reason,
                    })
                }
            }
        }
        Ok(at as u64)
    }

    /// The id of `schema`, storing it durably first if it is new. Returns the canonical
    /// shared copy, so equal schemas are one allocation.
    pub fn intern(&self, schema: &Arc<TableSchema>) -> Result<(u32, Arc<TableSchema>), LogError> {
        let mut inner = lock(&self.inner);
        if let Some((canon, &id)) = inner.ids.get_key_value(schema) {
            return Ok((id, canon.clone()));
        }
        let id = inner.by_id.len() as u32;
        let payload = postcard::to_allocvec(schema.as_ref()).map_err(|e| LogError::Decode {
            partition: u32::MAX,
            offset: id as u64,
            detail: format!("schema encode: {e}"),
        })?;
        let mut buf = Vec::new();
        frame::encode(id as u64, 0, &payload, &mut buf);
        if let Some(cause) = &inner.failed {
            return Err(LogError::Failed {
                partition: u32::MAX,
                cause: format!("schema store {}: {cause}", self.path.display()),
            });
        }
        let len = inner.len;
        let file = inner.file.as_mut().ok_or_else(|| LogError::Io {
            action: "append (opened read-only)",
            path: self.path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        })?;
        let io = |source| LogError::Io {
            action: "append",
            path: self.path.clone(),
            source,
        };
        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            // Cut back to the end of the last whole frame: whatever part of this one
            // was written (a full disk takes part of it), or all of it when only the
            // fsync failed, since its pages can no longer be trusted to reach the disk.
            // Never by the frame's length from the end: a partial write would take
            // earlier schemas with it.
            if let Err(cut) = file.set_len(len).and_then(|_| file.sync_data()) {
                inner.failed = Some(format!(
                    "a write failed ({e}) and cutting it back failed too ({cut}); reopen the log"
                ));
            }
            return Err(io(e));
        }
        inner.len = len + buf.len() as u64;
        inner.ids.insert(schema.clone(), id);
        inner.by_id.push(schema.clone());
        Ok((id, schema.clone()))
    }

    pub fn get(&self, id: u32) -> Option<Arc<TableSchema>> {
        if let Some(s) = lock(&self.inner).by_id.get(id as usize) {
            return Some(s.clone());
        }
        // A read-only opener (e.g. `rowlog log tail` beside a running daemon) may be
        // behind the writer: reload once.
        if lock(&self.inner).file.is_none() {
            *lock(&self.inner) = Inner::default();
            let _ = self.load();
            return lock(&self.inner).by_id.get(id as usize).cloned();
        }
        None
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
