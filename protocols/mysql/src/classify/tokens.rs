//! Reading statements at the token level, before the parser: `sqlparser`'s
//! tokenizer (never substrings or regexes) turns the text into tokens, in
//! which
//!
//! - executable comments `/*! … */`, `/*!50000 … */` and MariaDB's
//!   `/*M!100100 … */` become code: the server runs their content (when its
//!   version is at least the number), so the classifier reads it always;
//! - `;` splits multi-statements (`CLIENT_MULTI_STATEMENTS`);
//! - the forms the parser of the MySQL dialect does not know are found:
//!   `LOAD DATA` / `LOAD XML` (the parser only knows Hive's `LOAD DATA …
//!   INPATH`), `… INTO OUTFILE` / `INTO DUMPFILE`, and `PREPARE name FROM
//!   '…'`, whose text is classified in turn.
use sqlparser::{
    dialect::Dialect,
    keywords::Keyword,
    tokenizer::{Token, Tokenizer, Whitespace, Word},
};

use super::Unparseable;

/// How deep executable comments and `PREPARE` texts may nest.
pub const MAX_DEPTH: usize = 8;

/// One statement of a multi-statement text, as tokens (comments that are
/// not executable kept as whitespace).
#[derive(Debug, Clone)]
pub struct StatementTokens(pub Vec<Token>);

/// What the token level found in a statement, when the parser is not asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenForm {
    /// `LOAD DATA …` or `LOAD XML …`.
    LoadData,
    /// A `SELECT … INTO OUTFILE|DUMPFILE …`.
    IntoOutfile,
    /// `PREPARE name FROM '<text>'`, with the unescaped text.
    PrepareText(String),
    /// `PREPARE name FROM @variable`: text unknown until run time.
    PrepareVariable,
}

/// Tokenizes `sql`, expands executable comments and splits at `;`.
pub fn split(dialect: &dyn Dialect, sql: &str) -> Result<Vec<StatementTokens>, Unparseable> {
    let tokens = expand(dialect, sql, 0)?;
    let mut out = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        if token == Token::SemiColon {
            out.push(StatementTokens(std::mem::take(&mut current)));
        } else {
            current.push(token);
        }
    }
    out.push(StatementTokens(current));
    out.retain(|s| s.significant().next().is_some());
    Ok(out)
}

fn tokenize(dialect: &dyn Dialect, sql: &str, unescape: bool) -> Result<Vec<Token>, Unparseable> {
    Tokenizer::new(dialect, sql)
        .with_unescape(unescape)
        .tokenize()
        .map_err(|e| Unparseable(e.to_string()))
}

fn expand(dialect: &dyn Dialect, sql: &str, depth: usize) -> Result<Vec<Token>, Unparseable> {
    if depth > MAX_DEPTH {
        return Err(Unparseable("executable comments nested too deep".into()));
    }
    let mut out = Vec::new();
    for token in tokenize(dialect, sql, false)? {
        match executable_comment(&token) {
            Some(code) => {
                out.push(Token::Whitespace(Whitespace::Space));
                out.extend(expand(dialect, code, depth + 1)?);
                out.push(Token::Whitespace(Whitespace::Space));
            }
            None => out.push(token),
        }
    }
    Ok(out)
}

/// The code of an executable comment: the body after `!` or `M!` and an
/// optional version number of up to six digits.
fn executable_comment(token: &Token) -> Option<&str> {
    let Token::Whitespace(Whitespace::MultiLineComment(body)) = token else {
        return None;
    };
    let code = body.strip_prefix('!').or_else(|| body.strip_prefix("M!"))?;
    let digits = code.bytes().take(6).take_while(u8::is_ascii_digit).count();
    Some(&code[digits..])
}

impl StatementTokens {
    /// The tokens that are not whitespace or comments.
    pub fn significant(&self) -> impl Iterator<Item = &Token> {
        self.0.iter().filter(|t| !matches!(t, Token::Whitespace(_)))
    }

    /// The statement as text for the parser (comments left are blanks).
    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|t| match t {
                Token::Whitespace(_) => " ".to_string(),
                t => t.to_string(),
            })
            .collect()
    }

    /// The form the token level recognises, if any.
    pub fn form(&self, dialect: &dyn Dialect) -> Result<Option<TokenForm>, Unparseable> {
        let words: Vec<&Token> = self.significant().collect();
        if let [first, second, ..] = words[..] {
            if is_keyword(first, Keyword::LOAD)
                && (is_keyword(second, Keyword::DATA) || is_keyword(second, Keyword::XML))
            {
                return Ok(Some(TokenForm::LoadData));
            }
        }
        if words.windows(2).any(|w| {
            is_keyword(w[0], Keyword::INTO)
                && (is_word(w[1], "OUTFILE") || is_word(w[1], "DUMPFILE"))
        }) {
            return Ok(Some(TokenForm::IntoOutfile));
        }
        if let [prepare, _name, from, source, rest @ ..] = &words[..] {
            if is_keyword(prepare, Keyword::PREPARE) && is_keyword(from, Keyword::FROM) {
                if !rest.is_empty() {
                    return Err(Unparseable("unexpected tokens after PREPARE … FROM".into()));
                }
                return match source {
                    Token::SingleQuotedString(_) | Token::DoubleQuotedString(_) => {
                        Ok(Some(TokenForm::PrepareText(unescape(dialect, source)?)))
                    }
                    _ => Ok(Some(TokenForm::PrepareVariable)),
                };
            }
        }
        Ok(None)
    }
}

/// The value of a string literal token read without unescaping.
fn unescape(dialect: &dyn Dialect, raw: &Token) -> Result<String, Unparseable> {
    match tokenize(dialect, &raw.to_string(), true)?.as_slice() {
        [Token::SingleQuotedString(s) | Token::DoubleQuotedString(s)] => Ok(s.clone()),
        _ => Err(Unparseable("cannot read the PREPARE text".into())),
    }
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(Word { keyword: k, quote_style: None, .. }) if *k == keyword)
}

/// An unquoted word that `sqlparser` has no keyword for.
fn is_word(token: &Token, name: &str) -> bool {
    matches!(token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(name))
}
