//! rowlog values as the sink's statement parameters (the conversion itself is
//! [`rowlog_api::Value::to_param`]).

use mysql_async::Value as My;
use rowlog_api::Value;

/// A value as its column's placeholder expects it (see [`crate::sql::send`]).
pub(crate) fn column_param(v: &Value, send: crate::sql::Send) -> My {
    match (send, v) {
        (crate::sql::Send::Hex, Value::Bytes(b)) => rowlog_api::hex_param(b),
        _ => v.to_param(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_hex_placeholders_go_as_hex_text() {
        assert_eq!(
            column_param(
                &Value::Bytes(vec![0xe9, 0x00, 0xff].into()),
                crate::sql::Send::Hex
            ),
            My::Bytes(b"E900FF".to_vec())
        );
        assert_eq!(
            column_param(
                &Value::Bytes(b"ok".to_vec().into()),
                crate::sql::Send::Plain
            ),
            My::Bytes(b"ok".to_vec())
        );
    }
}
