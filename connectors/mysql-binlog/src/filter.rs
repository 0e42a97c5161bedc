//! Table include/exclude filters: `db.table` globs where `*` matches any run of
//! characters and `?` one character. Exclusion wins; an empty include list means all.

use rowlog_api::TableName;

#[derive(Debug, thiserror::Error)]
#[error("source.{key}: `{pattern}` is not a `db.table` glob (it needs exactly one `.`)")]
pub struct FilterError {
    key: &'static str,
    pattern: String,
}

#[derive(Clone, Debug)]
struct Pattern {
    db: String,
    table: String,
}

#[derive(Clone, Debug, Default)]
pub struct TableFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl TableFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, FilterError> {
        let parse = |key: &'static str, list: &[String]| {
            list.iter()
                .map(|p| match p.split_once('.') {
                    Some((db, table))
                        if !db.is_empty() && !table.is_empty() && !table.contains('.') =>
                    {
                        Ok(Pattern {
                            db: db.to_owned(),
                            table: table.to_owned(),
                        })
                    }
                    _ => Err(FilterError {
                        key,
                        pattern: p.clone(),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            include: parse("include", include)?,
            exclude: parse("exclude", exclude)?,
        })
    }

    pub fn includes(&self, t: &TableName) -> bool {
        let m = |p: &Pattern| glob(&p.db, &t.db) && glob(&p.table, &t.table);
        (self.include.is_empty() || self.include.iter().any(m)) && !self.exclude.iter().any(m)
    }

    /// Whether some table of database `db` may be replicated: an include pattern's
    /// database matches it and no exclude pattern takes the whole database (`db.*`).
    pub fn includes_db(&self, db: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob(&p.db, db)))
            && !self
                .exclude
                .iter()
                .any(|p| p.table == "*" && glob(&p.db, db))
    }
}

/// Iterative glob match with backtracking on the last `*`; linear in practice.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> TableFilter {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        TableFilter::new(&v(inc), &v(exc)).unwrap()
    }

    #[test]
    fn exclusion_wins_and_empty_include_means_all() {
        let filter = f(&[], &["mysql.*", "app.tmp_*"]);
        assert!(filter.includes(&TableName::new("app", "users")));
        assert!(!filter.includes(&TableName::new("app", "tmp_1")));
        assert!(!filter.includes(&TableName::new("mysql", "user")));
        let filter = f(&["app.us?rs", "shop.*"], &["shop.audit"]);
        assert!(filter.includes(&TableName::new("app", "users")));
        assert!(!filter.includes(&TableName::new("app", "orders")));
        assert!(filter.includes(&TableName::new("shop", "orders")));
        assert!(!filter.includes(&TableName::new("shop", "audit")));
    }

    #[test]
    fn patterns_without_a_dot_are_rejected() {
        let err = TableFilter::new(&["users".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("source.include"), "{err}");
    }

    #[test]
    fn a_database_is_included_unless_excluded_whole() {
        let f = TableFilter::new(&["shop.*".into()], &["mysql.*".into()]).unwrap();
        assert!(f.includes_db("shop"));
        assert!(!f.includes_db("other"));
        let f = TableFilter::new(&[], &["mysql.*".into(), "app.tmp_*".into()]).unwrap();
        assert!(f.includes_db("app") && !f.includes_db("mysql"));
    }

    #[test]
    fn glob_backtracks() {
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b", "aXbY"));
        assert!(glob("*", ""));
    }
}
