//! Every column type MariaDB has, with its edge values and NULL, written on the source
//! and compared on the destination byte for byte: row by row and by `CHECKSUM TABLE`.
//! The table is created on the source only, so its shape also travels as DDL.

use crate::common;

use std::time::Duration;

use common::{InProcess, Pair};
use mysql_async::prelude::Queryable;

const TABLE: &str = "CREATE TABLE app.types (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
    bi BIGINT, biu BIGINT UNSIGNED,
    dec65 DECIMAL(65,30), dec10 DECIMAL(10,0), dec5 DECIMAL(5,2),
    f FLOAT, dbl DOUBLE,
    b1 BIT(1), b13 BIT(13), b64 BIT(64),
    y YEAR,
    d DATE, dt0 DATETIME, dt3 DATETIME(3), dt6 DATETIME(6),
    ts0 TIMESTAMP NULL DEFAULT NULL, ts6 TIMESTAMP(6) NULL DEFAULT NULL,
    t0 TIME, t4 TIME(4), t6 TIME(6),
    c10 CHAR(10) CHARACTER SET utf8mb4, vc VARCHAR(300) CHARACTER SET utf8mb4,
    tx TEXT CHARACTER SET utf8mb4, lt LONGTEXT CHARACTER SET utf8mb4,
    l1 VARCHAR(50) CHARACTER SET latin1, l1c CHAR(5) CHARACTER SET latin1,
    asc_ VARCHAR(20) CHARACTER SET ascii,
    bin8 BINARY(8), vb VARBINARY(20), bl BLOB, mbl MEDIUMBLOB,
    e ENUM('a','b','c'), st SET('x','y','z'),
    j JSON,
    g GEOMETRY, pt POINT,
    u UUID, ip6 INET6,
    gen_v INT AS (i + 1) VIRTUAL, gen_s BIGINT AS (bi DIV 2) STORED,
    inv INT INVISIBLE
)";

