//! The commands a package or a container needs around the services: shell completions and man
//! pages generated from the CLI definition itself (so they never drift from `--help`), a health
//! probe for container health checks (the image then needs no curl), and a configuration check
//! for an operator's edited file. The version with its git revision is `--version` (see
//! `build.rs`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ipam_log_kafka::KafkaOptions;

use crate::config::{Config, Sources};
use crate::exit;

/// `ipam --version`: the package version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("IPAM_REVISION"), ")");

/// How long `ipam health` waits for the answer, connection included.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Subcommand)]
pub enum Tools {
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page ipam(1); with --dir, write it and one page per subcommand (ipam-up(1),
    /// ...) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Ask a service's /health (its --metrics-bind address, or the API's): exit 0 when it answers
    /// 200, 5 otherwise (not ready, unreachable). For container health checks.
    Health {
        /// The URL to ask.
        #[arg(default_value = "http://127.0.0.1:9090/health")]
        url: String,
    },
    /// Print or check the effective configuration (defaults, --config file, IPAM_* variables,
    /// flags).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The old name of `ipam config check`.
    #[command(hide = true)]
    ConfigCheck,
}

/// `ipam config show` and `ipam config check`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration as TOML, each value with where it came from (default,
    /// the file's path, IPAM_X, --flag); secrets print as <hidden>.
    Show,
    /// Load the configuration and check it as the services do before they start, without
    /// starting anything; exit 0 when it is good.
    Check,
}

/// Runs one of these commands; answers its exit code.
pub fn run(tools: Tools, mut cli: clap::Command, config: &Config, sources: &Sources) -> anyhow::Result<i32> {
    // Written whole at the end: a reader that stops early (`| head`) ends the command quietly.
    let mut out = Vec::new();
    match tools {
        Tools::Completions { shell } => {
            let name = cli.get_name().to_owned();
            clap_complete::generate(shell, &mut cli, name, &mut out);
        }
        Tools::Man { dir: None } => clap_mangen::Man::new(cli).render(&mut out)?,
        Tools::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        Tools::Health { url } => return health(&url),
        Tools::Config(ConfigCommand::Show) => out.extend_from_slice(config.show(sources)?.as_bytes()),
        Tools::Config(ConfigCommand::Check) | Tools::ConfigCheck => {
            if let Some(bootstrap) = &config.kafka.bootstrap_servers {
                let mut options = KafkaOptions::new(bootstrap);
                config.kafka.apply_to(&mut options)?;
                options.validate()?;
            }
            let log = config
                .kafka
                .bootstrap_servers
                .as_deref()
                .map_or("the embedded log".to_owned(), |k| format!("Kafka at {k}"));
            writeln!(
                out,
                "configuration OK: instance {}, {log}, data in {}",
                config.instance,
                config.data_dir.display()
            )?;
        }
    }
    match std::io::stdout().lock().write_all(&out) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(error).context("writing to standard output");
        }
        _ => {}
    }
    Ok(exit::OK)
}

/// One GET of `url`: 200 is healthy; any other answer, or none, is not.
fn health(url: &str) -> anyhow::Result<i32> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HEALTH_TIMEOUT))
        .build()
        .new_agent();
    match agent.get(url).call() {
        Ok(answer) if answer.status() == 200 => Ok(exit::OK),
        Ok(mut answer) => {
            let status = answer.status();
            let body = answer.body_mut().read_to_string().unwrap_or_default();
            eprintln!("ipam: {url} answered {status}: {}", body.trim());
            Ok(exit::UNREACHABLE)
        }
        Err(error) => {
            eprintln!("ipam: {url}: {error}");
            Ok(exit::UNREACHABLE)
        }
    }
}
