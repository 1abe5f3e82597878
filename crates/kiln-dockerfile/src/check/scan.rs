//! Lexical scans over raw (unexpanded) text: variable references, the commands a shell line
//! runs, and the tokens that name files or URLs.

/// A `$NAME` or `${NAME...}` in raw text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct VarRef {
    pub name: String,
    /// True for `${NAME-x}`, `${NAME:+x}`, `${NAME?x}` and friends: the author handled unset.
    pub guarded: bool,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The variable references in `text`, in order. Single-quoted text and escaped `$` are
/// literal, as in both BuildKit's lexer and a POSIX shell.
pub(crate) fn variable_refs(text: &str, escape: char) -> Vec<VarRef> {
    let chars: Vec<char> = text.chars().collect();
    let mut refs = Vec::new();
    let mut in_double = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c == escape {
            i += 1;
        } else if c == '"' {
            in_double = !in_double;
        } else if c == '\'' && !in_double {
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            let braced = chars.get(i) == Some(&'{');
            let start = i + usize::from(braced);
            // Names start with a letter or `_`; `$1`, `$@`, `$$` are shell parameters.
            if !chars
                .get(start)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
            {
                continue;
            }
            let mut end = start;
            while end < chars.len() && is_name_char(chars[end]) {
                end += 1;
            }
            let guarded = braced && matches!(chars.get(end), Some(':' | '-' | '+' | '?'));
            refs.push(VarRef {
                name: chars[start..end].iter().collect(),
                guarded,
            });
            i = end;
        }
    }
    refs
}

/// Splits shell text into simple commands, each as its words with leading variable
/// assignments and wrappers (`env`, `sudo`, ...) removed. Good enough to spot `go build`,
/// not a shell parser.
pub(crate) fn simple_commands(text: &str) -> Vec<Vec<String>> {
    const WRAPPERS: [&str; 6] = ["env", "sudo", "time", "exec", "nice", "command"];
    let mut separated = text.replace("&&", "\n").replace("||", "\n");
    for separator in [';', '|', '&', '(', ')', '{', '}', '`'] {
        separated = separated.replace(separator, "\n");
    }
    separated
        .replace("$\n", "\n")
        .lines()
        .map(|command| {
            command
                .split_whitespace()
                .map(|w| w.trim_matches(['"', '\'']).to_string())
                .skip_while(|w| {
                    w.contains('=')
                        || WRAPPERS.contains(&w.as_str())
                        || w == "then"
                        || w == "do"
                        || w == "else"
                })
                .collect::<Vec<_>>()
        })
        .filter(|words| !words.is_empty())
        .collect()
}

/// Words that may name a file or URL: split on blanks, quotes and shell operators.
pub(crate) fn path_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '"' | '\'' | '=' | '(' | ')' | ';' | '|' | '&' | '<' | '>' | '`'
            )
    })
    .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, bool)> {
        variable_refs(text, '\\')
            .into_iter()
            .map(|r| (r.name, r.guarded))
            .collect()
    }

    #[test]
    fn finds_plain_braced_and_guarded_references() {
        assert_eq!(
            names(r#"$A ${B}/x ${C:-d} ${D-x} "$E" '$F' \$G $1 $$ ${H#p} ${I:-${J}}"#),
            vec![
                ("A".to_string(), false),
                ("B".to_string(), false),
                ("C".to_string(), true),
                ("D".to_string(), true),
                ("E".to_string(), false),
                ("H".to_string(), false),
                ("I".to_string(), true),
                ("J".to_string(), false),
            ]
        );
        assert_eq!(
            names("`$X $Y"),
            vec![("X".to_string(), false), ("Y".to_string(), false)]
        );
        assert_eq!(variable_refs("`$X", '`').len(), 0);
    }

    #[test]
    fn splits_shell_lines_into_commands() {
        assert_eq!(
            simple_commands(
                "set -e && CGO_ENABLED=0 GOOS=linux go build -o /x . ; sudo make install | tee log"
            ),
            vec![
                vec!["set", "-e"],
                vec!["go", "build", "-o", "/x", "."],
                vec!["make", "install"],
                vec!["tee", "log"],
            ]
        );
        assert_eq!(
            simple_commands("echo $(gcc --version)")[1],
            vec!["gcc", "--version"]
        );
    }
}
