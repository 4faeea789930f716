//! A secured Kafka, for real: the `ipam` binary and the Kafka backend over SASL_SSL (SCRAM and
//! PLAIN) and mutual TLS against a broker of this file's own, started by
//! `IPAM_KAFKA_SASL_SSL=1 scripts/kafka-broker.sh start` (certificates made by openssl, the SCRAM
//! user by Kafka's storage tool). A wrong password and an untrusted broker certificate must end
//! the service with a clear error and a non-zero exit, not leave it retrying for ever as librdkafka
//! would. One broker serves every case, so the whole costs one broker start.
//!
//! Also here, on the shared test broker: an existing topic that could lose records (expiring,
//! under-replicated) is refused at start, by name, with what it has and what is needed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipam_log::{EventLog, LogError, OutRecord, TopicSpec};
use ipam_log_kafka::{KafkaLog, KafkaOptions, KafkaSecurity, SaslMechanism, SecurityProtocol};

use crate::api::http;
use crate::recovery::{Service, ipam_binary};

/// How long a service may take to become ready, or to give up, on a loaded machine.
const WITHIN: Duration = Duration::from_secs(90);

/// A broker with the secured listeners; stopped (and its directory removed) when dropped.
struct SecuredBroker {
    dir: PathBuf,
    /// The `KAFKA_*=...` lines the script printed.
    vars: BTreeMap<String, String>,
}

impl SecuredBroker {
    fn start() -> SecuredBroker {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir =
            std::env::temp_dir().join(format!("ipam-secured-broker-{}-{}", std::process::id(), nanos % 1_000_000));
        let output = Command::new("bash")
            .arg(script())
            .arg("start")
            .env("IPAM_KAFKA_DIR", &dir)
            .env("IPAM_KAFKA_SASL_SSL", "1")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/kafka-broker.sh");
        let broker = SecuredBroker {
            dir,
            vars: String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        };
        assert!(output.status.success(), "IPAM_KAFKA_SASL_SSL=1 kafka-broker.sh start failed ({})", output.status);
        broker
    }

    fn var(&self, name: &str) -> String {
        self.vars.get(name).unwrap_or_else(|| panic!("kafka-broker.sh printed no {name}: {:?}", self.vars)).clone()
    }

    /// Options for the SASL_SSL listener with the given mechanism, password and CA.
    fn sasl_ssl(&self, mechanism: SaslMechanism, password: &str, ca: &str) -> KafkaOptions {
        let mut options = KafkaOptions::new(self.var("KAFKA_SASL_SSL_BOOTSTRAP"));
        options.security = KafkaSecurity {
            protocol: Some(SecurityProtocol::SaslSsl),
            sasl_mechanism: Some(mechanism),
            sasl_username: Some(self.var("KAFKA_SASL_USERNAME")),
            sasl_password: Some(password.to_owned()),
            ssl_ca_file: Some(self.var(ca).into()),
            ..KafkaSecurity::default()
        };
        options
    }
}

impl Drop for SecuredBroker {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").env("IPAM_KAFKA_DIR", &self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("scripts/kafka-broker.sh")
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("sec{}-{}-{name}", nanos % 1_000_000_000_000, std::process::id())
}

/// `ipam allocator` on the SASL_SSL listener with SCRAM-SHA-512: the password comes in the
/// variable `password` sets (`IPAM_KAFKA_SASL_PASSWORD=...` or `IPAM_KAFKA_SASL_PASSWORD_FILE=...`),
/// everything else as flags.
fn allocator(broker: &SecuredBroker, password: &str, ca: &str, prefix: &str, dir: &Path) -> Service {
    let mut args: Vec<String> = vec![password.to_owned(), ipam_binary().display().to_string()];
    args.extend(
        [
            "--kafka",
            &broker.var("KAFKA_SASL_SSL_BOOTSTRAP"),
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            &broker.var("KAFKA_SASL_USERNAME"),
            "--kafka-ssl-ca-file",
            &broker.var(ca),
            "--topic-prefix",
            prefix,
            "--partitions",
            "2",
            "--instance",
            "secured",
            "--data-dir",
            &dir.display().to_string(),
            "--metrics-bind",
            "127.0.0.1:0",
            "allocator",
        ]
        .map(str::to_owned),
    );
    Service::spawn_program("env", &args)
}

