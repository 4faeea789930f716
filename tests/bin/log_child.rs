//! A process the log conformance tests kill with SIGKILL in the middle of its work:
//!
//! - `log-child step-then-wait BACKEND INPUT OUTPUT GROUP TXN`: performs one step without
//!   committing it, prints `stepped N`, and waits to be killed between append and commit.
//! - `log-child commit-loop BACKEND INPUT OUTPUT GROUP TXN`: for every input record commits a step
//!   of 50 outputs and the record's position, printing `committing` once, until it is killed at a
//!   random point, often in the middle of a commit.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipam_log::{BatchPolicy, MemberConfig, OutRecord, Position, Record};
use ipam_tests::BackendSpec;

/// Outputs per input in `commit-loop`.
pub const OUTPUTS_PER_INPUT: usize = 50;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, backend, input, output, group, transactional_id] = args.as_slice() else {
        bail!("usage: log-child step-then-wait|commit-loop BACKEND INPUT_TOPIC OUTPUT_TOPIC GROUP TRANSACTIONAL_ID");
    };
    let log = BackendSpec::parse(backend)?.open()?;
    let batch = match mode.as_str() {
        // Never commit on its own: the parent kills this process with the batch open.
        "step-then-wait" => BatchPolicy { max_steps: usize::MAX, max_delay: Duration::from_secs(3600) },
        "commit-loop" => BatchPolicy { max_steps: 1, max_delay: Duration::from_secs(1) },
        other => bail!("unknown mode `{other}`"),
    };
    let config = MemberConfig {
        group: group.clone(),
        topics: vec![input.clone()],
        transactional_id: transactional_id.clone(),
        batch,
    };
    let mut member = log.join(config).context("joining the group")?;
    let position = |r: &Record| Position { topic: r.topic.clone(), partition: r.partition, next_offset: r.offset + 1 };
    let mut stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut announced = false;
    loop {
        let records = member.poll(100, Duration::from_millis(200))?.records;
        if records.is_empty() && Instant::now() > deadline {
            bail!("no input arrived within 60 s");
        }
        if mode == "step-then-wait" && !records.is_empty() {
            let outputs: Vec<OutRecord> = records
                .iter()
                .map(|r| OutRecord { topic: output.clone(), key: r.key.clone(), value: b"doomed".to_vec() })
                .collect();
            let positions: Vec<Position> = records.iter().map(position).collect();
            member.step(&outputs, &positions)?;
            // Give a broker time to receive the produced records, so they are really in its log.
            std::thread::sleep(Duration::from_millis(1500));
            writeln!(stdout, "stepped {}", records.len())?;
            stdout.flush()?;
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        for record in &records {
            let outputs: Vec<OutRecord> = (0..OUTPUTS_PER_INPUT)
                .map(|j| OutRecord {
                    topic: output.clone(),
                    key: record.key.clone(),
                    value: format!("{}-{j}", record.offset).into_bytes(),
                })
                .collect();
            member.step(&outputs, &[position(record)])?;
            if !announced {
                announced = true;
                writeln!(stdout, "committing")?;
                stdout.flush()?;
            }
        }
    }
}
