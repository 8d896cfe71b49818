//! Timestream's spelling of the typed value columns: `measure_value::double`.
//!
//! The SQL parser reads `measure_value::double` (or `CAST(measure_value AS DOUBLE)`) as a cast
//! of a column `measure_value`, which no table has. [`resolve_typed_columns`] rewrites the parsed
//! statement — the syntax tree, never the SQL text — so that each such cast names the typed
//! column itself (`"measure_value::double"`, `::bigint`, `::varchar`, `::boolean`,
//! `::timestamp`) before DataFusion plans it. Result columns are then named as in Timestream.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr, Ident};

const MEASURE_VALUE: &str = "measure_value";

/// Rewrites every cast of `measure_value` in `statement` into the typed column it names. A cast
/// to a type without a column (`measure_value::date`) is left alone: planning then reports the
/// missing column.
pub fn resolve_typed_columns(statement: &mut Statement) {
    if let Statement::Explain(explain) = statement {
        return resolve_typed_columns(&mut explain.statement);
    }
    let Statement::Statement(statement) = statement else { return };
    let _ = visit_expressions_mut(statement.as_mut(), |expr: &mut Expr| {
        if let Some(typed) = typed_column(expr) {
            *expr = typed;
        }
        ControlFlow::<()>::Continue(())
    });
}

fn typed_column(expr: &Expr) -> Option<Expr> {
    let Expr::Cast { expr: inner, data_type, .. } = expr else { return None };
    let suffix = type_suffix(&data_type.to_string())?;
    let typed = Ident::with_quote('"', format!("{MEASURE_VALUE}::{suffix}"));
    match inner.as_ref() {
        Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case(MEASURE_VALUE) => Some(Expr::Identifier(typed)),
        Expr::CompoundIdentifier(parts) if parts.last().is_some_and(|p| p.value.eq_ignore_ascii_case(MEASURE_VALUE)) => {
            let mut parts = parts.clone();
            *parts.last_mut().expect("not empty") = typed;
            Some(Expr::CompoundIdentifier(parts))
        }
        _ => None,
    }
}

/// The column suffix for a SQL type name, by Timestream's five types and their common synonyms.
fn type_suffix(sql_type: &str) -> Option<&'static str> {
    let name = sql_type.to_ascii_lowercase();
    let base = name.split(|c: char| c == '(' || c == ' ').next().unwrap_or("");
    let suffix = match base {
        "double" | "float" | "float8" | "float64" | "real" => "double",
        "bigint" | "int" | "integer" | "int8" | "int64" => "bigint",
        "varchar" | "string" | "text" | "char" => "varchar",
        "boolean" | "bool" => "boolean",
        "timestamp" => "timestamp",
        _ => return None,
    };
    Some(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn check(sql: &str, expected: &str) {
        let mut statements = DFParser::parse_sql(sql).unwrap();
        let mut statement = statements.pop_front().unwrap();
        resolve_typed_columns(&mut statement);
        assert_eq!(statement.to_string(), expected, "{sql}");
    }

    #[test]
    fn casts_of_measure_value_name_the_typed_column() {
        check("SELECT measure_value::double FROM t", r#"SELECT "measure_value::double" FROM t"#);
        check(
            "SELECT avg(t.measure_value::double), measure_value::bigint FROM t WHERE measure_value::boolean",
            r#"SELECT avg(t."measure_value::double"), "measure_value::bigint" FROM t WHERE "measure_value::boolean""#,
        );
        check("SELECT CAST(measure_value AS VARCHAR) FROM t", r#"SELECT "measure_value::varchar" FROM t"#);
        check("SELECT measure_value::timestamp FROM t", r#"SELECT "measure_value::timestamp" FROM t"#);
        check("SELECT other::double, measure_value::date FROM t", "SELECT other::DOUBLE, measure_value::DATE FROM t");
    }
}
