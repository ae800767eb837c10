//! Who is looking at the wall and what they may do.
//!
//! Users come from the settings (`[[dashboard.users]]`: name, role, the password's SHA-256).
//! `POST /api/login` with `{"name","password"}` answers a random bearer token that lasts
//! `dashboard.session_h` hours; `POST /api/logout` ends it; `GET /api/me` tells who the token
//! belongs to. REST calls carry the token as `Authorization: Bearer <token>`; the websocket,
//! which browsers can give no other header, offers it as the subprotocol `bearer.<token>`
//! (`Sec-WebSocket-Protocol`; see `server.rs`), never in the URL.
//!
//! Sessions live in this process's memory: a restarted wall asks everyone to log in again,
//! and two wall instances do not share logins. Without a token a client is an anonymous
//! viewer when `dashboard.anonymous` allows it. Viewers (and anonymous clients) get phone
//! numbers masked ([`mask_phone`]) in every payload built for them; only commanders and
//! admins may act ([`Session::can_act`]).
//!
//! Logins are rate limited (`dashboard.login_per_min`: attempts per client address, failures
//! per user name) against password guessing, and actions per user
//! (`dashboard.actions_per_min`); past either the answer is 429 ([`crate::guard`]). Names in
//! log lines are Debug-quoted, so a name with a newline cannot forge a log line.

use crate::guard;
use floodcmd_model::limit::RateLimiter;
use floodcmd_model::settings::{DashboardUser, UserRole};
use floodcmd_model::time::{Clock, Millis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// Most sessions held at once; the oldest goes first beyond it, so a login loop cannot
/// exhaust memory.
const MAX_SESSIONS: usize = 10_000;

/// A logged-in (or anonymous) client.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Session {
    /// User name; `None` for an anonymous viewer.
    pub name: Option<String>,
    /// Role.
    pub role: UserRole,
}

impl Session {
    /// An anonymous viewer.
    pub fn anonymous() -> Session {
        Session {
            name: None,
            role: UserRole::Viewer,
        }
    }

    /// Commanders and admins act on incidents; viewers only watch.
    pub fn can_act(&self) -> bool {
        matches!(self.role, UserRole::Commander | UserRole::Admin) && self.name.is_some()
    }

    /// Whether payloads for this session show phone numbers in full.
    pub fn sees_phones(&self) -> bool {
        self.can_act()
    }
}

/// A phone number as viewers see it: `138****0001`. Anything that is not an 11-digit mobile
/// number keeps only its last two characters.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() == 11 && chars.iter().all(|c| c.is_ascii_digit()) {
        let s: String = chars.iter().collect();
        format!("{}****{}", &s[..3], &s[7..])
    } else {
        let keep: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        format!("****{keep}")
    }
}

/// Why a request has no session to act with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// No token, or the wall does not allow anonymous viewers.
    #[error("log in first (POST /api/login)")]
    Missing,
    /// The token is unknown or expired.
    #[error("the login has expired or is unknown; log in again")]
    Invalid,
    /// The name or password is wrong.
    #[error("wrong name or password")]
    BadCredentials,
}

#[derive(Clone)]
struct Held {
    session: Session,
    expires_ms: Millis,
}

struct Inner {
    by_token: HashMap<String, Held>,
}

/// The users from the settings and the live sessions.
#[derive(Clone)]
pub struct Auth {
    users: Arc<HashMap<String, (UserRole, [u8; 32])>>,
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
    session_ms: Millis,
    anonymous: bool,
    /// Login attempts by client address.
    login_by_addr: Arc<RateLimiter>,
    /// Failed logins by user name.
    failures_by_name: Arc<RateLimiter>,
    /// Actions by login.
    actions_by_login: Arc<RateLimiter>,
}

