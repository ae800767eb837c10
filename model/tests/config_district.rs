//! The district file from a user's side: the sample parses, broken files name what is wrong.

use floodcmd_model::config::{Defaults, LevelThresholds, PointKind, ResponsibilityLevel};
use floodcmd_model::{District, Level};
use std::sync::Arc;

const SAMPLE: &str = include_str!("../../config/xincheng.toml");

/// A small valid district; tests break one thing at a time.
const MINI: &str = r#"
[district]
id = "mini"
name = "小区"
sms_signature = "小区防汛"
duty_leader = "lead"

[[people]]
id = "lead"
name = "值班领导"
phone = "13800000001"
[[people]]
id = "cadre"
name = "街道干部"
phone = "13800000002"
[[people]]
id = "dir"
name = "社区主任"
phone = "13800000003"
[[people]]
id = "gw"
name = "网格员"
phone = "13800000004"
[[people]]
id = "a"
name = "责任人A"
phone = "13800000005"
[[people]]
id = "b"
name = "责任人B"
phone = "13800000006"

[[sub_districts]]
id = "s1"
name = "一街道"
cadre = "cadre"

[[communities]]
id = "c1"
name = "一社区"
sub_district = "s1"
director = "dir"

[[grids]]
id = "g1"
name = "一网格"
community = "c1"
worker = "gw"

[[cameras]]
id = "cam1"
name = "下穿摄像头"

[[points]]
id = "UP-1"
name = "一号下穿"
kind = "underpass"
grid = "g1"
lat = 34.27
lon = 108.96
owner_a = "a"
owner_b = "b"
camera = "cam1"
rain_gauge = "RG-1"
[[points.sensors]]
id = "WL-1"
kind = "depth"

[[points]]
id = "RG-1"
name = "一号雨量站"
kind = "rain_gauge"
grid = "g1"
lat = 34.28
lon = 108.97
owner_a = "a"
owner_b = "b"
[[points.sensors]]
id = "RN-1"
kind = "rain"
"#;

fn problems(src: &str) -> Vec<String> {
    match District::from_toml_str(src) {
        Ok(_) => panic!("expected the file to be refused"),
        Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
    }
}

fn has(problems: &[String], needle: &str) -> bool {
    problems.iter().any(|p| p.contains(needle))
}

#[test]
fn the_sample_district_is_complete() {
    let d = District::from_toml_str(SAMPLE).expect("the sample district is valid");
    let count = |k| d.points.iter().filter(|p| p.kind == k).count();
    assert!(d.points.len() >= 60);
    assert!(count(PointKind::Underpass) >= 12);
    assert!(count(PointKind::LowPoint) >= 30);
    assert!(count(PointKind::RainGauge) >= 20);
    let names: Vec<&str> = d.sub_districts.iter().map(|s| s.name.as_str()).collect();
    for real in [
        "西一路",
        "长乐中路",
        "中山门",
        "韩森寨",
        "解放门",
        "自强路",
        "太华路",
        "长乐西路",
        "胡家庙",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(real)),
            "sub-district {real} is missing"
        );
    }
    for p in &d.points {
        if p.kind != PointKind::RainGauge {
            assert!(p.camera.is_some(), "{} has no camera", p.id);
        }
        for level in ResponsibilityLevel::CHAIN {
            let people = p.chain.at(level);
            assert!(
                !people.is_empty() && people.iter().all(|x| x.phone.starts_with("1380000")),
                "{} chain at {level:?}",
                p.id
            );
        }
        assert_ne!(p.chain.owner_a.id, p.chain.owner_b.id);
    }
    assert!(d.sensor("WL-UP-01").is_some());
}

#[test]
fn the_mini_district_is_valid() {
    let d = District::from_toml_str(MINI).unwrap();
    let p = d.point("UP-1").unwrap();
    assert_eq!(p.chain.grid_worker.id, "gw");
    assert_eq!(p.chain.sub_district_cadre.id, "cadre");
    assert_eq!(p.chain.district_duty_leader.id, "lead");
    assert_eq!(p.thresholds.red.raise, 25.0, "underpass defaults apply");
    assert_eq!(d.sensor("RN-1").unwrap().point.id, "RG-1");
}

