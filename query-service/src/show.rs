//! Timestream's catalog statements, answered from the catalog snapshot:
//!
//! - `SHOW DATABASES [LIKE 'pattern']` → `Database`
//! - `SHOW TABLES [FROM database] [LIKE 'pattern']` → `Table` (and `Database` without FROM)
//! - `SHOW MEASURES FROM database.table [LIKE 'pattern']` → `measure_name`, `data_type`,
//!   `dimensions` (the table's dimensions, an array of rows `(dimension_name, data_type)`)
//! - `DESCRIBE database.table` → `Column`, `Type`, `Timestream attribute type`
//!
//! Other SHOW and DESCRIBE forms go to DataFusion (`SHOW COLUMNS`, `DESCRIBE` of a query…).
//!
//! Each answers only what the caller may read: listings leave out the databases its token
//! cannot read, and a statement naming one is refused with [`ShowError::Forbidden`].

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use lodestone_kit::auth::{AuthError, Principal};
use lodestone_store::{arrow_schema, Snapshot, TableRef, TIME_COLUMN, VERSION_COLUMN};

/// Why a catalog statement is refused.
#[derive(Debug)]
pub enum ShowError {
    /// The statement is malformed or names what does not exist.
    Invalid(String),
    /// It names a database the caller may not read.
    Forbidden(AuthError),
}

impl From<String> for ShowError {
    fn from(message: String) -> ShowError {
        ShowError::Invalid(message)
    }
}

impl From<AuthError> for ShowError {
    fn from(error: AuthError) -> ShowError {
        ShowError::Forbidden(error)
    }
}

/// The answer to `sql` for `caller` if it is one of the statements above; `Err` says what is
/// wrong with it.
pub fn answer(sql: &str, snapshot: &Snapshot, caller: &Principal) -> Option<Result<RecordBatch, ShowError>> {
    let tokens: Vec<Token> = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .ok()?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon | Token::EOF))
        .collect();
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    };
    match (word(0).as_deref(), word(1).as_deref()) {
        (Some("SHOW"), Some("DATABASES")) => {
            Some(like(&tokens[2..]).and_then(|pattern| databases(snapshot, caller, pattern.as_ref())).map_err(ShowError::from))
        }
        (Some("SHOW"), Some("TABLES")) => Some(show_tables(&tokens[2..], snapshot, caller)),
        (Some("SHOW"), Some("MEASURES")) => Some(show_measures(&tokens[2..], snapshot, caller)),
        (Some("DESCRIBE" | "DESC"), _) => {
            let (table, rest) = table_name(&tokens[1..])?;
            if !rest.is_empty() {
                return None;
            }
            Some(caller.require_read(&table.database).map_err(ShowError::from).and_then(|()| Ok(describe(snapshot, &table)?)))
        }
        _ => None,
    }
}

/// `LIKE 'pattern'` or nothing.
fn like(tokens: &[Token]) -> Result<Option<Like>, String> {
    match tokens {
        [] => Ok(None),
        [Token::Word(w), Token::SingleQuotedString(pattern)] if w.value.eq_ignore_ascii_case("like") => Ok(Some(Like::new(pattern))),
        _ => Err("expected nothing or LIKE 'pattern' here".into()),
    }
}

/// A SQL LIKE pattern: `%` any run, `_` any one character. Matching is iterative and never
/// backtracks past the last `%` (the classic greedy wildcard match): at most |pattern| × |text|
/// steps, after runs of `%` are made one, and a pattern with more literal characters than the
/// text fails at once. (A recursive matcher took exponential time and stack on `%%%…%z`.)
struct Like {
    pattern: Vec<char>,
    literals: usize,
}

impl Like {
    fn new(pattern: &str) -> Like {
        let mut compact: Vec<char> = Vec::new();
        for c in pattern.chars() {
            if !(c == '%' && compact.last() == Some(&'%')) {
                compact.push(c);
            }
        }
        let literals = compact.iter().filter(|&&c| c != '%').count();
        Like { pattern: compact, literals }
    }

