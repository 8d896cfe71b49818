//! A harness for end-to-end tests: it starts the real binaries (tansu, broker-bridge,
//! ingest-service, query-service, edge-agent) on free 127.0.0.1 ports in a fresh temporary
//! folder, waits for each by polling with a deadline, and kills them all on `Drop`.
//!
//! Binaries are taken from the cargo target folder this test binary was built into (`make test`
//! builds them first); tansu from `$TANSU_BIN` (set by the Makefile).
//!
//! Security is on, as everywhere: each stack makes its own CA, server certificate and tokens
//! ([`lodestone_admin::Credentials`] in `{dir}/certs`); every service serves HTTPS and checks
//! tokens; [`Stack::http`] trusts the CA and sends the admin token; [`Stack::url`] gives a
//! service's `https://` address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde_json::Value;

pub const INGEST_TOPIC: &str = "lodestone.ingest";
pub const DEAD_LETTER_TOPIC: &str = "lodestone.dead-letter";
/// Partitions of the ingest topic in tests.
pub const INGEST_PARTITIONS: i32 = 4;

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on 127.0.0.1 for a server the test starts (see [`lodestone_kit::ports`]).
pub fn free_port() -> u16 {
    lodestone_kit::ports::unused_port()
}

/// The folder holding the workspace's binaries: the parent of this test binary's `deps/`.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("LODESTONE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

pub fn tansu_bin() -> PathBuf {
    PathBuf::from(std::env::var("TANSU_BIN").unwrap_or_else(|_| "/var/cache/lodestone/tansu-0.6.0/bin/tansu".into()))
}

/// A child process killed (SIGKILL) when dropped. Its output goes to `{dir}/{name}.log`.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, program: &Path, args: &[&str], env: &[(String, String)], dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        // Appends: a restarted process continues its log.
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // tansu logs every request at `info` (hundreds of MB in a load test).
            .env("RUST_LOG", if name == "tansu" { "warn".into() } else { std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()) })
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Process { name: name.into(), child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL, as a crash: no handler runs. Waits for the exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of the process's log, for failure messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.tail());
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ports of one stack.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub kafka: u16,
    pub mqtt: u16,
    pub bridge_http: u16,
    pub ingest_http: u16,
    pub query_http: u16,
    pub agent_http: u16,
}

/// The whole pipeline, started in a fresh temporary folder.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    pub processes: Vec<Process>,
    /// Trusts the stack's CA and sends its admin token.
    pub http: reqwest::Client,
    /// The stack's CA, certificate and tokens.
    pub credentials: lodestone_admin::Credentials,
    /// HTTP ports of the ingest workers started so far; the query service, started after the
    /// first ones, reads their memory.
    pub ingest_ports: Vec<u16>,
    ingest_env: Vec<(String, String)>,
    agent_env: Vec<(String, String)>,
    bridge_env: Vec<(String, String)>,
    query_env: Vec<(String, String)>,
    kafka_tls: Option<KafkaTlsFront>,
    kafka_sasl: bool,
    /// How each process was started, by name, so it can be started again.
    specs: Vec<Spec>,
    kafka_storage: KafkaStorage,
}

/// How to (re)start one process of a stack.
#[derive(Clone)]
struct Spec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Healthy when GET /health answers 2xx on this port; `None`: when the TCP port listens.
    http_port: Option<u16>,
    tcp_port: u16,
}

/// Where tansu keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaStorage {
    /// Lost when tansu stops (fastest; most tests).
    Memory,
    /// A SQLite file in the stack's folder: survives a tansu restart.
    Sqlite,
}

