//! Parser directives: `# syntax=`, `# escape=`, `# check=` comments at the very top.

/// The parser directives found at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `# syntax=` value (a frontend image reference), as written.
    pub syntax: Option<String>,
    /// The escape and line-continuation character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# check=` value, as written (e.g. `skip=JSONArgsRecommended;error=true`).
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// A `# name=value` line: name and value, or `None` if the line is not shaped like one.
fn directive_line(line: &str) -> Option<(String, &str)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, after) = rest.split_at(name_len);
    let value = after.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value))
}

/// An error in a directive line, with the 0-based index of that line.
pub(crate) struct DirectiveError {
    pub line_index: usize,
    pub column: usize,
    pub message: String,
}

/// Reads directives from the leading lines. The first line that is not a known directive
/// (a blank line, another comment, an instruction) ends them. Returns the directives and the
/// number of lines they occupy.
pub(crate) fn read(lines: &[&str]) -> Result<(Directives, usize), DirectiveError> {
    let mut directives = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some((name, value)) = directive_line(line) else {
            return Ok((directives, index));
        };
        let error = |message: String| DirectiveError {
            line_index: index,
            column: line.len() - line.trim_start().len() + 1,
            message,
        };
        if seen.contains(&name) {
            return Err(error(format!(
                "only one {name} parser directive can be used"
            )));
        }
        match name.as_str() {
            "syntax" => directives.syntax = Some(value.to_string()),
            "check" => directives.check = Some(value.to_string()),
            "escape" => {
                directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(error(format!(
                            "invalid escape token '{value}' does not match ` or \\"
                        )));
                    }
                }
            }
            _ => return Ok((directives, index)),
        }
        seen.push(name);
    }
    Ok((directives, lines.len()))
}
