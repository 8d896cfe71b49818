//! Timestream's SQL on DataFusion, before planning:
//!
//! - **Interval literals** `1h`, `5m`, `30s`, `100ms`, `1d` (a number followed at once by a unit)
//!   become `INTERVAL '1 hours'` and so on. The SQL is tokenized and only those two tokens'
//!   span is replaced, so strings, quoted names and comments are never touched.
//! - **Functions Timestream names differently** are rewritten in the syntax tree into their
//!   DataFusion equivalents ([`REWRITES`]); their arguments are kept as parsed.
//!
//! - **`CROSS JOIN UNNEST(series) AS u(time, value)`**, the form Timestream's documentation uses
//!   for every timeseries example, which DataFusion cannot plan (a lateral UNNEST in FROM): the
//!   relation before it becomes a derived table that unnests in its projection, and `u.time`,
//!   `u.value` become that table's columns ([`rewrite_unnest_joins`]).
//!
//! The timeseries functions themselves are DataFusion functions (`crate::timeseries`).

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

/// Timestream's interval units and DataFusion's names for them.
const UNITS: [(&str, &str); 7] = [
    ("ns", "nanoseconds"),
    ("us", "microseconds"),
    ("ms", "milliseconds"),
    ("s", "seconds"),
    ("m", "minutes"),
    ("h", "hours"),
    ("d", "days"),
];

/// Rewrites Timestream's interval literals in `sql` (see the module documentation). SQL that
/// does not tokenize is returned as it is, for the parser to report.
pub fn interval_literals(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else { return sql.to_string() };
    let mut replacements: Vec<(usize, usize, String)> = Vec::new();
    for pair in tokens.windows(2) {
        let (Token::Number(number, false), Token::Word(word)) = (&pair[0].token, &pair[1].token) else { continue };
        if word.quote_style.is_some() || pair[0].span.end != pair[1].span.start {
            continue;
        }
        let Some((_, unit)) = UNITS.iter().find(|(short, _)| word.value.eq_ignore_ascii_case(short)) else { continue };
        let (Some(start), Some(end)) = (offset(sql, pair[0].span.start), offset(sql, pair[1].span.end)) else { continue };
        replacements.push((start, end, format!("INTERVAL '{number} {unit}'")));
    }
    let mut out = sql.to_string();
    for (start, end, text) in replacements.into_iter().rev() {
        out.replace_range(start..end, &text);
    }
    out
}

/// The byte offset of a tokenizer location (1-based line and character column).
fn offset(sql: &str, location: Location) -> Option<usize> {
    let line_start = if location.line <= 1 {
        0
    } else {
        sql.match_indices('\n').nth(location.line as usize - 2)?.0 + 1
    };
    let line = &sql[line_start..];
    let column = location.column as usize - 1;
    Some(line_start + line.char_indices().nth(column).map_or(line.len(), |(i, _)| i))
}

/// Timestream's functions that DataFusion has under another name or shape: (name, arguments,
/// DataFusion expression with `$n` for the n-th argument). A call with another number of
/// arguments is refused with the usage.
pub const REWRITES: [(&str, usize, &str); 11] = [
    ("bin", 2, "date_bin($2, $1)"),
    ("ago", 1, "CAST(now() - $1 AS TIMESTAMP)"),
    ("now", 0, "CAST(now() AS TIMESTAMP)"),
    ("sequence", 2, "generate_series($1, $2)"),
    ("sequence", 3, "generate_series($1, $2, $3)"),
    ("approx_percentile", 2, "approx_percentile_cont($1, $2)"),
    ("max_by", 2, "first_value($1 ORDER BY $2 DESC NULLS LAST)"),
    ("min_by", 2, "first_value($1 ORDER BY $2 ASC NULLS LAST)"),
    ("create_time_series", 2, "array_agg(named_struct('time', $1, 'value', CAST($2 AS DOUBLE)) ORDER BY $1)"),
    // Grafana's `$__timeFilter` expands to `time BETWEEN from_milliseconds(A) AND from_milliseconds(B)`.
    ("from_milliseconds", 1, "CAST(to_timestamp_millis($1) AS TIMESTAMP)"),
    ("from_nanoseconds", 1, "to_timestamp_nanos($1)"),
];

