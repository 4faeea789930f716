//! `ipam bench --kafka BROKERS`: the Kafka half of the bench. First the ceiling: Apache's own
//! producer and consumer performance tools, run from the broker's jars (the cache
//! `scripts/kafka-broker.sh` fills from Maven Central) against the same broker, with records of
//! the size of a vNIC started record. Then the pipeline as deployed: allocator, placement, API and
//! one host agent, each its own `ipam` process with its own data directory, on topics with a
//! prefix unique to this run; the workload of `bench.rs` (its single starts timed stage by stage,
//! `bench::stages`, at least `bench::STAGE_SAMPLES` of them); a SIGKILLed allocator restarted; and 1, 2 and 4 allocator processes sharing
//! the partitions, with one of two killed to time a survivor's takeover.

#![allow(clippy::print_stdout)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ipam_log::{EventLog, TopicSpec};
use ipam_log_kafka::{KafkaLog, KafkaOptions};
use ipam_runtime::Topics;

use crate::bench::{self, Figures, Fleet, HOST, NETWORKS, Options, Target, Workload};
use crate::child::UpProcess;
use crate::client::Api;

/// Partitions of the raw tools' topics: as many as the pipeline's network-keyed topics.
const PARTITIONS: u32 = 8;
/// The longest one run of a Java tool may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(600);

/// What Apache's tools measured, in records per second.
#[derive(Debug, Clone)]
pub(crate) struct RawFigures {
    pub records: usize,
    pub record_size: usize,
    pub produce_idempotent: f64,
    pub produce_transactional: f64,
    /// `fetch.nMsg.sec`: records consumed per second of fetching (the group join excluded).
    pub consume: f64,
    pub consume_committed: f64,
    /// How the transactional run committed.
    pub transaction: String,
    pub command_note: String,
}

/// The java binary and the classpath of the broker's jars, or an error saying how to get them.
fn tools() -> anyhow::Result<(PathBuf, String)> {
    let version = std::env::var("IPAM_KAFKA_VERSION").unwrap_or_else(|_| "4.4.0".to_owned());
    let cache = std::env::var_os("IPAM_KAFKA_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/ipam-kafka")
    });
    let libs = cache.join(&version).join("libs");
    let tools_jar = libs.join(format!("kafka-tools-{version}.jar"));
    if !tools_jar.is_file() {
        bail!(
            "Apache Kafka's tools are not in {} (no {}): run `scripts/kafka-broker.sh fetch` (or `start`), which \
             downloads Kafka {version}'s jars from Maven Central into that cache (IPAM_KAFKA_CACHE and \
             IPAM_KAFKA_VERSION choose another)",
            libs.display(),
            tools_jar.display()
        );
    }
    let java = std::env::var_os("IPAM_KAFKA_JAVA")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("JAVA_HOME").map(|home| PathBuf::from(home).join("bin/java")))
        .unwrap_or_else(|| PathBuf::from("java"));
    let works = Command::new(&java).arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !works.is_ok_and(|s| s.success()) {
        bail!(
            "no working java at `{}`: Apache Kafka's performance tools need Java 17 or later (install one, or set \
             IPAM_KAFKA_JAVA or JAVA_HOME; scripts/kafka-broker.sh uses the same)",
            java.display()
        );
    }
    Ok((java, format!("{}/*", libs.display())))
}

/// Runs one Java tool to its end and returns its standard output; the process is killed by pid if
/// it overruns.
fn run_tool(java: &Path, classpath: &str, class: &str, args: &[String]) -> anyhow::Result<String> {
    let mut child = Command::new(java)
        .args(["-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true", "-cp", classpath, class])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {class}"))?;
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = reader(Box::new(child.stdout.take().context("no stdout")?));
    let stderr = reader(Box::new(child.stderr.take().context("no stderr")?));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TOOL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{class} did not finish in {} s", TOOL_DEADLINE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{class} failed ({status}):\n{}", tail.join("\n"));
    }
    Ok(stdout)
}

