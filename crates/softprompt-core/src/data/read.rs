//! Reading data files into [`Record`]s: JSON Lines, CSV and TSV.
//!
//! - `.jsonl`, `.ndjson`, `.json`: one JSON object per line; blank lines are ignored. (A `.json`
//!   file holding one big array is not supported: convert it to one object per line.)
//! - `.csv`: RFC 4180: a header row, comma-separated fields, fields in double quotes may hold
//!   commas, newlines and doubled quotes (`""` = `"`). A quote inside an unquoted field is kept
//!   literally.
//! - `.tsv`: as GLUE writes it: a header row, tab-separated fields, no quoting at all.
//!
//! CSV/TSV values are strings; blank lines are skipped; `\r\n` line ends and a UTF-8 byte-order
//! mark are accepted. Line numbers are 1-based physical lines (a CSV row spanning several lines
//! has the number of its first line; the header is line 1).
//!
//! A line (or CSV row) longer than [`MAX_LINE_BYTES`] is refused after reading that much of it,
//! so a multi-gigabyte line gives an error quickly instead of filling memory.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The longest line (or CSV row) accepted: 16 MiB.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// One row of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the file (for messages).
    pub line: usize,
    pub fields: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    JsonLines,
    Csv,
    Tsv,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
        "csv" => Ok(Format::Csv),
        "tsv" => Ok(Format::Tsv),
        _ => Err(Error::format(
            path,
            "unknown data file type: the name must end in .jsonl, .json, .csv or .tsv",
        )),
    }
}

/// Read all records of `path` (format chosen by its extension).
///
/// Bad rows (invalid JSON, a line that is not an object, a wrong number of columns, invalid
/// UTF-8, a broken CSV quote) are an error naming the file and line, or, with `skip_bad_rows`,
/// skipped and counted: the second value returned. I/O errors, an over-long line, a bad header
/// and a file without any good record are always errors.
pub fn read_records(path: &Path, skip_bad_rows: bool) -> Result<(Vec<Record>, usize)> {
    let format = format_of(path)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 16, file), path);
    let mut records = Vec::new();
    let mut skipped = 0usize;
    let mut bad = |line: usize, msg: String| -> Result<()> {
        if skip_bad_rows {
            skipped += 1;
            Ok(())
        } else {
            Err(Error::format(path, format!("line {line}: {msg}")))
        }
    };
    let mut header_only = false;

    match format {
        Format::JsonLines => {
            while let Some(line) = lines.next_line()? {
                let n = lines.line_no;
                let text = match line {
                    Ok(t) => t,
                    Err(msg) => {
                        bad(n, msg)?;
                        continue;
                    }
                };
                if text.trim().is_empty() {
                    continue;
                }
                match parse_json_line(&text) {
                    Ok(fields) => records.push(Record { line: n, fields }),
                    Err(msg) => bad(n, msg)?,
                }
            }
        }
        Format::Csv | Format::Tsv => {
            // The header: the first non-blank row.
            let header = loop {
                match next_row(&mut lines, format)? {
                    None => break None,
                    Some(Row::Blank) => continue,
                    Some(Row::Bad(n, msg)) => {
                        return Err(Error::format(path, format!("line {n}: header: {msg}")))
                    }
                    Some(Row::Fields(n, cols)) => break Some((n, cols)),
                }
            };
            if let Some((hline, names)) = header {
                let names: Vec<String> = names.iter().map(|s| s.trim().to_string()).collect();
                for (i, name) in names.iter().enumerate() {
                    if names[..i].contains(name) {
                        return Err(Error::format(
                            path,
                            format!("line {hline}: header: column name '{name}' appears twice"),
                        ));
                    }
                }
                header_only = true;
                while let Some(row) = next_row(&mut lines, format)? {
                    match row {
                        Row::Blank => {}
                        Row::Bad(n, msg) => bad(n, msg)?,
                        Row::Fields(n, cols) if cols.len() != names.len() => bad(
                            n,
                            format!(
                                "{} columns, expected {} ({})",
                                cols.len(),
                                names.len(),
                                names.join(", ")
                            ),
                        )?,
                        Row::Fields(n, cols) => {
                            let fields = names
                                .iter()
                                .cloned()
                                .zip(cols.into_iter().map(Value::String))
                                .collect();
                            records.push(Record { line: n, fields });
                        }
                    }
                }
            }
        }
    }

    if records.is_empty() {
        let why = if skipped > 0 {
            format!("no records ({skipped} bad rows were skipped)")
        } else if header_only {
            "no records (only a header)".to_string()
        } else {
            "no records (the file is empty)".to_string()
        };
        return Err(Error::format(path, why));
    }
    Ok((records, skipped))
}

