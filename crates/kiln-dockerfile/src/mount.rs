//! `RUN --mount`, read as BuildKit reads it: the flag's value is split into its options when
//! the Dockerfile is parsed (so an unknown option or type, an option that does not fit the
//! type, or a missing `target` is an error pointing at the flag), and the option values stay
//! words until the build knows the variables ([`MountSpec::expand`]), then become a typed
//! [`Mount`] ([`MountSpec::resolve`]).

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    pub fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// Who may use a cache mount at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Every step at once.
    #[default]
    Shared,
    /// A step that finds the cache in use gets a fresh, empty one of its own.
    Private,
    /// One step at a time; the others wait.
    Locked,
}

/// One `--mount` flag as written: its type, and the values of its options as words (quotes
/// removed, variables not expanded). `ro`/`rw` and `required` keep whether they were bare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountType,
    pub target: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    /// The last of `ro`/`readonly` (true) or `rw`/`readwrite` (false), with its value if any.
    pub access: Option<(bool, Option<String>)>,
    pub id: Option<String>,
    pub sharing: Option<String>,
    pub mode: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub size: Option<String>,
    /// `required`, bare (`Some(None)`) or with a value.
    pub required: Option<Option<String>>,
    pub env: Option<String>,
}

/// One `--mount` flag, expanded and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub kind: MountType,
    /// As written (made absolute against the working dir by the build).
    pub target: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    /// `None` means the type's default: read-only for bind, writable for the rest.
    pub readonly: Option<bool>,
    pub id: Option<String>,
    pub sharing: Sharing,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub required: bool,
    pub env: Option<String>,
}

/// Splits on commas outside double quotes, removing the quotes (CSV, as BuildKit reads it).
fn csv_fields(value: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            _ => fields.last_mut().expect("starts with one").push(c),
        }
    }
    fields
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(format!("{key}={other}: expected true or false")),
    }
}

/// `64m`, `1g`, `4096`: bytes, with binary unit suffixes as Docker's `size=` (and
/// `--shm-size`) takes them.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let unitless = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, factor) = match unitless.char_indices().last() {
        Some((at, 'k')) => (&unitless[..at], 1u64 << 10),
        Some((at, 'm')) => (&unitless[..at], 1 << 20),
        Some((at, 'g')) => (&unitless[..at], 1 << 30),
        Some((at, 't')) => (&unitless[..at], 1 << 40),
        _ => (unitless, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("size={text}: expected a size like 64m or 1048576"))
}

fn number(key: &str, text: &str, radix: u32) -> Result<u32, String> {
    u32::from_str_radix(text, radix).map_err(|_| format!("{key}={text}: not a number"))
}

