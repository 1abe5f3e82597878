//! Physical lines to logical lines: comments and blank lines dropped, continuation lines
//! joined, positions kept so errors can point into the original text.

/// Where a part of a logical line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    /// Byte offset in the logical line where this part starts.
    offset: usize,
    /// 1-based physical line.
    line: usize,
    /// 1-based column of the part's first character in that line.
    column: usize,
}

/// Where the parts of a joined line came from: maps offsets in it back to lines and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pieces: Vec<Piece>,
}

impl Layout {
    /// The (line, column) of byte `offset` of `text` (the joined line), both 1-based.
    pub(crate) fn locate(&self, text: &str, offset: usize) -> (usize, usize) {
        // Pieces are in offset order: a binary search keeps a line joined from very many
        // physical lines (a hostile Dockerfile) from costing the square of their number.
        let after = self.pieces.partition_point(|p| p.offset <= offset);
        let Some(piece) = self.pieces.get(after.saturating_sub(1)) else {
            return (1, 1);
        };
        let offset = offset.min(text.len()).max(piece.offset);
        let column = piece.column
            + text
                .get(piece.offset..offset)
                .map_or(0, |s| s.chars().count());
        (piece.line, column)
    }

    /// The layout of `text[start..]`.
    pub(crate) fn from(&self, text: &str, start: usize) -> Layout {
        let (line, column) = self.locate(text, start);
        let mut pieces = vec![Piece {
            offset: 0,
            line,
            column,
        }];
        pieces.extend(
            self.pieces
                .iter()
                .filter(|p| p.offset > start)
                .map(|p| Piece {
                    offset: p.offset - start,
                    ..p.clone()
                }),
        );
        Layout { pieces }
    }
}

/// One instruction's text with its continuation lines joined.
pub(crate) struct LogicalLine {
    pub text: String,
    pub start_line: usize,
    pub end_line: usize,
    pub layout: Layout,
}

impl LogicalLine {
    /// The (line, column) of a byte offset in `text`, both 1-based.
    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        self.layout.locate(&self.text, offset)
    }
}

pub(crate) struct Source<'s> {
    lines: Vec<&'s str>,
    next: usize,
    escape: char,
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

impl<'s> Source<'s> {
    pub(crate) fn new(text: &'s str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let text = text.strip_suffix('\n').unwrap_or(text);
        Source {
            lines: text.split('\n').collect(),
            next: 0,
            escape: '\\',
        }
    }

    pub(crate) fn lines(&self) -> &[&'s str] {
        &self.lines
    }

    pub(crate) fn set_escape(&mut self, escape: char) {
        self.escape = escape;
    }

    /// The physical line `number` (1-based) without its line ending.
    pub(crate) fn line(&self, number: usize) -> &'s str {
        let line = self
            .lines
            .get(number.wrapping_sub(1))
            .copied()
            .unwrap_or("");
        line.strip_suffix('\r').unwrap_or(line)
    }

    /// The next physical line as (1-based number, text with any `\r` kept).
    pub(crate) fn next_raw(&mut self) -> Option<(usize, &'s str)> {
        let line = *self.lines.get(self.next)?;
        self.next += 1;
        Some((self.next, line))
    }

    fn next_line(&mut self) -> Option<(usize, &'s str)> {
        self.next_raw()
            .map(|(n, line)| (n, line.strip_suffix('\r').unwrap_or(line)))
    }

    /// Removes a trailing escape character (plus trailing blanks): the line continues. As in
    /// BuildKit, not when the character before it is an escape too (`foo\\` ends with an
    /// escaped escape), unless the escape is all the line holds.
    fn strip_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(self.escape) {
            Some(body) if body.is_empty() || !body.ends_with(self.escape) => (body, true),
            _ => (line, false),
        }
    }

    /// The next instruction's text. Inside a continued instruction, comment lines and empty
    /// lines are skipped (BuildKit does the same, and only warns about empty ones).
    pub(crate) fn next_logical(&mut self) -> Option<LogicalLine> {
        while let Some((number, line)) = self.next_line() {
            let trimmed = line.trim_start();
            if is_comment(trimmed) {
                continue;
            }
            let (body, mut continues) = self.strip_continuation(trimmed);
            if !continues && body.is_empty() {
                continue;
            }
            let indent = line[..line.len() - trimmed.len()].chars().count();
            let mut logical = LogicalLine {
                text: body.to_string(),
                start_line: number,
                end_line: number,
                layout: Layout {
                    pieces: vec![Piece {
                        offset: 0,
                        line: number,
                        column: indent + 1,
                    }],
                },
            };
            while continues {
                let Some((number, line)) = self.next_line() else {
                    break;
                };
                logical.end_line = number;
                if is_comment(line) || line.trim().is_empty() {
                    continue;
                }
                let (body, more) = self.strip_continuation(line);
                logical.layout.pieces.push(Piece {
                    offset: logical.text.len(),
                    line: number,
                    column: 1,
                });
                logical.text.push_str(body);
                continues = more;
            }
            return Some(logical);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logical(text: &str, escape: char) -> Vec<(String, usize, usize)> {
        let mut source = Source::new(text);
        source.set_escape(escape);
        std::iter::from_fn(|| source.next_logical())
            .map(|l| (l.text, l.start_line, l.end_line))
            .collect()
    }

    #[test]
    fn joins_continuations_across_comments_and_blank_lines() {
        let text = "# top\n\nRUN a \\\n  # note\n\n    b \\  \n  c\nCMD d\n";
        assert_eq!(
            logical(text, '\\'),
            vec![
                ("RUN a     b   c".to_string(), 3, 7),
                ("CMD d".to_string(), 8, 8)
            ]
        );
    }

    #[test]
    fn locate_maps_offsets_back_to_physical_lines() {
        let mut source = Source::new("  RUN a \\\nbb\r\n");
        let line = source.next_logical().unwrap();
        assert_eq!(line.text, "RUN a bb");
        assert_eq!(line.locate(0), (1, 3));
        assert_eq!(line.locate(4), (1, 7));
        assert_eq!(line.locate(7), (2, 2));
        let args = line.layout.from(&line.text, 4);
        assert_eq!(args.locate("a bb", 0), (1, 7));
        assert_eq!(args.locate("a bb", 3), (2, 2));
    }

    #[test]
    fn an_escaped_escape_at_the_end_ends_the_line() {
        assert_eq!(
            logical("ENV C trailing\\\\backslash\\\\\nENV D x\n", '\\'),
            vec![
                ("ENV C trailing\\\\backslash\\\\".to_string(), 1, 1),
                ("ENV D x".to_string(), 2, 2)
            ]
        );
        // An escape alone on its line still continues.
        assert_eq!(
            logical("RUN a \\\n\\\nb\n", '\\'),
            vec![("RUN a b".to_string(), 1, 3)]
        );
    }

    #[test]
    fn backtick_continues_and_backslash_does_not() {
        assert_eq!(
            logical("RUN dir c:\\ `\n  /s\n", '`'),
            vec![("RUN dir c:\\   /s".to_string(), 1, 2)]
        );
    }
}