pub struct StackOptions {
    pub edge_agent: bool,
    pub ingest_workers: usize,
    /// The ingest workers' persist interval (their default when `None`).
    pub persist_interval_ms: Option<u64>,
    pub kafka_storage: KafkaStorage,
    /// Extra environment for every ingest worker.
    pub ingest_env: Vec<(String, String)>,
    /// Extra environment for every edge agent.
    pub agent_env: Vec<(String, String)>,
    /// Extra environment for the broker-bridge.
    pub bridge_env: Vec<(String, String)>,
    /// Extra environment for the query service.
    pub query_env: Vec<(String, String)>,
    /// Kafka over TLS: every Kafka client of the stack (bridge, workers, the harness) connects
    /// with `security.protocol = ssl` and checks the broker's certificate. tansu 0.6.0 cannot
    /// serve TLS itself (its `--cert` and `--key` options are declared mutually exclusive, and
    /// with one of them it listens in plain text), so a TLS front in the test process terminates
    /// TLS before tansu, which advertises the front's address.
    pub kafka_tls: bool,
    /// Kafka with SASL/SCRAM-SHA-512: tansu requires authentication (`--authentication`), and
    /// every Kafka client of the stack logs in as a user created before (tansu keeps users in
    /// its storage, so the stack's tansu then uses SQLite).
    pub kafka_sasl: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            edge_agent: true,
            ingest_workers: 1,
            persist_interval_ms: None,
            kafka_storage: KafkaStorage::Memory,
            ingest_env: Vec::new(),
            agent_env: Vec::new(),
            bridge_env: Vec::new(),
            query_env: Vec::new(),
            kafka_tls: false,
            kafka_sasl: false,
        }
    }
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = Ports {
            kafka: free_port(),
            mqtt: free_port(),
            bridge_http: free_port(),
            ingest_http: free_port(),
            query_http: free_port(),
            agent_http: free_port(),
        };
        let mut ingest_env: Vec<_> = options.persist_interval_ms.map(|ms| env("LODESTONE_INGEST__PERSIST__INTERVAL_MS", ms.to_string())).into_iter().collect();
        ingest_env.extend(options.ingest_env);
        let credentials = lodestone_admin::Credentials::create(&dir.path().join("certs")).expect("the stack's credentials");
        let mut stack = Stack {
            dir,
            ports,
            processes: Vec::new(),
            http: client_for(&credentials, &credentials.admin_bearer),
            credentials,
            ingest_ports: Vec::new(),
            ingest_env,
            specs: Vec::new(),
            kafka_storage: if options.kafka_sasl { KafkaStorage::Sqlite } else { options.kafka_storage },
            kafka_sasl: options.kafka_sasl,
            agent_env: options.agent_env,
            bridge_env: options.bridge_env,
            query_env: options.query_env,
            kafka_tls: options.kafka_tls.then(|| KafkaTlsFront { broker_port: free_port(), task: None }),
        };
        stack.start_tansu().await;
        stack.start_bridge().await;
        for worker in 0..options.ingest_workers {
            stack.start_ingest(worker).await;
        }
        stack.start_query().await;
        if options.edge_agent {
            stack.start_agent("edge-1").await;
        }
        stack
    }

    /// A service's base URL: `https://127.0.0.1:{port}`.
    pub fn url(&self, port: u16) -> String {
        format!("https://127.0.0.1:{port}")
    }

    /// An HTTP client trusting the stack's CA and sending `bearer` (`ID.SECRET`) with every
    /// request.
    pub fn client_with_token(&self, bearer: &str) -> reqwest::Client {
        client_for(&self.credentials, bearer)
    }

    /// The environment that gives `lodestone-sim` the stack's CA, admin token and device CA
    /// (each simulated device gets a certificate of its own).
    pub fn sim_env(&self) -> Vec<(String, String)> {
        vec![
            ("LODESTONE_CA".to_string(), self.credentials.ca_path.display().to_string()),
            ("LODESTONE_TOKEN_FILE".to_string(), self.credentials.admin_token_path.display().to_string()),
            ("LODESTONE_DEVICE_CA_DIR".to_string(), self.credentials.dir.display().to_string()),
        ]
    }

    /// MQTT over TLS as `device_id`, with a certificate of its own from the stack's CA: what
    /// every device connects with.
    pub fn device_transport(&self, device_id: &str) -> rumqttc::Transport {
        let (cert, key) = self.device_certificate(device_id);
        let (cert, key) = (std::fs::read(cert).expect("device certificate"), std::fs::read(key).expect("device key"));
        let tls = lodestone_kit::tls::client_config_with_identity(&self.credentials.ca_path, &cert, &key).expect("a device TLS configuration");
        rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)))
    }

    /// A device certificate for `device_id` from the stack's CA: (certificate, key) paths.
    pub fn device_certificate(&self, device_id: &str) -> (PathBuf, PathBuf) {
        let issued = self.credentials.issue_device(device_id).expect("a device certificate");
        (issued.cert_path, issued.key_path)
    }

    /// [`sim`] with the stack's CA and admin token.
    pub fn sim(&self, args: &[&str]) -> tokio::task::JoinHandle<Value> {
        sim_with_env(args, &self.sim_env())
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.ports.kafka)
    }

    fn store_path(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }

    /// The librdkafka properties every Kafka client of this stack needs (TLS when `kafka_tls`).
    pub fn kafka_properties(&self) -> Vec<(String, String)> {
        let protocol = match (self.kafka_tls.is_some(), self.kafka_sasl) {
            (false, false) => return Vec::new(),
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        let mut properties = vec![("security.protocol".to_string(), protocol.to_string())];
        if self.kafka_tls.is_some() {
            properties.push(("ssl.ca.location".into(), self.credentials.ca_path.display().to_string()));
        }
        if self.kafka_sasl {
            properties.push(("sasl.mechanism".into(), "SCRAM-SHA-512".into()));
            properties.push(("sasl.username".into(), KAFKA_USER.into()));
            properties.push(("sasl.password".into(), KAFKA_PASSWORD.into()));
        }
        properties
    }

    /// `kafka_properties` as `LODESTONE_{SERVICE}__KAFKA__PROPERTIES__…` variables.
    fn kafka_env(&self, service: &str) -> Vec<(String, String)> {
        self.kafka_properties().into_iter().map(|(key, value)| (format!("LODESTONE_{service}__KAFKA__PROPERTIES__{}", key.to_ascii_uppercase()), value)).collect()
    }

    async fn start_tansu(&mut self) {
        let advertised = format!("tcp://127.0.0.1:{}", self.ports.kafka);
        // Behind the TLS front, tansu listens on a port of its own and advertises the front's.
        let broker_port = match &mut self.kafka_tls {
            None => self.ports.kafka,
            Some(front) => {
                if front.task.is_none() {
                    front.task = Some(start_kafka_tls_front(self.ports.kafka, front.broker_port, &self.credentials).await);
                }
                front.broker_port
            }
        };
        let url = format!("tcp://127.0.0.1:{broker_port}");
        let storage = match self.kafka_storage {
            KafkaStorage::Memory => "memory://tansu/".to_string(),
            // Relative to the process's folder (the stack's): tansu resolves the path that way.
            KafkaStorage::Sqlite => "sqlite://tansu.db".to_string(),
        };
        let args = ["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", &storage];
        let spec = |extra: &[&str]| Spec {
            name: "tansu".into(),
            program: tansu_bin(),
            args: args.iter().chain(extra).map(|a| a.to_string()).collect(),
            env: Vec::new(),
            http_port: None,
            tcp_port: broker_port,
        };
        if !self.kafka_sasl {
            self.launch(spec(&[])).await;
            create_topics_with(&self.bootstrap(), &self.kafka_properties(), &[(INGEST_TOPIC, INGEST_PARTITIONS), (DEAD_LETTER_TOPIC, 1)]).await;
            return;
        }
        // With --authentication tansu refuses every request before a login, creating users
        // included: the user is made with authentication off, then tansu starts again with it on.
        self.launch(spec(&[])).await;
        let created = Command::new(tansu_bin())
            .args(["user", "create", "--broker", &url, "--mechanism", "scram512", KAFKA_USER, KAFKA_PASSWORD])
            .status()
            .expect("tansu user create runs");
        assert!(created.success(), "tansu user create failed");
        self.process("tansu").terminate(Duration::from_secs(10)).expect("tansu stops");
        self.launch(spec(&["--authentication"])).await;
        create_topics_with(&self.bootstrap(), &self.kafka_properties(), &[(INGEST_TOPIC, INGEST_PARTITIONS), (DEAD_LETTER_TOPIC, 1)]).await;
    }

    async fn start_bridge(&mut self) {
        let env = vec![
            env("LODESTONE_BRIDGE__MQTT__LISTEN", format!("127.0.0.1:{}", self.ports.mqtt)),
            env("LODESTONE_BRIDGE__MQTT__DEVICE_CA_PATH", self.credentials.ca_path.display().to_string()),
            // Tests write into many databases: every device may write everywhere.
            env("LODESTONE_BRIDGE__MQTT__POLICIES", r#"[{devices = ["*"], write = ["*/*"]}]"#.to_string()),
            env("LODESTONE_BRIDGE__MQTT__CRL_PATH", self.credentials.crl_path.display().to_string()),
            env("LODESTONE_BRIDGE__HTTP__LISTEN", format!("127.0.0.1:{}", self.ports.bridge_http)),
            env("LODESTONE_BRIDGE__KAFKA__BOOTSTRAP_SERVERS", self.bootstrap()),
        ];
        let env = env.into_iter().chain(self.kafka_env("BRIDGE")).chain(self.bridge_env.iter().cloned()).collect();
        self.spawn_service("broker-bridge", "broker-bridge", env, self.ports.bridge_http).await;
    }

    /// Starts ingest worker number `worker` in the default consumer group; returns its HTTP port.
    pub async fn start_ingest(&mut self, worker: usize) -> u16 {
        self.start_ingest_in_group(&format!("ingest-{worker}"), "lodestone-ingest", worker == 0).await
    }

    /// Starts an ingest worker named `name` in consumer group `group`; returns its HTTP port.
    pub async fn start_ingest_in_group(&mut self, name: &str, group: &str, default_port: bool) -> u16 {
        let port = if default_port { self.ports.ingest_http } else { free_port() };
        let mut env = vec![
            env("LODESTONE_INGEST__KAFKA__BOOTSTRAP_SERVERS", self.bootstrap()),
            env("LODESTONE_INGEST__KAFKA__GROUP_ID", group.to_string()),
            env("LODESTONE_INGEST__STORE__PATH", self.store_path()),
            env("LODESTONE_INGEST__HTTP__LISTEN", format!("127.0.0.1:{port}")),
            env("LODESTONE_INGEST__KAFKA__INSTANCE_ID", name.to_string()),
        ];
        env.extend(self.kafka_env("INGEST"));
        env.extend(self.ingest_env.iter().cloned());
        self.spawn_service(name, "ingest-service", env, port).await;
        self.ingest_ports.push(port);
        port
    }

    /// A counter from a service's Prometheus `/metrics` (summed over its labels).
    pub async fn metric(&self, port: u16, name: &str) -> Option<f64> {
        let text = self.http.get(format!("{}/metrics", self.url(port))).send().await.ok()?.text().await.ok()?;
        let values = text.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        Some(values.sum())
    }

    async fn start_query(&mut self) {
        self.start_query_service("query-service", self.ports.query_http).await;
    }

    /// Starts a query service named `name` on `port` (another besides the stack's own, say),
    /// reading the stack's store and workers, its console showing the stack's bridge and first
    /// edge agent.
    pub async fn start_query_service(&mut self, name: &str, port: u16) {
        let mut env = vec![
            env("LODESTONE_QUERY__STORE__PATH", self.store_path()),
            env("LODESTONE_QUERY__HTTP__LISTEN", format!("127.0.0.1:{port}")),
            env("LODESTONE_QUERY__CONSOLE__BRIDGES", format!("[{:?}]", self.url(self.ports.bridge_http))),
            env("LODESTONE_QUERY__CONSOLE__AGENTS", format!("[{:?}]", self.url(self.ports.agent_http))),
            env("LODESTONE_QUERY__MEMORY__WORKERS", format!("{:?}", self.ingest_ports.iter().map(|p| self.url(*p)).collect::<Vec<_>>())),
            env("LODESTONE_QUERY__MEMORY__TOKEN_PATH", self.credentials.service_token_path.display().to_string()),
            // Timestream's WriteRecords produces to the ingest topic.
            env("LODESTONE_QUERY__KAFKA__BOOTSTRAP_SERVERS", self.bootstrap()),
        ];
        env.extend(self.kafka_env("QUERY"));
        env.extend(self.query_env.iter().cloned());
        self.spawn_service(name, "query-service", env, port).await;
    }

    pub async fn start_agent(&mut self, device_id: &str) {
        self.start_agent_via(device_id, self.ports.mqtt, &[]).await;
    }

    /// Starts an edge agent named `agent-{device_id}` that reaches the broker at `mqtt_port` (a
    /// [`Relay`]'s, say), with `extra_env` over the stack's agent settings. The first agent
    /// listens on `ports.agent_http`, later ones on free ports; returns the agent's HTTP port.
    pub async fn start_agent_via(&mut self, device_id: &str, mqtt_port: u16, extra_env: &[(String, String)]) -> u16 {
        let first = !self.processes.iter().any(|p| p.name.starts_with("agent-"));
        let http_port = if first { self.ports.agent_http } else { free_port() };
        let (cert, key) = self.device_certificate(device_id);
        let env = vec![
            env("LODESTONE_AGENT__MQTT__CA_PATH", self.credentials.ca_path.display().to_string()),
            env("LODESTONE_AGENT__MQTT__CERT_PATH", cert.display().to_string()),
            env("LODESTONE_AGENT__MQTT__KEY_PATH", key.display().to_string()),
            env("LODESTONE_AGENT__DEVICE_ID", device_id.to_string()),
            env("LODESTONE_AGENT__HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
            env("LODESTONE_AGENT__MQTT__HOST", "127.0.0.1".to_string()),
            env("LODESTONE_AGENT__MQTT__PORT", mqtt_port.to_string()),
            env("LODESTONE_AGENT__OUTBOX__PATH", self.dir.path().join(format!("outbox-{device_id}")).display().to_string()),
        ];
        let env = env.into_iter().chain(self.agent_env.iter().cloned()).chain(extra_env.iter().cloned()).collect();
        self.spawn_service(&format!("agent-{device_id}"), "edge-agent", env, http_port).await;
        http_port
    }

    async fn spawn_service(&mut self, name: &str, binary: &str, mut env: Vec<(String, String)>, http_port: u16) {
        let prefix = match binary {
            "broker-bridge" => "LODESTONE_BRIDGE",
            "ingest-service" => "LODESTONE_INGEST",
            "query-service" => "LODESTONE_QUERY",
            "edge-agent" => "LODESTONE_AGENT",
            other => panic!("no config prefix known for {other}"),
        };
        // The test's own settings come last and win.
        let mut secured = self.credentials.env(prefix);
        secured.append(&mut env);
        let env = secured;
        let spec = Spec { name: name.into(), program: bin_dir().join(binary), args: Vec::new(), env, http_port: Some(http_port), tcp_port: http_port };
        self.launch(spec).await;
    }

    /// Starts `spec`'s process and waits until it is ready; remembers it for [`Stack::restart`].
    async fn launch(&mut self, spec: Spec) {
        let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        let process = Process::spawn(&spec.name, &spec.program, &args, &spec.env, self.dir.path());
        self.processes.retain(|p| p.name != spec.name);
        self.processes.push(process);
        let (name, http_port, tcp_port) = (spec.name.clone(), spec.http_port, spec.tcp_port);
        self.specs.retain(|s| s.name != spec.name);
        self.specs.push(spec);
        match http_port {
            Some(port) => self.wait_healthy(&name, port).await,
            None => self.wait_tcp(&name, tcp_port).await,
        }
    }

    /// Kills process `name` with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill9(&mut self, name: &str) {
        self.process(name).kill9();
    }

    /// Starts process `name` again, as it was first started (same ports, folders and settings),
    /// and waits until it is ready.
    pub async fn restart(&mut self, name: &str) {
        let spec = self.specs.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no process {name}")).clone();
        self.launch(spec).await;
    }

    async fn wait_healthy(&mut self, name: &str, http_port: u16) {
        let url = format!("{}/health", self.url(http_port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.http.get(&url).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            self.processes.last_mut().expect("just pushed").assert_running();
            assert!(Instant::now() < deadline, "{name} not healthy within 60 s:\n{}", self.processes.last().unwrap().tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_tcp(&mut self, name: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            self.processes.last_mut().expect("just pushed").assert_running();
            assert!(Instant::now() < deadline, "{name} not listening within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every ingest worker started so far answers `GET /ready` (the consumer group
    /// assigned it partitions).
    pub async fn wait_ingest_ready(&self, timeout: Duration) {
        for port in &self.ingest_ports {
            let url = format!("{}/ready", self.url(*port));
            poll_until(&format!("ingest worker on port {port} ready"), timeout, || async {
                self.http.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
            })
            .await;
        }
    }

    pub fn process(&mut self, name: &str) -> &mut Process {
        self.processes.iter_mut().find(|p| p.name == name).unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Publishes `payload` on `topic` at QoS 1 with Debian's `mosquitto_pub`, as the device the
    /// topic ends with (its certificate from the stack's CA); the exit status of the client, which
    /// is an error when the bridge closed the connection.
    pub async fn mosquitto_pub(&self, topic: &str, payload: &[u8]) -> std::process::ExitStatus {
        let device = topic.rsplit('/').next().expect("a data topic ends with the device id");
        self.mosquitto_pub_as(device, topic, payload, &[]).await
    }

    /// [`Stack::mosquitto_pub`] as client `device` with `extra` arguments (e.g. `-r`, `-V mqttv5`).
    pub async fn mosquitto_pub_as(&self, device: &str, topic: &str, payload: &[u8], extra: &[&str]) -> std::process::ExitStatus {
        let (cert, key) = self.device_certificate(device);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), payload).unwrap();
        // Awaited, not blocking: a test's other tasks (health probes, clients) keep running.
        tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.ports.mqtt.to_string(), "-q", "1", "-i", device, "-t", topic, "-f"])
            .arg(file.path())
            .arg("--cafile")
            .arg(&self.credentials.ca_path)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(extra)
            .status()
            .await
            .expect("mosquitto_pub (Debian package mosquitto-clients) is installed")
    }

    /// Runs SQL through the query service; panics on an HTTP error with its body.
    pub async fn query(&self, sql: &str) -> Value {
        let url = format!("{}/v1/query", self.url(self.ports.query_http));
        let response = self.http.post(&url).json(&serde_json::json!({ "sql": sql })).send().await.expect("query request");
        let status = response.status();
        let body: Value = response.json().await.expect("query answer is JSON");
        assert!(status.is_success(), "query {sql:?} failed with {status}: {body}");
        body
    }

    /// Runs SQL and returns the rows, or `None` while the table does not exist yet.
    pub async fn try_rows(&self, sql: &str) -> Option<Vec<Vec<Value>>> {
        let url = format!("{}/v1/query", self.url(self.ports.query_http));
        let response = self.http.post(&url).json(&serde_json::json!({ "sql": sql })).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        serde_json::from_value(body["rows"].clone()).ok()
    }

    /// Polls `SELECT count(*)` until it equals `expected` (or the deadline passes).
    pub async fn wait_for_count(&self, from: &str, expected: i64, timeout: Duration) {
        let sql = format!("SELECT count(*) FROM {from}");
        let mut last = None;
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.try_rows(&sql).await.and_then(|rows| rows.first()?.first()?.as_i64());
            if count == Some(expected) {
                return;
            }
            if count != last {
                eprintln!("{from}: {count:?} of {expected} rows");
                last = count;
            }
            assert!(Instant::now() < deadline, "{from} has {count:?} rows, expected {expected}, after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn env(key: &str, value: String) -> (String, String) {
    (key.to_string(), value)
}

/// The Kafka user of a stack with [`StackOptions::kafka_sasl`].
const KAFKA_USER: &str = "lodestone";
const KAFKA_PASSWORD: &str = "kafka-test-password";

/// The TLS front of a stack's Kafka broker (see [`StackOptions::kafka_tls`]).
struct KafkaTlsFront {
    /// Where tansu itself listens, in plain text.
    broker_port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for KafkaTlsFront {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Terminates TLS (the stack's server certificate) on `port` and relays each connection to the
/// broker on `broker_port` in plain text.
async fn start_kafka_tls_front(port: u16, broker_port: u16, credentials: &lodestone_admin::Credentials) -> tokio::task::JoinHandle<()> {
    let config = lodestone_kit::tls::server_config(&credentials.cert_path, &credentials.key_path).expect("the stack's server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the Kafka TLS front's port");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(client)).await else { return };
                let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            });
        }
    })
}

fn client_for(credentials: &lodestone_admin::Credentials, bearer: &str) -> reqwest::Client {
    lodestone_kit::http::client_with_token(Some(credentials.client_tls()), bearer).build().expect("an HTTP client")
}

/// Creates topics (tansu does not create them on first use).
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    create_topics_with(bootstrap, &[], topics).await
}

/// [`create_topics`] with a client of these librdkafka `properties` (e.g. TLS).
pub async fn create_topics_with(bootstrap: &str, properties: &[(String, String)], topics: &[(&str, i32)]) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in properties {
        config.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let new: Vec<NewTopic> = topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    let results = admin.create_topics(new.iter(), &AdminOptions::new()).await.expect("create topics");
    for result in results {
        if let Err((topic, code)) = result {
            assert_eq!(code, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists, "creating {topic}");
        }
    }
}

/// What a load generator says it sent (and had acknowledged), per device: the number of readings
/// and their exact sum. Built from `lodestone-sim`'s JSON summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    pub devices: std::collections::BTreeMap<String, (i64, f64)>,
}

impl Ledger {
    pub fn from_summary(summary: &Value) -> Ledger {
        let devices = summary["devices"]
            .as_object()
            .expect("a simulator summary has `devices`")
            .iter()
            .map(|(device, totals)| (device.clone(), (totals["count"].as_i64().unwrap(), totals["sum"].as_f64().unwrap())))
            .collect();
        Ledger { devices }
    }

    pub fn total(&self) -> i64 {
        self.devices.values().map(|(count, _)| count).sum()
    }
}

/// The store checked against a [`Ledger`] with SQL.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// Readings in the ledger that no row holds.
    pub lost: i64,
    /// Rows beyond one per reading (the same device and time twice).
    pub duplicated: i64,
    /// Devices whose stored values do not add up to what was sent (a reading stored with the
    /// wrong value), or that were never sent.
    pub wrong_devices: Vec<String>,
}

