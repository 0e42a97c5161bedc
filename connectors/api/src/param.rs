//! rowlog values as MySQL statement parameters: what the sink writes and what a
//! snapshot bounds its key ranges with. Temporal values are sent as fields, never as
//! text, so the server cannot reinterpret them; TIMESTAMPs are sent in UTC, and every
//! session that sends them runs with `time_zone = '+00:00'`.

use mysql_common::Value as My;

use crate::Value;

impl Value {
    /// The value as a statement parameter.
    pub fn to_param(&self) -> My {
        match self {
            Value::Null => My::NULL,
            Value::Int(i) => My::Int(*i),
            Value::UInt(u) => My::UInt(*u),
            Value::Float(f) => My::Float(*f),
            Value::Double(d) => My::Double(*d),
            Value::Decimal(s) => My::Bytes(s.as_bytes().to_vec()),
            Value::Bytes(b) => My::Bytes(b.to_vec()),
            Value::Json(s) => My::Bytes(s.as_bytes().to_vec()),
            Value::Date { year, month, day } => My::Date(*year, *month, *day, 0, 0, 0, 0),
            Value::DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                micros,
            } => My::Date(*year, *month, *day, *hour, *minute, *second, *micros),
            Value::Timestamp { secs: 0, micros: 0 } => My::Date(0, 0, 0, 0, 0, 0, 0),
            Value::Timestamp { secs, micros } => {
                let (y, m, d, hh, mm, ss) = civil_from_unix(*secs as i64);
                My::Date(y, m, d, hh, mm, ss, *micros)
            }
            Value::Time {
                negative,
                hours,
                minutes,
                seconds,
                micros,
            } => My::Time(
                *negative,
                hours / 24,
                (hours % 24) as u8,
                *minutes,
                *seconds,
                *micros,
            ),
            Value::Year(y) => My::UInt(*y as u64),
            Value::Bit(b) => My::UInt(*b),
            Value::Enum(i) => My::UInt(*i as u64),
            Value::Set(s) => My::UInt(*s),
        }
    }
}

/// Bytes as upper-case hex text, for a placeholder that reads it back with `UNHEX`
/// (text in a character set the connection does not speak).
pub fn hex_param(bytes: &[u8]) -> My {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut hex = Vec::with_capacity(bytes.len() * 2);
    for &x in bytes {
        hex.push(DIGITS[usize::from(x >> 4)]);
        hex.push(DIGITS[usize::from(x & 15)]);
    }
    My::Bytes(hex)
}

/// UTC calendar fields of a Unix time (Howard Hinnant's days-from-civil inverse).
fn civil_from_unix(t: i64) -> (u16, u8, u8, u8, u8, u8) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y as u16,
        m as u8,
        d as u8,
        (secs / 3600) as u8,
        (secs % 3600 / 60) as u8,
        (secs % 60) as u8,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_zero_and_extreme_floats_are_bound_bit_for_bit() {
        for d in [-0.0f64, f64::MIN_POSITIVE, f64::from_bits(1), f64::MAX] {
            match Value::Double(d).to_param() {
                My::Double(b) => assert_eq!(b.to_bits(), d.to_bits()),
                other => panic!("{other:?}"),
            }
        }
        match Value::Float(-0.0).to_param() {
            My::Float(b) => assert!(b.is_sign_negative() && b == 0.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unix_times_map_to_utc_fields() {
        assert_eq!(civil_from_unix(1), (1970, 1, 1, 0, 0, 1));
        assert_eq!(civil_from_unix(2_147_483_647), (2038, 1, 19, 3, 14, 7));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
    }
}
