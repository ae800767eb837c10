//! The SMPP client against the real SMSC simulator (scripts/smsc.sh): long Chinese texts in
//! concatenated UCS-2 parts, delivery receipts, throttling and permanent rejection.

mod common;

use common::{counter, Smsc};
use floodcmd_sms::dispatch::Route;
use floodcmd_sms::smpp::{SmppConfig, SmppGateway};
use floodcmd_sms::{DispatchConfig, Dispatcher, SmsError, SmsGateway, SmsMessage};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const LONG: &str = "【新城区防汛】红色预警 解放门下穿 积水32cm ↑2.1cm/分 请立即封闭并到岗 回复1确认。\
    一点一策：封闭下穿通道两端，设置警示标志，启动强排泵站，疏导车辆绕行人民路，通知社区网格员到岗值守，\
    每十分钟回报一次水位。";

async fn gateway(smsc: &Smsc, name: &str) -> SmppGateway {
    let g = SmppGateway::new(SmppConfig::new(
        name,
        &smsc.addr,
        &smsc.system_id,
        "pw",
        "10690001",
    ));
    assert!(
        g.wait_bound(Duration::from_secs(10)).await,
        "no bind to the simulator at {}",
        smsc.addr
    );
    g
}

fn msg(key: &str, phone: &str, text: &str) -> SmsMessage {
    SmsMessage {
        key: key.into(),
        phone: phone.into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn long_chinese_text_arrives_in_parts_that_rejoin() {
    let smsc = Smsc::new("long").await;
    let g = gateway(&smsc, "smpp-long").await;
    assert!(LONG.chars().count() > 70);
    let receipt = g
        .send(&msg("inc-1/red/p1", "+8613800000001", LONG))
        .await
        .unwrap();
    assert!(receipt.parts > 1);
    assert_eq!(receipt.message_ids.len(), receipt.parts);

    let mut got = smsc.accepted().await;
    assert_eq!(got.len(), receipt.parts, "{got:?}");
    got.sort_by_key(|m| m.udh_part);
    let reference = got[0].udh_ref;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.destination, "8613800000001");
        assert_eq!(m.data_coding, 0x08, "UCS-2");
        assert_eq!(m.esm_class & 0x40, 0x40, "UDH indicator");
        assert_eq!(m.udh_ref, reference, "one reference for all parts");
        assert_eq!(m.udh_total, Some(receipt.parts as u32));
        assert_eq!(m.udh_part, Some(i as u32 + 1));
        assert!(m.text.encode_utf16().count() <= 67);
        assert_eq!(
            m.message_id.as_deref(),
            Some(receipt.message_ids[i].as_str())
        );
    }
    let rejoined: String = got.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(rejoined, LONG);

    let short = "【新城区防汛】黄色预警 解放门下穿 积水12cm";
    let r = g
        .send(&msg("inc-1/yellow/p1", "13800000002", short))
        .await
        .unwrap();
    assert_eq!(r.parts, 1);
    let single = smsc.accepted().await.pop().unwrap();
    assert_eq!(single.text, short);
    assert_eq!(single.esm_class & 0x40, 0, "no UDH on a single SMS");
    assert_eq!(single.udh_part, None);
    g.close().await;
}

#[tokio::test]
async fn delivery_receipts_arrive_for_every_part() {
    let smsc = Smsc::new("dlr").await;
    let g = gateway(&smsc, "smpp-dlr").await;
    let mut receipts = g.receipts().expect("SMPP has receipts");
    let sent = g
        .send(&msg("inc-2/red/p1", "13800000003", LONG))
        .await
        .unwrap();
    let mut waiting: HashSet<String> = sent.message_ids.iter().cloned().collect();
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        while !waiting.is_empty() {
            let r = receipts.recv().await.expect("receipt stream");
            assert_eq!(r.gateway, "smpp-dlr");
            if waiting.remove(&r.message_id) {
                assert!(r.delivered, "{r:?}");
                assert_eq!(r.stat, "DELIVRD");
            }
        }
    })
    .await;
    assert!(done.is_ok(), "receipts missing for {waiting:?}");
    g.close().await;
}

