//! Turns library errors into reports a person can act on.

use miette::{Diagnostic, NamedSource, Report, SourceSpan};

/// A Dockerfile mistake, shown with the file's text and a caret at the spot.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
struct DockerfileDiagnostic {
    message: String,
    #[source_code]
    source_code: NamedSource<String>,
    #[label("here")]
    at: SourceSpan,
    #[help]
    hint: Option<String>,
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
    let offset = offset_of(text, err.line, err.column);
    Report::new(DockerfileDiagnostic {
        message: format!("{}:{}:{}: {}", err.path, err.line, err.column, err.message),
        source_code: NamedSource::new(err.path.clone(), text.to_string()),
        at: SourceSpan::from((offset, 1)),
        hint: err.hint.clone(),
    })
}

/// A report for an error found while building at `line` (no column known).
pub fn line_error(path: &str, line: usize, message: &str, text: &str) -> Report {
    let offset = offset_of(text, line, 1);
    let len = text[offset..]
        .find('\n')
        .unwrap_or(text.len() - offset)
        .max(1);
    Report::new(DockerfileDiagnostic {
        message: format!("{path}:{line}: {message}"),
        source_code: NamedSource::new(path, text.to_string()),
        at: SourceSpan::from((offset, len)),
        hint: None,
    })
}

#[cfg(test)]
mod tests {
    use super::offset_of;

    #[test]
    fn offsets_count_lines_and_columns() {
        let t = "FROM a\nRUN  x\n";
        assert_eq!(offset_of(t, 1, 1), 0);
        assert_eq!(&t[offset_of(t, 2, 6)..offset_of(t, 2, 6) + 1], "x");
    }
}
