//! Error types: parse errors carry a source excerpt with a caret, like a compiler.

/// A Dockerfile syntax error at a precise place in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ParseError {
    pub path: String,
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based character column of the offending text.
    pub column: usize,
    pub message: String,
    /// The physical source line `line`, without its line ending.
    pub source_line: String,
    pub hint: Option<String>,
}

impl ParseError {
    fn render(&self) -> String {
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        // Keep tabs so the caret lines up with the echoed source line in a terminal.
        let pad: String = self
            .source_line
            .chars()
            .take(self.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let mut out = format!(
            "{}:{}:{}: {}\n {} | {}\n {} | {}^\n",
            self.path, self.line, self.column, self.message, number, self.source_line, gutter, pad
        );
        if let Some(hint) = &self.hint {
            out.push_str("hint: ");
            out.push_str(hint);
            out.push('\n');
        }
        out
    }
}

/// A word could not be expanded (bad substitution syntax, `${v:?msg}` with `v` unset, or a
/// limit on nesting, size or matching work reached).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExpandError {
    pub message: String,
    /// The character offset in the word of the `$` whose expansion failed, when known.
    pub offset: Option<usize>,
    /// A limit was reached (as opposed to a syntax or unset-variable error).
    limit: bool,
}

impl ExpandError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ExpandError {
            message: message.into(),
            offset: None,
            limit: false,
        }
    }

    /// A limit was reached at character `offset` of the word.
    pub(crate) fn limit(offset: usize, message: impl Into<String>) -> Self {
        ExpandError {
            message: message.into(),
            offset: Some(offset),
            limit: true,
        }
    }

    /// Whether a limit (nesting, size, matching work) was reached.
    pub fn is_limit(&self) -> bool {
        self.limit
    }
}

/// A `.dockerignore` line holds an invalid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".dockerignore line {line}: {message}: {pattern:?}")]
pub struct IgnoreError {
    /// 1-based line number in the `.dockerignore` file.
    pub line: usize,
    pub pattern: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_lines_up_under_wide_line_numbers_and_tabs() {
        let err = ParseError {
            path: "ci/Dockerfile".to_string(),
            line: 12,
            column: 3,
            message: "unknown instruction: RUNN".to_string(),
            source_line: "\t RUNN x".to_string(),
            hint: None,
        };
        assert_eq!(
            err.to_string(),
            "ci/Dockerfile:12:3: unknown instruction: RUNN\n 12 | \t RUNN x\n    | \t ^\n"
        );
    }
}