impl Stack {
    /// Compares `table` (dimension `id_dimension`, one double per reading) with `ledger`.
    pub async fn audit(&self, table: &str, id_dimension: &str, ledger: &Ledger) -> Audit {
        let sql = format!(
            "SELECT {id_dimension}, count(*), count(DISTINCT time), sum(measure_value::double) FROM {table} GROUP BY {id_dimension}"
        );
        let answer = self.query(&sql).await;
        let mut audit = Audit { lost: 0, duplicated: 0, wrong_devices: Vec::new() };
        let mut seen = std::collections::BTreeSet::new();
        for row in answer["rows"].as_array().expect("rows") {
            let device = row[0].as_str().expect("device id").to_string();
            let (rows, distinct, sum) = (row[1].as_i64().unwrap(), row[2].as_i64().unwrap(), row[3].as_f64().unwrap_or(0.0));
            audit.duplicated += rows - distinct;
            match ledger.devices.get(&device) {
                Some((count, sent_sum)) => {
                    audit.lost += (count - distinct).max(0);
                    if (sum - sent_sum).abs() > 1e-6 * sent_sum.abs().max(1.0) {
                        audit.wrong_devices.push(device.clone());
                    }
                }
                None => audit.wrong_devices.push(device.clone()),
            }
            seen.insert(device);
        }
        audit.lost += ledger.devices.iter().filter(|(d, _)| !seen.contains(*d)).map(|(_, (count, _))| count).sum::<i64>();
        audit
    }