/// Settings of [`Auth`].
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Who may log in. Users whose hash is not 64 hex digits are skipped with an error
    /// logged (the settings validator refuses them first).
    pub users: Vec<DashboardUser>,
    /// Whether clients without a token may watch, as viewers.
    pub anonymous: bool,
    /// How long a login lasts, ms (on `clock`).
    pub session_ms: Millis,
    /// Login attempts per minute from one client address, and failed attempts per minute
    /// on one user name; 0: no limit.
    pub login_per_min: u32,
    /// Actions per minute by one login; 0: no limit.
    pub actions_per_min: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: Vec::new(),
            anonymous: true,
            session_ms: 12 * 3_600_000,
            login_per_min: 10,
            actions_per_min: 120,
        }
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a password as the settings keep it (64 lowercase hex digits).
pub fn password_sha256(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The demo's users, one per role, with passwords made up for this run (printed by
/// `floodcmd demo`, never stored): `值班长` commander, `指挥长` admin, `观察员` viewer.
pub fn demo_users() -> Vec<(DashboardUser, String)> {
    // No 0/o, 1/l/i: the password is read off a console and typed.
    const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
    [
        ("值班长", UserRole::Commander),
        ("指挥长", UserRole::Admin),
        ("观察员", UserRole::Viewer),
    ]
    .into_iter()
    .map(|(name, role)| {
        let password: String = (0..10)
            .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
            .collect();
        (
            DashboardUser {
                name: name.into(),
                role,
                password_sha256: password_sha256(&password),
            },
            password,
        )
    })
    .collect()
}

/// The body of `POST /api/login`. Debug shows the name only.
#[derive(Deserialize)]
pub struct LoginRequest {
    /// User name (surrounding spaces are ignored at login).
    pub name: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("name", &self.name)
            .field("password", &"***")
            .finish()
    }
}

impl LoginRequest {
    /// Parse a login body; the error is the 400 answer's message.
    pub fn parse(body: &[u8]) -> Result<LoginRequest, String> {
        serde_json::from_slice(body).map_err(|e| format!("body: {e}"))
    }
}

