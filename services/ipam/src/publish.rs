//! `ipam publish`: a file of CloudEvents, one JSON object per line (or standard input with `-`),
//! through the API in batches. Each line is checked with the API's own decoder before it is sent,
//! so a bad line stops the run right there, with everything before it published and nothing after
//! it: the message names the line and the `--from-line` that resumes after the fix. A batch is
//! all or nothing on the API's side, so a refused or lost batch is resumed from its first line,
//! and an event that did land is a retry by its id, which IPAM applies once.

// Saying what was published is this command's job.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{Api, ClientError};
use crate::exit::{self, BadInput};

/// Events per `POST /v1/events`.
pub const DEFAULT_BATCH: usize = 500;
/// At most this many bad lines are listed by a dry run; the rest are counted.
const LISTED_ERRORS: usize = 20;

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The file of events, one JSON object per line; `-` reads standard input.
    file: PathBuf,
    /// Check every line and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start at this line (1-based), skipping those before it: to resume a run that stopped.
    #[arg(long, value_name = "LINE", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    from_line: u64,
    /// Events per request.
    #[arg(long, default_value_t = DEFAULT_BATCH, value_parser = parse_batch)]
    batch_size: usize,
}

fn parse_batch(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(size) if (1..=10_000).contains(&size) => Ok(size),
        _ => Err("a batch size is 1 to 10000".to_owned()),
    }
}

/// One line's event, checked: its id, and the JSON to send.
struct Checked {
    line: usize,
    event: Value,
}

/// Publishes (or, with --dry-run, only checks) the input; answers the exit code.
pub fn publish(api: impl FnOnce() -> anyhow::Result<Api>, args: PublishArgs) -> anyhow::Result<i32> {
    let shown =
        if args.file.as_os_str() == "-" { "standard input".to_owned() } else { args.file.display().to_string() };
    let text = match read_input(&args.file) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(BadInput(format!("{shown} does not exist")).into());
        }
        other => other.with_context(|| format!("reading {shown}"))?,
    };
    let from = args.from_line as usize;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(number, line)| *number >= from && !line.trim().is_empty())
        .collect();
    if lines.is_empty() {
        let total = text.lines().count();
        let message = if from > 1 {
            format!("{shown} holds no events from line {from} on (it has {total} lines)")
        } else {
            format!("{shown} holds no events")
        };
        return Err(BadInput(message).into());
    }
    let mut seen = HashMap::new();
    if args.dry_run {
        return Ok(dry_run(&shown, &lines, &mut seen));
    }
    let api = api()?;
    let progress = progress(lines.len());
    let (first, mut sent) = (lines[0].0, 0usize);
    let mut batch: Vec<Checked> = Vec::with_capacity(args.batch_size);
    for &(number, line) in &lines {
        match check(number, line, &mut seen) {
            Ok(event) => batch.push(Checked { line: number, event }),
            Err(error) => {
                send(&api, &batch, first)?;
                sent += batch.len();
                progress.finish_and_clear();
                let done = if number > first {
                    format!("{sent} events before it (lines {first} to {}) were published", number - 1)
                } else {
                    "nothing was published".to_owned()
                };
                return Err(BadInput(format!(
                    "{shown}:{number}: {error}. {done}; fix the line and resume with `--from-line {number}` (or check \
                     the whole file first with --dry-run)"
                ))
                .into());
            }
        }
        if batch.len() == args.batch_size {
            send(&api, &batch, first)?;
            sent += batch.len();
            progress.inc(batch.len() as u64);
            batch.clear();
        }
    }
    send(&api, &batch, first)?;
    sent += batch.len();
    progress.finish_and_clear();
    let last = lines.last().map_or(first, |(number, _)| *number);
    println!("published {sent} events (lines {first} to {last})");
    Ok(exit::OK)
}

fn read_input(file: &PathBuf) -> std::io::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().lock().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file)
    }
}

/// A progress bar on a terminal, for inputs long enough to wait on; hidden otherwise.
fn progress(events: usize) -> ProgressBar {
    if events < 2 * DEFAULT_BATCH || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(events as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} events, {eta} left") {
        bar.set_style(style);
    }
    bar
}

/// Checks every line, lists the bad ones, and publishes nothing.
fn dry_run(shown: &str, lines: &[(usize, &str)], seen: &mut HashMap<String, usize>) -> i32 {
    let mut bad = 0usize;
    for &(number, line) in lines {
        if let Err(error) = check(number, line, seen) {
            bad += 1;
            if bad <= LISTED_ERRORS {
                eprintln!("{shown}:{number}: {error}");
            }
        }
    }
    let (first, last) = (lines[0].0, lines[lines.len() - 1].0);
    if bad == 0 {
        println!("dry run: {} events valid (lines {first} to {last}); nothing was published", lines.len());
        exit::OK
    } else {
        if bad > LISTED_ERRORS {
            eprintln!("... and {} more", bad - LISTED_ERRORS);
        }
        eprintln!("dry run: {bad} of {} events are bad (lines {first} to {last}); nothing was published", lines.len());
        exit::BAD_INPUT
    }
}

/// One line as the API would take it: JSON, an event the API's own decoder accepts, and an id no
/// earlier line used (a repeated id would be taken for a retry and the event dropped).
fn check(number: usize, line: &str, seen: &mut HashMap<String, usize>) -> Result<Value, String> {
    let event: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    ipam_api::publish::decode_batch(event.clone()).map_err(|error| {
        let field = error
            .field
            .filter(|field| !error.message.contains(field.as_str()))
            .map(|field| format!(" (field {field})"))
            .unwrap_or_default();
        format!("{}: {}{field}", error.code, error.message)
    })?;
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    if let Some(earlier) = seen.insert(id.clone(), number) {
        return Err(format!("duplicate_event_id: line {earlier} has the same id {id}; each event needs its own"));
    }
    Ok(event)
}

/// Sends one batch; a failure says which lines to resume from and what is known of them.
fn send(api: &Api, batch: &[Checked], first: usize) -> anyhow::Result<()> {
    let (Some(head), Some(tail)) = (batch.first(), batch.last()) else { return Ok(()) };
    let events: Vec<Value> = batch.iter().map(|checked| checked.event.clone()).collect();
    let before = if head.line > first {
        format!("lines {first} to {} were published", head.line - 1)
    } else {
        "nothing was published".to_owned()
    };
    api.publish(&events).map(drop).map_err(|error| {
        let resume = format!("resume with `--from-line {}`", head.line);
        let context = match error.downcast_ref::<ClientError>() {
            Some(ClientError::Refused { index, .. }) => {
                let line = index.and_then(|i| batch.get(i)).map_or(head.line, |checked| checked.line);
                format!(
                    "line {line}: the batch of lines {} to {} was refused and none of it was published; {before}; \
                     {resume} once it is fixed",
                    head.line, tail.line
                )
            }
            _ => format!(
                "sending lines {} to {} failed, and whether they landed is unknown; {before}; {resume} (events that \
                 did land are retries by their ids and are not applied twice)",
                head.line, tail.line
            ),
        };
        error.context(context)
    })
}
