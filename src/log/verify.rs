//! `rowlog log verify`: reads every record of every segment and checks what the
//! embedded log promises — frames whole with a matching CRC, offsets dense across
//! segments, each index entry pointing at the record it names, every record decodable
//! with a schema the schema store holds. Reports every problem with its file and byte.

use std::fs::File;
use std::io::{BufReader, Read};

use super::frame::{self, HEADER_LEN, MAX_PAYLOAD};
use super::index;
use super::{io, record, EmbeddedLog, LogError};

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub partitions: u32,
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// Human-readable problems, each naming file and byte; empty means all good.
    pub problems: Vec<String>,
    /// Incomplete records at the end of active segments: a write in progress (the
    /// daemon is running) or a tail torn by a crash, which the next open truncates.
    /// Nothing acknowledged lives there, so these are not problems.
    pub tails: Vec<String>,
}

pub fn verify(log: &EmbeddedLog) -> Result<VerifyReport, LogError> {
    let mut report = VerifyReport {
        partitions: log.partition_count(),
        ..Default::default()
    };
    for p in 0..log.partition_count() {
        let part = log.partition_handle(p)?;
        let segments = log.segment_infos(p)?;
        let mut expected_offset = segments.first().map(|s| s.base).unwrap_or(0);
        for (i, seg) in segments.iter().enumerate() {
            report.segments += 1;
            let path = part.segment_path(seg.base);
            if seg.base != expected_offset {
                report.problems.push(format!(
                    "{}: starts at offset {} but the previous segment ended at {expected_offset}",
                    path.display(),
                    seg.base
                ));
            }
            let file = File::open(&path).map_err(io("open", &path))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut r = BufReader::with_capacity(1 << 20, file);
            let mut byte = 0u64;
            let mut offset = seg.base;
            let mut boundaries = Vec::new();
            let mut payload = Vec::new();
            let active = i + 1 == segments.len();
            // A failure in the active segment's last record is its unfinished tail.
            let fail = |report: &mut VerifyReport, at_end: bool, msg: String| {
                if active && at_end {
                    report.tails.push(msg);
                } else {
                    report.problems.push(msg);
                }
            };
            while byte < len {
                let mut h = [0u8; HEADER_LEN];
                if r.read_exact(&mut h).is_err() {
                    let msg = format!("{} byte {byte}: torn record header", path.display());
                    fail(&mut report, true, msg);
                    break;
                }
                let (plen, crc, rec_offset, time) = frame::header(&h);
                if plen > MAX_PAYLOAD || byte + (HEADER_LEN + plen) as u64 > len {
                    let msg = format!(
                        "{} byte {byte}: record length {plen} runs past the end of the file",
                        path.display()
                    );
                    fail(&mut report, plen <= MAX_PAYLOAD, msg);
                    break;
                }
                let last = byte + (HEADER_LEN + plen) as u64 == len;
                payload.resize(plen, 0);
                if r.read_exact(&mut payload).is_err() {
                    let msg = format!("{} byte {byte}: cannot read record", path.display());
                    fail(&mut report, true, msg);
                    break;
                }
                if !frame::check(crc, rec_offset, time, &payload) {
                    let msg = format!(
                        "{} byte {byte}: CRC mismatch (record claims offset {rec_offset})",
                        path.display()
                    );
                    fail(&mut report, last, msg);
                    break;
                }
                if rec_offset != offset {
                    report.problems.push(format!(
                        "{} byte {byte}: offset {rec_offset} where {offset} was expected",
                        path.display()
                    ));
                    break;
                }
                if let Err(detail) = record::decode(&payload, |id| log.schemas().get(id)) {
                    report.problems.push(format!(
                        "{} byte {byte}: offset {offset} does not decode: {detail}",
                        path.display()
                    ));
                }
                boundaries.push((offset, byte));
                byte += (HEADER_LEN + plen) as u64;
                offset += 1;
                report.records += 1;
            }
            report.bytes += byte;
            // The index: every entry at a record boundary; a sealed segment ends with its seal.
            let index_path = part.index_path(seg.base);
            let sealed = i + 1 < segments.len();
            match index::read(&index_path) {
                None if sealed => report.problems.push(format!(
                    "{}: missing or malformed index",
                    index_path.display()
                )),
                None => {}
                Some(entries) => {
                    for e in &entries {
                        let at_boundary = boundaries.binary_search(&(e.offset, e.byte)).is_ok();
                        let is_seal = e.offset == offset && e.byte == byte;
                        if !at_boundary && !is_seal {
                            report.problems.push(format!(
                                "{}: entry (offset {}, byte {}) does not point at that record",
                                index_path.display(),
                                e.offset,
                                e.byte
                            ));
                            break;
                        }
                    }
                    if sealed
                        && !entries
                            .last()
                            .is_some_and(|e| e.offset == offset && e.byte == byte)
                    {
                        report.problems.push(format!(
                            "{}: seal entry does not match the segment's end",
                            index_path.display()
                        ));
                    }
                }
            }
            expected_offset = offset;
        }
    }
    Ok(report)
}