/// Compares without stopping at the first difference, so timing tells nothing.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// From the configured users.
    pub fn new(config: AuthConfig, clock: Arc<dyn Clock>) -> Auth {
        let mut users = HashMap::new();
        for u in config.users {
            match parse_hex32(&u.password_sha256.to_ascii_lowercase()) {
                Some(h) => {
                    users.insert(u.name, (u.role, h));
                }
                None => {
                    tracing::error!(user = %u.name, "password_sha256 is not 64 hex digits; user skipped")
                }
            }
        }
        Auth {
            users: Arc::new(users),
            inner: Arc::new(Mutex::new(Inner {
                by_token: HashMap::new(),
            })),
            clock: clock.clone(),
            session_ms: config.session_ms,
            anonymous: config.anonymous,
            login_by_addr: Arc::new(RateLimiter::per_minute(config.login_per_min, clock.clone())),
            failures_by_name: Arc::new(RateLimiter::per_minute(
                config.login_per_min,
                clock.clone(),
            )),
            actions_by_login: Arc::new(RateLimiter::per_minute(config.actions_per_min, clock)),
        }
    }

    /// Check a name and password; a fresh token and its session when they match.
    pub fn login(
        &self,
        name: &str,
        password: &str,
    ) -> Result<(String, Session, Millis), AuthError> {
        let Some((role, hash)) = self.users.get(name) else {
            // Hash anyway, so an unknown name costs the same as a wrong password.
            let _ = Sha256::digest(password.as_bytes());
            return Err(AuthError::BadCredentials);
        };
        let given: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if !same(&given, hash) {
            return Err(AuthError::BadCredentials);
        }
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let session = Session {
            name: Some(name.to_string()),
            role: *role,
        };
        let now = self.clock.now_ms();
        let expires_ms = now + self.session_ms;
        let mut inner = self.inner.lock().expect("sessions lock");
        inner.by_token.retain(|_, h| h.expires_ms > now);
        if inner.by_token.len() >= MAX_SESSIONS {
            if let Some(oldest) = inner
                .by_token
                .iter()
                .min_by_key(|(_, h)| h.expires_ms)
                .map(|(t, _)| t.clone())
            {
                inner.by_token.remove(&oldest);
            }
        }
        inner.by_token.insert(
            token.clone(),
            Held {
                session: session.clone(),
                expires_ms,
            },
        );
        tracing::info!(user = name, role = role.as_str(), "command wall login");
        Ok((token, session, expires_ms))
    }

    /// End a session.
    pub fn logout(&self, token: &str) {
        self.inner
            .lock()
            .expect("sessions lock")
            .by_token
            .remove(token);
    }

    /// The session a token stands for; without a token, an anonymous viewer if allowed.
    pub fn session(&self, token: Option<&str>) -> Result<Session, AuthError> {
        match token {
            None if self.anonymous => Ok(Session::anonymous()),
            None => Err(AuthError::Missing),
            Some(t) => {
                let now = self.clock.now_ms();
                let inner = self.inner.lock().expect("sessions lock");
                match inner.by_token.get(t) {
                    Some(h) if h.expires_ms > now => Ok(h.session.clone()),
                    _ => Err(AuthError::Invalid),
                }
            }
        }
    }

    /// Answer `POST /api/login`: rate limits first (per client address, then failures per
    /// name), then the password.
    fn login_request(&self, addr: Option<SocketAddr>, body: &[u8]) -> Response {
        // Behind a reverse proxy every client has the proxy's address: the proxy should
        // limit per client itself (docs/SECURITY.md); this still caps the total.
        // An IPv6 client holds a whole /64 as a rule: one key for it, not one per address.
        let ip = match addr.map(|a| a.ip()) {
            None => "unknown".to_string(),
            Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
            Some(std::net::IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        };
        if let Err(wait) = self.login_by_addr.hit(&ip) {
            tracing::warn!(client = %ip, "command wall logins from one address over the limit");
            return too_many("login", "rate_addr", wait);
        }
        let req = match LoginRequest::parse(body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let name = req.name.trim();
        if let Err(wait) = self.failures_by_name.check(name) {
            tracing::warn!(user = ?name, client = %ip, "command wall login refused: too many failures for this name");
            return too_many("login", "rate_name", wait);
        }
        match self.login(name, &req.password) {
            Ok((token, session, expires_ms)) => warp::reply::json(&serde_json::json!({
                "token": token,
                "name": session.name,
                "role": session.role,
                "can_act": session.can_act(),
                "expires_ms": expires_ms,
            }))
            .into_response(),
            Err(e) => {
                let _ = self.failures_by_name.hit(name);
                guard::count("login", "bad_credentials");
                tracing::warn!(user = ?name, client = %ip, "command wall login refused");
                unauthorized(&e)
            }
        }
    }

    /// Take one action from this user's allowance; `Some` is the 429 to answer instead.
    pub fn action_refusal(&self, user: &str) -> Option<Response> {
        self.actions_by_login
            .hit(user)
            .err()
            .map(|wait| too_many("action", "rate", wait))
    }

    /// A filter giving the bearer token of a request, if it has one.
    pub fn bearer() -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
        warp::header::optional::<String>("authorization").map(|h: Option<String>| {
            h.and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .map(|t| t.trim().to_string())
            })
            .filter(|t| !t.is_empty())
        })
    }

    /// A filter giving the request's session, or why it has none (answer it with
    /// [`unauthorized`]).
    pub fn with_session(
        &self,
    ) -> impl Filter<Extract = (Result<Session, AuthError>,), Error = warp::Rejection> + Clone {
        let me = self.clone();
        Self::bearer().map(move |token: Option<String>| me.session(token.as_deref()))
    }

    /// `POST /api/login`, `POST /api/logout`, `GET /api/me`.
    pub fn routes(&self) -> warp::filters::BoxedFilter<(Response,)> {
        let me = self.clone();
        let login = warp::path!("api" / "login")
            .and(warp::post())
            .and(warp::addr::remote())
            .and(warp::body::content_length_limit(4096))
            .and(warp::body::bytes())
            .map(move |addr: Option<SocketAddr>, body: bytes::Bytes| me.login_request(addr, &body));
        let me2 = self.clone();
        let logout = warp::path!("api" / "logout")
            .and(warp::post())
            .and(Self::bearer())
            .map(move |token: Option<String>| {
                if let Some(t) = token {
                    me2.logout(&t);
                }
                StatusCode::NO_CONTENT.into_response()
            });
        let me3 = self.clone();
        let whoami = warp::path!("api" / "me")
            .and(warp::get())
            .and(Self::bearer())
            .map(
                move |token: Option<String>| match me3.session(token.as_deref()) {
                    Ok(s) => warp::reply::json(&serde_json::json!({
                        "name": s.name,
                        "role": s.role,
                        "can_act": s.can_act(),
                    }))
                    .into_response(),
                    Err(e) => unauthorized(&e),
                },
            );
        login.or(logout).unify().or(whoami).unify().boxed()
    }
}

