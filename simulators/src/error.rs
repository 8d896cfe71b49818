//! The one error type of the simulators library.
//!
//! A run that merely ends with unacknowledged readings is not an error: it returns a
//! [`Summary`](crate::Summary) whose `unacked` is above zero, and `main` turns that into exit code 1.

/// Why a simulation could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A command-line value is out of range or unusable (named by its flag).
    #[error("--{flag}: {detail}")]
    InvalidArgument { flag: &'static str, detail: String },

    /// The MQTT client's request channel is gone (its event loop stopped).
    #[error("device {device_id}: MQTT client: {source}")]
    Mqtt {
        device_id: String,
        #[source]
        source: rumqttc::ClientError,
    },

    /// The task polling a device's MQTT event loop stopped while the device still needed it.
    #[error("device {device_id}: the MQTT event loop task stopped")]
    LinkStopped { device_id: String },

    /// An envelope does not fit in one MQTT packet.
    #[error(
        "device {device_id}: envelope from seq {first_seq} is {bytes} bytes, over the \
         {bytes_max}-byte MQTT packet bound; lower --batch"
    )]
    PayloadTooLarge { device_id: String, first_seq: u64, bytes: usize, bytes_max: usize },

    /// The Kafka producer could not be created (bad bootstrap list or configuration).
    #[error("creating a Kafka producer for {bootstrap}: {source}")]
    KafkaProducer {
        bootstrap: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// librdkafka refused to queue an envelope for a reason other than a full queue.
    #[error("device {device_id}: Kafka refused the envelope from seq {first_seq}: {source}")]
    KafkaEnqueue {
        device_id: String,
        first_seq: u64,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// The CA or token file for HTTPS and tokens cannot be used.
    #[error("HTTP access: {detail}")]
    Access { detail: String },

    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),

    /// The edge agent answered a write with a status that retrying will not fix.
    #[error("edge agent refused a write for sensor {sensor_id} from seq {first_seq} (HTTP {status}): {body}")]
    AgentRejected { sensor_id: String, first_seq: u64, status: u16, body: String },

    /// The process may not open one socket per simulated device.
    #[error(
        "{devices} devices need about {wanted} open files but the hard limit is {hard}; \
         raise it (ulimit -Hn) or run fewer devices"
    )]
    OpenFilesLimit { devices: u32, wanted: u64, hard: u64 },

    /// A device or sensor task panicked.
    #[error("a simulated device task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
