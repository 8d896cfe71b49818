//! Device identity on MQTT, on the real stack: devices connect over TLS with a certificate of
//! their own, and may publish only to their own data topics and subscribe only to their own ack
//! topic; foreign, expired, revoked and missing certificates are refused; stalled handshakes
//! hold up no one.

use std::sync::Arc;
use std::time::Duration;

use lodestone_model::topic::{ack_topic, data_topic};
use lodestone_model::{Dimension, Envelope, MeasureValue, Record, Scalar, Source};
use lodestone_tests::{poll_until, Relay, Stack, StackOptions};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::json;

const LANDING: Duration = Duration::from_secs(60);

/// How one MQTT attempt ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The bridge acked the envelope end to end.
    Acked,
    /// The connection was refused or closed (CONNACK refused, TLS failed, or a packet refused).
    Refused(String),
}

fn envelope(sender: &str, value: f64) -> Vec<u8> {
    let record = Record {
        dimensions: vec![Dimension { name: "sender".into(), value: sender.into() }],
        measure_name: "value".into(),
        value: MeasureValue::Single(Scalar::Double(value)),
        time_ns: lodestone_kit::now_ns(),
        version: 1,
    };
    let envelope = Envelope {
        source: Source { device_id: sender.into(), boot_id: "boot".into() },
        first_seq: 1,
        records: vec![record],
        ..Envelope::default()
    };
    envelope.to_cbor()
}

/// Options for `client_id` on the stack's MQTT port over TLS, presenting `identity` (PEM
/// certificate and key) when given, trusting `ca`.
fn options(stack: &Stack, client_id: &str, identity: Option<(String, String)>, ca: &std::path::Path) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", stack.ports.mqtt);
    options.set_keep_alive(Duration::from_secs(30));
    let tls = match identity {
        Some((cert, key)) => lodestone_kit::tls::client_config_with_identity(ca, cert.as_bytes(), key.as_bytes()).unwrap(),
        None => lodestone_kit::tls::client_config(ca).unwrap(),
    };
    options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
    options
}

/// A certificate of the stack's CA for `device`, as PEM text (the tests also use other CAs' and
/// expired ones, so they build their TLS here rather than with `Stack::device_transport`).
fn identity(stack: &Stack, device: &str) -> (String, String) {
    let (cert, key) = stack.device_certificate(device);
    (std::fs::read_to_string(cert).unwrap(), std::fs::read_to_string(key).unwrap())
}