/// Rewrites the calls of [`REWRITES`] in `statement`. Errors name the function and its usage.
pub fn rewrite_functions(statement: &mut Statement) -> Result<(), String> {
    if let Statement::Explain(explain) = statement {
        return rewrite_functions(&mut explain.statement);
    }
    let Statement::Statement(statement) = statement else { return Ok(()) };
    let flow = visit_expressions_mut(statement.as_mut(), |expr: &mut Expr| match rewritten(expr) {
        Ok(Some(replacement)) => {
            *expr = replacement;
            ControlFlow::Continue(())
        }
        Ok(None) => ControlFlow::Continue(()),
        Err(error) => ControlFlow::Break(error),
    });
    match flow {
        ControlFlow::Break(error) => Err(error),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn rewritten(expr: &Expr) -> Result<Option<Expr>, String> {
    let Expr::Function(function) = expr else { return Ok(None) };
    let name = function.name.to_string().to_ascii_lowercase();
    let forms: Vec<&(&str, usize, &str)> = REWRITES.iter().filter(|(n, _, _)| *n == name).collect();
    if forms.is_empty() || function.over.is_some() {
        return Ok(None);
    }
    let args: Vec<Expr> = match &function.args {
        FunctionArguments::None => Vec::new(),
        FunctionArguments::List(list) if list.clauses.is_empty() && list.duplicate_treatment.is_none() => {
            let plain = list.args.iter().map(|arg| match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            });
            match plain.collect::<Option<Vec<_>>>() {
                Some(args) => args,
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    let Some((_, _, template)) = forms.iter().find(|(_, count, _)| *count == args.len()) else {
        let counts: Vec<String> = forms.iter().map(|(_, count, _)| count.to_string()).collect();
        return Err(format!("{name} takes {} arguments, not {}", counts.join(" or "), args.len()));
    };
    let mut replacement = Parser::new(&GenericDialect {})
        .try_with_sql(template)
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|e| format!("internal: the rewrite of {name} does not parse: {e}"))?;
    let _ = visit_expressions_mut(&mut replacement, |e: &mut Expr| {
        if let Expr::Value(value) = e {
            if let Value::Placeholder(placeholder) = &value.value {
                if let Some(arg) = placeholder.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).and_then(|n| args.get(n - 1)) {
                    *e = arg.clone();
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(Some(replacement))
}

/// The prefix of the columns an UNNEST join's alias columns become.
const UNNESTED_PREFIX: &str = "__lodestone_u_";

/// Rewrites `FROM rel [AS] a CROSS JOIN UNNEST(expr) AS u(c1[, c2])` (and the comma form
/// `FROM rel a, UNNEST(expr) AS u(…)`) in every query of `statement` into
///
/// ```sql
/// FROM (SELECT a.*, <point> AS "__lodestone_u_c1"… FROM (SELECT a.*, unnest(expr) AS __lodestone_point FROM rel a) AS a) AS a
/// ```
///
/// where `<point>` is the element itself for one column, or the `time` and `value` fields of a
/// timeseries point for two; `u.c1` and a bare `c1` then name `a."__lodestone_u_c1"` (kept as
/// `c1` in the answer's column names). The UNNEST must be the first join after one relation.
pub fn rewrite_unnest_joins(statement: &mut Statement) -> Result<(), String> {
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    match statement {
        Statement::Explain(explain) => rewrite_unnest_joins(&mut explain.statement),
        Statement::Statement(inner) => match inner.as_mut() {
            Sql::Query(query) => unnest_in_query(query),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn unnest_in_query(query: &mut datafusion::sql::sqlparser::ast::Query) -> Result<(), String> {
    use datafusion::sql::sqlparser::ast::SetExpr;
    if let Some(with) = &mut query.with {
        for cte in &mut with.cte_tables {
            unnest_in_query(&mut cte.query)?;
        }
    }
    let order_by = &mut query.order_by;
    match query.body.as_mut() {
        SetExpr::Select(select) => unnest_in_select(select, order_by),
        SetExpr::Query(inner) => unnest_in_query(inner),
        SetExpr::SetOperation { left, right, .. } => {
            for side in [left, right] {
                if let SetExpr::Query(inner) = side.as_mut() {
                    unnest_in_query(inner)?;
                }
                if let SetExpr::Select(select) = side.as_mut() {
                    unnest_in_select(select, &mut None)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// One UNNEST join found: the relation's qualifier, the alias columns and what it unnests.
struct Unnested {
    qualifier: String,
    unnest_alias: String,
    columns: Vec<String>,
}

fn unnest_in_select(select: &mut datafusion::sql::sqlparser::ast::Select, order_by: &mut Option<datafusion::sql::sqlparser::ast::OrderBy>) -> Result<(), String> {
    use datafusion::sql::sqlparser::ast::{JoinConstraint, JoinOperator, SelectItem, TableFactor, TableWithJoins};
    // Subqueries in FROM first: each is a query of its own.
    for table in &mut select.from {
        for factor in std::iter::once(&mut table.relation).chain(table.joins.iter_mut().map(|j| &mut j.relation)) {
            if let TableFactor::Derived { subquery, .. } = factor {
                unnest_in_query(subquery)?;
            }
        }
    }
    // The comma form: `FROM a, UNNEST(…) AS u(…)` is the cross join written otherwise.
    if select.from.len() == 2 && select.from[0].joins.is_empty() && select.from[1].joins.is_empty() && matches!(select.from[1].relation, TableFactor::UNNEST { .. }) {
        let unnest = select.from.pop().expect("two relations").relation;
        select.from[0].joins.push(datafusion::sql::sqlparser::ast::Join { relation: unnest, global: false, join_operator: JoinOperator::CrossJoin(JoinConstraint::None) });
    }
    let mut found = Vec::new();
    for table in &mut select.from {
        let Some(first) = table.joins.first().cloned() else { continue };
        let TableFactor::UNNEST { alias, array_exprs, with_offset, with_ordinality, .. } = &first.relation else { continue };
        if !matches!(first.join_operator, JoinOperator::CrossJoin(JoinConstraint::None)) {
            return Err("UNNEST is supported as CROSS JOIN UNNEST(…) AS alias(columns)".into());
        }
        let [array] = array_exprs.as_slice() else { return Err("CROSS JOIN UNNEST takes one array or timeseries".into()) };
        let Some(alias) = alias.as_ref().filter(|a| !a.columns.is_empty()) else {
            return Err("CROSS JOIN UNNEST(…) needs an alias with its columns, e.g. AS u(time, value)".into());
        };
        if *with_offset || *with_ordinality {
            return Err("CROSS JOIN UNNEST … WITH OFFSET/ORDINALITY is not supported".into());
        }
        let qualifier = match &table.relation {
            TableFactor::Table { alias: Some(a), .. } | TableFactor::Derived { alias: Some(a), .. } => a.name.clone(),
            TableFactor::Table { name, alias: None, .. } => name.0.last().and_then(|part| part.as_ident()).cloned().ok_or("the relation before CROSS JOIN UNNEST needs a name")?,
            _ => return Err("give the relation before CROSS JOIN UNNEST an alias".into()),
        };
        let columns: Vec<String> = alias.columns.iter().map(|c| c.name.value.clone()).collect();
        let point = match columns.as_slice() {
            [one] => format!("__lodestone_point AS \"{UNNESTED_PREFIX}{one}\""),
            [time, value] => format!(
                "get_field(__lodestone_point, 'time') AS \"{UNNESTED_PREFIX}{time}\", get_field(__lodestone_point, 'value') AS \"{UNNESTED_PREFIX}{value}\""
            ),
            _ => return Err("CROSS JOIN UNNEST's alias takes one column (an array) or two (a timeseries: time, value)".into()),
        };
        let relation = &table.relation;
        let sql = format!(
            "SELECT * FROM (SELECT {qualifier}.*, {point} FROM (SELECT {qualifier}.*, unnest({array}) AS __lodestone_point FROM {relation}) AS {qualifier}) AS {qualifier}"
        );
        let mut parsed = Parser::new(&GenericDialect {}).try_with_sql(&sql).and_then(|mut p| p.parse_query()).map_err(|e| format!("internal: the UNNEST rewrite does not parse: {e}"))?;
        let datafusion::sql::sqlparser::ast::SetExpr::Select(derived) = parsed.body.as_mut() else { return Err("internal: the UNNEST rewrite is not a SELECT".into()) };
        let TableWithJoins { relation: derived, .. } = derived.from.remove(0);
        table.relation = derived;
        table.joins.remove(0);
        found.push(Unnested { qualifier: qualifier.value.clone(), unnest_alias: alias.name.value.clone(), columns });
    }
    if found.is_empty() {
        return Ok(());
    }
    // References to the alias columns name the derived table's columns, under their own names.
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(expr) = item {
            if let Some(name) = unnested_name(expr, &found) {
                *item = SelectItem::ExprWithAlias { expr: expr.clone(), alias: datafusion::sql::sqlparser::ast::Ident::new(name) };
            }
        }
    }
    let rename = |expr: &mut Expr| {
        if let Some((qualifier, column)) = unnested_reference(expr, &found) {
            *expr = Expr::CompoundIdentifier(vec![datafusion::sql::sqlparser::ast::Ident::new(qualifier), datafusion::sql::sqlparser::ast::Ident::with_quote('"', format!("{UNNESTED_PREFIX}{column}"))]);
        }
        ControlFlow::<()>::Continue(())
    };
    let _ = visit_expressions_mut(&mut select.projection, rename);
    let _ = visit_expressions_mut(&mut select.selection, rename);
    let _ = visit_expressions_mut(&mut select.group_by, rename);
    let _ = visit_expressions_mut(&mut select.having, rename);
    let _ = visit_expressions_mut(order_by, rename);
    Ok(())
}

/// The qualifier and column a reference to an UNNEST alias column (`u.time`, or a bare `time`)
/// stands for.
fn unnested_reference(expr: &Expr, found: &[Unnested]) -> Option<(String, String)> {
    let matches = |unnested: &Unnested, column: &str| unnested.columns.iter().find(|c| c.eq_ignore_ascii_case(column)).cloned();
    match expr {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            let unnested = found.iter().find(|u| u.unnest_alias.eq_ignore_ascii_case(&parts[0].value))?;
            Some((unnested.qualifier.clone(), matches(unnested, &parts[1].value)?))
        }
        Expr::Identifier(ident) => found.iter().find_map(|u| Some((u.qualifier.clone(), matches(u, &ident.value)?))),
        _ => None,
    }
}

/// The column name a projected reference to an UNNEST alias column keeps.
fn unnested_name(expr: &Expr, found: &[Unnested]) -> Option<String> {
    unnested_reference(expr, found).map(|(_, column)| column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    #[test]
    fn interval_literals_become_intervals_outside_strings_and_names() {
        assert_eq!(interval_literals("SELECT bin(time, 5m) WHERE time > ago(1h)"), "SELECT bin(time, INTERVAL '5 minutes') WHERE time > ago(INTERVAL '1 hours')");
        assert_eq!(interval_literals("SELECT 100ms, 2d, 30s, 10us"), "SELECT INTERVAL '100 milliseconds', INTERVAL '2 days', INTERVAL '30 seconds', INTERVAL '10 microseconds'");
        assert_eq!(interval_literals("SELECT '1h', \"5m\", 1 h, 2x -- 3h"), "SELECT '1h', \"5m\", 1 h, 2x -- 3h");
        assert_eq!(interval_literals("SELECT 'é',\n  1h"), "SELECT 'é',\n  INTERVAL '1 hours'");
    }

    fn rewrite(sql: &str) -> Result<String, String> {
        let mut statement = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        rewrite_functions(&mut statement).map(|()| statement.to_string())
    }

    #[test]
    fn timestream_functions_become_datafusion_expressions() {
        assert_eq!(rewrite("SELECT bin(time, x) FROM t").unwrap(), "SELECT date_bin(x, time) FROM t");
        assert_eq!(rewrite("SELECT max_by(a, b + 1) FROM t").unwrap(), "SELECT first_value(a ORDER BY b + 1 DESC NULLS LAST) FROM t");
        assert_eq!(rewrite("SELECT ago(bin(t, x))").unwrap(), "SELECT CAST(now() - date_bin(x, t) AS TIMESTAMP)");
        assert_eq!(rewrite("SELECT bin(time)").unwrap_err(), "bin takes 2 arguments, not 1");
        assert_eq!(rewrite("SELECT sequence(1)").unwrap_err(), "sequence takes 2 or 3 arguments, not 1");
        assert_eq!(rewrite("SELECT other(1, 2)").unwrap(), "SELECT other(1, 2)");
        assert_eq!(rewrite("SELECT from_milliseconds(1)").unwrap(), "SELECT CAST(to_timestamp_millis(1) AS TIMESTAMP)");
    }

    fn unnest(sql: &str) -> Result<String, String> {
        let mut statement = DFParser::parse_sql(sql).unwrap().pop_front().unwrap();
        rewrite_unnest_joins(&mut statement).map(|()| statement.to_string())
    }

    #[test]
    fn cross_join_unnest_becomes_a_derived_table_that_unnests() {
        let rewritten = unnest("SELECT s.sensor, u.time, u.value FROM s CROSS JOIN UNNEST(s.series) AS u(time, value) ORDER BY u.time").unwrap();
        assert!(rewritten.contains("unnest(s.series) AS __lodestone_point"), "{rewritten}");
        assert!(rewritten.contains(r#"s."__lodestone_u_time" AS time"#) && rewritten.contains(r#"ORDER BY s."__lodestone_u_time""#), "{rewritten}");
        let comma = unnest("SELECT t.x FROM (SELECT 1 AS x, [1, 2] AS a) AS t, UNNEST(t.a) AS u(x2) WHERE x2 > 1").unwrap();
        assert!(comma.contains(r#"WHERE t."__lodestone_u_x2" > 1"#) && comma.contains("unnest(t.a)"), "{comma}");
        assert_eq!(unnest("SELECT 1 FROM s CROSS JOIN UNNEST(s.a)").unwrap_err(), "CROSS JOIN UNNEST(…) needs an alias with its columns, e.g. AS u(time, value)");
        assert_eq!(unnest("SELECT a FROM s").unwrap(), "SELECT a FROM s", "no UNNEST, no change");
    }
}
