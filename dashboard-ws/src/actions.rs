//! The actions API the command wall's buttons call: acknowledge, check in (on behalf of a
//! person), closure steps, notes. Each accepted request becomes one attributed [`Action`] on
//! the `actions` topic, keyed by incident so an incident's actions stay in order; the alerts
//! stage applies it and the incident's new version (with the timeline line) comes back to
//! every wall through the `incidents` topic.
//!
//! `POST /api/incidents/{id}/actions` with `Authorization: Bearer <token>` (from
//! `POST /api/login`) and a JSON body: the [`ActionKind`] fields (`kind` plus its own). The
//! acting user is the token's user, never a field of the body, so every action is attributed
//! to whoever logged in. Answers 202 with the action id, 401 without a valid login, 403 for a
//! viewer, 400 naming the field that is wrong, 413 over 16 KiB, 503 when the bus cannot take
//! it.

use crate::auth::{error, unauthorized, Auth, AuthError, Session};
use crate::guard;
use floodcmd_model::bus::Producer;
use floodcmd_model::codec::encode;
use floodcmd_model::event::{Action, ActionKind};
use floodcmd_model::time::Clock;
use floodcmd_model::topic::Topics;
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

const MAX_BODY: u64 = 16 * 1024;
const MAX_NOTE_CHARS: usize = 2000;

#[derive(Deserialize)]
struct Request {
    #[serde(flatten)]
    kind: ActionKind,
    /// Refused when present: the acting user comes from the login.
    #[serde(default)]
    by: Option<serde_json::Value>,
}

/// Why a request was refused, naming the field.
fn check(incident: &str, r: &Request) -> Result<(), String> {
    if incident.is_empty() || incident.len() > 200 {
        return Err("incident: must be 1 to 200 characters".into());
    }
    if r.by.is_some() {
        return Err("by: the acting user is the one logged in; leave it out".into());
    }
    let location = |lat: f64, lon: f64| {
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            Err(format!("lat: {lat} is not a latitude"))
        } else if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            Err(format!("lon: {lon} is not a longitude"))
        } else {
            Ok(())
        }
    };
    match &r.kind {
        ActionKind::CheckIn { lat, lon, .. } | ActionKind::Reopen { lat, lon } => {
            location(*lat, *lon)
        }
        ActionKind::Note { text } if text.trim().is_empty() => {
            Err("text: a note must not be empty".into())
        }
        ActionKind::Note { text } if text.chars().count() > MAX_NOTE_CHARS => {
            Err(format!("text: at most {MAX_NOTE_CHARS} characters"))
        }
        _ => Ok(()),
    }
}

/// An action request as the route gets it: the incident id's path segment (perhaps
/// percent-escaped) and the body. The incident id and what to do, or why the request is
/// refused, naming the field (answered with 400).
pub fn parse_request(incident: &str, body: &[u8]) -> Result<(String, ActionKind), String> {
    let incident = percent_decode(incident);
    let req: Request = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    check(&incident, &req)?;
    Ok((incident, req.kind))
}

/// The route.
pub fn route(
    producer: Arc<dyn Producer>,
    topics: Topics,
    clock: Arc<dyn Clock>,
    auth: Auth,
) -> warp::filters::BoxedFilter<(Response,)> {
    let seq = Arc::new(AtomicU64::new(0));
    warp::path!("api" / "incidents" / String / "actions")
        .and(warp::post())
        .and(auth.with_session())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .then(move |incident: String, session: Result<Session, AuthError>, body: bytes::Bytes| {
            let (producer, topics, clock, seq, auth) =
                (producer.clone(), topics.clone(), clock.clone(), seq.clone(), auth.clone());
            async move {
                let session = match session {
                    Ok(s) if s.name.is_some() => s,
                    // An anonymous viewer has not logged in: 401, as without a token.
                    Ok(_) => {
                        guard::count("action", "no_login");
                        return unauthorized(&AuthError::Missing);
                    }
                    Err(e) => {
                        guard::count("action", "no_login");
                        return unauthorized(&e);
                    }
                };
                let Some(by) = session.name.clone().filter(|_| session.can_act()) else {
                    guard::count("action", "role");
                    tracing::warn!(user = ?session.name, role = session.role.as_str(), "wall action refused: role may not act");
                    return error(
                        StatusCode::FORBIDDEN,
                        format!(
                            "role {}: only commanders and admins act on incidents",
                            session.role.as_str()
                        ),
                    );
                };
                if let Some(too_many) = auth.action_refusal(&by) {
                    tracing::warn!(user = %by, "wall actions over the limit");
                    return too_many;
                }
                let (incident, kind) = match parse_request(&incident, &body) {
                    Ok(r) => r,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e),
                };
                let at_ms = clock.now_ms();
                let action = Action {
                    id: format!("wall-{at_ms}-{}", seq.fetch_add(1, Ordering::Relaxed)),
                    incident: incident.clone(),
                    kind,
                    by,
                    at_ms,
                };
                tracing::info!(user = %action.by, incident = %action.incident, kind = action.kind.as_str(), "wall action");
                match producer
                    .send(
                        &topics.actions(),
                        incident.as_bytes(),
                        encode(&action),
                        at_ms,
                    )
                    .await
                {
                    Ok(_) => warp::reply::with_status(
                        warp::reply::json(&serde_json::json!({ "id": action.id })),
                        StatusCode::ACCEPTED,
                    )
                    .into_response(),
                    Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("bus: {e}")),
                }
            }
        })
        .boxed()
}

/// Incident ids contain `:`; browsers may send it escaped. A `%` not followed by two hex
/// digits stays as it is; bytes that are not UTF-8 once decoded become U+FFFD.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_ids_are_decoded_and_bad_requests_name_the_field() {
        assert_eq!(percent_decode("UP-09%3Awater%3A1"), "UP-09:water:1");
        assert_eq!(percent_decode("abc%"), "abc%");
        // Found by fuzzing (fuzz/wall_requests): a `%` before a multi-byte character
        // panicked slicing the text inside the character.
        assert_eq!(percent_decode("%a厰"), "%a厰");
        assert_eq!(percent_decode("%厰"), "%厰");
        assert_eq!(
            percent_decode("%+f%2B"),
            "%+f+",
            "a sign is not a hex digit"
        );
        let r: Request =
            serde_json::from_str(r#"{"kind":"check_in","lat":91,"lon":108.9}"#).unwrap();
        assert!(check("i", &r).unwrap_err().starts_with("lat:"));
        let r: Request = serde_json::from_str(r#"{"kind":"acknowledge","by":"someone"}"#).unwrap();
        assert!(check("i", &r).unwrap_err().starts_with("by:"));
        let r: Request =
            serde_json::from_str(r#"{"kind":"closure_step","stage":"receding"}"#).unwrap();
        assert!(check("i", &r).is_ok());
    }
}
