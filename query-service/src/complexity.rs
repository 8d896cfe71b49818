//! A bound on how deep a statement's syntax tree can grow, checked on its tokens before it is
//! parsed.
//!
//! Parsing, Timestream's rewrites ([`crate::timestream`], [`crate::measure_value`]) and
//! DataFusion's planner and optimizer all walk the syntax tree and the plan recursively. Nesting
//! by brackets is bounded by the parser itself (DataFusion's `sql_parser.recursion_limit`, 50
//! levels), but a chain such as `1+1+…+1`, `a OR b OR …`, `x::int::int…` or `t1 JOIN t2 JOIN …`
//! parses, without any bracket, into a tree as deep as the chain is long: 1,000 terms (a 2 KB
//! statement) overflowed the query service's stack. Each operator token adds at most one level to
//! such a chain, so counting them bounds the depth before anything is walked — and the tokenizer
//! is a loop, so the count itself cannot overflow anything.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// How many operators (tokens that can deepen a chain) `sql` holds, or the tokenizer's error.
pub fn operator_count(sql: &str) -> Result<usize, String> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().map_err(|e| e.to_string())?;
    Ok(tokens.iter().filter(|token| deepens(token)).count())
}

/// Whether a token can add a level to a chain: every symbol but the separators and brackets whose
/// nesting the parser already bounds, and the keywords of infix operators and of joins and set
/// operations. Counting too many only makes the bound stricter.
fn deepens(token: &Token) -> bool {
    match token {
        Token::Word(word) => matches!(
            word.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::IN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::BETWEEN
                | Keyword::OVERLAPS
                | Keyword::AT
                | Keyword::COLLATE
                | Keyword::DIV
                | Keyword::JOIN
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
        ),
        Token::Whitespace(_)
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Comma
        | Token::Period
        | Token::SemiColon
        | Token::LParen
        | Token::RParen
        | Token::RBracket
        | Token::RBrace
        | Token::LBrace
        | Token::EOF => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_operators_of_a_chain() {
        let check = |sql: &str, expected: usize| assert_eq!(operator_count(sql), Ok(expected), "{sql}");
        check("SELECT 1", 0);
        check("SELECT a, b FROM t WHERE x > 1 AND y = 'a + b'", 3);
        check(&format!("SELECT 1{}", "+1".repeat(999)), 999);
        check("SELECT x::int::bigint FROM a JOIN b ON a.k = b.k", 4);
        check("SELECT m[1][2] FROM t UNION SELECT 1", 3);
        check(r#"SELECT "measure_value::double" FROM "db"."t" -- a + b"#, 0);
    }

    #[test]
    fn a_statement_that_does_not_tokenize_is_an_error() {
        assert!(operator_count("SELECT 'unterminated").is_err());
    }
}
