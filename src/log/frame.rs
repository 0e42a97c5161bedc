//! Record framing shared by every file the embedded log writes.
//!
//! ```text
//! +--------+--------+----------+-------------+-----------------+
//! | len u32| crc u32| offset u64| time_ms u64 | payload (len B) |
//! +--------+--------+----------+-------------+-----------------+
//! ```
//! Little-endian. `crc` is CRC-32 (IEEE) over `offset`, `time_ms` and the payload, so a
//! frame moved to the wrong place or torn anywhere fails the check. Decoding a byte
//! slice yields [`Frame::Valid`], [`Frame::Torn`] (the bytes end before the frame does:
//! an interrupted append) or [`Frame::Corrupt`] (the bytes are all there but wrong).

pub const HEADER_LEN: usize = 24;
/// Upper bound on one record's payload. A length above it is corruption, and the bound
/// keeps a damaged length field from making a reader allocate gigabytes.
pub const MAX_PAYLOAD: usize = 256 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Valid {
        offset: u64,
        time_ms: u64,
        payload: &'a [u8],
        len: usize,
    },
    Torn {
        have: usize,
        need: usize,
    },
    Corrupt {
        reason: String,
    },
}

pub fn encode(offset: u64, time_ms: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    out.extend_from_slice(payload);
    seal(&mut out[start..], offset, time_ms);
}

/// Frames a payload in place: `frame` is [`HEADER_LEN`] bytes of room followed by the
/// payload, as an encoder wrote it straight into the write buffer (no copy).
pub fn seal(frame: &mut [u8], offset: u64, time_ms: u64) {
    let payload_len = frame.len() - HEADER_LEN;
    frame[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    frame[8..16].copy_from_slice(&offset.to_le_bytes());
    frame[16..24].copy_from_slice(&time_ms.to_le_bytes());
    // `offset`, `time_ms` and the payload lie side by side: one pass over them gives
    // the same CRC as hashing the three in turn (what `check` does), at a third of
    // the calls, which for ~200-byte records is most of the cost.
    let crc = crc32fast::hash(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads the header fields: (payload length, crc, offset, time).
pub fn header(b: &[u8; HEADER_LEN]) -> (usize, u32, u64, u64) {
    (
        u32_at(b, 0) as usize,
        u32_at(b, 4),
        u64_at(b, 8),
        u64_at(b, 16),
    )
}

pub fn check(crc: u32, offset: u64, time_ms: u64, payload: &[u8]) -> bool {
    let mut h = crc32fast::Hasher::new();
    h.update(&offset.to_le_bytes());
    h.update(&time_ms.to_le_bytes());
    h.update(payload);
    h.finalize() == crc
}

/// Decodes the frame at the start of `buf`.
pub fn decode(buf: &[u8]) -> Frame<'_> {
    if buf.len() < HEADER_LEN {
        return Frame::Torn {
            have: buf.len(),
            need: HEADER_LEN,
        };
    }
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&buf[..HEADER_LEN]);
    let (len, crc, offset, time_ms) = header(&hb);
    if len > MAX_PAYLOAD {
        return Frame::Corrupt {
            reason: format!("record length {len} exceeds the {MAX_PAYLOAD}-byte limit"),
        };
    }
    let need = HEADER_LEN + len;
    if buf.len() < need {
        return Frame::Torn {
            have: buf.len(),
            need,
        };
    }
    let payload = &buf[HEADER_LEN..need];
    if !check(crc, offset, time_ms, payload) {
        return Frame::Corrupt {
            reason: format!("CRC mismatch in record claiming offset {offset}"),
        };
    }
    Frame::Valid {
        offset,
        time_ms,
        payload,
        len: need,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_torn() {
        let mut buf = Vec::new();
        encode(7, 1234, b"hello", &mut buf);
        assert_eq!(
            decode(&buf),
            Frame::Valid {
                offset: 7,
                time_ms: 1234,
                payload: b"hello",
                len: buf.len()
            }
        );
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Frame::Torn { .. }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let mut buf = Vec::new();
        encode(7, 1234, b"hello world", &mut buf);
        for i in 4..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(matches!(decode(&bad), Frame::Corrupt { .. }), "flip at {i}");
        }
    }

    #[test]
    fn absurd_lengths_are_corrupt_not_allocations() {
        let mut buf = vec![0xff, 0xff, 0xff, 0x7f];
        buf.extend_from_slice(&[0; 20]);
        assert!(matches!(decode(&buf), Frame::Corrupt { .. }));
    }
}
