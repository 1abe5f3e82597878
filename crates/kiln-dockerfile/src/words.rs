//! Splitting instruction arguments the way BuildKit's parser does, before any expansion.

/// Splits on whitespace without looking at quotes (how COPY/ADD/EXPOSE/VOLUME/FROM arguments
/// are split in shell form).
pub(crate) fn split_whitespace(args: &str) -> Vec<String> {
    args.split_whitespace().map(str::to_string).collect()
}

/// Splits on whitespace outside quotes, keeping quotes and escapes in the words (ENV, LABEL,
/// ARG). Expansion later removes them.
pub(crate) fn split_quoted(args: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A quoted empty string (`A=""`) still makes a word.
    let mut word_started = false;
    let mut quote: Option<char> = None;
    let mut chars = args.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if word_started {
                    words.push(std::mem::take(&mut word));
                    word_started = false;
                }
            }
            None => {
                word_started = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == escape {
                    // An escape keeps the next character in the word, whatever it is.
                    match chars.next() {
                        Some(next) => {
                            word.push(c);
                            word.push(next);
                        }
                        None => continue,
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == escape && q != '\'' {
                    match chars.next() {
                        Some(next) => {
                            word.push(c);
                            word.push(next);
                        }
                        None => quote = None,
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if word_started {
        words.push(word);
    }
    words
}

/// The result of trying an argument string as a JSON array.
pub(crate) enum JsonArgs {
    /// A JSON array of strings: exec form.
    Strings(Vec<String>),
    /// Not a JSON array (or not valid JSON): shell form.
    NotJson,
    /// Valid JSON array holding something other than strings: an error in BuildKit.
    NotStrings,
}

pub(crate) fn parse_json_args(args: &str) -> JsonArgs {
    let args = args.trim_start();
    if !args.starts_with('[') {
        return JsonArgs::NotJson;
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(args) {
        Err(_) => JsonArgs::NotJson,
        Ok(values) => values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map_or(JsonArgs::NotStrings, JsonArgs::Strings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_split_keeps_quotes_and_escapes() {
        assert_eq!(
            split_quoted(r#"A="x y" B='$z' C=a\ b D="""#, '\\'),
            vec![r#"A="x y""#, "B='$z'", r"C=a\ b", r#"D="""#]
        );
        assert_eq!(split_quoted("  a   b ", '\\'), vec!["a", "b"]);
        assert_eq!(split_quoted("a`  b", '`'), vec!["a` ", "b"]);
    }

    #[test]
    fn json_args_classification() {
        assert!(
            matches!(parse_json_args(r#"["a", "b c"]"#), JsonArgs::Strings(v) if v == ["a", "b c"])
        );
        assert!(matches!(parse_json_args("[a, b]"), JsonArgs::NotJson));
        assert!(matches!(parse_json_args("echo [1]"), JsonArgs::NotJson));
        assert!(matches!(
            parse_json_args(r#"["a", 1]"#),
            JsonArgs::NotStrings
        ));
    }
}
