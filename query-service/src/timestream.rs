//! Timestream's SQL on DataFusion, before planning:
//!
//! - **Interval literals** `1h`, `5m`, `30s`, `100ms`, `1d` (a number followed at once by a unit)
//!   become `INTERVAL '1 hours'` and so on. The SQL is tokenized and only those two tokens'
//!   span is replaced, so strings, quoted names and comments are never touched.
//! - **Functions Timestream names differently** are rewritten in the syntax tree into their
//!   DataFusion equivalents ([`REWRITES`]); their arguments are kept as parsed.
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
pub const REWRITES: [(&str, usize, &str); 9] = [
    ("bin", 2, "date_bin($2, $1)"),
    ("ago", 1, "CAST(now() - $1 AS TIMESTAMP)"),
    ("now", 0, "CAST(now() AS TIMESTAMP)"),
    ("sequence", 2, "generate_series($1, $2)"),
    ("sequence", 3, "generate_series($1, $2, $3)"),
    ("approx_percentile", 2, "approx_percentile_cont($1, $2)"),
    ("max_by", 2, "first_value($1 ORDER BY $2 DESC NULLS LAST)"),
    ("min_by", 2, "first_value($1 ORDER BY $2 ASC NULLS LAST)"),
    ("create_time_series", 2, "array_agg(named_struct('time', $1, 'value', CAST($2 AS DOUBLE)) ORDER BY $1)"),
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
    }
}