/// Edge values, NULLs, and what the source's session needs to accept them (zero dates
/// and the empty ENUM need a non-strict sql_mode; TIMESTAMPs are given in UTC).
const ROWS: &[&str] = &[
    "SET SESSION sql_mode = '', time_zone = '+00:00'",
    // Minimums and negative edges.
    "INSERT INTO app.types (id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, dec65, dec10, dec5, f, dbl,
        b1, b13, b64, y, d, dt0, dt3, dt6, ts0, ts6, t0, t4, t6, c10, vc, tx, lt, l1, l1c, asc_,
        bin8, vb, bl, mbl, e, st, j, g, pt, u, ip6, inv) VALUES
       (1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
        '-99999999999999999999999999999999999.999999999999999999999999999999', -9999999999, -999.99,
        -3.40282e38, -1.7976931348623157e308,
        b'0', b'0', b'0', 1901, '1000-01-01', '1000-01-01 00:00:00', '1000-01-01 00:00:00.000',
        '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01', '1970-01-01 00:00:01.000000',
        '-838:59:59', '-838:59:58.9999', '-00:00:00.000001',
        '', '', '', '', '', '', '',
        X'0000000000000000', X'', X'', X'', 'a', '', '[]',
        ST_GeomFromText('LINESTRING(0 0, 1 1, -2.5 3)'), ST_GeomFromText('POINT(-180 -90)'),
        '00000000-0000-0000-0000-000000000000', '::', -1)",
    // Maximums and positive edges; 4-byte UTF-8, latin1 accents, NUL bytes.
    "INSERT INTO app.types (id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, dec65, dec10, dec5, f, dbl,
        b1, b13, b64, y, d, dt0, dt3, dt6, ts0, ts6, t0, t4, t6, c10, vc, tx, lt, l1, l1c, asc_,
        bin8, vb, bl, mbl, e, st, j, g, pt, u, ip6, inv) VALUES
       (2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,
        9223372036854775807, 18446744073709551615,
        '99999999999999999999999999999999999.999999999999999999999999999999', 9999999999, 999.99,
        3.40282e38, 1.7976931348623157e308,
        b'1', b'1111111111111', b'1111111111111111111111111111111111111111111111111111111111111111',
        2155, '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999',
        '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07', '2038-01-19 03:14:07.999999',
        '838:59:59', '838:59:58.9999', '838:59:59.000000',
        'ab😀cd', 'żółć 😀 𝄞 中文 \\\\ '' \" \\n\\t end', REPEAT('x😀', 5000), REPEAT('long ', 100000),
        'café naïve £', 'ñé', 'plain ascii ~',
        X'0102000000000000', X'00FF00', X'00000000FF', REPEAT(X'00FE', 40000), 'c', 'x,y,z',
        '{\"k\": [1, 2.5, \"s\", null, true], \"n\": {\"d\": -0.0001}}',
        ST_GeomFromText('POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))'), ST_GeomFromText('POINT(180 90)'),
        'ffffffff-ffff-ffff-ffff-ffffffffffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 2147483647)",
    // Zero and special values: zero dates, the zero TIMESTAMP, -0 (MariaDB stores it as
    // 0; the sign bit survives decoding and binding, see values.rs and params.rs),
    // tiny/huge exponents,
    // YEAR 0, the empty ENUM value, TIME above 24 h.
    "INSERT INTO app.types (id, ti, f, dbl, dec5, y, d, dt0, dt6, ts0, ts6, t0, t6, e, st, j, b64, u, ip6)
     VALUES (3, 0, -0e0, -0e0, 0.00, 0, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00.000000',
        '0000-00-00 00:00:00', '0000-00-00 00:00:00.000000', '100:00:00', '-25:00:00.5', '', 'y',
        '\"only a string\"', b'1000000000000000000000000000000000000000000000000000000000000001',
        '12345678-9abc-def0-1234-56789abcdef0', '192.168.1.1')",
    "INSERT INTO app.types (id, f, dbl) VALUES (4, 1.17549e-38, 4.9406564584124654e-324)",
    // NULL in every column.
    "INSERT INTO app.types (id) VALUES (5)",
    // Updates change every kind of value (before-images are decoded too), and a delete.
    "UPDATE app.types SET ti = ti + 1, dec65 = dec65 / 3, dt6 = '2001-02-03 04:05:06.070809',
        vc = CONCAT(vc, '!'), bl = X'0A0B', e = 'b', st = 'x', j = '{\"updated\": true}',
        ts6 = '2001-02-03 04:05:06.5', inv = 7 WHERE id IN (1, 3)",
    "UPDATE app.types SET bin8 = X'FF', t4 = '-1:02:03.4567' WHERE id = 2",
    "INSERT INTO app.types (id, vc) VALUES (6, 'to be deleted')",
    "DELETE FROM app.types WHERE id = 6",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_with_its_edge_values_arrives_byte_for_byte() {
    let pair = Pair::start().await;
    let rowlog = InProcess::start(pair.config(2, 4));
    pair.src
        .exec(&["CREATE DATABASE app", TABLE])
        .await
        .unwrap();
    let mut s = pair.src.conn().await.unwrap();
    for q in ROWS {
        s.query_drop(*q)
            .await
            .unwrap_or_else(|e| panic!("{e}: {q}"));
    }
    let diffs = pair
        .assert_converges(&[("app.types", "id")], Duration::from_secs(60))
        .await;
    assert_eq!(diffs[0].source_rows, 5);
    assert!(diffs[0].checksums.0.is_some());

    // SELECT * leaves out the invisible column: compare it, and the generated ones
    // (computed by the destination), explicitly.
    let q = "SELECT id, inv, gen_v, gen_s, HEX(u), HEX(ip6), HEX(bin8), ST_AsText(g), \
             CAST(f AS CHAR), CAST(dbl AS CHAR) FROM app.types ORDER BY id";
    assert_same_rows(&pair, q).await;
    rowlog.stop().await;
}

/// The table map's signedness and charset metadata list only some columns, in order:
/// which columns count is the server's rule, and a wrong rule shifts every column after
/// the first one it disagrees on. YEAR before signed and unsigned integers, and
/// GEOMETRY before strings of two charsets, are where such rules can disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signedness_and_charsets_stay_with_their_columns_after_year_and_geometry() {
    let pair = Pair::start().await;
    let rowlog = InProcess::start(pair.config(2, 4));
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.m (id INT PRIMARY KEY, y YEAR, a INT, b INT UNSIGNED, \
             c TINYINT, d TINYINT UNSIGNED, g POINT, \
             l VARCHAR(20) CHARACTER SET latin1, u VARCHAR(20) CHARACTER SET utf8mb4, \
             y2 YEAR, e BIGINT, f BIGINT UNSIGNED)",
            "INSERT INTO app.m VALUES \
             (1, 2024, -1, 4294967295, -128, 255, POINT(1,2), 'caf\u{e9}', '\u{65e5}\u{672c}\u{2603}', 1999, -5, 18446744073709551615), \
             (2, NULL, -2147483648, 0, 127, 0, NULL, 'x', 'y', NULL, -9223372036854775808, 1)",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.m", "id")], Duration::from_secs(60))
        .await;
    let q =
        "SELECT id, y, a, b, c, d, ST_AsText(g), HEX(l), HEX(u), y2, e, f FROM app.m ORDER BY id";
    assert_same_rows(&pair, q).await;
    rowlog.stop().await;
}

