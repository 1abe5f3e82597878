//! COPY/ADD `--chmod`: octal modes and chmod(1)'s symbolic modes (`u=rwx,g=rx,o=`, `a+x`,
//! `u+rwX`).

/// A parsed `--chmod` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chmod {
    /// Replaces the permission bits (and setuid/setgid/sticky).
    Octal(u32),
    /// Comma-separated clauses, applied in order to each entry's own mode.
    Symbolic(Vec<Clause>),
}

/// One `who op perms [op perms]...` clause of a symbolic mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// The mode bits the clause may touch: a class's rwx plus its special bit.
    who: u32,
    ops: Vec<(Op, Perms)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Remove,
    Set,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Perms {
    /// Letters among `rwxXst`.
    Letters(String),
    /// `u`, `g` or `o`: the bits that class has now.
    CopyOf(char),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid mode {mode:?}: {reason}")]
pub struct ChmodError {
    pub mode: String,
    pub reason: String,
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;

impl Chmod {
    /// Parses an octal mode (at most `7777`) or a symbolic one as chmod(1) takes it. A
    /// clause without `ugoa` applies to all classes (there is no umask here).
    pub fn parse(mode: &str) -> Result<Chmod, ChmodError> {
        let fail = |reason: &str| ChmodError {
            mode: mode.to_string(),
            reason: reason.to_string(),
        };
        if !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(mode, 8) {
                Ok(bits) if bits <= 0o7777 => Ok(Chmod::Octal(bits)),
                Ok(_) => Err(fail("an octal mode is at most 7777")),
                Err(_) => Err(fail("octal digits are 0 to 7")),
            };
        }
        let mut clauses = Vec::new();
        for text in mode.split(',') {
            let mut chars = text.chars().peekable();
            let mut who = 0;
            while let Some(c) = chars.next_if(|c| "ugoa".contains(*c)) {
                who |= match c {
                    'u' => USER,
                    'g' => GROUP,
                    'o' => OTHER,
                    _ => USER | GROUP | OTHER,
                };
            }
            if who == 0 {
                who = USER | GROUP | OTHER;
            }
            let mut ops = Vec::new();
            while let Some(op) = chars.next() {
                let op = match op {
                    '+' => Op::Add,
                    '-' => Op::Remove,
                    '=' => Op::Set,
                    other => {
                        return Err(fail(&format!(
                            "expected +, - or = in {text:?}, found {other:?}"
                        )));
                    }
                };
                let perms = match chars.next_if(|c| "ugo".contains(*c)) {
                    Some(class) => Perms::CopyOf(class),
                    None => {
                        let mut letters = String::new();
                        while let Some(c) = chars.next_if(|c| "rwxXst".contains(*c)) {
                            letters.push(c);
                        }
                        Perms::Letters(letters)
                    }
                };
                ops.push((op, perms));
            }
            if ops.is_empty() {
                return Err(fail(&format!(
                    "{text:?} has no operator: write it like u+x, g=rx or o-w"
                )));
            }
            clauses.push(Clause { who, ops });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode an entry with permission bits `mode` gets. `X` counts for directories and
    /// for files some class may already execute.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(bits) => return *bits,
            Chmod::Symbolic(clauses) => clauses,
        };
        let mut mode = mode & 0o7777;
        for clause in clauses {
            for (op, perms) in &clause.ops {
                let bits = match perms {
                    Perms::CopyOf(class) => {
                        let shift = match class {
                            'u' => 6,
                            'g' => 3,
                            _ => 0,
                        };
                        ((mode >> shift) & 0o7) * 0o111
                    }
                    Perms::Letters(letters) => letters.chars().fold(0, |acc, c| {
                        acc | match c {
                            'r' => 0o444,
                            'w' => 0o222,
                            'x' => 0o111,
                            'X' if is_dir || mode & 0o111 != 0 => 0o111,
                            's' => 0o6000,
                            't' => 0o1000,
                            _ => 0,
                        }
                    }),
                } & clause.who;
                mode = match op {
                    Op::Add => mode | bits,
                    Op::Remove => mode & !bits,
                    Op::Set => (mode & !clause.who) | bits,
                };
            }
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(mode: &str, from: u32, is_dir: bool) -> u32 {
        Chmod::parse(mode).unwrap().apply(from, is_dir)
    }

    #[test]
    fn octal_replaces_the_bits() {
        assert_eq!(apply("0755", 0o600, false), 0o755);
        assert_eq!(apply("4711", 0o600, false), 0o4711);
        assert!(Chmod::parse("17777").is_err());
        assert!(Chmod::parse("0788").is_err());
    }

    #[test]
    fn symbolic_modes_work_like_chmod() {
        assert_eq!(apply("u=rwx,g=rx,o=", 0o666, false), 0o750);
        assert_eq!(apply("a+x", 0o644, false), 0o755);
        assert_eq!(apply("+x", 0o600, false), 0o711);
        assert_eq!(apply("go-w", 0o666, false), 0o644);
        assert_eq!(apply("u+rwX", 0o000, true), 0o700);
        assert_eq!(apply("u+rwX", 0o000, false), 0o600);
        assert_eq!(apply("a+X", 0o744, false), 0o755);
        assert_eq!(apply("g=u", 0o700, false), 0o770);
        assert_eq!(apply("u+s,o+t", 0o755, true), 0o5755);
        assert_eq!(apply("u=rw,u+x", 0o000, false), 0o700);
    }

    #[test]
    fn malformed_modes_are_errors_that_say_why() {
        for bad in ["", "u", "rwx", "u+rwx,", "z+x", "u+rwx;"] {
            let err = Chmod::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
