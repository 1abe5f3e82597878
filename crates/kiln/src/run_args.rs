//! buildx's settings for every RUN step: `--network`, `--add-host`, `--ulimit`, `--shm-size`.

use clap::Args;
use kiln_sandbox::{ExtraHost, Network, StepOptions, Ulimit};
use miette::{Report, miette};

#[derive(Args, Clone, Debug, Default)]
pub struct RunStepArgs {
    /// The network of RUN steps that do not choose one: default, none or host
    ///
    /// `RUN --network=...` in the Dockerfile still wins for its step. none gives each step a
    /// network namespace of its own with only a loopback interface. default and host are the
    /// same in kiln: it has no network stack of its own, so steps share the network kiln
    /// runs in (see docs/security.md).
    #[arg(
        verbatim_doc_comment,
        long,
        value_name = "MODE",
        default_value = "default",
        value_parser = ["default", "none", "host"]
    )]
    network: String,
    /// Add NAME with address IP to every RUN step's /etc/hosts (repeatable): NAME:IP
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_hosts: Vec<String>,
    /// Set a resource limit for every RUN step (repeatable): NAME=SOFT[:HARD]
    ///
    /// NAME is one of Docker's: core, cpu, data, fsize, locks, memlock, msgqueue, nice,
    /// nofile, nproc, rss, rtprio, rttime, sigpending, stack; -1 is unlimited. A hard limit
    /// cannot go above the one kiln itself runs with. For example:
    ///   --ulimit nofile=1024:2048
    ///   --ulimit core=0
    #[arg(verbatim_doc_comment, long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<String>,
    /// The size of every RUN step's /dev/shm, e.g. 256m or 1g (default 64m)
    #[arg(long = "shm-size", value_name = "SIZE")]
    shm_size: Option<String>,
}

impl RunStepArgs {
    pub fn network(&self) -> Network {
        match self.network.as_str() {
            "none" => Network::None,
            "host" => Network::Host,
            _ => Network::Default,
        }
    }

    pub fn step_options(&self) -> Result<StepOptions, Report> {
        let parsed = |e: kiln_sandbox::StepOptionError| miette!("{e}");
        Ok(StepOptions {
            extra_hosts: (self.add_hosts.iter())
                .map(|h| h.parse::<ExtraHost>().map_err(parsed))
                .collect::<Result<_, _>>()?,
            ulimits: (self.ulimits.iter())
                .map(|u| u.parse::<Ulimit>().map_err(parsed))
                .collect::<Result<_, _>>()?,
            shm_size: match &self.shm_size {
                None => None,
                Some(size) => Some(kiln_dockerfile::parse_size(size).map_err(|_| {
                    miette!("--shm-size {size}: expected a size like 64m or 1g (binary units, as Docker reads them)")
                })?),
            },
        })
    }
}