/// TIME at every fractional precision, negative values with a fraction included: the
/// binlog stores those with a borrowed second, which mysql_common's decoder gets wrong
/// for one and two digits (rowlog decodes TIME itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_times_with_a_fraction_arrive_at_every_precision() {
    let pair = Pair::start().await;
    let rowlog = InProcess::start(pair.config(1, 2));
    pair.src
        .exec(&[
            "CREATE DATABASE app",
            "CREATE TABLE app.tm (id INT PRIMARY KEY, t0 TIME, t1 TIME(1), t2 TIME(2), \
             t3 TIME(3), t4 TIME(4), t5 TIME(5), t6 TIME(6))",
            "INSERT INTO app.tm VALUES \
             (1, '-00:00:01', '-00:00:01.5', '-00:00:01.25', '-00:00:01.125', '-00:00:01.0625', '-00:00:01.03125', '-00:00:01.015625'), \
             (2, '-838:59:59', '-838:59:58.9', '-838:59:58.99', '-838:59:58.999', '-838:59:58.9999', '-838:59:58.99999', '-838:59:58.999999'), \
             (3, '-00:00:00', '-00:00:00.1', '-00:00:00.01', '-00:00:00.001', '-00:00:00.0001', '-00:00:00.00001', '-00:00:00.000001'), \
             (4, '01:02:03', '01:02:03.4', '01:02:03.45', '01:02:03.456', '01:02:03.4567', '01:02:03.45678', '01:02:03.456789'), \
             (5, '-25:00:00', '-25:00:00.0', '-24:59:59.99', '-00:59:59.999', '-1:00:00.0001', '-0:00:59.99999', '-0:00:00.5')",
            "UPDATE app.tm SET t1 = '-12:34:56.7', t2 = '-12:34:56.78' WHERE id = 4",
        ])
        .await
        .unwrap();
    pair.assert_converges(&[("app.tm", "id")], Duration::from_secs(60))
        .await;
    let q = "SELECT id, CAST(t0 AS CHAR), CAST(t1 AS CHAR), CAST(t2 AS CHAR), CAST(t3 AS CHAR), \
             CAST(t4 AS CHAR), CAST(t5 AS CHAR), CAST(t6 AS CHAR) FROM app.tm ORDER BY id";
    assert_same_rows(&pair, q).await;
    rowlog.stop().await;
}

