//! Offline decoding of a binlog file (`rowlog binlog decode FILE`): the same
//! [`Decoder`] the live reader uses, fed from a file instead of a replica stream.
//!
//! This is how rowlog proves it reads what only MySQL 8 writes (tagged GTIDs,
//! compressed transactions, partial JSON updates) on machines where no MySQL 8 server
//! can run: binlog files written by real servers decode to change events or stop with
//! a named error, exactly as the live reader would.
//!
//! Differences from the live reader, all because there is no server to ask: column
//! names come only from the binlog (`binlog_row_metadata=FULL`, else `@0, @1, …`),
//! secondary unique keys are unknown, and compressed transactions are unpacked here
//! (mysql_async does it for the live stream).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use mysql_async::binlog::events::{Event, TransactionPayloadEvent};
use mysql_async::binlog::BinlogVersion;
use mysql_common::binlog::{BinlogFileHeader, EventStreamReader};
use rowlog_api::{BinlogFileName, BinlogPosition, ResumePoint, SourceEvent};

use crate::decoder::{Decoder, DecoderOptions, NoLookup};
use crate::{NoPrimaryKey, SourceError, TableFilter};

const TRANSACTION_PAYLOAD: u8 = 40;

/// What to decode, and how to treat tables without a primary key.
#[derive(Clone, Debug)]
pub struct FileDecodeOptions {
    pub filter: TableFilter,
    pub no_pk: NoPrimaryKey,
}

impl Default for FileDecodeOptions {
    fn default() -> Self {
        Self {
            filter: TableFilter::default(),
            // Offline, printing a keyless table's rows is more useful than refusing it.
            no_pk: NoPrimaryKey::FullRow,
        }
    }
}

/// A `BufRead` that counts the bytes consumed, so a file that ends inside an event is
/// reported with the byte where that event starts instead of being taken for the end.
struct Counting<R> {
    inner: R,
    consumed: u64,
}

impl<R: Read> Read for Counting<BufReader<R>> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: Read> BufRead for Counting<BufReader<R>> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

/// Reads one binlog file's events in order.
pub struct BinlogFileReader {
    path: PathBuf,
    len: u64,
    input: Counting<BufReader<File>>,
    events: EventStreamReader,
    decoder: Decoder,
    /// Events unpacked from a compressed transaction, still to decode.
    unpacked: std::vec::IntoIter<Event>,
    done: bool,
}

impl BinlogFileReader {
    pub fn open(path: &Path, opts: FileDecodeOptions) -> Result<Self, SourceError> {
        let io_error = |source| SourceError::File {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        let mut input = Counting {
            inner: BufReader::with_capacity(1 << 20, file),
            consumed: 0,
        };
        BinlogFileHeader::read(&mut input).map_err(|e| SourceError::Decode {
            event: "file header",
            position: BinlogPosition {
                file: BinlogFileName {
                    base: path.display().to_string().into(),
                    seq: 0,
                    width: 1,
                },
                pos: 0,
            },
            detail: e.to_string(),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Positions name the file as the server would; a name without a numeric
        // extension (a renamed copy) is kept whole, numbered 0.
        let file = BinlogFileName::parse(&name).unwrap_or(BinlogFileName {
            base: name.into(),
            seq: 0,
            width: 1,
        });
        let decoder = Decoder::new(
            DecoderOptions {
                filter: opts.filter,
                no_pk: opts.no_pk,
                checksums: false,
                // A file read offline does not say how its server compared names.
                lowercase_names: false,
            },
            ResumePoint {
                position: BinlogPosition { file, pos: 4 },
                gtid_state: None,
                server_id: 0,
                epoch: 0,
            },
            None,
        );
        Ok(Self {
            path: path.to_path_buf(),
            len,
            input,
            events: EventStreamReader::new(BinlogVersion::Version4),
            decoder,
            unpacked: Vec::new().into_iter(),
            done: false,
        })
    }

    /// The next decoded event, or `None` at the end of the file.
    pub async fn next_event(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        loop {
            if let Some(ev) = self.decoder.pop() {
                return Ok(Some(ev));
            }
            if self.done {
                return Ok(None);
            }
            let ev = match self.unpacked.next() {
                Some(ev) => ev,
                None => {
                    let start = self.input.consumed;
                    // mysql_common trusts the lengths in an event header: a damaged
                    // file can make it panic, which is reported as a decode error.
                    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.events.read(&mut self.input)
                    }))
                    .unwrap_or_else(|panic| {
                        Err(std::io::Error::other(format!(
                            "the binlog library failed on it: {}",
                            crate::decoder::panic_message(&panic)
                        )))
                    });
                    match read {
                        Ok(Some(ev)) => ev,
                        Ok(None) => {
                            self.done = true;
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            self.done = true;
                            return Err(SourceError::Truncated {
                                path: self.path.clone(),
                                byte: start,
                                trailing: self.len.saturating_sub(start),
                            });
                        }
                        Err(e) => return Err(self.read_error(e)),
                    }
                }
            };
            self.decoder.handle_guarded(&ev, &mut NoLookup).await?;
            if ev.header().event_type_raw() == TRANSACTION_PAYLOAD {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.unpack(&ev)))
                    .unwrap_or_else(|panic| {
                        Err(SourceError::Decode {
                            event: "TRANSACTION_PAYLOAD",
                            position: self.decoder.here(),
                            detail: format!(
                                "the binlog library failed on it: {}",
                                crate::decoder::panic_message(&panic)
                            ),
                        })
                    })?;
            }
        }
    }

    fn read_error(&self, e: std::io::Error) -> SourceError {
        SourceError::Decode {
            event: "event",
            position: self.decoder.here(),
            detail: format!("{}: {e}", self.path.display()),
        }
    }

    /// Unpacks a compressed transaction's events (already checked by the decoder).
    fn unpack(&mut self, ev: &Event) -> Result<(), SourceError> {
        let error = |e: std::io::Error| SourceError::Decode {
            event: "TRANSACTION_PAYLOAD",
            position: self.decoder.here(),
            detail: e.to_string(),
        };
        let tpe: TransactionPayloadEvent<'_> = ev.read_event().map_err(error)?;
        let mut data = tpe.decompressed().map_err(error)?;
        let mut inner = Vec::new();
        while let Some(e) = self.events.read_decompressed(&mut data).map_err(error)? {
            inner.push(e);
        }
        self.unpacked = inner.into_iter();
        Ok(())
    }
}
