//! Turns library errors into reports a person can act on.

use miette::{
    Diagnostic, MietteError, MietteSpanContents, Report, SourceCode, SourceSpan, SpanContents,
};

/// A Dockerfile mistake, shown with the file's text and a caret at the spot.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
struct DockerfileDiagnostic {
    message: String,
    #[source_code]
    source_code: ShownSource,
    #[label("here")]
    at: SourceSpan,
    #[help]
    hint: Option<String>,
}

/// Source lines longer than this many characters are shown clipped around the spot, and
/// messages longer than [`SHOWN_MESSAGE_CHARS`] are cut: an untrusted Dockerfile's line can
/// be megabytes long.
const SHOWN_LINE_CHARS: usize = 160;
const SHOWN_MESSAGE_CHARS: usize = 2000;

/// `text` with each line cut to [`SHOWN_LINE_CHARS`] characters; the window of `line` is
/// placed around `column`. Returns that text and where `column` is in it. Line numbers stay.
fn clipped(text: &str, line: usize, column: usize) -> (String, usize) {
    let mut shown_column = column;
    let lines: Vec<String> = text
        .split('\n')
        .enumerate()
        .map(|(index, source_line)| {
            let chars: Vec<char> = source_line.chars().collect();
            if chars.len() <= SHOWN_LINE_CHARS {
                return source_line.to_string();
            }
            let start = if index + 1 == line {
                column.saturating_sub(1 + SHOWN_LINE_CHARS / 2)
            } else {
                0
            };
            let end = (start + SHOWN_LINE_CHARS).min(chars.len());
            let mut shown = String::new();
            if start > 0 {
                shown.push('…');
            }
            shown.extend(&chars[start..end]);
            if end < chars.len() {
                shown.push('…');
            }
            if index + 1 == line {
                shown_column = column - start + usize::from(start > 0);
            }
            shown
        })
        .collect();
    (lines.join("\n"), shown_column)
}

/// The Dockerfile as shown (long lines clipped), with positions named as in the file.
#[derive(Debug)]
struct ShownSource {
    name: String,
    text: String,
    /// The 1-based line and column of the spot in the file.
    line: usize,
    column: usize,
}

impl ShownSource {
    fn new(path: &str, text: &str, line: usize, column: usize) -> (ShownSource, usize) {
        let (shown, shown_column) = clipped(text, line, column);
        let offset = offset_of(&shown, line, shown_column);
        let source = ShownSource {
            name: path.to_string(),
            text: shown,
            line,
            column,
        };
        (source, offset)
    }
}

impl SourceCode for ShownSource {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let shown = self
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        // The report's header names the spot: give its column in the file, not in the
        // clipped line.
        let column = if context_lines_before == 0 && shown.line() + 1 == self.line {
            self.column.saturating_sub(1)
        } else {
            shown.column()
        };
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            shown.data(),
            *shown.span(),
            shown.line(),
            column,
            shown.line_count(),
        )))
    }
}

/// `message`, cut to [`SHOWN_MESSAGE_CHARS`] characters.
fn bounded(message: &str) -> String {
    match message.char_indices().nth(SHOWN_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}… ({} more bytes)", &message[..cut], message.len() - cut),
        None => message.to_string(),
    }
}

/// Byte offset of 1-based `line` and `column` in `text`.
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line_text = text[line_start..].split('\n').next().unwrap_or("");
    let col_bytes: usize = line_text
        .chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    (line_start + col_bytes).min(text.len())
}

/// A report for a Dockerfile parse error: `file:line:column`, the line, and a caret.
pub fn parse_error(err: &kiln_dockerfile::ParseError, text: &str) -> Report {
    position_error(
        &err.path,
        err.line,
        err.column,
        &err.message,
        err.hint.clone(),
        text,
    )
}

/// A report for a mistake at `line` and `column`: `file:line:column`, the line, and a caret.
pub fn position_error(
    path: &str,
    line: usize,
    column: usize,
    message: &str,
    hint: Option<String>,
    text: &str,
) -> Report {
    let (source_code, offset) = ShownSource::new(path, text, line, column);
    Report::new(DockerfileDiagnostic {
        message: format!("{path}:{line}:{column}: {}", bounded(message)),
        source_code,
        at: SourceSpan::from((offset, 1)),
        hint,
    })
}

/// A report for an error found while building at `line` (no column known).
pub fn line_error(path: &str, line: usize, message: &str, text: &str) -> Report {
    let (source_code, offset) = ShownSource::new(path, text, line, 1);
    let len = source_code.text[offset..]
        .find('\n')
        .unwrap_or(source_code.text.len() - offset)
        .max(1);
    Report::new(DockerfileDiagnostic {
        message: format!("{path}:{line}: {}", bounded(message)),
        source_code,
        at: SourceSpan::from((offset, len)),
        hint: None,
    })
}

#[cfg(test)]
mod tests {
    use super::offset_of;

    #[test]
    fn long_lines_are_shown_around_the_spot() {
        let long = format!("ARG v={}X{}", "a".repeat(5000), "b".repeat(5000));
        let text = format!("FROM scratch\n{long}\n{long}\n");
        let (shown, column) = super::clipped(&text, 2, 5007);
        let lines: Vec<&str> = shown.split('\n').collect();
        assert_eq!(lines[0], "FROM scratch");
        assert_eq!(lines[1].chars().nth(column - 1), Some('X'));
        assert!(lines[1].chars().count() <= super::SHOWN_LINE_CHARS + 2);
        assert!(lines[2].starts_with("ARG v=aaa") && lines[2].ends_with('…'));
        assert!(super::bounded(&long).len() < 2 * super::SHOWN_MESSAGE_CHARS);
    }

    #[test]
    fn offsets_count_lines_and_columns() {
        let t = "FROM a\nRUN  x\n";
        assert_eq!(offset_of(t, 1, 1), 0);
        assert_eq!(&t[offset_of(t, 2, 6)..offset_of(t, 2, 6) + 1], "x");
    }
}
