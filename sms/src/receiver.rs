//! A local stand-in for the cloud `SendSms` endpoint: it checks each request's signature with
//! the known secret exactly as the provider does, records what it accepted, and can be told
//! to throttle or fail. No simulator of the cloud API exists, so this is how the HTTP gateway
//! is tested honestly; it binds to loopback only.

use crate::http_sendsms::{signature, string_to_sign, CONTENT_PARAM};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use warp::http::StatusCode;
use warp::{Filter, Reply as _};

/// How long a request's `Timestamp` stays acceptable, as the provider documents.
const MAX_SKEW_S: i64 = 15 * 60;

/// A message the receiver accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSms {
    /// `PhoneNumbers`.
    pub phone: String,
    /// `SignName`.
    pub sign_name: String,
    /// `TemplateCode`.
    pub template_code: String,
    /// The text from `TemplateParam`'s `content`.
    pub text: String,
    /// `OutId` (our idempotency key).
    pub out_id: String,
    /// The id the receiver answered with.
    pub biz_id: String,
}

#[derive(Default)]
struct State {
    access_key_id: String,
    secret: String,
    received: Mutex<Vec<ReceivedSms>>,
    nonces: Mutex<HashSet<String>>,
    throttle_code: AtomicU32,
    throttle_http: AtomicU32,
    fail: AtomicU32,
    down: AtomicBool,
    refused: AtomicU64,
    next_id: AtomicU64,
}

/// The running receiver. Dropping it stops the server.
pub struct HttpSmsReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The answer: HTTP status and the API's JSON.
fn answer(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    let body = serde_json::json!({
        "Code": code,
        "Message": message,
        "RequestId": format!("{:016X}", rand::random::<u64>()),
    });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

impl HttpSmsReceiver {
    /// Listen on 127.0.0.1 (a free port) and accept requests signed by `access_key_id` with
    /// `secret`.
    pub async fn start(access_key_id: &str, secret: &str) -> std::io::Result<HttpSmsReceiver> {
        let state = Arc::new(State {
            access_key_id: access_key_id.into(),
            secret: secret.into(),
            ..Default::default()
        });
        let s = state.clone();
        let route = warp::post()
            .and(warp::body::content_length_limit(64 * 1024))
            .and(warp::body::form::<Vec<(String, String)>>())
            .map(move |params: Vec<(String, String)>| handle(&s, params));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run()
                .await;
        });
        Ok(HttpSmsReceiver {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// The URL to configure the client with.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Every accepted message, oldest first.
    pub fn received(&self) -> Vec<ReceivedSms> {
        self.state.received.lock().expect("received").clone()
    }

    /// Requests refused for a bad signature, key, timestamp or nonce.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Answer the next `n` good requests with `isv.BUSINESS_LIMIT_CONTROL`.
    pub fn throttle_next(&self, n: u32) {
        self.state.throttle_code.store(n, Ordering::Relaxed);
    }

    /// Answer the next `n` good requests with HTTP 429 and `Retry-After: 1`.
    pub fn throttle_next_http(&self, n: u32) {
        self.state.throttle_http.store(n, Ordering::Relaxed);
    }

    /// Answer the next `n` good requests with HTTP 500.
    pub fn fail_next(&self, n: u32) {
        self.state.fail.store(n, Ordering::Relaxed);
    }

    /// While down, every request gets HTTP 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
    }
}

impl Drop for HttpSmsReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Take one from a "next n requests" counter.
fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

fn handle(state: &State, params: Vec<(String, String)>) -> warp::reply::Response {
    if state.down.load(Ordering::Relaxed) {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "down",
        );
    }
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    let refuse = |status: StatusCode, code: &str, message: &str| {
        state.refused.fetch_add(1, Ordering::Relaxed);
        answer(status, code, message)
    };
    for required in [
        "AccessKeyId",
        "Action",
        "PhoneNumbers",
        "SignName",
        "Signature",
        "SignatureMethod",
        "SignatureNonce",
        "SignatureVersion",
        "TemplateCode",
        "Timestamp",
        "Version",
    ] {
        if get(required).is_none_or(str::is_empty) {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("MissingParameter.{required}"),
                &format!("{required} is mandatory for this action"),
            );
        }
    }
    if get("AccessKeyId") != Some(state.access_key_id.as_str()) {
        return refuse(
            StatusCode::NOT_FOUND,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        );
    }
    if get("SignatureMethod") != Some("HMAC-SHA1") || get("SignatureVersion") != Some("1.0") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "only HMAC-SHA1, version 1.0",
        );
    }
    let sts = string_to_sign("POST", &params);
    let expected = signature(&state.secret, &sts);
    let given = get("Signature").unwrap_or_default();
    // Equal lengths first, then every byte: no early exit for a timing oracle.
    let same = expected.len() == given.len()
        && expected
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return refuse(
            StatusCode::BAD_REQUEST,
            "SignatureDoesNotMatch",
            &format!("Specified signature is not matched with our calculation. server string to sign is:{sts}"),
        );
    }
    let fresh = chrono::DateTime::parse_from_rfc3339(get("Timestamp").unwrap_or_default())
        .map(|t| (chrono::Utc::now().timestamp() - t.timestamp()).abs() <= MAX_SKEW_S)
        .unwrap_or(false);
    if !fresh {
        return refuse(
            StatusCode::BAD_REQUEST,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        );
    }
    let nonce = get("SignatureNonce").unwrap_or_default().to_string();
    if !state.nonces.lock().expect("nonces").insert(nonce) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        );
    }
    if get("Action") != Some("SendSms") || get("Version") != Some("2017-05-25") {
        return answer(
            StatusCode::BAD_REQUEST,
            "InvalidAction.NotFound",
            "only SendSms 2017-05-25",
        );
    }
    if take(&state.throttle_http) {
        let mut r = answer(StatusCode::TOO_MANY_REQUESTS, "Throttling", "slow down");
        r.headers_mut()
            .insert("retry-after", warp::http::HeaderValue::from_static("1"));
        return r;
    }
    if take(&state.throttle_code) {
        return answer(
            StatusCode::OK,
            "isv.BUSINESS_LIMIT_CONTROL",
            "触发分钟级流控Permits:1",
        );
    }
    if take(&state.fail) {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "told to fail",
        );
    }
    let phone = get("PhoneNumbers").unwrap_or_default();
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    if !(5..=20).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return answer(StatusCode::OK, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号");
    }
    let text = serde_json::from_str::<serde_json::Value>(get("TemplateParam").unwrap_or("{}"))
        .ok()
        .and_then(|v| v.get(CONTENT_PARAM)?.as_str().map(str::to_string));
    let Some(text) = text else {
        return answer(
            StatusCode::OK,
            "isv.INVALID_JSON_PARAM",
            "TemplateParam must be JSON with content",
        );
    };
    let biz_id = format!(
        "{}^{}",
        900_000_000_000u64 + state.next_id.fetch_add(1, Ordering::Relaxed),
        0
    );
    state.received.lock().expect("received").push(ReceivedSms {
        phone: phone.to_string(),
        sign_name: get("SignName").unwrap_or_default().to_string(),
        template_code: get("TemplateCode").unwrap_or_default().to_string(),
        text,
        out_id: get("OutId").unwrap_or_default().to_string(),
        biz_id: biz_id.clone(),
    });
    let body = serde_json::json!({
        "Code": "OK",
        "Message": "OK",
        "BizId": biz_id,
        "RequestId": format!("{:016X}", rand::random::<u64>()),
    });
    warp::reply::json(&body).into_response()
}