/// A JSON error body with a status.
pub fn error(status: StatusCode, message: String) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}

/// 401 with a `WWW-Authenticate` challenge.
pub fn unauthorized(e: &AuthError) -> Response {
    warp::reply::with_header(
        error(StatusCode::UNAUTHORIZED, e.to_string()),
        "www-authenticate",
        "Bearer realm=\"floodcmd\"",
    )
    .into_response()
}

/// 429 with `Retry-After`, counted.
pub fn too_many(what: &str, reason: &str, wait_s: u64) -> Response {
    guard::count(what, reason);
    warp::reply::with_header(
        error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests; try again in {wait_s} s"),
        ),
        "retry-after",
        wait_s.to_string(),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::time::ManualClock;

    fn user(name: &str, role: UserRole, password: &str) -> DashboardUser {
        DashboardUser {
            name: name.into(),
            role,
            password_sha256: password_sha256(password),
        }
    }

    #[test]
    fn logins_give_tokens_that_expire_and_roles_decide_who_acts() {
        let clock = Arc::new(ManualClock::new(1_000));
        let auth = Auth::new(
            AuthConfig {
                users: vec![
                    user("值班长", UserRole::Commander, "pw1"),
                    user("观察员", UserRole::Viewer, "pw2"),
                ],
                anonymous: false,
                session_ms: 60_000,
                ..AuthConfig::default()
            },
            clock.clone(),
        );
        assert_eq!(
            auth.login("值班长", "nope").unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            auth.login("nobody", "pw1").unwrap_err(),
            AuthError::BadCredentials
        );
        let (t, s, _) = auth.login("值班长", "pw1").unwrap();
        assert!(s.can_act() && s.sees_phones());
        assert_eq!(auth.session(Some(&t)).unwrap(), s);
        let (tv, v, _) = auth.login("观察员", "pw2").unwrap();
        assert!(!v.can_act() && !v.sees_phones());
        assert_eq!(auth.session(None).unwrap_err(), AuthError::Missing);
        clock.advance(60_001);
        assert_eq!(auth.session(Some(&t)).unwrap_err(), AuthError::Invalid);
        auth.logout(&tv);
        assert_eq!(auth.session(Some(&tv)).unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn anonymous_clients_are_viewers_and_phones_are_masked() {
        let auth = Auth::new(AuthConfig::default(), Arc::new(ManualClock::new(0)));
        let s = auth.session(None).unwrap();
        assert!(!s.can_act() && s.name.is_none());
        assert_eq!(mask_phone("13800000001"), "138****0001");
        assert_eq!(mask_phone("029-1234"), "****34");
        assert_eq!(mask_phone(""), "****");
    }
}
