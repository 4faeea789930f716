//! Where the process's log lines go and how they look: stderr, filtered by `IPAM_LOG` (a tracing
//! filter, `info` by default), as text or as one JSON object per line (`--log-format`), so that a
//! log collector can parse them without guessing at a text layout.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's subscriber. Called once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("IPAM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // Fields at the top level, beside the message, as collectors expect.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}
