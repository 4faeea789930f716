//! Shared by the integration tests and the `log-child` helper process: how to open each log
//! backend from a one-line spec, so a child process can open the same log as its parent.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use ipam_log::sqlite::Durability;
use ipam_log::{EventLog, MemoryLog, SqliteLog};

/// Which backend and where: `memory`, `sqlite:<dir>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    Memory,
    Sqlite(PathBuf),
}

impl BackendSpec {
    pub fn parse(text: &str) -> anyhow::Result<BackendSpec> {
        match text.split_once(':') {
            None if text == "memory" => Ok(BackendSpec::Memory),
            Some(("sqlite", dir)) => Ok(BackendSpec::Sqlite(PathBuf::from(dir))),
            _ => bail!("unknown backend spec `{text}` (expected memory or sqlite:<dir>)"),
        }
    }

    pub fn to_arg(&self) -> String {
        match self {
            BackendSpec::Memory => "memory".to_owned(),
            BackendSpec::Sqlite(dir) => format!("sqlite:{}", dir.display()),
        }
    }

    /// Whether records survive the process (the crash tests need a durable backend).
    pub fn is_durable(&self) -> bool {
        !matches!(self, BackendSpec::Memory)
    }

    pub fn open(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        Ok(match self {
            BackendSpec::Memory => Arc::new(MemoryLog::new()),
            BackendSpec::Sqlite(dir) => Arc::new(
                SqliteLog::open(dir, Durability::ProcessCrash)
                    .with_context(|| format!("opening the embedded log in {}", dir.display()))?,
            ),
        })
    }
}
