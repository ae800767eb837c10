//! SMS texts, in Chinese, as the people on duty expect them:
//! `【新城区防汛】红色预警 解放门下穿 积水32cm ↑2.1cm/分 请立即封闭并到岗 回复1确认`, and, when the
//! water is rising towards the next level, `... ↑1.2cm/分 预计8分钟后达到红色 ...`.

use floodcmd_model::config::{Point, PointKind};
use floodcmd_model::event::{AlertTransition, Problem};
use floodcmd_model::Level;

/// The text for a water alert at `level`.
pub fn water_alert(signature: &str, point: &Point, level: Level, t: &AlertTransition) -> String {
    let measure = match point.kind {
        PointKind::RainGauge => {
            let window = t.rule.split_whitespace().nth(1).unwrap_or("");
            let window = window.replace("min", "分钟").replace('h', "小时");
            let burst = if t.rule.contains("短时强降水") {
                "(短时强降水)"
            } else {
                ""
            };
            format!("{window}降雨{:.0}mm{burst}", t.value)
        }
        _ => {
            let trend = match t.rise_cm_per_min {
                Some(r) if r >= 0.05 => format!(" ↑{r:.1}cm/分"),
                Some(r) if r <= -0.05 => format!(" ↓{:.1}cm/分", -r),
                _ => String::new(),
            };
            format!("积水{:.0}cm{trend}{}", t.value, forecast(t))
        }
    };
    let action = if !point.plan.is_empty() && level == Level::Red {
        point.plan.clone()
    } else {
        match (point.kind, level) {
            (PointKind::Underpass, Level::Red) => "请立即封闭并到岗".to_string(),
            (_, Level::Red | Level::Orange) => "请立即到岗处置".to_string(),
            _ => "请关注并做好到岗准备".to_string(),
        }
    };
    format!(
        "【{signature}】{}预警 {} {measure} {action} 回复1确认",
        level.zh(),
        point.name
    )
}

/// " 预计8分钟后达到红色" when the stream predicts the next level; whole minutes, rounded down,
/// so the water never comes sooner than the text says.
fn forecast(t: &AlertTransition) -> String {
    match (t.next_level, t.minutes_to_next) {
        (Some(next), Some(m)) if m.is_finite() && m >= 1.0 => {
            format!(" 预计{}分钟后达到{}", m.floor() as u64, next.zh())
        }
        (Some(next), Some(m)) if m.is_finite() && m >= 0.0 => format!(" 即将达到{}", next.zh()),
        _ => String::new(),
    }
}

/// The text for a silent sensor (maintenance).
pub fn silent_sensor(signature: &str, point: &Point) -> String {
    format!(
        "【{signature}】设备失联 {} 监测设备无数据 请安排排查 回复1确认",
        point.name
    )
}

/// The text for an escalation step: the person below did not answer (or did not get there),
/// so the next rung up is told, with the reason.
/// `【新城区防汛】红色预警(逐级上报) 解放门下穿 积水32cm 点位责任人(A岗)张三 未确认 请督促处置并到岗 回复1确认`.
pub fn escalated(
    signature: &str,
    point: &Point,
    problem: Problem,
    level: Level,
    value: f64,
    reason: Option<&str>,
) -> String {
    let why = reason.map(|r| format!(" {r}")).unwrap_or_default();
    match problem {
        Problem::Silent => format!(
            "【{signature}】设备失联(逐级上报) {} 监测设备无数据{why} 请安排排查 回复1确认",
            point.name
        ),
        Problem::Water => {
            let measure = match point.kind {
                PointKind::RainGauge => format!("降雨{value:.0}mm"),
                _ => format!("积水{value:.0}cm"),
            };
            format!(
                "【{signature}】{}预警(逐级上报) {} {measure}{why} 请督促处置并到岗 回复1确认",
                level.zh(),
                point.name
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::event::TransitionKind;
    use floodcmd_model::District;

    fn transition(next_level: Option<Level>, minutes_to_next: Option<f64>) -> AlertTransition {
        AlertTransition {
            point: "UP-09".into(),
            point_kind: PointKind::Underpass,
            transition: TransitionKind::Upgraded,
            from: Level::Yellow,
            to: Level::Orange,
            event_ms: 0,
            processed_ms: 0,
            rule: "depth 21.0 cm >= orange 20 cm".into(),
            value: 21.0,
            rise_cm_per_min: Some(0.5),
            late: false,
            next_level,
            minutes_to_next,
            flapping: false,
        }
    }

    #[test]
    fn a_rising_point_says_when_it_will_reach_the_next_level() {
        let d = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
        let p = d.point("UP-09").unwrap();
        let text = water_alert(
            "新城区防汛",
            p,
            Level::Orange,
            &transition(Some(Level::Red), Some(8.4)),
        );
        assert!(
            text.contains("积水21cm ↑0.5cm/分 预计8分钟后达到红色 "),
            "{text}"
        );
        let text = water_alert(
            "新城区防汛",
            p,
            Level::Orange,
            &transition(Some(Level::Red), Some(0.0)),
        );
        assert!(text.contains(" 即将达到红色 "), "{text}");
        let text = water_alert("新城区防汛", p, Level::Orange, &transition(None, None));
        assert!(!text.contains("预计") && !text.contains("即将"), "{text}");
    }
}
