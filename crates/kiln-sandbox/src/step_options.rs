//! What a build sets for every RUN step, as buildx's `--add-host`, `--ulimit` and
//! `--shm-size` do, and how the flags' values are read.

use std::net::IpAddr;
use std::str::FromStr;

use nix::sys::resource::Resource;
use serde::{Deserialize, Serialize};

/// Docker's size of /dev/shm, when `--shm-size` is not given.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Settings for every RUN step of a build. The default changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOptions {
    /// Added to the /etc/hosts the sandbox generates, after its own lines.
    #[serde(default)]
    pub extra_hosts: Vec<ExtraHost>,
    /// Resource limits set on the command before it starts.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// The size of the /dev/shm tmpfs in bytes; `None` is [`DEFAULT_SHM_SIZE`].
    #[serde(default)]
    pub shm_size: Option<u64>,
}

impl StepOptions {
    pub fn is_default(&self) -> bool {
        *self == StepOptions::default()
    }
}

/// One `--add-host NAME:IP` (or `NAME=IP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraHost {
    pub name: String,
    pub ip: IpAddr,
}

/// One `--ulimit NAME=SOFT[:HARD]`; `u64::MAX` is unlimited (RLIM_INFINITY).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Docker's name of the limit, e.g. `nofile`.
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StepOptionError {
    #[error("--add-host {0}: expected NAME:IP, e.g. registry.internal:10.0.0.5")]
    AddHostSyntax(String),
    #[error(
        "--add-host {0}: host-gateway names the Docker engine's gateway, and kiln runs without \
         an engine: give the address itself"
    )]
    HostGateway(String),
    #[error("--ulimit {given}: {why}; expected NAME=SOFT[:HARD], e.g. nofile=1024:2048")]
    Ulimit { given: String, why: String },
}

/// Docker's ulimit names and the limits they set.
const ULIMITS: [(&str, Resource); 15] = [
    ("core", Resource::RLIMIT_CORE),
    ("cpu", Resource::RLIMIT_CPU),
    ("data", Resource::RLIMIT_DATA),
    ("fsize", Resource::RLIMIT_FSIZE),
    ("locks", Resource::RLIMIT_LOCKS),
    ("memlock", Resource::RLIMIT_MEMLOCK),
    ("msgqueue", Resource::RLIMIT_MSGQUEUE),
    ("nice", Resource::RLIMIT_NICE),
    ("nofile", Resource::RLIMIT_NOFILE),
    ("nproc", Resource::RLIMIT_NPROC),
    ("rss", Resource::RLIMIT_RSS),
    ("rtprio", Resource::RLIMIT_RTPRIO),
    ("rttime", Resource::RLIMIT_RTTIME),
    ("sigpending", Resource::RLIMIT_SIGPENDING),
    ("stack", Resource::RLIMIT_STACK),
];

impl FromStr for ExtraHost {
    type Err = StepOptionError;

    /// `NAME:IP` as docker takes it (the first `:` separates, so an IPv6 address may follow),
    /// or buildx's newer `NAME=IP`.
    fn from_str(given: &str) -> Result<ExtraHost, StepOptionError> {
        let syntax = || StepOptionError::AddHostSyntax(given.to_string());
        let (name, ip) = given
            .split_once('=')
            .or_else(|| given.split_once(':'))
            .ok_or_else(syntax)?;
        if ip == "host-gateway" {
            return Err(StepOptionError::HostGateway(given.to_string()));
        }
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        match ip.trim_matches(|c| c == '[' || c == ']').parse() {
            Ok(ip) if valid_name => Ok(ExtraHost {
                name: name.to_string(),
                ip,
            }),
            _ => Err(syntax()),
        }
    }
}

impl FromStr for Ulimit {
    type Err = StepOptionError;

    /// `nofile=1024:2048`, `nproc=512` (hard = soft), `-1` or `unlimited` for no limit.
    fn from_str(given: &str) -> Result<Ulimit, StepOptionError> {
        let error = |why: &str| StepOptionError::Ulimit {
            given: given.to_string(),
            why: why.to_string(),
        };
        let (name, values) = given.split_once('=').ok_or_else(|| error("no `=`"))?;
        if Ulimit::resource(name).is_none() {
            let names: Vec<&str> = ULIMITS.iter().map(|(n, _)| *n).collect();
            return Err(error(&format!(
                "unknown limit {name:?} (known: {})",
                names.join(", ")
            )));
        }
        let value = |text: &str| match text {
            "-1" | "unlimited" => Ok(u64::MAX),
            _ => text
                .parse::<u64>()
                .map_err(|_| error(&format!("{text:?} is not a number"))),
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => (value(values)?, value(values)?),
        };
        if soft > hard {
            return Err(error("the soft limit is above the hard one"));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }
}

impl Ulimit {
    pub(crate) fn resource(name: &str) -> Option<Resource> {
        ULIMITS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_docker_writes_them() {
        let host: ExtraHost = "db.internal:10.0.0.5".parse().unwrap();
        assert_eq!(
            (host.name.as_str(), host.ip.to_string()),
            ("db.internal", "10.0.0.5".into())
        );
        let v6: ExtraHost = "v6:fd00::1".parse().unwrap();
        assert_eq!(v6.ip.to_string(), "fd00::1");
        let eq: ExtraHost = "v6=[fd00::2]".parse().unwrap();
        assert_eq!(eq.ip.to_string(), "fd00::2");
        for bad in ["nohost", "a b:1.2.3.4", ":1.2.3.4", "x:300.1.1.1"] {
            assert!(bad.parse::<ExtraHost>().is_err(), "{bad}");
        }
        assert!(matches!(
            "gw:host-gateway".parse::<ExtraHost>(),
            Err(StepOptionError::HostGateway(_))
        ));

        let limit: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!((limit.soft, limit.hard), (1024, 2048));
        let same: Ulimit = "nproc=512".parse().unwrap();
        assert_eq!((same.soft, same.hard), (512, 512));
        let open: Ulimit = "core=-1".parse().unwrap();
        assert_eq!(open.hard, u64::MAX);
        for bad in ["nofile", "files=1", "nofile=2048:1024", "nofile=many"] {
            assert!(bad.parse::<Ulimit>().is_err(), "{bad}");
        }
    }
}
