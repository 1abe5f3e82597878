//! Recognising here-document markers (`<<EOF`, `<<-EOF`, `<<'EOF'`) in RUN/COPY/ADD.

use crate::expand::unquote_literal;
use crate::words::split_quoted;

pub(crate) struct Marker {
    /// The word as written, to point at it in errors.
    pub raw: String,
    pub name: String,
    pub expand: bool,
    pub strip_tabs: bool,
}

/// The heredoc markers among the whitespace-separated words of `args`, in order. A marker
/// must be a word of its own (`cat <<EOF`, optionally with a file descriptor: `3<<EOF`);
/// `<<<` (a here-string) is not a marker.
pub(crate) fn markers(args: &str) -> Vec<Marker> {
    split_quoted(args, '\\')
        .into_iter()
        .filter_map(|word| {
            let after_fd = word.trim_start_matches(|c: char| c.is_ascii_digit());
            let after_op = after_fd.strip_prefix("<<")?;
            let (strip_tabs, delimiter) = match after_op.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, after_op),
            };
            if delimiter.is_empty() || delimiter.contains('<') {
                return None;
            }
            let (name, quoted) = unquote_literal(delimiter).ok()?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return None;
            }
            Some(Marker {
                raw: word,
                name,
                expand: !quoted,
                strip_tabs,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers_and_their_options() {
        let found: Vec<(String, bool, bool)> =
            markers(r#"cat <<EOF 2<<-"END" x<<NO <<<here <<'Q1' > f"#)
                .into_iter()
                .map(|m| (m.name, m.expand, m.strip_tabs))
                .collect();
        assert_eq!(
            found,
            vec![
                ("EOF".to_string(), true, false),
                ("END".to_string(), false, true),
                ("Q1".to_string(), false, false)
            ]
        );
    }
}