    fn matches(&self, text: &str) -> bool {
        let (p, text) = (&self.pattern, text.chars().collect::<Vec<char>>());
        if self.literals > text.len() {
            return false;
        }
        let (mut pi, mut ti) = (0, 0);
        // After the last `%` seen: where the pattern resumes, and the text position tried there.
        let mut resume: Option<(usize, usize)> = None;
        while ti < text.len() {
            match p.get(pi) {
                Some('%') => {
                    pi += 1;
                    resume = Some((pi, ti));
                }
                Some(&c) if c == '_' || c == text[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match resume {
                    // The last `%` takes one more character; the rest is matched from there.
                    Some((after, tried)) => {
                        pi = after;
                        ti = tried + 1;
                        resume = Some((after, tried + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '%')
    }
}

/// `database.table` (each part quoted or not) and the tokens after it.
fn table_name(tokens: &[Token]) -> Option<(TableRef, &[Token])> {
    match tokens {
        [Token::Word(database), Token::Period, Token::Word(table), rest @ ..] => {
            Some((TableRef { database: database.value.clone(), table: table.value.clone() }, rest))
        }
        _ => None,
    }
}

fn strings(name: &str, values: Vec<String>) -> (String, ArrayRef) {
    (name.to_string(), Arc::new(StringArray::from(values)) as ArrayRef)
}

fn batch(columns: Vec<(String, ArrayRef)>) -> Result<RecordBatch, String> {
    RecordBatch::try_from_iter(columns).map_err(|e| e.to_string())
}

fn databases(snapshot: &Snapshot, caller: &Principal, pattern: Option<&Like>) -> Result<RecordBatch, String> {
    let readable = snapshot.databases.keys().filter(|d| caller.can_read(d));
    let names = readable.filter(|d| pattern.is_none_or(|p| p.matches(d))).cloned().collect();
    batch(vec![strings("Database", names)])
}

fn show_tables(tokens: &[Token], snapshot: &Snapshot, caller: &Principal) -> Result<RecordBatch, ShowError> {
    let (database, rest) = match tokens {
        [Token::Word(from), Token::Word(database), rest @ ..] if from.value.eq_ignore_ascii_case("from") || from.value.eq_ignore_ascii_case("in") => {
            (Some(database.value.clone()), rest)
        }
        rest => (None, rest),
    };
    if let Some(database) = &database {
        caller.require_read(database)?;
    }
    let pattern = like(rest)?;
    let mut found: Vec<(String, String)> = Vec::new();
    for (name, tables) in &snapshot.databases {
        if database.as_ref().is_some_and(|d| d != name) || !caller.can_read(name) {
            continue;
        }
        found.extend(tables.keys().filter(|t| pattern.as_ref().is_none_or(|p| p.matches(t))).map(|t| (name.clone(), t.clone())));
    }
    if let Some(database) = &database {
        if !snapshot.databases.contains_key(database) {
            return Err(format!("database {database:?} not found").into());
        }
        return Ok(batch(vec![strings("Table", found.into_iter().map(|(_, t)| t).collect())])?);
    }
    let (databases, tables) = found.into_iter().unzip();
    Ok(batch(vec![strings("Database", databases), strings("Table", tables)])?)
}

fn show_measures(tokens: &[Token], snapshot: &Snapshot, caller: &Principal) -> Result<RecordBatch, ShowError> {
    let usage = || "SHOW MEASURES FROM database.table [LIKE 'pattern']".to_string();
    let [Token::Word(from), rest @ ..] = tokens else { return Err(usage().into()) };
    if !from.value.eq_ignore_ascii_case("from") {
        return Err(usage().into());
    }
    let (table, rest) = table_name(rest).ok_or_else(usage)?;
    caller.require_read(&table.database)?;
    let pattern = like(rest)?;
    let entry = snapshot.table(&table).ok_or_else(|| format!("table {table} not found"))?;
    let (mut names, mut types) = (Vec::new(), Vec::new());
    for (name, ty) in &entry.schema.measures {
        if pattern.as_ref().is_none_or(|p| p.matches(name)) {
            names.push(name.clone());
            types.push(ty.to_string().to_lowercase());
        }
    }
    let dimensions = dimension_rows(&entry.schema.dimensions.iter().cloned().collect::<Vec<_>>(), names.len());
    Ok(batch(vec![strings("measure_name", names), strings("data_type", types), ("dimensions".into(), dimensions)])?)
}

/// `dimensions` of SHOW MEASURES, as Timestream has it: for each of `rows` measures, the table's
/// dimensions as an array of rows `(dimension_name, data_type)` (Grafana reads the names there).
fn dimension_rows(dimensions: &[String], rows: usize) -> ArrayRef {
    use datafusion::arrow::array::{ListArray, StructArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    use datafusion::arrow::datatypes::{DataType, Field, Fields};
    let fields = Fields::from(vec![Field::new("dimension_name", DataType::Utf8, false), Field::new("data_type", DataType::Utf8, false)]);
    let names: Vec<&str> = (0..rows).flat_map(|_| dimensions.iter().map(String::as_str)).collect();
    let kinds = vec!["varchar"; names.len()];
    let points = StructArray::new(fields.clone(), vec![Arc::new(StringArray::from(names)) as ArrayRef, Arc::new(StringArray::from(kinds))], None);
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(dimensions.len(), rows));
    Arc::new(ListArray::new(Arc::new(Field::new("item", DataType::Struct(fields), true)), offsets, Arc::new(points), None))
}

fn describe(snapshot: &Snapshot, table: &TableRef) -> Result<RecordBatch, String> {
    let entry = snapshot.table(table).ok_or_else(|| format!("table {table} not found"))?;
    let schema = arrow_schema(&entry.schema);
    let (mut columns, mut types, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    for field in schema.fields() {
        let name = field.name();
        let kind = if entry.schema.dimensions.contains(name) {
            "DIMENSION"
        } else if name == "measure_name" {
            "MEASURE_NAME"
        } else if name == TIME_COLUMN {
            "TIMESTAMP"
        } else if name == VERSION_COLUMN {
            "VERSION"
        } else if name.starts_with("measure_value::") {
            "MEASURE_VALUE"
        } else {
            "MULTI"
        };
        columns.push(name.clone());
        types.push(crate::engine::scalar_type(field.data_type()).to_lowercase());
        kinds.push(kind.to_string());
    }
    batch(vec![strings("Column", columns), strings("Type", types), strings("Timestream attribute type", kinds)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns() {
        let matches = |pattern: &str, text: &str| Like::new(pattern).matches(text);
        assert!(matches("t%", "trucks"));
        assert!(matches("%ck_", "trucks"));
        assert!(!matches("t_", "trucks"));
        assert!(matches("%", ""));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("%a%b%", "xaybz"));
        assert!(!matches("%a%b%", "xbyaz"));
        assert!(matches("a%a", "aba"));
        assert!(matches("%aab", "aaab"));
        assert!(matches("_%_", "ab"));
        assert!(!matches("_%_", "a"));
    }

    /// Regression: `SHOW DATABASES LIKE '%%%…%z'` ran a backtracking matcher, exponential in the
    /// `%`s (12 took 19.8 s) and as deep as the pattern (200,000 overflowed the stack).
    #[test]
    fn like_with_many_percent_signs_is_linear_and_shallow() {
        let names = ["fleet", "plant_a", "loadtest", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"];
        let many = Like::new(&format!("{}z", "%".repeat(200_000)));
        assert_eq!(names.iter().filter(|n| many.matches(n)).count(), 1);
        let alternating = Like::new(&format!("{}b", "%a".repeat(100_000)));
        assert!(!names.iter().any(|n| alternating.matches(n)));
        let sixteen = Like::new(&format!("{}x", "%".repeat(16)));
        assert!(!names.iter().any(|n| sixteen.matches(n)));
        let long_name = "a".repeat(256);
        assert!(Like::new(&format!("{}b", "%a".repeat(100))).matches(&format!("{long_name}b")));
    }
}
