//! Failover between real gateways, built from settings: the SMSC simulator goes down, the
//! HTTP `SendSms` gateway (its local signature-checking receiver) takes over, and traffic
//! returns to SMPP once the simulator is back.

mod common;

use common::{counter, Smsc};
use floodcmd_sms::receiver::HttpSmsReceiver;
use floodcmd_sms::settings::{HttpSendSmsSettings, SmppSettings};
use floodcmd_sms::{DispatchConfig, Dispatcher, GatewaySettings, SmsMessage, SmsSettings};
use std::collections::HashMap;
use std::time::Duration;

fn msg(i: u32) -> SmsMessage {
    SmsMessage {
        key: format!("inc-9/red/p{i}"),
        phone: format!("1390000{i:04}"),
        text: format!(
            "【新城区防汛】红色预警 解放门下穿 积水{}cm 请立即到岗",
            30 + i
        ),
    }
}

#[tokio::test]
async fn smsc_down_falls_back_to_http_and_comes_back() {
    let smsc = Smsc::new("fall").await;
    let receiver = HttpSmsReceiver::start("fc-key", "fc-secret").await.unwrap();
    let (host, port) = smsc.addr.rsplit_once(':').unwrap();
    let settings = SmsSettings {
        gateways: vec![
            GatewaySettings::Smpp(SmppSettings {
                name: Some("smpp-fall".into()),
                host: host.into(),
                port: port.parse().unwrap(),
                system_id: smsc.system_id.clone(),
                password: "pw".into(),
                password_file: None,
                source_addr: "10690001".into(),
                rate_per_s: 200.0,
                window: 10,
            }),
            GatewaySettings::HttpSendSms(HttpSendSmsSettings {
                name: Some("http-fall".into()),
                url: receiver.url(),
                access_key_id: "fc-key".into(),
                access_key_secret: "fc-secret".into(),
                access_key_secret_file: None,
                sign_name: "新城区防汛".into(),
                template_code: "SMS_0001".into(),
                rate_per_s: 50.0,
            }),
        ],
    };
    let d = Dispatcher::from_settings(
        &settings,
        DispatchConfig {
            breaker_cooldown: Duration::from_millis(300),
            breaker_cooldown_max: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..DispatchConfig::default()
        },
    )
    .unwrap();
    assert_eq!(d.gateways(), vec!["smpp-fall", "http-fall"]);

    let mut via: HashMap<String, String> = HashMap::new();
    let first = d.send(&msg(0)).await.unwrap();
    assert_eq!(first.gateway, "smpp-fall");
    via.insert(msg(0).key, first.gateway);

    smsc.down().await;
    let r = d.send(&msg(1)).await.unwrap();
    assert_eq!(
        r.gateway, "http-fall",
        "SMSC down: the HTTP gateway takes it"
    );
    via.insert(msg(1).key, r.gateway);
    let r = d.send(&msg(2)).await.unwrap();
    assert_eq!(r.gateway, "http-fall");
    via.insert(msg(2).key, r.gateway);
    assert!(counter("floodcmd_sms_fallback_total", "smpp-fall") >= 1.0);

    smsc.up().await;
    // The breaker probes the SMSC after its cooldown and the session rebinds after its own
    // backoff; until both, messages keep going over HTTP. Bounded: 300 messages, 100 ms apart.
    let mut back = None;
    for i in 3..303 {
        let r = d.send(&msg(i)).await.unwrap();
        let gw = r.gateway.clone();
        via.insert(msg(i).key, r.gateway);
        if gw == "smpp-fall" {
            back = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back.is_some(), "traffic never returned to the SMSC");
    let r = d.send(&msg(1000)).await.unwrap();
    assert_eq!(r.gateway, "smpp-fall", "the primary stays primary");
    via.insert(msg(1000).key, r.gateway);

    // Every message went out exactly once, through the gateway that said it took it.
    let smpp_got: Vec<String> = smsc
        .accepted()
        .await
        .into_iter()
        .map(|m| m.destination)
        .collect();
    let http_got: Vec<String> = receiver.received().into_iter().map(|m| m.phone).collect();
    let http_keys: Vec<String> = receiver.received().into_iter().map(|m| m.out_id).collect();
    for (key, gw) in &via {
        let n: u32 = key.rsplit('p').next().unwrap().parse().unwrap();
        let phone = msg(n).phone;
        let in_smpp = smpp_got.iter().filter(|p| **p == phone).count();
        let in_http = http_got.iter().filter(|p| **p == phone).count();
        match gw.as_str() {
            "smpp-fall" => assert_eq!((in_smpp, in_http), (1, 0), "{key}"),
            _ => {
                assert_eq!((in_smpp, in_http), (0, 1), "{key}");
                assert!(http_keys.contains(key), "OutId carries the key");
            }
        }
    }
    assert_eq!(
        receiver.refused(),
        0,
        "every HTTP request was signed correctly"
    );
    d.close().await;
}