impl MountSpec {
    /// Splits the value of one `--mount` flag (as written) into its options and checks what
    /// can be checked before expansion: the keys, the type, which options fit it, a target.
    pub fn parse(value: &str) -> Result<MountSpec, String> {
        let mut spec = MountSpec {
            kind: MountType::Bind,
            target: None,
            source: None,
            from: None,
            access: None,
            id: None,
            sharing: None,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            required: None,
            env: None,
        };
        for field in csv_fields(value) {
            let field = field.trim();
            if field.is_empty() {
                continue;
            }
            let (key, value) = match field.split_once('=') {
                Some((key, value)) => (key.trim().to_ascii_lowercase(), Some(value.trim())),
                None => (field.to_ascii_lowercase(), None),
            };
            let word = |key: &str| {
                value
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key} needs a value"))
            };
            match key.as_str() {
                "type" => {
                    spec.kind = match word("type")?.as_str() {
                        "bind" => MountType::Bind,
                        "cache" => MountType::Cache,
                        "tmpfs" => MountType::Tmpfs,
                        "secret" => MountType::Secret,
                        "ssh" => MountType::Ssh,
                        other => {
                            return Err(format!(
                                "unknown mount type `{other}` (expected bind, cache, tmpfs, \
                                 secret or ssh)"
                            ));
                        }
                    }
                }
                "target" | "dst" | "destination" => spec.target = Some(word(&key)?),
                "source" | "src" => spec.source = Some(word(&key)?),
                "from" => spec.from = Some(word("from")?),
                "ro" | "readonly" => spec.access = Some((true, value.map(str::to_string))),
                "rw" | "readwrite" => spec.access = Some((false, value.map(str::to_string))),
                "id" => spec.id = Some(word("id")?),
                "sharing" => spec.sharing = Some(word("sharing")?),
                "mode" => spec.mode = Some(word("mode")?),
                "uid" => spec.uid = Some(word("uid")?),
                "gid" => spec.gid = Some(word("gid")?),
                "size" => spec.size = Some(word("size")?),
                "required" => spec.required = Some(value.map(str::to_string)),
                "env" => spec.env = Some(word("env")?),
                _ => return Err(format!("unknown mount option `{key}` in `{field}`")),
            }
        }
        let kind = spec.kind;
        let misplaced = [
            (spec.sharing.is_some(), "sharing", kind == MountType::Cache),
            (spec.size.is_some(), "size", kind == MountType::Tmpfs),
            (spec.env.is_some(), "env", kind == MountType::Secret),
            (
                spec.from.is_some(),
                "from",
                matches!(kind, MountType::Bind | MountType::Cache),
            ),
        ];
        if let Some((_, key, _)) = misplaced.iter().find(|(given, _, fits)| *given && !fits) {
            return Err(format!(
                "mount option `{key}` does not apply to type={}",
                kind.name()
            ));
        }
        let needs_target = matches!(kind, MountType::Bind | MountType::Cache | MountType::Tmpfs);
        if needs_target && spec.target.is_none() {
            return Err(format!("a type={} mount needs target=PATH", kind.name()));
        }
        Ok(spec)
    }

    /// The same spec with every value expanded by `expand`.
    pub fn expand<E>(
        &self,
        mut expand: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<MountSpec, E> {
        let mut word = |w: &Option<String>| w.as_deref().map(&mut expand).transpose();
        Ok(MountSpec {
            kind: self.kind,
            target: word(&self.target)?,
            source: word(&self.source)?,
            from: word(&self.from)?,
            access: match &self.access {
                Some((ro, value)) => Some((*ro, word(value)?)),
                None => None,
            },
            id: word(&self.id)?,
            sharing: word(&self.sharing)?,
            mode: word(&self.mode)?,
            uid: word(&self.uid)?,
            gid: word(&self.gid)?,
            size: word(&self.size)?,
            required: match &self.required {
                Some(value) => Some(word(value)?),
                None => None,
            },
            env: word(&self.env)?,
        })
    }

    /// Reads the values (after [`MountSpec::expand`]): booleans, numbers, sizes, the sharing
    /// mode, and a secret's id, which defaults to the target's file name.
    pub fn resolve(&self) -> Result<Mount, String> {
        let readonly = match &self.access {
            None => None,
            Some((true, value)) => Some(parse_bool("ro", value.as_deref())?),
            Some((false, value)) => Some(!parse_bool("rw", value.as_deref())?),
        };
        let sharing = match self.sharing.as_deref() {
            None | Some("shared") => Sharing::Shared,
            Some("private") => Sharing::Private,
            Some("locked") => Sharing::Locked,
            Some(other) => {
                return Err(format!(
                    "sharing={other}: expected shared, private or locked"
                ));
            }
        };
        let mut id = self.id.clone();
        if self.kind == MountType::Secret && id.is_none() {
            let from_target = self.target.as_deref().and_then(|target| {
                Path::new(target)
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            });
            id = Some(from_target.ok_or("a type=secret mount needs id= or target=")?);
        }
        Ok(Mount {
            kind: self.kind,
            target: self.target.clone(),
            source: self.source.clone(),
            from: self.from.clone(),
            readonly,
            id,
            sharing,
            mode: self
                .mode
                .as_deref()
                .map(|m| number("mode", m, 8))
                .transpose()?,
            uid: self
                .uid
                .as_deref()
                .map(|u| number("uid", u, 10))
                .transpose()?,
            gid: self
                .gid
                .as_deref()
                .map(|g| number("gid", g, 10))
                .transpose()?,
            size: self.size.as_deref().map(parse_size).transpose()?,
            required: match &self.required {
                None => false,
                Some(value) => parse_bool("required", value.as_deref())?,
            },
            env: self.env.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_mount(value: &str) -> Result<Mount, String> {
        MountSpec::parse(value)?.resolve()
    }

    #[test]
    fn cache_mount_parses_buildkit_spellings() {
        let parsed =
            parse_mount("type=cache,dst=/root/.cache,id=go,sharing=locked,mode=0700,uid=1000,ro")
                .unwrap();
        assert_eq!(parsed.kind, MountType::Cache);
        assert_eq!(parsed.target.as_deref(), Some("/root/.cache"));
        assert_eq!(parsed.id.as_deref(), Some("go"));
        assert_eq!(parsed.sharing, Sharing::Locked);
        assert_eq!(parsed.mode, Some(0o700));
        assert_eq!(parsed.uid, Some(1000));
        assert_eq!(parsed.readonly, Some(true));
    }

    #[test]
    fn type_defaults_to_bind_and_rw_makes_it_writable() {
        let parsed = parse_mount("target=/src,rw").unwrap();
        assert_eq!(parsed.kind, MountType::Bind);
        assert_eq!(parsed.readonly, Some(false));
    }

    #[test]
    fn secret_id_defaults_to_the_target_name() {
        let parsed = parse_mount("type=secret,target=/run/secrets/npmrc,required").unwrap();
        assert_eq!(parsed.id.as_deref(), Some("npmrc"));
        assert!(parsed.required);
    }

    #[test]
    fn tmpfs_size_takes_units() {
        let parsed = parse_mount("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(parsed.size, Some(64 << 20));
        assert!(parse_mount("type=tmpfs,target=/t,size=lots").is_err());
    }

    #[test]
    fn bad_options_are_errors_naming_them() {
        let unknown = MountSpec::parse("type=bind,target=/x,colour=red").unwrap_err();
        assert!(unknown.contains("colour"), "{unknown}");
        let misplaced = MountSpec::parse("type=bind,target=/x,sharing=locked").unwrap_err();
        assert!(misplaced.contains("sharing"), "{misplaced}");
        let no_target = MountSpec::parse("type=cache").unwrap_err();
        assert!(no_target.contains("target"), "{no_target}");
        let bad_type = MountSpec::parse("type=volume,target=/x").unwrap_err();
        assert!(bad_type.contains("volume"), "{bad_type}");
        let bad_sharing = parse_mount("type=cache,target=/x,sharing=sometimes").unwrap_err();
        assert!(bad_sharing.contains("sometimes"), "{bad_sharing}");
    }

    /// Values are words: split before expansion (a comma from a variable stays in its value),
    /// expanded one by one, and read after that.
    #[test]
    fn values_are_expanded_after_the_split() {
        let spec = MountSpec::parse("type=cache,target=$DIR,uid=$UID,ro=$RO").unwrap();
        assert_eq!(spec.target.as_deref(), Some("$DIR"));
        let expanded = spec
            .expand(|word| -> Result<String, ()> {
                Ok(match word {
                    "$DIR" => "/a,b".to_string(),
                    "$UID" => "42".to_string(),
                    "$RO" => "false".to_string(),
                    other => other.to_string(),
                })
            })
            .unwrap();
        let mount = expanded.resolve().unwrap();
        assert_eq!(mount.target.as_deref(), Some("/a,b"));
        assert_eq!(mount.uid, Some(42));
        assert_eq!(mount.readonly, Some(false));
    }
}