/// Waits until `/health` of the service whose log names its address answers 200.
fn wait_healthy(service: &mut Service) {
    let line = service.wait_for_line("Health and metrics on http://", WITHIN);
    let rest = line.split("http://").nth(1).unwrap();
    let address: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
    let address: SocketAddr = address.parse().unwrap();
    let deadline = Instant::now() + WITHIN;
    loop {
        let (status, body) = http(address, "GET", "/health", "text/plain", b"");
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never healthy; last /health: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connects, writes a record to a new topic and reads it back.
fn round_trip(options: KafkaOptions, what: &str) {
    let log = KafkaLog::connect(options).unwrap_or_else(|e| panic!("{what}: {e}"));
    let topic = unique("round-trip");
    log.create_topics(&[TopicSpec { name: topic.clone(), partitions: 1 }]).unwrap();
    let record = OutRecord { topic: topic.clone(), key: "k".to_owned(), value: what.as_bytes().to_vec() };
    log.append(&[record]).unwrap();
    let read = log.read(&topic, 0, 0, 10, Duration::from_secs(10)).unwrap();
    assert_eq!(read.len(), 1, "{what}");
    assert_eq!(read[0].value, what.as_bytes());
}

#[test]
fn ipam_runs_over_sasl_ssl_and_mtls_and_a_wrong_password_or_an_untrusted_ca_ends_it_at_once() {
    let broker = SecuredBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}.", unique("svc"));

    // The real binary over SASL_SSL with SCRAM-SHA-512 becomes healthy: it created its topics,
    // joined its group and owns its partitions, all through the secured listener.
    let secret = dir.path().join("password");
    std::fs::write(&secret, format!("{}\n", broker.var("KAFKA_SASL_PASSWORD"))).unwrap();
    let from_file = format!("IPAM_KAFKA_SASL_PASSWORD_FILE={}", secret.display());
    let mut service = allocator(&broker, &from_file, "KAFKA_CA_FILE", &prefix, &dir.path().join("ok"));
    wait_healthy(&mut service);
    service.terminate();
    // Its topics, seen through the plain listener, are what the log needs.
    let plain = KafkaLog::connect(KafkaOptions::new(broker.var("KAFKA_BOOTSTRAP"))).unwrap();
    let networks = format!("{prefix}ipam.networks");
    assert_eq!(plain.partition_count(&networks), Ok(2));
    assert_eq!(plain.create_topics(&[TopicSpec { name: networks, partitions: 2 }]), Ok(()));

    // A wrong password: a clear error and a non-zero exit, well before the 30 s metadata wait.
    let wrong_password = "IPAM_KAFKA_SASL_PASSWORD=not-the-password";
    let mut wrong = allocator(&broker, wrong_password, "KAFKA_CA_FILE", &prefix, &dir.path().join("wrong"));
    let started = Instant::now();
    let (status, output) = wrong.wait_exit(WITHIN);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("cannot authenticate with the Kafka brokers") && output.contains("Authentication failed"),
        "{output}"
    );
    assert!(!output.contains("not-the-password"), "the password is never printed:\n{output}");
    println!("wrong password: exit {status} after {:?}", started.elapsed());

    // A broker certificate that the configured CA did not sign: the same, for TLS.
    let mut untrusted = allocator(
        &broker,
        &format!("IPAM_KAFKA_SASL_PASSWORD={}", broker.var("KAFKA_SASL_PASSWORD")),
        "KAFKA_UNTRUSTED_CA_FILE",
        &prefix,
        &dir.path().join("untrusted"),
    );
    let started = Instant::now();
    let (status, output) = untrusted.wait_exit(WITHIN);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("cannot authenticate with the Kafka brokers") && output.contains("certificate verify failed"),
        "{output}"
    );
    println!("untrusted CA: exit {status} after {:?}", started.elapsed());

    // The other mechanisms, through the backend itself.
    let password = broker.var("KAFKA_SASL_PASSWORD");
    round_trip(broker.sasl_ssl(SaslMechanism::ScramSha256, &password, "KAFKA_CA_FILE"), "SCRAM-SHA-256");
    round_trip(broker.sasl_ssl(SaslMechanism::Plain, &password, "KAFKA_CA_FILE"), "PLAIN");
    match KafkaLog::connect(broker.sasl_ssl(SaslMechanism::Plain, "wrong", "KAFKA_CA_FILE")) {
        Err(LogError::Config(message)) => assert!(message.contains("Authentication failed"), "{message}"),
        other => panic!("PLAIN with a wrong password: {other:?}"),
    }

    // Mutual TLS: the SSL listener requires a client certificate signed by the CA.
    let mut mtls = KafkaOptions::new(broker.var("KAFKA_SSL_BOOTSTRAP"));
    mtls.security = KafkaSecurity {
        protocol: Some(SecurityProtocol::Ssl),
        ssl_ca_file: Some(broker.var("KAFKA_CA_FILE").into()),
        ssl_certificate_file: Some(broker.var("KAFKA_CLIENT_CERT_FILE").into()),
        ssl_key_file: Some(broker.var("KAFKA_CLIENT_KEY_FILE").into()),
        ..KafkaSecurity::default()
    };
    round_trip(mtls.clone(), "mTLS");
    mtls.security.ssl_certificate_file = None;
    mtls.security.ssl_key_file = None;
    let started = Instant::now();
    let refused = KafkaLog::connect(mtls);
    assert!(
        matches!(&refused, Err(LogError::Config(m)) if m.contains("cannot authenticate with the Kafka brokers") && m.contains("bad certificate")),
        "{refused:?}"
    );
    println!("mTLS without a client certificate: refused after {:?}", started.elapsed());
}

