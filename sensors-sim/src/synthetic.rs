//! A synthetic district of any size, for load tests: `--district synthetic:N` gives N depth
//! points (a third of them underpasses) plus one rain gauge per 10 points, on a grid over
//! Xincheng's bounding box, each with a complete chain of generated people.

use floodcmd_model::config::{
    Camera, Community, Defaults, DistrictFile, DistrictInfo, Escalation, Grid, Person, PointConfig,
    PointKind, SensorConfig, SubDistrict, ThresholdOverrides,
};
use floodcmd_model::SensorKind;

/// A district file with `n` depth points and `n / 10` (at least 1) rain gauges.
pub fn synthetic_district(n: usize) -> DistrictFile {
    let person = |i: usize, title: &str| Person {
        id: format!("P{i}"),
        name: format!("测试人员{i}"),
        phone: format!("138{:08}", i % 100_000_000),
        title: title.into(),
    };
    let gauges = (n / 10).max(1);
    let total = n + gauges;
    let mut people = vec![
        person(0, "值班领导"),
        person(1, "街道干部"),
        person(2, "社区主任"),
        person(3, "网格员"),
    ];
    let mut points = Vec::with_capacity(total);
    let mut cameras = Vec::new();
    let side = (total as f64).sqrt().ceil() as usize;
    for i in 0..total {
        let (kind, id, sensor_kind, sensor_id) = if i < n {
            let kind = if i % 3 == 0 {
                PointKind::Underpass
            } else {
                PointKind::LowPoint
            };
            (
                kind,
                format!("SP-{i}"),
                SensorKind::Depth,
                format!("SW-{i}"),
            )
        } else {
            (
                PointKind::RainGauge,
                format!("SG-{i}"),
                SensorKind::Rain,
                format!("SR-{i}"),
            )
        };
        let a = 10 + 2 * i;
        people.push(person(a, "点位责任人"));
        people.push(person(a + 1, "点位责任人"));
        let camera = (kind != PointKind::RainGauge).then(|| {
            cameras.push(Camera {
                id: format!("C-{i}"),
                name: format!("{id} 摄像头"),
                stream: String::new(),
            });
            format!("C-{i}")
        });
        points.push(PointConfig {
            id: id.clone(),
            name: format!("合成点位{i}"),
            kind,
            grid: "g".into(),
            lat: 34.255 + 0.045 * (i / side) as f64 / side as f64,
            lon: 108.945 + 0.075 * (i % side) as f64 / side as f64,
            owner_a: format!("P{a}"),
            owner_b: format!("P{}", a + 1),
            camera,
            rain_gauge: None,
            plan: String::new(),
            sensors: vec![SensorConfig {
                id: sensor_id,
                kind: sensor_kind,
                calibration_offset_cm: 0.0,
            }],
            thresholds: ThresholdOverrides::default(),
        });
    }
    DistrictFile {
        district: DistrictInfo {
            id: format!("synthetic-{n}"),
            name: format!("合成区({n})"),
            sms_signature: "合成区防汛".into(),
            duty_leader: "P0".into(),
            maintenance: None,
        },
        defaults: Defaults::default(),
        escalation: Escalation::default(),
        closure: Default::default(),
        people,
        sub_districts: vec![SubDistrict {
            id: "s".into(),
            name: "合成街道".into(),
            cadre: "P1".into(),
        }],
        communities: vec![Community {
            id: "c".into(),
            name: "合成社区".into(),
            sub_district: "s".into(),
            director: "P2".into(),
        }],
        grids: vec![Grid {
            id: "g".into(),
            name: "合成网格".into(),
            community: "c".into(),
            worker: "P3".into(),
        }],
        cameras,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::District;

    #[test]
    fn a_synthetic_district_is_valid() {
        let d = District::from_file(synthetic_district(1000)).unwrap();
        assert_eq!(d.points.len(), 1100);
        assert!(d.sensor("SW-999").is_some());
    }
}
