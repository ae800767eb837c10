//! Device authentication on the MQTT path, against a real Mosquitto configured as
//! docs/SECURITY.md says: no anonymous clients, one login per device (user name = device id,
//! password = its token), an ACL that lets a device publish only under its own id and only the
//! adapter read. The broker refuses strangers and wrong passwords, drops a device's publish
//! under another device's topic, and the adapter refuses a device's reading for a sensor that
//! is not its own, as over HTTP.
//!
//! The test runs its own Mosquitto (Debian's `mosquitto`, which `scripts/mosquitto.sh`
//! installs) on a free port with that config, and stops it by its pid when done.

use floodcmd_bus::EmbeddedBus;
use floodcmd_ingest::auth::{token_sha256, DeviceRegistry};
use floodcmd_ingest::mqtt::{run_mqtt, MqttConfig};
use floodcmd_ingest::validate::TimeLimits;
use floodcmd_ingest::{Access, Gateway, GatewayConfig};
use floodcmd_model::bus::{Assignment, Bus, Consumer};
use floodcmd_model::codec::decode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::time::ManualClock;
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const NOW: i64 = 1_783_000_000_000;
const PREFIX: &str = "sec/readings";

/// A private Mosquitto, killed (by its own pid) when dropped.
struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mosquitto with password file and ACL: the two devices and the adapter.
async fn broker() -> Broker {
    let dir = std::env::temp_dir().join(format!("floodcmd-mqtt-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    for (user, pw) in [
        ("up01-station", "tok-up01"),
        ("up02-station", "tok-up02"),
        ("floodcmd-ingest", "adapter-pw"),
    ] {
        let ok = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwd)
            .args([user, pw])
            .status()
            .expect(
                "mosquitto_passwd (Debian package mosquitto; scripts/mosquitto.sh installs it)",
            );
        assert!(ok.success());
    }
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        format!(
            "user floodcmd-ingest\ntopic read {PREFIX}/#\n\n\
             pattern write {PREFIX}/%u\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            passwd.display(),
            acl.display()
        ),
    )
    .unwrap();
    // Mosquitto started as root reads these as the mosquitto user.
    for p in [&dir, &passwd, &acl, &conf] {
        use std::os::unix::fs::PermissionsExt;
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mosquitto (Debian package; scripts/mosquitto.sh installs it)");
    let broker = Broker { child, port, dir };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return broker;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mosquitto did not listen on {port}");
}

/// A connected MQTT client, or the broker's refusal.
async fn connect(
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
) -> Result<AsyncClient, ConnectionError> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    if let Some((u, p)) = login {
        opts.set_credentials(u, p);
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    loop {
        match events.poll().await? {
            Event::Incoming(Packet::ConnAck(_)) => break,
            _ => continue,
        }
    }
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    Ok(client)
}

async fn read_all<T: serde::de::DeserializeOwned>(c: &mut Box<dyn Consumer>) -> Vec<T> {
    let mut out = Vec::new();
    loop {
        let batch = c.poll(1000, Duration::from_millis(200)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.iter().map(|r| decode::<T>(&r.payload).unwrap()));
    }
}

