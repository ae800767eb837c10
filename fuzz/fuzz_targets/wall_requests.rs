//! What a browser sends the command wall. The first byte picks the input:
//! - 0: the websocket's `?resume=<epoch>.<seq>` (`server::parse_resume`), then the feed's
//!   answer to it;
//! - 1: an action: the incident id's path segment, a newline, the JSON body
//!   (`actions::parse_request`); an accepted action must survive the bus to the alerts stage
//!   (encode, then decode as an `Action`);
//! - 2: a login body (`auth::LoginRequest::parse`), then the login itself.
#![no_main]

use floodcmd_dashboard::actions::parse_request;
use floodcmd_dashboard::auth::{password_sha256, Auth, AuthConfig, LoginRequest};
use floodcmd_dashboard::feed::{Feed, Resume};
use floodcmd_dashboard::server::parse_resume;
use floodcmd_dashboard::state::{Change, Counters};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{Action, ActionKind};
use floodcmd_model::settings::{DashboardUser, UserRole};
use floodcmd_model::time::ManualClock;
// The allocation limits (`LimitedAlloc`) are in the shared crate.
use floodcmd_fuzz as _;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn auth() -> &'static Auth {
    static A: OnceLock<Auth> = OnceLock::new();
    A.get_or_init(|| {
        Auth::new(
            AuthConfig {
                users: vec![DashboardUser {
                    name: "值班长".into(),
                    role: UserRole::Commander,
                    password_sha256: password_sha256("pw"),
                }],
                anonymous: true,
                session_ms: 60_000,
                // No limits: the target is the parsers, not the limiter.
                login_per_min: 0,
                actions_per_min: 0,
            },
            Arc::new(ManualClock::new(0)),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Some((epoch, seq)) = parse_resume(&text) {
                assert_eq!(
                    parse_resume(&format!("{epoch}.{seq}")),
                    Some((epoch.clone(), seq))
                );
                let mut feed = Feed::new(4, 4);
                for n in 0..6 {
                    feed.publish(Change::Counters(Counters {
                        rejects: n,
                        ..Counters::default()
                    }));
                }
                // "e" stands for this feed's own run, so the ring is reached too.
                let epoch = if epoch == "e" {
                    feed.epoch().to_string()
                } else {
                    epoch
                };
                if let Resume::Missed(d) = feed.resume(&epoch, seq) {
                    assert!(seq <= feed.seq());
                    assert!(d.last_seq().is_none_or(|s| s > seq));
                }
            }
        }
        1 => {
            let (segment, body) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            // warp gives the route the segment as text.
            let Ok(segment) = std::str::from_utf8(segment) else {
                return;
            };
            match parse_request(segment, body) {
                Ok((incident, kind)) => {
                    assert!(!incident.is_empty());
                    if let ActionKind::CheckIn { lat, lon, .. } | ActionKind::Reopen { lat, lon } =
                        &kind
                    {
                        assert!(lat.is_finite() && lon.is_finite());
                    }
                    let action = Action {
                        id: "wall-1-0".into(),
                        incident,
                        kind,
                        by: "值班长".into(),
                        at_ms: 1,
                    };
                    let back: Action = decode(&encode(&action)).expect("the alerts stage reads it");
                    assert_eq!(back, action);
                }
                Err(why) => assert!(!why.is_empty()),
            }
        }
        _ => match LoginRequest::parse(rest) {
            Ok(req) => match auth().login(req.name.trim(), &req.password) {
                Ok((token, _, _)) => {
                    assert!(req.name.trim() == "值班长" && req.password == "pw");
                    auth().logout(&token);
                }
                Err(_) => assert!(req.name.trim() != "值班长" || req.password != "pw"),
            },
            Err(why) => assert!(!why.is_empty()),
        },
    }
});