fn fast_retries() -> DispatchConfig {
    DispatchConfig {
        max_attempts: 8,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..DispatchConfig::default()
    }
}

#[tokio::test]
async fn throttled_submits_back_off_then_succeed() {
    let smsc = Smsc::new("thr").await;
    let g = Arc::new(gateway(&smsc, "smpp-thr").await);
    // The gateway alone reports the throttle...
    smsc.throttle(1).await;
    let first = g.send(&msg("inc-3/x/p0", "13800000010", "测试")).await;
    assert_eq!(first, Err(SmsError::Throttled { retry_after: None }));

    // ...and the dispatcher backs off and retries until the SMSC takes it.
    smsc.throttle(3).await;
    let d = Dispatcher::new(
        vec![Route {
            gateway: g.clone(),
            rate_per_s: 0.0,
        }],
        fast_retries(),
    );
    let r = d
        .send(&msg(
            "inc-3/red/p1",
            "13800000011",
            "【新城区防汛】红色预警",
        ))
        .await
        .unwrap();
    assert_eq!(r.gateway, "smpp-thr");
    let seen: Vec<u32> = smsc
        .messages()
        .await
        .iter()
        .filter(|m| m.destination == "13800000011")
        .map(|m| m.command_status)
        .collect();
    assert_eq!(seen, vec![0x58, 0x58, 0x58, 0]);
    assert_eq!(counter("floodcmd_sms_throttled_total", "smpp-thr"), 3.0);
    assert_eq!(counter("floodcmd_sms_sent_total", "smpp-thr"), 1.0);
}

#[tokio::test]
async fn a_half_throttled_long_text_resends_only_the_missing_parts() {
    let smsc = Smsc::new("half").await;
    let g = gateway(&smsc, "smpp-half").await;
    let parts = floodcmd_sms::smpp::segment::count(LONG);
    assert!(parts >= 2);
    // With the window, parts go out together; the first submit to arrive is throttled.
    smsc.throttle(1).await;
    let m = msg("inc-4/red/p1", "13800000020", LONG);
    assert!(matches!(g.send(&m).await, Err(SmsError::Throttled { .. })));
    let r = g.send(&m).await.unwrap();
    let accepted = smsc.accepted().await;
    assert_eq!(accepted.len(), parts, "each part accepted exactly once");
    let refs: HashSet<_> = accepted.iter().map(|m| m.udh_ref).collect();
    assert_eq!(refs.len(), 1, "the retry kept the concatenation reference");
    let mut sorted = accepted.clone();
    sorted.sort_by_key(|m| m.udh_part);
    assert_eq!(
        sorted.iter().map(|m| m.text.as_str()).collect::<String>(),
        LONG
    );
    let ids: Vec<String> = sorted.iter().filter_map(|m| m.message_id.clone()).collect();
    assert_eq!(r.message_ids, ids);
}

#[tokio::test]
async fn a_rejected_number_is_not_retried() {
    let smsc = Smsc::new("rej").await;
    let g = Arc::new(gateway(&smsc, "smpp-rej").await);
    let second = Arc::new(gateway(&smsc, "smpp-rej2").await);
    let d = Dispatcher::new(
        vec![
            Route {
                gateway: g.clone(),
                rate_per_s: 0.0,
            },
            Route {
                gateway: second.clone(),
                rate_per_s: 0.0,
            },
        ],
        fast_retries(),
    );
    let e = d
        .send(&msg("inc-5/red/p1", "not-a-phone", "测试"))
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert_eq!(e.attempts, 1);
    let tried = smsc.messages().await;
    assert_eq!(
        tried.len(),
        1,
        "one submit, no retry, no fallback: {tried:?}"
    );
    assert_eq!(tried[0].command_status, 0x0B, "ESME_RINVDSTADR");
    assert_eq!(counter("floodcmd_sms_failed_total", "smpp-rej"), 1.0);
    assert_eq!(counter("floodcmd_sms_fallback_total", "smpp-rej"), 0.0);
}