#[test]
fn points_share_their_people_and_default_thresholds() {
    // A copy of six people and four thresholds per point made a synthetic district of
    // 100,000 points take 236 MiB of heap; the shared copies are what keeps it near 114.
    let d = District::from_toml_str(SAMPLE).unwrap();
    let mut shared_defaults: Vec<(PointKind, &Arc<LevelThresholds>)> = Vec::new();
    for p in &d.points {
        for person in [
            &p.chain.owner_a,
            &p.chain.grid_worker,
            &p.chain.district_duty_leader,
        ] {
            assert!(Arc::ptr_eq(person, &d.people[&person.id]), "{}", p.id);
        }
        if *p.thresholds != *d.defaults.for_kind(p.kind) {
            continue;
        }
        match shared_defaults.iter().find(|(kind, _)| *kind == p.kind) {
            Some((_, first)) => assert!(Arc::ptr_eq(first, &p.thresholds), "{}", p.id),
            None => shared_defaults.push((p.kind, &p.thresholds)),
        }
    }
    assert_eq!(
        shared_defaults.len(),
        3,
        "the sample has every kind of point"
    );
}

#[test]
fn red_below_orange_names_the_point_and_level() {
    let src = MINI.replace(
        "[[points.sensors]]\nid = \"WL-1\"",
        "[points.thresholds.red]\nraise = 18.0\nreset = 16.0\n[[points.sensors]]\nid = \"WL-1\"",
    );
    let p = problems(&src);
    assert!(
        has(&p, "points[0].thresholds.red: 18 cm is below orange 20 cm"),
        "{p:?}"
    );
}

#[test]
fn reset_above_raise_is_refused() {
    let src = MINI.replace(
        "[[points.sensors]]\nid = \"WL-1\"",
        "[points.thresholds.blue]\nraise = 10.0\nreset = 12.0\n[[points.sensors]]\nid = \"WL-1\"",
    );
    assert!(has(
        &problems(&src),
        "points[0].thresholds.blue: reset 12 cm is above raise 10 cm"
    ));
}

#[test]
fn unknown_people_and_places_are_named() {
    let src = MINI
        .replace("owner_b = \"b\"\ncamera", "owner_b = \"nobody\"\ncamera")
        .replace("worker = \"gw\"", "worker = \"ghost\"");
    let p = problems(&src);
    assert!(
        has(&p, "points[0].owner_b: unknown person \"nobody\""),
        "{p:?}"
    );
    assert!(
        has(&p, "grids[0].worker: unknown person \"ghost\""),
        "{p:?}"
    );
    let src = MINI.replace("rain_gauge = \"RG-1\"", "rain_gauge = \"UP-1\"");
    assert!(has(
        &problems(&src),
        "points[0].rain_gauge: \"UP-1\" is a underpass, not a rain gauge"
    ));
}

#[test]
fn duplicate_ids_are_named() {
    let src = MINI
        .replace("id = \"RG-1\"", "id = \"UP-1\"")
        .replace("rain_gauge = \"RG-1\"\n", "")
        .replace("id = \"RN-1\"", "id = \"WL-1\"");
    let p = problems(&src);
    assert!(has(&p, "points[1].id: duplicate id \"UP-1\""), "{p:?}");
    assert!(
        has(
            &p,
            "points[1].sensors[0].id: duplicate sensor id \"WL-1\" (also on points[0])"
        ),
        "{p:?}"
    );
}

