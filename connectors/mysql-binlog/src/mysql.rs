//! MySQL-specific event bodies parsed by rowlog itself rather than by mysql_common,
//! where the library would trust a count from the event: mysql_common 0.37 sizes its
//! PREVIOUS_GTIDS vectors by the event's own counts, so one damaged byte makes it ask
//! for terabytes and abort the process (found by `tests/suite/decode_fuzz.rs`). Here every
//! count is checked against the bytes that are actually there.

use mysql_common::io::ParseBuf;
use rowlog_api::MysqlGtidSet;

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err(format!("needs {n} more bytes, has {}", buf.len()));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn u64_le(buf: &mut &[u8]) -> Result<u64, String> {
    let b = take(buf, 8)?;
    Ok(u64::from_le_bytes(b.try_into().map_err(|_| "8 bytes")?))
}

/// PREVIOUS_GTIDS (MySQL 5.6+; tagged format 8.4+): the GTID set executed before the
/// file. Layout: a u64 header (count of origins, and the format in the top byte), then
/// per origin its UUID, in the tagged format a length-prefixed tag, the number of
/// intervals and each `[start, end)` as two u64.
pub(crate) fn parse_previous_gtids(body: &[u8]) -> Result<MysqlGtidSet, String> {
    let mut buf = body;
    let header = u64_le(&mut buf)?;
    let tagged = (header >> 56) != 0;
    let origins = if tagged {
        (header >> 8) & ((1 << 48) - 1)
    } else {
        header & ((1 << 56) - 1)
    };
    // Each origin takes at least its UUID and its interval count.
    if origins > (buf.len() / 24) as u64 {
        return Err(format!("{origins} origins declared in {} bytes", buf.len()));
    }
    let mut set = MysqlGtidSet::default();
    for _ in 0..origins {
        let sid: [u8; 16] = take(&mut buf, 16)?.try_into().map_err(|_| "16 bytes")?;
        let tag = if tagged {
            let mut pb = ParseBuf(buf);
            let len = mysql_common::misc::read_varlen_uint(&mut pb).map_err(|e| e.to_string())?;
            buf = pb.0;
            let len = usize::try_from(len).map_err(|_| "tag length")?;
            let bytes = take(&mut buf, len)?;
            let tag = std::str::from_utf8(bytes).map_err(|e| format!("tag: {e}"))?;
            (!tag.is_empty()).then(|| tag.to_owned())
        } else {
            None
        };
        let intervals = u64_le(&mut buf)?;
        if intervals > (buf.len() / 16) as u64 {
            return Err(format!(
                "{intervals} intervals declared in {} bytes",
                buf.len()
            ));
        }
        for _ in 0..intervals {
            let (start, end) = (u64_le(&mut buf)?, u64_le(&mut buf)?);
            set.add_interval(sid, tag.as_deref(), start, end);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(origins: u64, intervals: u64, pairs: &[(u64, u64)]) -> Vec<u8> {
        let mut b = origins.to_le_bytes().to_vec();
        b.extend_from_slice(&[0x3e; 16]);
        b.extend_from_slice(&intervals.to_le_bytes());
        for (s, e) in pairs {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
        }
        b
    }

    #[test]
    fn previous_gtids_parse_and_damaged_counts_are_refused_not_allocated() {
        let set = parse_previous_gtids(&body(1, 2, &[(1, 6), (7, 8)])).unwrap();
        assert_eq!(
            set.to_string(),
            "3e3e3e3e-3e3e-3e3e-3e3e-3e3e3e3e3e3e:1-5:7"
        );
        assert!(parse_previous_gtids(&body(1 << 40, 2, &[(1, 6), (7, 8)])).is_err());
        assert!(parse_previous_gtids(&body(1, u64::MAX >> 8, &[(1, 6)])).is_err());
        assert!(parse_previous_gtids(&[1, 2, 3]).is_err());
    }
}
