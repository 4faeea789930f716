//! The first contact with the cluster, made so that a refusal is an error and not a hang.
//!
//! librdkafka treats every connection failure as passing: a wrong SASL password or a broker
//! certificate that the configured CA does not sign is reported to the error callback and then
//! retried for ever, while a metadata request just times out with a generic "transport failure".
//! A service started with a wrong password would sit there, alive and useless. So before the
//! backend builds its clients, [`reach`] asks for the cluster's metadata through a probe client
//! whose context records the errors librdkafka reports, and stops at the first authentication or
//! TLS error with librdkafka's own explanation of it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipam_log::LogError;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use crate::errors::client_creation;
use crate::options::KafkaOptions;
use crate::topics::REQUEST_TIMEOUT;

/// One metadata attempt: short, so that errors recorded meanwhile are looked at often.
const ATTEMPT: Duration = Duration::from_millis(500);

/// Records what librdkafka reports while the probe tries to reach the brokers.
#[derive(Default)]
struct Watch {
    /// The first authentication or TLS failure, with librdkafka's reason.
    refused: Mutex<Option<String>>,
    /// The latest error of any other kind, to explain a timeout.
    last: Mutex<Option<String>>,
}

/// The errors that retrying does not cure: the credentials or the certificates are wrong. A
/// broker that refuses the client's certificate (or wants one) closes the connection with a TLS
/// alert, which librdkafka reports as a transport failure whose reason is OpenSSL's ("SSL
/// routines::sslv3 alert bad certificate"). Other OpenSSL errors on a transport failure (an
/// unexpected end of file while a broker restarts) may pass, so only alerts count.
fn is_refusal(code: RDKafkaErrorCode, reason: &str) -> bool {
    match code {
        RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SSL
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::UnsupportedSASLMechanism
        | RDKafkaErrorCode::IllegalSASLState
        | RDKafkaErrorCode::ClusterAuthorizationFailed => true,
        RDKafkaErrorCode::BrokerTransportFailure => reason.contains("SSL routines") && reason.contains(" alert "),
        _ => false,
    }
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        // "All brokers are down" only sums up the errors before it, which say why.
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            return;
        }
        let refused = code.is_some_and(|code| is_refusal(code, reason));
        let slot = if refused { &self.refused } else { &self.last };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if !refused || slot.is_none() {
            *slot = Some(format!("{error}: {reason}"));
        }
    }
}

/// The probe sends nothing, so it has no deliveries to hear about.
impl ProducerContext for Watch {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Waits until the brokers answer a metadata request, for up to [`REQUEST_TIMEOUT`]. An
/// authentication or TLS failure ends the wait at once as a [`LogError::Config`]; silence is a
/// [`LogError::Storage`] naming the last error librdkafka reported.
pub(crate) fn reach(options: &KafkaOptions) -> Result<(), LogError> {
    let probe: BaseProducer<Watch> =
        options.base_config().create_with_context(Watch::default()).map_err(|e| client_creation("probe client", &e))?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let answer = probe.client().fetch_metadata(None, ATTEMPT);
        // Serves the error events queued meanwhile to `Watch::error`.
        probe.poll(Duration::ZERO);
        if let Some(refusal) = probe.context().refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(LogError::Config(format!(
                "cannot authenticate with the Kafka brokers at `{}` ({refusal}); check the security settings \
                 (security protocol, SASL mechanism, user name and password, CA and client certificates)",
                options.bootstrap_servers
            )));
        }
        let error = match answer {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if Instant::now() >= deadline {
            let last = probe.context().last.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(LogError::Storage(format!(
                "no answer from the Kafka brokers at `{}` within {REQUEST_TIMEOUT:?}: {error}{}",
                options.bootstrap_servers,
                last.map(|last| format!(" (last error: {last})")).unwrap_or_default()
            )));
        }
    }
}