/// Tables made while `mysql56_temporal_format` was OFF (or on MariaDB 10.0 / MySQL
/// 5.5, and carried over) keep TIME, DATETIME and TIMESTAMP in their old formats.
/// Without fractional seconds their values arrive exactly, a TIME's sign and hours
/// above 255 included (mysql_common read an old TIME unsigned, its hours in a byte:
/// '300:00:00' arrived as 44:00:00). With fractional seconds a value's length is not
/// in the binlog: the pipeline stops, naming the column and the fix, rather than read
/// the rest of the row from the wrong place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_format_temporals_arrive_exactly_and_fractional_ones_stop_naming_the_column() {
    let pair = Pair::start().await;
    let rowlog = InProcess::start(pair.config(1, 2));
    pair.src
        .exec(&[
            "SET GLOBAL mysql56_temporal_format = OFF",
            "CREATE DATABASE app",
            "CREATE TABLE app.old (id INT PRIMARY KEY, t TIME, dt DATETIME, \
             ts TIMESTAMP NULL DEFAULT NULL, v VARCHAR(10))",
            "CREATE TABLE app.frac (id INT PRIMARY KEY, t3 TIME(3), v VARCHAR(10))",
            "SET GLOBAL mysql56_temporal_format = ON",
            "INSERT INTO app.old VALUES \
             (1, '300:00:00', '2020-01-02 03:04:05', '2020-01-02 03:04:05', 'a'), \
             (2, '-00:00:01', '1000-01-01 00:00:00', '1970-01-01 00:00:01', 'b'), \
             (3, '-838:59:59', '9999-12-31 23:59:59', NULL, 'c'), \
             (4, '838:59:59', NULL, '2038-01-19 03:14:07', 'd')",
            "UPDATE app.old SET t = '-255:00:01' WHERE id = 1",
        ])
        .await
        .unwrap();
    // The source's tables are in the old formats indeed (MariaDB marks them so).
    let mut s = pair.src.conn().await.unwrap();
    for table in ["app.old", "app.frac"] {
        let (_, create): (String, String) = s
            .query_first(format!("SHOW CREATE TABLE {table}"))
            .await
            .unwrap()
            .unwrap();
        assert!(create.contains("mariadb-5.3"), "{create}");
    }
    // Row by row only: CHECKSUM TABLE reads the stored format, which differs between
    // the source's old columns and the destination's (made in today's format).
    let mut d = pair.dst.conn().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // An error: the destination has no app.old yet (its CREATE is on its way).
        let diff = rowlog::testkit::compare_table(&mut s, &mut d, "app.old", "id").await;
        if diff
            .as_ref()
            .is_ok_and(|d| d.examples.is_empty() && d.source_rows == d.destination_rows)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{diff:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_same_rows(
        &pair,
        "SELECT id, CAST(t AS CHAR), CAST(dt AS CHAR), CAST(ts AS CHAR), v FROM app.old ORDER BY id",
    )
    .await;

    pair.src
        .exec(&["INSERT INTO app.frac VALUES (1, '01:02:03.456', 'x')"])
        .await
        .unwrap();
    let error = rowlog
        .stopped_error(
            Duration::from_secs(60),
            "the pipeline stops at an old-format TIME(3)",
        )
        .await;
    for needle in ["app.frac", "`t3`", "mysql56_temporal_format", "FORCE"] {
        assert!(error.contains(needle), "{needle:?} not named: {error}");
    }
}

/// Runs `q` on the source and on the destination and asserts they return the same rows.
async fn assert_same_rows(pair: &Pair, q: &str) {
    let mut s = pair.src.conn().await.unwrap();
    let mut d = pair.dst.conn().await.unwrap();
    let src_rows: Vec<mysql_async::Row> = s.query(q).await.unwrap();
    let dst_rows: Vec<mysql_async::Row> = d.query(q).await.unwrap();
    let render = |rows: Vec<mysql_async::Row>| -> Vec<Vec<mysql_async::Value>> {
        rows.into_iter().map(|r| r.unwrap()).collect()
    };
    assert_eq!(render(src_rows), render(dst_rows), "{q}");
}
