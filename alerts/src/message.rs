//! SMS texts, in Chinese, as the people on duty expect them:
//! `【新城区防汛】红色预警 解放门下穿 积水32cm ↑2.1cm/分 请立即封闭并到岗 回复1确认`.

use floodcmd_model::config::{Point, PointKind};
use floodcmd_model::event::AlertTransition;
use floodcmd_model::Level;

/// The text for a water alert at `level`.
pub fn water_alert(signature: &str, point: &Point, level: Level, t: &AlertTransition) -> String {
    let measure = match point.kind {
        PointKind::RainGauge => {
            let window = t.rule.split_whitespace().nth(1).unwrap_or("");
            let window = window.replace("min", "分钟").replace('h', "小时");
            format!("{window}降雨{:.0}mm", t.value)
        }
        _ => {
            let trend = match t.rise_cm_per_min {
                Some(r) if r >= 0.05 => format!(" ↑{r:.1}cm/分"),
                Some(r) if r <= -0.05 => format!(" ↓{:.1}cm/分", -r),
                _ => String::new(),
            };
            format!("积水{:.0}cm{trend}", t.value)
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

/// The text for a silent sensor (maintenance).
pub fn silent_sensor(signature: &str, point: &Point) -> String {
    format!(
        "【{signature}】设备失联 {} 监测设备无数据 请安排排查 回复1确认",
        point.name
    )
}

/// Split a long text into SMS segments of at most `max_chars` characters each (70 for a
/// single UCS-2 SMS, 67 per part of a concatenated one), never inside a character.
pub fn segments(text: &str, max_chars: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 70 {
        return vec![text.to_string()];
    }
    chars
        .chunks(max_chars.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_split_on_character_boundaries() {
        let text = "积".repeat(150);
        let parts = segments(&text, 67);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.chars().count() <= 67));
        assert_eq!(parts.concat(), text);
        assert_eq!(segments("短信", 67), vec!["短信".to_string()]);
    }
}
