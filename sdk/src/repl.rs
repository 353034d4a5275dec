//! The interactive shell of `granary sql ROOT` (no query given): statements
//! end with `;` and may span lines, Tab completes table and column names,
//! history lives in `~/.granary_history`. `\d` lists tables, `\d NAME`
//! shows a table's columns, `\q` quits. An error prints one line and the
//! shell goes on. On a non-terminal stdin it reads statements from the pipe.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use crate::output::{self, Format};
use crate::query::Session;

const KEYWORDS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "JOIN", "ON", "AS", "AND", "OR",
    "NOT", "COUNT", "DISTINCT", "HAVING", "DESC", "ASC", "LIKE", "IS NULL", "EXPLAIN",
];

/// Completes table names, column names and keywords.
struct SqlHelper {
    words: Vec<String>,
}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        if prefix.is_empty() {
            return Ok((start, Vec::new()));
        }
        let lower = prefix.to_lowercase();
        let mut out: Vec<Pair> = self
            .words
            .iter()
            .filter(|w| w.to_lowercase().starts_with(&lower))
            .map(|w| Pair {
                display: w.clone(),
                replacement: w.clone(),
            })
            .collect();
        out.dedup_by(|a, b| a.replacement == b.replacement);
        Ok((start, out))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}

impl Highlighter for SqlHelper {}

impl Validator for SqlHelper {}

impl Helper for SqlHelper {}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".granary_history"))
}

/// Run the shell until `\q`, Ctrl-D or the end of piped input.
pub async fn run(session: &Session, format: Format) -> Result<()> {
    let completions = session.completions().await;
    let mut words: Vec<String> = KEYWORDS.iter().map(|k| k.to_string()).collect();
    for (table, cols) in &completions {
        words.push(table.clone());
        words.extend(cols.iter().cloned());
    }
    words.extend(["defect_area_ratio", "aspect_bucket", "caption", "blob_size"].map(String::from));
    words.sort();
    words.dedup();
    let mut rl: Editor<SqlHelper, DefaultHistory> = Editor::new()?;
    rl.set_helper(Some(SqlHelper { words }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    eprintln!(
        "granary sql: tables {}. End statements with ';'. \\d [TABLE] describes, \\q quits.",
        session.tables().join(", ")
    );
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() {
            "granary> "
        } else {
            "      -> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if pending.is_empty() && trimmed.starts_with('\\') {
            let _ = rl.add_history_entry(trimmed);
            match meta_command(trimmed, &completions) {
                Some(text) => print!("{text}"),
                None => break,
            }
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut pending);
        let _ = rl.add_history_entry(statement.trim());
        match session.sql(statement.trim().trim_end_matches(';')).await {
            Ok((schema, batches)) => {
                let mut out = std::io::stdout().lock();
                output::write(&mut out, format, &schema, &batches)?;
                out.flush()?;
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if !pending.trim().is_empty() {
        eprintln!("note: ignored an unfinished statement (no closing ';')");
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

/// `\d`, `\d TABLE`, `\q`: the text to print, or `None` to quit.
fn meta_command(cmd: &str, tables: &[(String, Vec<String>)]) -> Option<String> {
    let mut parts = cmd.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("\\q"), _) => None,
        (Some("\\d"), None) => Some(
            tables
                .iter()
                .map(|(t, c)| format!("{t} ({} columns)\n", c.len()))
                .collect(),
        ),
        (Some("\\d"), Some(name)) => Some(match tables.iter().find(|(t, _)| t == name) {
            Some((_, cols)) => cols.iter().map(|c| format!("  {c}\n")).collect(),
            None => format!("no table {name}\n"),
        }),
        _ => Some(format!(
            "unknown command {cmd}; try \\d, \\d TABLE or \\q\n"
        )),
    }
}