#[test]
fn a_missing_chain_level_is_refused_with_line_and_column() {
    let src = MINI.replace("owner_b = \"b\"\ncamera = \"cam1\"", "camera = \"cam1\"");
    let p = problems(&src);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("line "), "{p:?}");
    assert!(p[0].contains("owner_b"), "{p:?}");
    let src = MINI.replace("duty_leader = \"lead\"", "duty_leader = \"\"");
    assert!(has(
        &problems(&src),
        "district.duty_leader: unknown person \"\""
    ));
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let src = MINI.replace("name = \"一号下穿\"", "name = \"一号下穿");
    let p = problems(&src);
    assert_eq!(
        p,
        vec!["line 56, column 13: invalid basic string".to_string()]
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let src = MINI
        .replace("phone = \"13800000004\"", "phone = \"12345\"")
        .replace("lat = 34.27", "lat = 134.27")
        .replace("owner_b = \"b\"\ncamera", "owner_b = \"a\"\ncamera");
    let p = problems(&src);
    assert!(
        has(
            &p,
            "people[3].phone: \"12345\" is not an 11-digit mobile number"
        ),
        "{p:?}"
    );
    assert!(has(&p, "points[0].lat: 134.27 is not a latitude"), "{p:?}");
    assert!(
        has(
            &p,
            "points[0].owner_b: the B post must be a different person"
        ),
        "{p:?}"
    );
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn unknown_fields_are_refused() {
    let src = MINI.replace(
        "kind = \"underpass\"",
        "kind = \"underpass\"\ncolour = \"red\"",
    );
    let p = problems(&src);
    assert!(has(&p, "unknown field `colour`"), "{p:?}");
}

/// MINI with `section` added right after the `[district]` table.
fn with_defaults(section: &str) -> String {
    MINI.replace(
        "duty_leader = \"lead\"\n",
        &format!("duty_leader = \"lead\"\n\n{section}\n"),
    )
}

#[test]
fn the_sample_writes_out_exactly_the_built_in_defaults() {
    let d = District::from_toml_str(SAMPLE).unwrap();
    assert_eq!(
        d.defaults,
        Defaults::default(),
        "scripts/gen_xincheng.py and model/src/config.rs disagree"
    );
    for source in [
        &d.defaults.qc.source,
        &d.defaults.rain_intensity.source,
        &d.defaults.flapping.source,
        &d.defaults.rise.source,
    ] {
        assert!(!source.is_empty(), "every default says where it comes from");
    }
}

#[test]
fn a_file_without_the_new_sections_gets_the_defaults() {
    let d = District::from_toml_str(MINI).unwrap();
    assert_eq!(d.defaults.qc.spike_cm, 15.0);
    assert_eq!(d.defaults.qc.median_of, 5);
    assert_eq!(d.defaults.rain_intensity.mm, 20.0);
    assert_eq!(d.defaults.rain_intensity.level, Level::Blue);
    assert_eq!(
        (
            d.defaults.flapping.history,
            d.defaults.flapping.low,
            d.defaults.flapping.high
        ),
        (21, 0.25, 0.5)
    );
    assert_eq!(d.defaults.rise.window_min, 10);
    let d = District::from_toml_str(&with_defaults("[defaults.qc]\nspike_cm = 20.0")).unwrap();
    assert_eq!(d.defaults.qc.spike_cm, 20.0);
    assert_eq!(
        d.defaults.qc.stuck_after_s, 1800,
        "the other fields keep their defaults"
    );
}

#[test]
fn bad_quality_control_and_rule_settings_are_named_by_field() {
    let src = with_defaults(
        "[defaults.qc]\nspike_cm = 0.0\nmedian_of = 0\nrain_max_mm_h = -1.0\n\n\
         [defaults.rain_intensity]\nmm = 20.0\nreset = 25.0\nlevel = \"normal\"\n\n\
         [defaults.flapping]\nlow = 0.6\nhigh = 0.5\n\n\
         [defaults.rise]\nwindow_min = 0",
    );
    let p = problems(&src);
    for needle in [
        "defaults.qc.spike_cm: must be > 0",
        "defaults.qc.median_of: must be 1 to 99, got 0",
        "defaults.qc.rain_max_mm_h: must be > 0",
        "defaults.rain_intensity.reset: reset 25 mm is above mm 20 mm",
        "defaults.rain_intensity.level: must be an alert level",
        "defaults.flapping.low: 0.6 must be below high 0.5",
        "defaults.rise.window_min: must be 1 to 120, got 0",
    ] {
        assert!(has(&p, needle), "{needle} in {p:?}");
    }
    assert_eq!(p.len(), 7, "{p:?}");
}

#[test]
fn unknown_quality_control_fields_are_refused() {
    let p = problems(&with_defaults("[defaults.qc]\nspike_mm = 15.0"));
    assert!(has(&p, "unknown field `spike_mm`"), "{p:?}");
}
