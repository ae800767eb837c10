//! What the wall's unit tests feed in and read back: a point's status as the stream stage
//! would publish it, and what a websocket client holds of the points, modelled as the page's
//! store keeps it (whole views replaced, patches and live rows merged, `null` removing a
//! field), which the tests of the shared deltas compare with the wall's own view.

use crate::state::PointView;
use floodcmd_model::config::Point;
use floodcmd_model::event::PointStatus;
use floodcmd_model::{DataState, Level};
use std::collections::BTreeMap;

/// A fresh, normal status of `point` with nothing measured; tests set what they need.
pub fn fresh_status(point: &Point) -> PointStatus {
    PointStatus {
        point: point.id.as_str().into(),
        kind: point.kind,
        level: Level::Normal,
        data_state: DataState::Fresh,
        depth_cm: None,
        rise_cm_per_min: None,
        rain_10m_mm: None,
        rain_1h_mm: None,
        rain_3h_mm: None,
        rain_24h_mm: None,
        last_reading_ms: Some(1),
        qc_flags: Vec::new(),
        next_level: None,
        minutes_to_next: None,
        flapping: false,
        as_of_ms: 1,
    }
}

/// Each point as JSON fields, by id.
pub type Views = BTreeMap<String, serde_json::Map<String, serde_json::Value>>;

/// `views` as a client holds them.
pub fn views_of(views: &[PointView]) -> Views {
    views
        .iter()
        .map(|v| {
            let serde_json::Value::Object(m) = serde_json::to_value(v).expect("plain data") else {
                unreachable!("a point view serializes to an object")
            };
            (v.id.clone(), m)
        })
        .collect()
}

/// Apply one message (a snapshot or a part of one, a delta) to what a client holds.
pub fn apply(client: &mut Views, msg: &serde_json::Value) {
    if msg["type"] == "snapshot" {
        client.clear();
    }
    for p in msg["points"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().expect("an id").to_string();
        client.insert(id, p.as_object().expect("a view").clone());
    }
    for p in msg["patches"].as_array().into_iter().flatten() {
        let cur = client
            .get_mut(p["id"].as_str().expect("an id"))
            .expect("a patch names a point the client holds");
        for (k, v) in p.as_object().expect("a patch") {
            if v.is_null() {
                cur.remove(k);
            } else {
                cur.insert(k.clone(), v.clone());
            }
        }
    }
    // Live rows: `[id, live_depth_cm, live_ms]`, a null removing its field.
    for row in msg["live"].as_array().into_iter().flatten() {
        let cur = client
            .get_mut(row[0].as_str().expect("an id"))
            .expect("a live row names a point the client holds");
        for (k, v) in ["live_depth_cm", "live_ms"]
            .into_iter()
            .zip([&row[1], &row[2]])
        {
            if v.is_null() {
                cur.remove(k);
            } else {
                cur.insert(k.into(), v.clone());
            }
        }
    }
}
