//! The standard Prometheus process metrics (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc` at each scrape. Linux only, like the services;
//! a value that cannot be read is left out rather than reported wrong. Hand-written: the crates
//! that do this pull in far more than the handful of fields read here.

use std::fmt::Write as _;

use crate::metrics::header;

/// The unit of the times in `/proc` (USER_HZ): fixed at 100 by the kernel's ABI on every
/// architecture the services run on, whatever the kernel's own tick rate.
const TICKS_PER_SEC: f64 = 100.0;

/// What `/proc/self/stat` says, in the units the metrics want.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    /// Seconds after boot the process started.
    start_after_boot_secs: f64,
}

/// Parses `/proc/self/stat`: the fields after the command name (which may hold spaces and
/// parentheses, so the last `)` ends it), numbered as in proc(5).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // proc(5) numbers the fields from 1 with the pid and the command first; `rest` starts at 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3).and_then(|value| value.parse::<u64>().ok());
    let (utime, stime, starttime) = (field(14)?, field(15)?, field(22)?);
    Some(Stat {
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SEC,
        start_after_boot_secs: starttime as f64 / TICKS_PER_SEC,
    })
}

/// The resident set (`VmRSS` in `/proc/self/status`, in kB), in bytes.
fn parse_resident_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kilobytes * 1024)
}

/// The boot time (`btime` in `/proc/stat`), in seconds since the Unix epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|value| value.trim().parse().ok())
}

/// The soft limit on open files (`Max open files` in `/proc/self/limits`).
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Appends the process metrics to `out`.
pub fn render(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok().and_then(|text| parse_stat(&text));
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|text| parse_boot_time(&text));
    if let Some(stat) = stat {
        header(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.");
        let _ = writeln!(out, "process_cpu_seconds_total {}", stat.cpu_seconds);
        if let Some(boot) = boot {
            header(out, "process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.");
            let _ = writeln!(out, "process_start_time_seconds {}", boot as f64 + stat.start_after_boot_secs);
        }
    }
    if let Some(bytes) = std::fs::read_to_string("/proc/self/status").ok().and_then(|text| parse_resident_bytes(&text))
    {
        header(out, "process_resident_memory_bytes", "gauge", "Resident memory size, in bytes.");
        let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        header(out, "process_open_fds", "gauge", "Open file descriptors.");
        // The directory's own descriptor, open while it is read, is not counted.
        let _ = writeln!(out, "process_open_fds {}", entries.count().saturating_sub(1));
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| parse_max_fds(&text)) {
        header(out, "process_max_fds", "gauge", "The soft limit on open file descriptors.");
        let _ = writeln!(out, "process_max_fds {max}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let text = "4242 (ipam (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12345 \
                    1000000 2048 18446744073709551615";
        assert_eq!(parse_stat(text), Some(Stat { cpu_seconds: 3.0, start_after_boot_secs: 123.45 }));
    }

    #[test]
    fn boot_time_resident_memory_and_the_open_files_limit_are_found_by_their_names() {
        assert_eq!(parse_resident_bytes("Name:\tipam\nVmRSS:\t   2048 kB\nThreads:\t9\n"), Some(2048 * 1024));
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }
}