fn reading(sensor: &str, seq: u64) -> Vec<u8> {
    format!(r#"{{"sensor":"{sensor}","ts":{NOW},"value":5.0,"seq":{seq}}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_and_the_adapter_let_a_device_write_only_its_own_sensors() {
    let broker = broker().await;
    let district =
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
    let devices = format!(
        "[[devices]]\nid = \"up01-station\"\ntoken_sha256 = \"{}\"\nsensors = [\"WL-UP-01\"]\n\
         [[devices]]\nid = \"up02-station\"\ntoken_sha256 = \"{}\"\nsensors = [\"WL-UP-02\"]\n",
        token_sha256("tok-up01"),
        token_sha256("tok-up02")
    );
    let registry = DeviceRegistry::from_toml_str(&devices, &district).unwrap();
    let bus = EmbeddedBus::new(4096);
    let topics = Topics::new("sec");
    for t in topics.all() {
        bus.ensure_topic(&t, 1).await.unwrap();
    }
    let gateway = Arc::new(Gateway::new(
        district,
        bus.producer(),
        topics.clone(),
        Arc::new(ManualClock::new(NOW)),
        GatewayConfig {
            max_body_bytes: 1 << 20,
            limits: TimeLimits {
                max_future_ms: 300_000,
                retention_ms: 72 * 3_600_000,
            },
            access: Access::Devices(registry),
            device_requests_per_min: 0,
        },
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let adapter = tokio::spawn(run_mqtt(
        gateway,
        MqttConfig {
            host: "127.0.0.1".into(),
            port: broker.port,
            client_id: format!("sec-adapter-{}", std::process::id()),
            prefix: PREFIX.into(),
            credentials: Some(("floodcmd-ingest".into(), "adapter-pw".into())),
        },
        stop_rx,
    ));
    let mut readings = bus
        .consumer("check", &topics.readings(), Assignment::All)
        .await
        .unwrap();
    let mut rejects = bus
        .consumer("check", &topics.rejects(), Assignment::All)
        .await
        .unwrap();

    // Strangers and wrong passwords are refused at the door.
    let anon = connect(broker.port, "anon", None).await;
    assert!(
        matches!(anon, Err(ConnectionError::ConnectionRefused(_))),
        "anonymous: {:?}",
        anon.err()
    );
    let wrong = connect(broker.port, "wrong", Some(("up01-station", "tok-up02"))).await;
    assert!(
        matches!(wrong, Err(ConnectionError::ConnectionRefused(_))),
        "wrong password: {:?}",
        wrong.err()
    );

    // The real device: publish until the adapter (subscribing in the background) has one.
    let up01 = connect(broker.port, "up01", Some(("up01-station", "tok-up01")))
        .await
        .unwrap();
    let own_topic = format!("{PREFIX}/up01-station");
    let mut got: Vec<Reading> = Vec::new();
    for seq in 0..100 {
        up01.publish(
            &own_topic,
            QoS::AtLeastOnce,
            false,
            reading("WL-UP-01", seq),
        )
        .await
        .unwrap();
        got.extend(read_all::<Reading>(&mut readings).await);
        if !got.is_empty() {
            break;
        }
    }
    assert!(!got.is_empty(), "the adapter never received a reading");

    // Under another device's topic: the broker's ACL drops it. On its own topic but for
    // another device's sensor: the adapter refuses it as forbidden. Then a marker.
    up01.publish(
        format!("{PREFIX}/up02-station"),
        QoS::AtLeastOnce,
        false,
        reading("WL-UP-02", 500),
    )
    .await
    .unwrap();
    up01.publish(
        &own_topic,
        QoS::AtLeastOnce,
        false,
        reading("WL-UP-02", 501),
    )
    .await
    .unwrap();
    up01.publish(
        &own_topic,
        QoS::AtLeastOnce,
        false,
        reading("WL-UP-01", 999),
    )
    .await
    .unwrap();
    let mut seen_marker = false;
    for _ in 0..100 {
        got.extend(read_all::<Reading>(&mut readings).await);
        if got.iter().any(|r| r.seq == Some(999)) {
            seen_marker = true;
            break;
        }
    }
    assert!(seen_marker, "the marker never arrived");
    assert!(
        got.iter().all(|r| r.sensor == "WL-UP-01"),
        "a reading of another device's sensor got through: {got:?}"
    );
    let refused: Vec<Reject> = read_all(&mut rejects).await;
    let forbidden: Vec<&Reject> = refused
        .iter()
        .filter(|r| r.reason == RejectReason::Forbidden)
        .collect();
    assert_eq!(forbidden.len(), 1, "{refused:?}");
    assert_eq!(forbidden[0].sensor.as_deref(), Some("WL-UP-02"));
    assert!(
        forbidden[0].detail.contains("up01-station"),
        "{:?}",
        forbidden[0]
    );
    assert_eq!(forbidden[0].source, "mqtt");

    stop.send(true).unwrap();
    adapter.await.unwrap();
    drop(broker);
}