#[test]
fn an_existing_topic_that_could_lose_records_is_refused_at_start_naming_what_it_has_and_needs() {
    let bootstrap = ipam_tests::kafka_bootstrap();
    let topic = unique("expiring");
    let spec = [TopicSpec { name: topic.clone(), partitions: 1 }];
    // Made by someone with a seven-day retention.
    let mut week = KafkaOptions::new(&bootstrap);
    week.retention_ms = 7 * 24 * 3600 * 1000;
    KafkaLog::connect(week).unwrap().create_topics(&spec).unwrap();

    // The default needs records kept for ever.
    let log = KafkaLog::connect(KafkaOptions::new(&bootstrap)).unwrap();
    match log.create_topics(&spec) {
        Err(LogError::Config(message)) => {
            assert!(message.contains(&format!("topic `{topic}` has retention.ms=604800000, needs -1")), "{message}")
        }
        other => panic!("an expiring topic was accepted: {other:?}"),
    }

    // Three replicas asked for: the single-broker topic has one, and a new topic cannot be made.
    let mut three = KafkaOptions::new(&bootstrap);
    three.replication_factor = 3;
    three.retention_ms = 7 * 24 * 3600 * 1000;
    let three = KafkaLog::connect(three).unwrap();
    match three.create_topics(&spec) {
        Err(LogError::Config(message)) => assert!(
            message.contains(&format!("topic `{topic}` has 1 replicas per partition, needs at least 3")),
            "{message}"
        ),
        other => panic!("an under-replicated topic was accepted: {other:?}"),
    }
    let new = unique("three-replicas");
    match three.create_topics(&[TopicSpec { name: new.clone(), partitions: 1 }]) {
        Err(LogError::Config(message)) => assert!(message.contains(&new), "{message}"),
        other => panic!("three replicas on one broker: {other:?}"),
    }

    // A topic made by the service's own defaults passes its own check.
    let fresh = [TopicSpec { name: unique("fresh"), partitions: 2 }];
    assert_eq!(log.create_topics(&fresh), Ok(()));
    assert_eq!(log.create_topics(&fresh), Ok(()), "checked again when it exists");
}