/// One JSON object, or a message (without line number) saying why not.
fn parse_json_line(text: &str) -> std::result::Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            let hint = if text.trim() == "[" || matches!(other, Value::Array(_)) {
                " (JSON Lines: one object per line, not an array)"
            } else {
                ""
            };
            Err(format!("expected a JSON object, got {kind}{hint}"))
        }
        Err(e) => {
            // serde says "... at line 1 column 7"; the line is ours, keep the column.
            let mut msg = e.to_string();
            if let Some(i) = msg.rfind(" at line ") {
                msg.truncate(i);
            }
            let hint = if text.trim() == "[" {
                " (JSON Lines: one object per line, not an array)"
            } else {
                ""
            };
            Err(format!("column {}: bad JSON: {msg}{hint}", e.column()))
        }
    }
}

/// A physical-line reader that never holds more than [`MAX_LINE_BYTES`] of one line.
struct LineReader<'p, R> {
    inner: R,
    path: &'p Path,
    /// Number of the line last returned (1-based).
    line_no: usize,
    buf: Vec<u8>,
}

impl<'p, R: BufRead> LineReader<'p, R> {
    fn new(inner: R, path: &'p Path) -> Self {
        LineReader {
            inner,
            path,
            line_no: 0,
            buf: Vec::new(),
        }
    }

    /// The next line without its `\n` / `\r\n`: `None` at the end of the file, `Some(Err(msg))`
    /// for a line that is not UTF-8 (a bad row), `Err` for I/O errors and over-long lines.
    fn next_line(&mut self) -> Result<Option<std::result::Result<String, String>>> {
        self.next_line_limited(MAX_LINE_BYTES)
    }

    /// As [`next_line`](Self::next_line), refusing lines longer than `limit` bytes.
    fn next_line_limited(
        &mut self,
        limit: usize,
    ) -> Result<Option<std::result::Result<String, String>>> {
        self.buf.clear();
        let mut saw_any = false;
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(self.path, e)),
            };
            if avail.is_empty() {
                break;
            }
            saw_any = true;
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(p) => (p + 1, true),
                None => (avail.len(), false),
            };
            let content = if done { take - 1 } else { take };
            if self.buf.len() + content > limit {
                return Err(Error::format(
                    self.path,
                    format!(
                        "line {}: longer than {} MiB; refusing to read it",
                        self.line_no + 1,
                        MAX_LINE_BYTES >> 20
                    ),
                ));
            }
            self.buf.extend_from_slice(&avail[..content]);
            self.inner.consume(take);
            if done {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        self.line_no += 1;
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let mut bytes = std::mem::take(&mut self.buf);
        if self.line_no == 1 && bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
            bytes.drain(..3);
        }
        Ok(Some(String::from_utf8(bytes).map_err(|e| {
            format!(
                "not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to() + 1
            )
        })))
    }
}

/// One logical CSV/TSV row.
#[derive(Debug, PartialEq)]
enum Row {
    Blank,
    Fields(usize, Vec<String>),
    /// A row that could not be parsed: its first line and why.
    Bad(usize, String),
}

/// The next logical row, or None at the end of the file.
fn next_row<R: BufRead>(lines: &mut LineReader<'_, R>, format: Format) -> Result<Option<Row>> {
    let Some(first) = lines.next_line()? else {
        return Ok(None);
    };
    let start = lines.line_no;
    let first = match first {
        Ok(t) => t,
        Err(msg) => return Ok(Some(Row::Bad(start, msg))),
    };
    if first.trim().is_empty() {
        return Ok(Some(Row::Blank));
    }
    if format == Format::Tsv {
        return Ok(Some(Row::Fields(
            start,
            first.split('\t').map(str::to_string).collect(),
        )));
    }

    // CSV: feed physical lines to the parser until the row's quotes are closed.
    let mut parser = CsvParser::default();
    let mut line = first;
    let mut total = 0usize;
    loop {
        total += line.len() + 1;
        if let Err(msg) = parser.feed(&line) {
            return Ok(Some(Row::Bad(start, msg)));
        }
        if !parser.in_quotes {
            return Ok(Some(Row::Fields(start, parser.finish())));
        }
        // Inside a quoted field: the newline belongs to the field.
        parser.field.push('\n');
        let remaining = MAX_LINE_BYTES.saturating_sub(total);
        match lines.next_line_limited(remaining) {
            Err(Error::Format { .. }) => {
                return Err(Error::format(
                    lines.path,
                    format!(
                        "line {start}: CSV row longer than {} MiB; refusing to read it",
                        MAX_LINE_BYTES >> 20
                    ),
                ))
            }
            Err(e) => return Err(e),
            Ok(None) => {
                return Ok(Some(Row::Bad(
                    start,
                    "quoted field never closed (missing '\"' before the end of the file)".into(),
                )))
            }
            Ok(Some(Err(msg))) => {
                return Ok(Some(Row::Bad(lines.line_no, msg)));
            }
            Ok(Some(Ok(next))) => line = next,
        }
    }
}

