//! Recognising the DDL statements rowlog replicates, and the tables they name.
//!
//! Only what decides *whether and where* a statement applies is parsed: its kind and
//! its table (or database) names. The statement itself is applied to the destination
//! as the source ran it. Recognised: CREATE/ALTER/DROP/RENAME/TRUNCATE TABLE,
//! CREATE/DROP INDEX, CREATE/ALTER/DROP DATABASE. Everything else that the binlog
//! carries as a standalone statement (views, routines, triggers, users, grants,
//! FLUSH, ANALYZE …) is not a row-level schema change and is reported as such.
//!
//! Comments are skipped, except MySQL's executable comments (`/*!50100 … */`), whose
//! content the server runs and so is read as part of the statement.

use rowlog_api::{SchemaChangeKind, TableName};

/// What a standalone statement is, for replication.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Statement {
    Ddl {
        kind: SchemaChangeKind,
        /// Tables named, qualified with the default database where unqualified.
        tables: Vec<TableName>,
        /// The database of a database statement.
        database: Option<String>,
        /// `DROP TABLE` with its IF EXISTS flag, so a multi-table drop can be narrowed
        /// to the replicated tables.
        if_exists: bool,
    },
    /// Not a schema change rowlog applies; the words say what it was.
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    /// A backquoted or double-quoted identifier, unescaped.
    Quoted(String),
    Punct(char),
}

