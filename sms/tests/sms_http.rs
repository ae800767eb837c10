//! The `SendSms` HTTP client against the local receiver that checks signatures with the
//! known secret: good requests are accepted, tampered or replayed ones refused, and each kind
//! of refusal maps to what the dispatcher does next.

use floodcmd_sms::http_sendsms::{form_body, HttpSendSms, HttpSendSmsConfig};
use floodcmd_sms::receiver::HttpSmsReceiver;
use floodcmd_sms::{SmsError, SmsGateway, SmsMessage};
use std::time::Duration;

fn client(url: &str, secret: &str) -> HttpSendSms {
    HttpSendSms::new(HttpSendSmsConfig {
        name: "http".into(),
        url: url.into(),
        access_key_id: "LTAI-test".into(),
        access_key_secret: secret.into(),
        sign_name: "新城区防汛".into(),
        template_code: "SMS_0001".into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

fn msg(phone: &str) -> SmsMessage {
    SmsMessage {
        key: "inc-7/red/p1".into(),
        phone: phone.into(),
        text: "【新城区防汛】红色预警 解放门下穿 积水32cm ↑2.1cm/分 请立即封闭并到岗 回复1确认"
            .into(),
    }
}

async fn post(url: &str, params: &[(String, String)]) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(params))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_correctly_signed_request_is_accepted() {
    let rx = HttpSmsReceiver::start("LTAI-test", "s3cret").await.unwrap();
    let gw = client(&rx.url(), "s3cret");
    let r = gw.send(&msg("13800000000")).await.unwrap();
    assert_eq!(r.gateway, "http");
    assert_eq!(r.message_ids.len(), 1);
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].phone, "13800000000");
    assert_eq!(got[0].text, msg("").text);
    assert_eq!(got[0].sign_name, "新城区防汛");
    assert_eq!(got[0].template_code, "SMS_0001");
    assert_eq!(got[0].out_id, "inc-7/red/p1");
    assert_eq!(got[0].biz_id, r.message_ids[0]);
}

#[tokio::test]
async fn tampered_wrongly_signed_and_replayed_requests_are_refused() {
    let rx = HttpSmsReceiver::start("LTAI-test", "s3cret").await.unwrap();
    let gw = client(&rx.url(), "s3cret");

    // Signed, then the number changed in transit.
    let mut params = gw.signed_params(&msg("13800000000"));
    for (k, v) in params.iter_mut() {
        if k == "PhoneNumbers" {
            *v = "13999999999".into();
        }
    }
    let (status, body) = post(&rx.url(), &params).await;
    assert_eq!(status, 400);
    assert_eq!(body["Code"], "SignatureDoesNotMatch");

    // Signed with the wrong secret: the account, not the message, is at fault, so the client
    // reports the gateway unavailable and the dispatcher moves on to the next one.
    let wrong = client(&rx.url(), "not-the-secret");
    match wrong.send(&msg("13800000000")).await {
        Err(SmsError::Unavailable { reason }) => {
            assert!(reason.contains("SignatureDoesNotMatch"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // A good request sent twice: the nonce makes the copy invalid.
    let good = gw.signed_params(&msg("13800000000"));
    assert_eq!(post(&rx.url(), &good).await.0, 200);
    let (status, body) = post(&rx.url(), &good).await;
    assert_eq!(status, 400);
    assert_eq!(body["Code"], "SignatureNonceUsed");

    assert_eq!(rx.refused(), 3);
    assert_eq!(
        rx.received().len(),
        1,
        "only the untouched request got through"
    );
}

#[tokio::test]
async fn refusals_map_to_throttled_unavailable_or_rejected() {
    let rx = HttpSmsReceiver::start("LTAI-test", "s3cret").await.unwrap();
    let gw = client(&rx.url(), "s3cret");

    rx.throttle_next(1);
    assert_eq!(
        gw.send(&msg("13800000000")).await,
        Err(SmsError::Throttled { retry_after: None })
    );
    rx.throttle_next_http(1);
    assert_eq!(
        gw.send(&msg("13800000000")).await,
        Err(SmsError::Throttled {
            retry_after: Some(Duration::from_secs(1))
        })
    );
    rx.fail_next(1);
    assert!(matches!(
        gw.send(&msg("13800000000")).await,
        Err(SmsError::Unavailable { .. })
    ));
    rx.set_down(true);
    assert!(matches!(
        gw.send(&msg("13800000000")).await,
        Err(SmsError::Unavailable { .. })
    ));
    rx.set_down(false);
    match gw.send(&msg("12-34")).await {
        Err(SmsError::Rejected { reason }) => assert!(reason.contains("MOBILE_NUMBER_ILLEGAL")),
        other => panic!("{other:?}"),
    }
    assert!(gw.send(&msg("13800000000")).await.is_ok());
    assert_eq!(rx.received().len(), 1);

    // Nothing listening at all.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nowhere = client(&format!("http://127.0.0.1:{port}/"), "s3cret");
    assert!(matches!(
        nowhere.send(&msg("13800000000")).await,
        Err(SmsError::Unavailable { .. })
    ));
}
