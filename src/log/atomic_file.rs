//! Small state files (checkpoints, consumer offsets) replaced atomically: write a
//! temporary file, fsync it, rename it over the old one, fsync the directory.
//!
//! Contents are one [`frame`](super::frame) so a damaged file is detected. A missing
//! file means "nothing stored yet"; a present but damaged one is an error — durable
//! state is never reset silently.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::frame::{self, Frame};
use super::{io, LogError};

pub fn write(path: &Path, payload: &[u8]) -> Result<(), LogError> {
    let tmp = path.with_extension("tmp");
    let mut buf = Vec::with_capacity(frame::HEADER_LEN + payload.len());
    frame::encode(0, 0, payload, &mut buf);
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(&buf).map_err(io("write", &tmp))?;
    f.sync_data().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub fn read(path: &Path) -> Result<Option<Vec<u8>>, LogError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match frame::decode(&bytes) {
        Frame::Valid { payload, len, .. } if len == bytes.len() => Ok(Some(payload.to_vec())),
        Frame::Valid { len, .. } => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            byte: len as u64,
            detail: format!("{} unexpected trailing bytes", bytes.len() - len),
        }),
        Frame::Torn { have, need } => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            byte: have as u64,
            detail: format!(
                "file is torn ({have} of {need} bytes); restore it or remove it deliberately"
            ),
        }),
        Frame::Corrupt { reason } => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            byte: 0,
            detail: reason,
        }),
    }
}

/// Creates `dir` and its missing ancestors, and fsyncs the parent of each one created:
/// a directory entry is durable only once its parent is synced, and a crash must not
/// lose a directory whose files were synced (a consumer's first offset, a partition).
pub fn create_dir_durable(dir: &Path) -> Result<(), LogError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    for d in missing.iter().rev() {
        match d.parent() {
            // A relative path's first component lives in the working directory.
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new("."))?,
            Some(parent) => sync_dir(parent)?,
            None => {}
        }
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_none_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        assert!(read(&p).unwrap().is_none());
        write(&p, b"offset=42").unwrap();
        assert_eq!(read(&p).unwrap().unwrap(), b"offset=42");
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        let err = read(&p).unwrap_err().to_string();
        assert!(err.contains("torn") && err.contains("state"), "{err}");
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        fs::write(&p, &flipped).unwrap();
        assert!(read(&p).is_err());
    }
}