/// Incremental RFC 4180 parser for one row that may span several lines.
#[derive(Default)]
struct CsvParser {
    fields: Vec<String>,
    field: String,
    in_quotes: bool,
    /// The current field was quoted and its closing quote has been seen.
    closed_quote: bool,
}

impl CsvParser {
    /// Parse one physical line (without its line end).
    fn feed(&mut self, line: &str) -> std::result::Result<(), String> {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if self.in_quotes {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        self.field.push('"');
                    } else {
                        self.in_quotes = false;
                        self.closed_quote = true;
                    }
                } else {
                    self.field.push(c);
                }
            } else if c == ',' {
                self.fields.push(std::mem::take(&mut self.field));
                self.closed_quote = false;
            } else if self.closed_quote {
                return Err(format!(
                    "unexpected '{c}' after a closing quote (column {}); inside quotes write \"\" for a quote",
                    self.fields.len() + 1
                ));
            } else if c == '"' && self.field.is_empty() {
                self.in_quotes = true;
            } else {
                self.field.push(c);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<String> {
        self.fields.push(self.field);
        self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, format: Format) -> Vec<Row> {
        let p = Path::new("x");
        let mut lines = LineReader::new(text.as_bytes(), p);
        let mut out = Vec::new();
        while let Some(r) = next_row(&mut lines, format).unwrap() {
            out.push(r);
        }
        out
    }

    fn f(line: usize, v: &[&str]) -> Row {
        Row::Fields(line, v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn csv_quotes_and_newlines() {
        let text = "a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\n\"multi\nline\",2\n\n,\nq\"uote,3";
        assert_eq!(
            rows(text, Format::Csv),
            vec![
                f(1, &["a", "b"]),
                f(2, &["x, y", "say \"hi\""]),
                f(3, &["multi\nline", "2"]),
                Row::Blank,
                f(6, &["", ""]),
                f(7, &["q\"uote", "3"]),
            ]
        );
    }

    #[test]
    fn csv_errors() {
        let r = rows("a,b\n\"x\"y,1\n2,3\n", Format::Csv);
        assert!(matches!(&r[1], Row::Bad(2, m) if m.contains("after a closing quote")));
        assert_eq!(r[2], f(3, &["2", "3"]));
        let r = rows("a,b\n\"never closed,1\n2,3\n", Format::Csv);
        assert!(matches!(&r[1], Row::Bad(2, m) if m.contains("never closed")));
    }

    #[test]
    fn tsv_no_quoting() {
        let r = rows("sentence\tlabel\n\"a\" film \t1\n", Format::Tsv);
        assert_eq!(r[1], f(2, &["\"a\" film ", "1"]));
    }

    #[test]
    fn line_limit() {
        let long = "x".repeat(100);
        let text = format!("ok\n{long}\n");
        let p = Path::new("f.jsonl");
        let mut lines = LineReader::new(text.as_bytes(), p);
        assert_eq!(lines.next_line_limited(50).unwrap(), Some(Ok("ok".into())));
        let e = lines.next_line_limited(50).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bom_and_bad_utf8() {
        let p = Path::new("f.jsonl");
        let mut lines = LineReader::new(&b"\xEF\xBB\xBFab\n\xFF\n"[..], p);
        assert_eq!(lines.next_line().unwrap(), Some(Ok("ab".into())));
        assert!(matches!(lines.next_line().unwrap(), Some(Err(_))));
        assert_eq!(lines.next_line().unwrap(), None);
    }

    #[test]
    fn json_messages() {
        assert!(parse_json_line("{\"a\": 1,}")
            .unwrap_err()
            .starts_with("column "));
        assert!(parse_json_line("[1]").unwrap_err().contains("a list"));
        assert!(parse_json_line("[").unwrap_err().contains("not an array"));
        assert!(parse_json_line("{\"a\": 1}").is_ok());
    }
}