fn tokenize(sql: &str) -> Vec<Token> {
    let b: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            if b.get(i + 2) == Some(&'!') {
                // Executable comment: skip the marker and version digits, keep the body.
                i += 3;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else {
                i += 2;
                while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
        } else if c == '*' && b.get(i + 1) == Some(&'/') {
            // The end of an executable comment.
            i += 2;
        } else if c == '#' || (c == '-' && b.get(i + 1) == Some(&'-')) {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '`' || c == '"' {
            let q = c;
            let mut s = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == q {
                    if b.get(i + 1) == Some(&q) {
                        s.push(q);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                s.push(b[i]);
                i += 1;
            }
            out.push(Token::Quoted(s));
        } else if c == '\'' {
            // A string literal: never a name; skipped whole.
            i += 1;
            while i < b.len() {
                if b[i] == '\\' {
                    i += 2;
                    continue;
                }
                if b[i] == '\'' {
                    if b.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.push(Token::Punct('\''));
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut s = String::new();
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                s.push(b[i]);
                i += 1;
            }
            out.push(Token::Word(s));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

struct Parser<'a> {
    t: Vec<Token>,
    i: usize,
    db: &'a str,
}

impl Parser<'_> {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.t.get(self.i), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        if yes {
            self.i += 1;
        }
        yes
    }
    fn eat_kws(&mut self, kws: &[&str]) -> bool {
        let save = self.i;
        for kw in kws {
            if !self.eat_kw(kw) {
                self.i = save;
                return false;
            }
        }
        true
    }
    fn eat_punct(&mut self, p: char) -> bool {
        let yes = self.t.get(self.i) == Some(&Token::Punct(p));
        if yes {
            self.i += 1;
        }
        yes
    }
    fn ident(&mut self) -> Option<String> {
        match self.t.get(self.i) {
            Some(Token::Word(w)) | Some(Token::Quoted(w)) => {
                self.i += 1;
                Some(w.clone())
            }
            _ => None,
        }
    }
    /// `name` or `db.name`, qualified with the default database.
    fn table(&mut self) -> Option<TableName> {
        let first = self.ident()?;
        if self.eat_punct('.') {
            let second = self.ident()?;
            Some(TableName::new(first, second))
        } else {
            Some(TableName::new(self.db, first))
        }
    }
    fn table_list(&mut self) -> Vec<TableName> {
        let mut out = Vec::new();
        while let Some(t) = self.table() {
            out.push(t);
            if !self.eat_punct(',') {
                break;
            }
        }
        out
    }
    /// Skips to just after the next top-level keyword `kw` (outside parentheses).
    fn skip_to_kw(&mut self, kw: &str) -> bool {
        let mut depth = 0i32;
        while let Some(t) = self.t.get(self.i) {
            match t {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') => depth -= 1,
                Token::Word(w) if depth == 0 && w.eq_ignore_ascii_case(kw) => {
                    self.i += 1;
                    return true;
                }
                _ => {}
            }
            self.i += 1;
        }
        false
    }
}

fn words(sql: &str) -> String {
    sql.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase()
}

/// The statement inside MariaDB's `SET STATEMENT var = value [, …] FOR statement`, which
/// runs `statement` with the variables set for it alone; the binlog holds the whole
/// text, so what the statement does is read after its top-level `FOR`. `None` when
/// `sql` (its leading comments already skipped) is not of that form.
pub(crate) fn set_statement_body(sql: &str) -> Option<&str> {
    let mut words = sql.split_whitespace();
    let is = |w: Option<&str>, kw: &str| w.is_some_and(|w| w.eq_ignore_ascii_case(kw));
    if !is(words.next(), "SET") || !is(words.next(), "STATEMENT") {
        return None;
    }
    let b = sql.as_bytes();
    // `@` too: `@for` is a variable, not the keyword.
    let ident =
        |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b'@' || c >= 0x80;
    let (mut i, mut depth) = (0usize, 0i32);
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < b.len() {
                    // An escaped character, or a quote doubled inside its quotes.
                    if (b[i] == b'\\' && q != b'`') || (b[i] == q && b.get(i + 1) == Some(&q)) {
                        i += 2;
                    } else if b[i] == q {
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') && b.get(i + 2) != Some(&b'!') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(b.len(), |end| i + 2 + end + 1);
            }
            b'#' => i = sql[i..].find('\n').map_or(b.len(), |end| i + end),
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2).is_none_or(u8::is_ascii_whitespace) =>
            {
                i = sql[i..].find('\n').map_or(b.len(), |end| i + end);
            }
            b'(' => depth += 1,
            b')' => depth -= 1,
            c if depth == 0
                && c.eq_ignore_ascii_case(&b'f')
                && (i == 0 || !ident(b[i - 1]))
                && b.len() >= i + 3
                && b[i..i + 3].eq_ignore_ascii_case(b"FOR")
                && b.get(i + 3).is_none_or(|&c| !ident(c)) =>
            {
                return Some(sql[i + 3..].trim_start());
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Classifies a standalone statement that ran with `default_db` selected.
pub(crate) fn classify(sql: &str, default_db: &str) -> Statement {
    let mut p = Parser {
        t: tokenize(sql),
        i: 0,
        db: default_db,
    };
    let ddl = |kind, tables, database| Statement::Ddl {
        kind,
        tables,
        database,
        if_exists: false,
    };
    let other = || Statement::Other(words(sql));
    if p.eat_kw("CREATE") {
        p.eat_kws(&["OR", "REPLACE"]);
        if p.peek_kw("TEMPORARY") {
            return other();
        }
        if p.eat_kw("TABLE") {
            p.eat_kws(&["IF", "NOT", "EXISTS"]);
            return match p.table() {
                Some(t) => ddl(SchemaChangeKind::CreateTable, vec![t], None),
                None => other(),
            };
        }
        if p.eat_kw("DATABASE") || p.eat_kw("SCHEMA") {
            p.eat_kws(&["IF", "NOT", "EXISTS"]);
            return match p.ident() {
                Some(db) => ddl(SchemaChangeKind::CreateDatabase, vec![], Some(db)),
                None => other(),
            };
        }
        let _ = p.eat_kw("ONLINE") || p.eat_kw("OFFLINE");
        let _ = p.eat_kw("UNIQUE") || p.eat_kw("FULLTEXT") || p.eat_kw("SPATIAL");
        if p.eat_kw("INDEX") {
            return match p.skip_to_kw("ON").then(|| p.table()).flatten() {
                Some(t) => ddl(SchemaChangeKind::CreateIndex, vec![t], None),
                None => other(),
            };
        }
        return other();
    }
    if p.eat_kw("ALTER") {
        let _ = p.eat_kw("ONLINE") || p.eat_kw("OFFLINE");
        p.eat_kw("IGNORE");
        if p.eat_kw("TABLE") {
            p.eat_kws(&["IF", "EXISTS"]);
            let Some(t) = p.table() else {
                return other();
            };
            let mut tables = vec![t];
            let options = p.i;
            // ALTER TABLE t … RENAME [TO|AS] new (not RENAME COLUMN/INDEX/KEY).
            while p.skip_to_kw("RENAME") {
                if p.peek_kw("COLUMN") || p.peek_kw("INDEX") || p.peek_kw("KEY") {
                    continue;
                }
                let _ = p.eat_kw("TO") || p.eat_kw("AS");
                if let Some(new) = p.table() {
                    tables.push(new);
                }
            }
            // Statements that move rows between t and a second table, which changes
            // with it: EXCHANGE PARTITION p WITH TABLE t2, and MariaDB's CONVERT
            // PARTITION p TO TABLE t2 and CONVERT TABLE t2 TO PARTITION p.
            p.i = options;
            while p.skip_to_kw("TABLE") {
                let before = p.t.get(p.i.wrapping_sub(2));
                let names_a_table = matches!(before, Some(Token::Word(w))
                    if ["WITH", "TO", "CONVERT"].iter().any(|k| w.eq_ignore_ascii_case(k)));
                if names_a_table {
                    if let Some(other) = p.table() {
                        tables.push(other);
                    }
                }
            }
            return ddl(SchemaChangeKind::AlterTable, tables, None);
        }
        if p.eat_kw("DATABASE") || p.eat_kw("SCHEMA") {
            let db = p
                .ident()
                .filter(|w| !is_option_word(w))
                .unwrap_or_else(|| default_db.to_owned());
            return ddl(SchemaChangeKind::AlterDatabase, vec![], Some(db));
        }
        return other();
    }
    if p.eat_kw("DROP") {
        if p.peek_kw("TEMPORARY") {
            return other();
        }
        if p.eat_kw("TABLE") {
            let if_exists = p.eat_kws(&["IF", "EXISTS"]);
            let tables = p.table_list();
            if tables.is_empty() {
                return other();
            }
            return Statement::Ddl {
                kind: SchemaChangeKind::DropTable,
                tables,
                database: None,
                if_exists,
            };
        }
        if p.eat_kw("DATABASE") || p.eat_kw("SCHEMA") {
            p.eat_kws(&["IF", "EXISTS"]);
            return match p.ident() {
                Some(db) => ddl(SchemaChangeKind::DropDatabase, vec![], Some(db)),
                None => other(),
            };
        }
        let _ = p.eat_kw("ONLINE") || p.eat_kw("OFFLINE");
        if p.eat_kw("INDEX") {
            return match p.skip_to_kw("ON").then(|| p.table()).flatten() {
                Some(t) => ddl(SchemaChangeKind::DropIndex, vec![t], None),
                None => other(),
            };
        }
        return other();
    }
    if p.eat_kw("RENAME") && (p.eat_kw("TABLE") || p.eat_kw("TABLES")) {
        // MariaDB: RENAME TABLE [IF EXISTS] a [WAIT n | NOWAIT] TO b, …
        p.eat_kws(&["IF", "EXISTS"]);
        let mut tables = Vec::new();
        while let Some(from) = p.table() {
            if p.eat_kw("WAIT") {
                // The timeout, maybe with a fraction: `5`, `0.5`.
                p.ident();
                if p.eat_punct('.') {
                    p.ident();
                }
            } else {
                p.eat_kw("NOWAIT");
            }
            if !p.eat_kw("TO") {
                break;
            }
            let Some(to) = p.table() else { break };
            tables.push(from);
            tables.push(to);
            if !p.eat_punct(',') {
                break;
            }
        }
        return if tables.is_empty() {
            other()
        } else {
            ddl(SchemaChangeKind::RenameTable, tables, None)
        };
    }
    if p.eat_kw("TRUNCATE") {
        p.eat_kw("TABLE");
        return match p.table() {
            Some(t) => ddl(SchemaChangeKind::TruncateTable, vec![t], None),
            None => other(),
        };
    }
    other()
}

/// `ALTER DATABASE CHARACTER SET …` names no database: the option starts at once.
fn is_option_word(w: &str) -> bool {
    [
        "CHARACTER",
        "CHARSET",
        "DEFAULT",
        "COLLATE",
        "COMMENT",
        "READ",
        "ENCRYPTION",
    ]
    .iter()
    .any(|k| w.eq_ignore_ascii_case(k))
}

/// `DROP TABLE [IF EXISTS] t1, t2` for a subset of a multi-table drop.
pub(crate) fn drop_tables_statement(tables: &[TableName], if_exists: bool) -> String {
    let q = |s: &str| format!("`{}`", s.replace('`', "``"));
    format!(
        "DROP TABLE {}{}",
        if if_exists { "IF EXISTS " } else { "" },
        tables
            .iter()
            .map(|t| format!("{}.{}", q(&t.db), q(&t.table)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::set_statement_body as body;

    #[test]
    fn the_statement_inside_set_statement_for_is_found() {
        assert_eq!(
            body("SET STATEMENT lock_wait_timeout=10 FOR TRUNCATE TABLE app.t"),
            Some("TRUNCATE TABLE app.t")
        );
        assert_eq!(
            body("set statement sql_mode='FOR x', max_statement_time=(SELECT 1 FOR) for\n  ALTER TABLE t ADD c INT"),
            Some("ALTER TABLE t ADD c INT")
        );
        assert_eq!(
            body("SET STATEMENT `for`=1, forx=2 /* FOR */ FOR DROP TABLE t"),
            Some("DROP TABLE t")
        );
        assert_eq!(
            body("SET STATEMENT a=@for -- FOR x\n # FOR y\n FOR DROP TABLE t"),
            Some("DROP TABLE t")
        );
        assert_eq!(body("SET @x = 1"), None);
        assert_eq!(body("SET STATEMENT a=1"), None);
        assert_eq!(body("ALTER TABLE t FORCE"), None);
    }

    use super::*;

    fn t(db: &str, table: &str) -> TableName {
        TableName::new(db, table)
    }

    fn tables(sql: &str) -> (SchemaChangeKind, Vec<TableName>) {
        match classify(sql, "app") {
            Statement::Ddl { kind, tables, .. } => (kind, tables),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn table_statements_name_their_tables_qualified() {
        use SchemaChangeKind::*;
        assert_eq!(
            tables("CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY)"),
            (CreateTable, vec![t("app", "t")])
        );
        assert_eq!(
            tables("create or replace table `o``dd`.`x y` like a.b"),
            (CreateTable, vec![t("o`dd", "x y")])
        );
        assert_eq!(
            tables("ALTER TABLE shop.orders ADD COLUMN note TEXT, RENAME COLUMN a TO b"),
            (AlterTable, vec![t("shop", "orders")])
        );
        assert_eq!(
            tables("ALTER TABLE t ADD c INT, RENAME TO other.t2"),
            (AlterTable, vec![t("app", "t"), t("other", "t2")])
        );
        assert_eq!(
            tables("ALTER TABLE t EXCHANGE PARTITION p0 WITH TABLE x.t2 WITHOUT VALIDATION"),
            (AlterTable, vec![t("app", "t"), t("x", "t2")])
        );
        assert_eq!(
            tables("alter table t convert partition p1 to table t_old"),
            (AlterTable, vec![t("app", "t"), t("app", "t_old")])
        );
        assert_eq!(
            tables("ALTER TABLE t CONVERT TABLE `x`.`new` TO PARTITION p2 VALUES LESS THAN (10)"),
            (AlterTable, vec![t("app", "t"), t("x", "new")])
        );
        assert_eq!(
            tables("ALTER TABLE t ADD c INT COMMENT 'WITH TABLE x', ENGINE = InnoDB"),
            (AlterTable, vec![t("app", "t")])
        );
        assert_eq!(
            tables("DROP TABLE `t1`,`x`.`t2` /* generated by server */"),
            (DropTable, vec![t("app", "t1"), t("x", "t2")])
        );
        assert_eq!(
            tables("RENAME TABLE a TO b, x.c TO x.d"),
            (
                RenameTable,
                vec![t("app", "a"), t("app", "b"), t("x", "c"), t("x", "d")]
            )
        );
        assert_eq!(
            tables("RENAME TABLE IF EXISTS a WAIT 0.5 TO b, c NOWAIT TO d"),
            (
                RenameTable,
                vec![t("app", "a"), t("app", "b"), t("app", "c"), t("app", "d")]
            )
        );
        assert_eq!(
            tables("TRUNCATE TABLE t"),
            (TruncateTable, vec![t("app", "t")])
        );
        assert_eq!(tables("truncate t"), (TruncateTable, vec![t("app", "t")]));
        assert_eq!(
            tables("CREATE UNIQUE INDEX ux ON t (email)"),
            (CreateIndex, vec![t("app", "t")])
        );
        assert_eq!(
            tables("DROP INDEX ux ON shop.t"),
            (DropIndex, vec![t("shop", "t")])
        );
    }

    #[test]
    fn comments_are_skipped_but_executable_comments_are_read() {
        assert_eq!(
            tables("/* hello */ ALTER -- note\n TABLE /*!50100 `t` */ ADD x INT"),
            (SchemaChangeKind::AlterTable, vec![t("app", "t")])
        );
    }

    #[test]
    fn database_statements_and_other_statements() {
        assert_eq!(
            classify("CREATE DATABASE IF NOT EXISTS shop", ""),
            Statement::Ddl {
                kind: SchemaChangeKind::CreateDatabase,
                tables: vec![],
                database: Some("shop".into()),
                if_exists: false
            }
        );
        assert!(matches!(
            classify("ALTER DATABASE CHARACTER SET utf8mb4", "app"),
            Statement::Ddl { database: Some(d), .. } if d == "app"
        ));
        for sql in [
            "CREATE TEMPORARY TABLE t (a INT)",
            "DROP TEMPORARY TABLE IF EXISTS t",
            "CREATE VIEW v AS SELECT 1",
            "GRANT SELECT ON *.* TO u",
            "FLUSH PRIVILEGES",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET @a = 1",
        ] {
            assert!(matches!(classify(sql, "app"), Statement::Other(_)), "{sql}");
        }
    }

    #[test]
    fn a_string_literal_is_never_a_name() {
        assert_eq!(
            tables("ALTER TABLE t COMMENT 'RENAME TO x', ADD c INT"),
            (SchemaChangeKind::AlterTable, vec![t("app", "t")])
        );
    }

    #[test]
    fn a_narrowed_drop_quotes_its_names() {
        assert_eq!(
            drop_tables_statement(&[t("a", "b`c")], true),
            "DROP TABLE IF EXISTS `a`.`b``c`"
        );
    }
}