/// Connects, subscribes to `subscribe`, publishes `payload` (retained if asked) on `topic`, and
/// waits for the ack on `ack_topic(client_id)` or for the connection to end (20 s at most).
async fn attempt(options: MqttOptions, subscribe: &str, topic: &str, payload: Vec<u8>, retain: bool) -> Outcome {
    let own_acks = ack_topic(options.client_id().as_str());
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let subscribe = subscribe.to_string();
    let topic = topic.to_string();
    let run = async move {
        let mut published = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(&subscribe, QoS::AtLeastOnce).await.unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) if !published => {
                    published = true;
                    client.publish(&topic, QoS::AtLeastOnce, retain, payload.clone()).await.unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == own_acks => return Outcome::Acked,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Outcome::Refused(format!("CONNACK {code:?}")),
                Err(error) => return Outcome::Refused(error.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), run).await.unwrap_or_else(|_| Outcome::Refused("no answer within 20 s".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_devices_each_publish_only_to_their_own_topic() {
    let stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    let devices: Vec<String> = (0..20).map(|i| format!("matrix-{i:02}")).collect();
    let identities: Vec<(String, String)> = devices.iter().map(|d| identity(&stack, d)).collect();
    let (mut accepted, mut refused) = (0, 0);
    for (sender, identity) in devices.iter().zip(&identities) {
        for owner in &devices {
            let options = options(&stack, sender, Some(identity.clone()), &stack.credentials.ca_path);
            let outcome = attempt(options, &ack_topic(sender), &data_topic("security", "matrix", owner), envelope(sender, 1.0), false).await;
            match (sender == owner, outcome) {
                (true, Outcome::Acked) => accepted += 1,
                (false, Outcome::Refused(_)) => refused += 1,
                (own, outcome) => panic!("{sender} publishing on {owner}'s topic (own: {own}): {outcome:?}"),
            }
        }
    }
    assert_eq!((accepted, refused), (20, 380));
    stack.wait_for_count("security.matrix", 20, LANDING).await;
    let rows = stack.query("SELECT sender, count(*) FROM security.matrix GROUP BY sender ORDER BY sender").await;
    let expected: Vec<_> = devices.iter().map(|d| json!([d, 1])).collect();
    assert_eq!(rows["rows"], json!(expected), "only each device's own reading is stored");
    assert_eq!(stack.metric(stack.ports.bridge_http, "lodestone_bridge_mqtt_denied_total").await, Some(380.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_stolen_ids_wide_subscriptions_and_forged_acks_are_refused_and_nothing_is_lost() {
    let mut stack = Stack::start(StackOptions { edge_agent: false, ..Default::default() }).await;
    // The victim: an edge agent cut off from the broker, holding readings it has not forwarded.
    let relay = Relay::start(stack.ports.mqtt).await;
    let victim_port = stack.start_agent_via("victim", relay.port, &[]).await;
    let status_url = format!("{}/v1/status", stack.url(victim_port));
    poll_until("the victim to connect", LANDING, || async {
        let status: serde_json::Value = stack.http.get(&status_url).send().await.ok()?.json().await.ok()?;
        (status["connected"] == true).then_some(())
    })
    .await;
    relay.cut();
    poll_until("the victim to notice the cut", LANDING, || async {
        let status: serde_json::Value = stack.http.get(&status_url).send().await.ok()?.json().await.ok()?;
        (status["connected"] == false).then_some(())
    })
    .await;
    let write_url = format!("{}/v1/write?database=security&table=victim", stack.url(victim_port));
    let lines: String = (0..50).map(|i| format!("reading,sensor=s{i} v={i}\n")).collect();
    let written = stack.http.post(&write_url).header("content-type", "text/plain").body(lines).send().await.unwrap();
    assert_eq!(written.status(), 200);
    let status: serde_json::Value = stack.http.get(&status_url).send().await.unwrap().json().await.unwrap();
    let boot_id = status["boot_id"].as_str().unwrap().to_string();
    let forged_ack = serde_json::to_vec(&json!({"boot_id": boot_id, "through_seq": 1_000_000})).unwrap();

    let ca = stack.credentials.ca_path.clone();
    let attacker = identity(&stack, "attacker");
    let own_topic = data_topic("security", "attacks", "attacker");
    let payload = || envelope("attacker", 1.0);
    // Another CA's certificate for the same name; an expired one; one revoked after issue.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = lodestone_admin::pki::Authority::open_or_create(foreign_dir.path(), 30).unwrap().device_pem("attacker", 0, 30).unwrap();
    let expired = stack.credentials.authority().device_pem("attacker", -30, 1).unwrap();
    let revoked = stack.credentials.issue_device("revoked").unwrap();
    let revoked_identity = (std::fs::read_to_string(&revoked.cert_path).unwrap(), std::fs::read_to_string(&revoked.key_path).unwrap());
    let revoked_options = || options(&stack, "revoked", Some(revoked_identity.clone()), &ca);
    let revoked_topic = data_topic("security", "attacks", "revoked");
    assert_eq!(attempt(revoked_options(), &ack_topic("revoked"), &revoked_topic, envelope("revoked", 1.0), false).await, Outcome::Acked);
    stack.credentials.authority().revoke(&revoked.cert_path, 30).unwrap();
    poll_until("the bridge to read the new revocation list", Duration::from_secs(20), || async {
        // Another table: what gets through before the list is read does not count below.
        let probe = data_topic("security", "probe", "revoked");
        matches!(attempt(revoked_options(), &ack_topic("revoked"), &probe, envelope("revoked", 2.0), false).await, Outcome::Refused(_)).then_some(())
    })
    .await;

    let cases: Vec<(&str, MqttOptions, &str, String, bool)> = vec![
        ("no certificate", options(&stack, "attacker", None, &ca), "lodestone/v1/ack/attacker", own_topic.clone(), false),
        ("a foreign CA", options(&stack, "attacker", Some((foreign.cert.clone(), foreign.key.clone())), &ca), "lodestone/v1/ack/attacker", own_topic.clone(), false),
        ("an expired certificate", options(&stack, "attacker", Some((expired.cert.clone(), expired.key.clone())), &ca), "lodestone/v1/ack/attacker", own_topic.clone(), false),
        ("a stolen client id", options(&stack, "victim", Some(attacker.clone()), &ca), "lodestone/v1/ack/victim", own_topic.clone(), false),
        ("subscribing to #", options(&stack, "attacker", Some(attacker.clone()), &ca), "#", own_topic.clone(), false),
        ("subscribing to every ack", options(&stack, "attacker", Some(attacker.clone()), &ca), "lodestone/v1/ack/+", own_topic.clone(), false),
        ("a forged ack", options(&stack, "attacker", Some(attacker.clone()), &ca), "lodestone/v1/ack/attacker", ack_topic("victim"), false),
        ("a retained forged ack", options(&stack, "attacker", Some(attacker.clone()), &ca), "lodestone/v1/ack/attacker", ack_topic("victim"), true),
        ("a retained reading", options(&stack, "attacker", Some(attacker.clone()), &ca), "lodestone/v1/ack/attacker", own_topic.clone(), true),
    ];
    for (case, options, subscribe, topic, retain) in cases {
        let body = if topic.starts_with("lodestone/v1/ack/") { forged_ack.clone() } else { payload() };
        let outcome = attempt(options, subscribe, &topic, body, retain).await;
        assert!(matches!(outcome, Outcome::Refused(_)), "{case}: {outcome:?}");
    }
    // The attacker's own topic, with its own certificate, works.
    let outcome = attempt(options(&stack, "attacker", Some(attacker.clone()), &ca), "lodestone/v1/ack/attacker", &own_topic, payload(), false).await;
    assert_eq!(outcome, Outcome::Acked);

    // The victim still holds every reading; once back, all of them land.
    let status: serde_json::Value = stack.http.get(&status_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["outbox"]["entries"], 50, "{status}");
    relay.restore();
    stack.wait_for_count("security.victim", 50, LANDING).await;
    stack.wait_for_count("security.attacks", 2, LANDING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_stalled_handshakes_do_not_hold_up_a_device() {
    // Stalled handshakes stay open for 60 s here: a device that had to wait behind them (as with
    // rumqttd's own TLS, which shakes hands in its accept loop) would not connect in time.
    let env = vec![("LODESTONE_BRIDGE__TLS__HANDSHAKE_TIMEOUT_MS".to_string(), "60000".to_string())];
    let stack = Stack::start(StackOptions { edge_agent: false, bridge_env: env, ..Default::default() }).await;
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(tokio::net::TcpStream::connect(("127.0.0.1", stack.ports.mqtt)).await.unwrap());
    }
    let device = identity(&stack, "patient");
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        attempt(options(&stack, "patient", Some(device), &stack.credentials.ca_path), "lodestone/v1/ack/patient", &data_topic("security", "stall", "patient"), envelope("patient", 1.0), false),
    )
    .await
    .expect("the device got an answer while 50 handshakes stalled");
    assert_eq!(outcome, Outcome::Acked);
    drop(stalled);
}

/// Devices that cannot hold a certificate log in over TLS with a password of their own (user
/// name = device id), under the same topic rules and policies; a wrong, unknown, expired or
/// revoked password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_certificate_logs_in_with_its_own_password() {
    use lodestone_kit::auth::{Scope, TokenFile};
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("device-passwords.toml");
    let mut passwords = TokenFile::default();
    let secret = passwords.issue_with_id("pw-1", "device", &[Scope::Device], None).secret;
    let other = passwords.issue_with_id("pw-2", "device", &[Scope::Device], None).secret;
    let yesterday = chrono::Utc::now() - chrono::Duration::days(1);
    let expired = passwords.issue_with_id("pw-old", "device", &[Scope::Device], Some(yesterday)).secret;
    let not_a_device = passwords.issue_with_id("pw-admin", "admin", &[Scope::Admin], None).secret;
    passwords.write(&path).unwrap();
    let bridge_env = vec![("LODESTONE_BRIDGE__MQTT__PASSWORDS_PATH".to_string(), path.display().to_string())];
    let stack = Stack::start(StackOptions { edge_agent: false, bridge_env, ..Default::default() }).await;

    let ca = stack.credentials.ca_path.clone();
    let login = |client_id: &str, user: &str, password: &str| {
        let mut options = options(&stack, client_id, None, &ca);
        options.set_credentials(user, password);
        options
    };
    let publish = |options: MqttOptions, owner: &str| {
        let sender = options.client_id();
        let topic = data_topic("security", "passwords", owner);
        async move { attempt(options, &ack_topic(&sender), &topic, envelope(&sender, 1.0), false).await }
    };
    assert_eq!(publish(login("pw-1", "pw-1", &secret), "pw-1").await, Outcome::Acked);

    let bad_login = Outcome::Refused("CONNACK BadUserNamePassword".into());
    assert_eq!(publish(login("pw-1", "pw-1", &other), "pw-1").await, bad_login, "another device's password");
    assert_eq!(publish(login("pw-9", "pw-9", &secret), "pw-9").await, bad_login, "an unknown device");
    assert_eq!(publish(login("pw-old", "pw-old", &expired), "pw-old").await, bad_login, "an expired password");
    assert_eq!(publish(login("pw-admin", "pw-admin", &not_a_device), "pw-admin").await, bad_login, "not a device's password");
    assert_eq!(publish(options(&stack, "pw-1", None, &ca), "pw-1").await, bad_login, "neither certificate nor password");
    // The password proves pw-1, and pw-1 only: its client id and topics are pw-1's.
    assert!(matches!(publish(login("pw-2", "pw-1", &secret), "pw-2").await, Outcome::Refused(_)), "pw-1's password as client pw-2");
    assert!(matches!(publish(login("pw-1", "pw-1", &secret), "pw-2").await, Outcome::Refused(_)), "on pw-2's topic");

    // Revoked: refused within seconds, without a restart.
    let mut passwords = TokenFile::read(&path).unwrap();
    assert!(passwords.revoke("pw-1"));
    passwords.write(&path).unwrap();
    poll_until("the revoked password refused", Duration::from_secs(10), || async {
        (publish(login("pw-1", "pw-1", &secret), "pw-1").await == bad_login).then_some(())
    })
    .await;

    // pw-1's readings (the first, and any sent before the bridge read the file again), no other's.
    let senders = poll_until("pw-1's readings queryable", LANDING, || async { stack.try_rows("SELECT DISTINCT sender FROM security.passwords").await.filter(|rows| !rows.is_empty()) }).await;
    assert_eq!(senders, vec![vec![json!("pw-1")]], "only pw-1's own readings are stored");
    // Five bad logins, two packets outside pw-1's rights, one revoked password.
    assert_eq!(stack.metric(stack.ports.bridge_http, "lodestone_bridge_mqtt_denied_total").await, Some(8.0));
}