    /// Polls `count(*)` of `table` until it reaches `expected` or stops growing for `stall`;
    /// returns the last count. For fault tests, which must report a loss rather than time out.
    pub async fn settle_count(&self, table: &str, expected: i64, stall: Duration) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        let mut last = (-1, Instant::now());
        loop {
            let count = self.try_rows(&sql).await.and_then(|rows| rows.first()?.first()?.as_i64()).unwrap_or(0);
            if count >= expected {
                return count;
            }
            if count != last.0 {
                eprintln!("{table}: {count} of {expected} rows");
                last = (count, Instant::now());
            } else if last.1.elapsed() > stall {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Prints a fault test's figures and asserts the audit is clean.
pub fn report(test: &str, audit: &Audit) {
    println!("figure {test}_lost {} readings", audit.lost);
    println!("figure {test}_duplicated {} readings", audit.duplicated);
    assert_eq!((audit.lost, audit.duplicated), (0, 0), "{test}: {audit:?}");
    assert!(audit.wrong_devices.is_empty(), "{test}: devices with wrong values {:?}", audit.wrong_devices);
}

/// Runs `lodestone-sim` with `args` and environment `env` in the background (the caller injects
/// faults meanwhile); the task ends with the run's JSON summary, and panics if the run failed.
/// [`Stack::sim`] adds the stack's CA and token.
pub fn sim_with_env(args: &[&str], env: &[(String, String)]) -> tokio::task::JoinHandle<Value> {
    let child = tokio::process::Command::new(bin_dir().join("lodestone-sim"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("lodestone-sim starts");
    tokio::spawn(async move {
        let output = child.wait_with_output().await.expect("lodestone-sim runs");
        assert!(output.status.success(), "simulator failed ({}): {}", output.status, String::from_utf8_lossy(&output.stdout));
        serde_json::from_slice(output.stdout.trim_ascii()).expect("one JSON summary line")
    })
}

impl Drop for Stack {
    /// When a test fails, its processes' logs are copied to `$TMPDIR/lodestone-failed-<pid>-<n>/`
    /// (the stack's own folder is deleted), and the path is printed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        static FAILED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let keep = std::env::temp_dir().join(format!("lodestone-failed-{}-{n}", std::process::id()));
        if std::fs::create_dir_all(&keep).is_err() {
            return;
        }
        for process in &self.processes {
            let _ = std::fs::copy(&process.log, keep.join(process.log.file_name().unwrap_or_default()));
        }
        eprintln!("logs of the failed stack: {}", keep.display());
    }
}

/// A TCP relay on 127.0.0.1 that a test can cut, to take a client off the network while both
/// ends keep running (a fault the real components cannot produce on demand). While cut, it
/// closes every relayed connection and refuses new ones (accepts and closes at once).
pub struct Relay {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bumped by every cut: connections of an older generation close.
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream_port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("relay listener");
        let port = listener.local_addr().expect("relay address").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (generation, watch) = tokio::sync::watch::channel(0u64);
        let is_cut = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // The generation is read before the flag: a cut landing between the two still
                // bumps the generation past `born`, so the connection closes.
                let mut watch = watch.clone();
                let born = *watch.borrow_and_update();
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = async { while watch.changed().await.is_ok() && *watch.borrow() == born {} } => {}
                    }
                });
            }
        });
        Relay { port, cut, generation, task }
    }

    /// Closes every relayed connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