/// `200000 records sent, 58823.5 records/sec (24.35 MB/sec), ...`: the records/sec of the last
/// summary line.
fn producer_rate(output: &str) -> anyhow::Result<f64> {
    output
        .lines()
        .rev()
        .filter(|line| line.contains("records sent"))
        .find_map(|line| line.split(", ").nth(1)?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no summary line in ProducerPerformance's output:\n{output}"))
}

/// ConsumerPerformance prints a header line and a line of values, comma separated.
fn consumer_rate(output: &str, column: &str) -> anyhow::Result<f64> {
    let mut lines = output.lines().skip_while(|line| !line.contains("nMsg.sec"));
    let header = lines.next().with_context(|| format!("no header in ConsumerPerformance's output:\n{output}"))?;
    let values = lines.next().with_context(|| format!("no values in ConsumerPerformance's output:\n{output}"))?;
    let index = header
        .split(',')
        .position(|name| name.trim() == column)
        .with_context(|| format!("no column {column} in `{header}`"))?;
    values
        .split(',')
        .nth(index)
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no value of {column} in `{values}`"))
}

fn raw_figures(
    java: &Path,
    classpath: &str,
    bootstrap: &str,
    log: &KafkaLog,
    prefix: &str,
    options: &Options,
    record_size: usize,
) -> anyhow::Result<RawFigures> {
    let records = options.perf_records;
    // Apache's transactions last as long as the drivers' batches under load (the policy's delay).
    let transaction_ms = options.batch.max_delay.as_millis().max(1);
    let (idempotent, transactional) = (format!("{prefix}perf.idempotent"), format!("{prefix}perf.transactional"));
    log.create_topics(&[
        TopicSpec { name: idempotent.clone(), partitions: PARTITIONS },
        TopicSpec { name: transactional.clone(), partitions: PARTITIONS },
    ])?;
    let produce = |topic: &str, extra: &[&str]| -> anyhow::Result<f64> {
        let mut args: Vec<String> = [
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--num-records",
            &records.to_string(),
            "--record-size",
            &record_size.to_string(),
            "--throughput",
            "-1",
            "--command-property",
            "acks=all",
            "enable.idempotence=true",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        producer_rate(&run_tool(java, classpath, "org.apache.kafka.tools.ProducerPerformance", &args)?)
    };
    let consume = |topic: &str, group: &str, extra: &[&str]| -> anyhow::Result<f64> {
        let mut args: Vec<String> = [
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--num-records",
            &records.to_string(),
            "--group",
            group,
            "--timeout",
            "60000",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        consumer_rate(
            &run_tool(java, classpath, "org.apache.kafka.tools.ConsumerPerformance", &args)?,
            "fetch.nMsg.sec",
        )
    };
    println!("kafka: Apache ProducerPerformance, {records} records of {record_size} bytes, acks=all, idempotent");
    let produce_idempotent = produce(&idempotent, &[])?;
    println!("kafka: ... {produce_idempotent:.0} records/s; now transactional, a commit every {transaction_ms} ms");
    let transaction_id = format!("{prefix}perf");
    let duration = transaction_ms.to_string();
    let produce_transactional =
        produce(&transactional, &["--transactional-id", &transaction_id, "--transaction-duration-ms", &duration])?;
    println!("kafka: ... {produce_transactional:.0} records/s; now Apache ConsumerPerformance");
    let consume_plain = consume(&idempotent, &format!("{prefix}perf-consumer"), &[])?;
    let consume_committed = consume(
        &transactional,
        &format!("{prefix}perf-consumer-committed"),
        &["--command-property", "isolation.level=read_committed"],
    )?;
    println!("kafka: ... consumed {consume_plain:.0} records/s, read_committed {consume_committed:.0} records/s");
    Ok(RawFigures {
        records,
        record_size,
        produce_idempotent,
        produce_transactional,
        consume: consume_plain,
        consume_committed,
        transaction: format!("--transaction-duration-ms {transaction_ms}"),
        command_note: format!(
            "org.apache.kafka.tools.ProducerPerformance --num-records {records} --record-size {record_size} \
             --throughput -1 --command-property acks=all enable.idempotence=true [--transactional-id ... \
             --transaction-duration-ms {transaction_ms}]; ConsumerPerformance --num-records {records} \
             (fetch.nMsg.sec); {PARTITIONS} partitions each"
        ),
    })
}

/// Two allocators share the partitions; one is killed with SIGKILL and a start is posted on every
/// network (so on every partition): the time from the kill until the API shows them all is how
/// long the survivor takes to be given the dead one's partitions (the group waits for its
/// session to expire, `--kafka-session-timeout-ms`) and to rebuild them.
fn survivor_takes_over(target: &Target, workload: &mut Workload, group: &mut Fleet) -> anyhow::Result<Duration> {
    let before = bench::shown(&target.api)?;
    let starts = workload.starts(NETWORKS as usize);
    let (_, victim) = group.processes.last_mut().context("no second allocator")?;
    victim.kill()?;
    let killed = Instant::now();
    target.api.publish(&starts)?;
    while bench::shown(&target.api)? < before + NETWORKS {
        if killed.elapsed() > Duration::from_secs(300) {
            bail!("the survivor did not serve the killed allocator's partitions within 300 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed.elapsed();
    println!(
        "kafka: an allocator killed with SIGKILL, its partitions served by the survivor {:.2} s after the kill",
        took.as_secs_f64()
    );
    group.processes.pop();
    Ok(took)
}

fn print_scale_out(events: usize, shown: &[(usize, Duration)], takeover: Option<Duration>) {
    let rate = |d: &Duration| events as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE);
    let Some(one) = shown.first().map(|(_, d)| rate(d)) else { return };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("kafka: scale-out, {events} starts each, until the API shows every reservation ({cores} cores):");
    for (processes, d) in shown {
        println!(
            "kafka:   {processes} allocator process(es): {:.2} s, {}/s, {:.2}x one",
            d.as_secs_f64(),
            bench::thousands(rate(d)),
            rate(d) / one
        );
    }
    if let Some(takeover) = takeover {
        println!("kafka:   a SIGKILLed one of two: its partitions served again {:.2} s later", takeover.as_secs_f64());
    }
}

/// One `ipam` service process of this run.
struct Services<'a> {
    bootstrap: &'a str,
    prefix: &'a str,
    dir: &'a Path,
    /// The bench's settings for every service ([`bench::Options::service_args`]).
    settings: Vec<String>,
}

impl Services<'_> {
    fn args(&self, instance: &str, rest: &[&str]) -> Vec<String> {
        let mut args = self.settings.clone();
        args.extend(
            [
                "--kafka",
                self.bootstrap,
                "--topic-prefix",
                self.prefix,
                "--partitions",
                "8",
                "--instance",
                instance,
                "--data-dir",
                // Per instance: a restarted instance finds its own snapshots again.
                &self.dir.join(format!("data-{instance}")).display().to_string(),
            ]
            .map(str::to_owned),
        );
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args
    }

    fn start(&self, name: &str, instance: &str, api: bool, rest: &[&str]) -> anyhow::Result<UpProcess> {
        let args = self.args(instance, rest);
        let log = self.dir.join(format!("{name}.log"));
        let process = UpProcess::start_service(&args, api, Some(&log)).with_context(|| format!("starting {name}"))?;
        println!("kafka: {name} ready after {:.2} s (log {})", process.ready_after.as_secs_f64(), log.display());
        Ok(process)
    }

    fn allocator(&self, instance: &str, log_name: &str) -> anyhow::Result<UpProcess> {
        self.start(log_name, instance, false, &["allocator"])
    }
}

fn wait_for_line(log: &Path, text: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(log).is_ok_and(|t| t.contains(text)) {
        if Instant::now() > deadline {
            bail!("{} never said `{text}`", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn measure(bootstrap: &str, dir: &Path, options: &Options, record_size: usize) -> anyhow::Result<Figures> {
    let (java, classpath) = tools()?;
    std::fs::create_dir_all(dir)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let prefix = format!("bench-{stamp}-{}.", std::process::id());
    let log = KafkaLog::connect(KafkaOptions::new(bootstrap)).with_context(|| format!("connecting to {bootstrap}"))?;
    println!("kafka: broker {bootstrap}, topic prefix {prefix}");
    let raw = raw_figures(&java, &classpath, bootstrap, &log, &prefix, options, record_size)?;

    let services = Services { bootstrap, prefix: &prefix, dir, settings: options.service_args() };
    let mut fleet = Fleet::default();
    // The deciding services create the topics; the API and the host agent wait for them.
    fleet.processes.push(("allocator".to_owned(), services.allocator("a0", "allocator")?));
    fleet.processes.push(("placement".to_owned(), services.start("placement", "p0", false, &["placement"])?));
    let api = services.start("api", "api0", true, &["--api-bind", "127.0.0.1:0", "api"])?;
    let api_client = Api::new(&api.api_url, None)?;
    fleet.processes.push(("api".to_owned(), api));
    let files = dir.join("files");
    let host = HOST.to_string();
    let files_arg = files.display().to_string();
    let agent_args = ["host-agent", "--host-id", &host, "--dhcp-backend", "files", "--dhcp-dir", &files_arg];
    fleet.processes.push(("host-agent".to_owned(), services.start("host-agent", "h0", false, &agent_args)?));

    let target = Target {
        api: api_client,
        files,
        log: &log,
        topics: Topics::new(prefix.clone(), 8),
        allocator_group: format!("{prefix}ipam-allocator"),
        dir: dir.to_owned(),
    };
    let mut workload = Workload::default();
    let mut figures = bench::phases(&target, &mut workload, options, "kafka")?;
    figures.raw = Some(raw);

    let mut allocator = fleet.take("allocator").context("the allocator")?;
    allocator.kill()?;
    let since = Instant::now();
    let restarted = services.allocator("a0", "allocator-restarted")?;
    figures.restarted = "the allocator process alone (same data dir, its snapshots)";
    figures.restart_ready = restarted.ready_after;
    fleet.processes.push(("allocator".to_owned(), restarted));
    figures.restart_serving = Some(bench::serving_again(&target, &mut workload, since)?);
    figures.restart_note = bench::rebuild_note(&dir.join("allocator-restarted.log"));
    println!(
        "kafka: allocator ready again {:.2} s after SIGKILL, serving at {}",
        figures.restart_ready.as_secs_f64(),
        figures.restart_serving.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
    );

    if options.scale_out_events > 0 {
        fleet.take("allocator").context("the allocator")?.terminate()?;
        // (processes, time until the API showed every reservation): the read model follows the
        // log within milliseconds, where the committed position is known only to within one
        // `/metrics` scrape (a second or more on Kafka), too coarse to compare runs of 2 to 3 s.
        let mut shown = Vec::new();
        let mut takeover = None;
        for processes in [1usize, 2, 4] {
            let mut group = Fleet::default();
            for i in 0..processes {
                let instance = format!("s{processes}-{i}");
                group
                    .processes
                    .push((instance.clone(), services.allocator(&instance, &format!("allocator-{instance}"))?));
            }
            // Each says it is ready before the group has given it partitions: wait until every one
            // has rebuilt some (with up to 8 members each gets at least one).
            for (instance, _) in &group.processes {
                wait_for_line(&dir.join(format!("allocator-{instance}.log")), "Rebuilt partition state")?;
            }
            // One start per network, so every partition is owned and rebuilt before the clock runs.
            bench::load(&target, &mut workload, NETWORKS as usize, &format!("kafka-warmup-{processes}"))?;
            let load =
                bench::load(&target, &mut workload, options.scale_out_events, &format!("kafka-scale-out-{processes}"))?;
            let committed = load.committed.context("the allocators never caught up")?;
            println!(
                "kafka: {processes} allocator process(es): {} starts committed in {:.2} s",
                options.scale_out_events,
                committed.as_secs_f64()
            );
            figures.scale_out.push((processes, options.scale_out_events, committed));
            shown.push((processes, load.shown.context("the API never showed the scale-out load")?));
            if processes == 2 {
                takeover = Some(survivor_takes_over(&target, &mut workload, &mut group)?);
            }
            for (_, process) in &mut group.processes {
                process.terminate()?;
            }
            group.processes.clear();
        }
        print_scale_out(options.scale_out_events, &shown, takeover);
    }
    for (_, process) in &mut fleet.processes {
        process.terminate()?;
    }
    fleet.processes.clear();
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_summary_line_gives_records_per_second() {
        let output = "300000 records sent, 60000.0 records/sec (24.00 MB/sec), 10.0 ms avg latency\n\
                      500000 records sent, 58823.5 records/sec (24.35 MB/sec), 300.0 ms avg latency, 600.0 ms max \
                      latency, 250 ms 50th, 500 ms 95th, 580 ms 99th, 600 ms 99.9th.\n";
        assert_eq!(producer_rate(output).unwrap(), 58823.5);
    }

    #[test]
    fn the_consumer_columns_are_read_by_name() {
        let output = "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
                      rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec\n\
                      2026-12-02 01:00:00:000, 2026-12-02 01:00:02:000, 86.8, 43.4, 200000, 100000.0, 400, 1600, \
                      54.25, 125000.0\n";
        assert_eq!(consumer_rate(output, "fetch.nMsg.sec").unwrap(), 125000.0);
        assert_eq!(consumer_rate(output, "nMsg.sec").unwrap(), 100000.0);
    }

    #[test]
    fn a_tool_output_without_a_summary_is_an_error() {
        assert!(producer_rate("WARN something\n").is_err());
        assert!(consumer_rate("", "nMsg.sec").is_err());
    }
}
