//! The fictional organisation an imported storm needs: the validator insists that every point
//! has a complete five-level chain (五级包保), and real data sets have sensors, not people.
//!
//! Given the real points and a grouping of them (sub-district → community → grid), this builds
//! the [`DistrictFile`]: one district duty leader and one maintenance contact, one cadre per
//! sub-district, one director per community, one worker per grid and two owners (A and B posts)
//! per point. Names are drawn in a fixed order from common surnames and given names, as
//! `scripts/gen_xincheng.py` does; phones are the fake `1380000xxxx` range. Everything is
//! deterministic, so the same data gives the same TOML byte for byte.

use crate::ImportError;
use floodcmd_model::config::{
    ClosurePolicy, Community, Defaults, DistrictFile, DistrictInfo, Escalation, Grid, Person,
    PointConfig, PointKind, SensorConfig, SubDistrict, ThresholdOverrides,
};
use floodcmd_model::District;
use std::collections::{BTreeMap, HashSet};

/// One real point and where it sits in the (fictional) organisation.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    pub point_id: String,
    pub name: String,
    pub kind: PointKind,
    pub lat: f64,
    pub lon: f64,
    pub sensor: SensorConfig,
    /// `(id, name)` of its sub-district (街道).
    pub sub_district: (String, String),
    /// `(id, name)` of its community (社区).
    pub community: (String, String),
    /// `(id, name)` of its grid (网格).
    pub grid: (String, String),
}

/// The district itself.
pub(crate) struct DistrictSpec {
    pub id: String,
    pub name: String,
    pub sms_signature: String,
    pub defaults: Defaults,
}

const SURNAMES: &str = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董程曹袁邓许沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎\
余潘杜戴夏钟汪田任姜范方石姚谭廖邹熊金陆郝孔白崔康毛邱秦江史顾侯邵孟万段雷钱汤尹黎易常武乔贺";
const GIVEN: [&str; 40] = [
    "建华", "晓燕", "志强", "秀兰", "海涛", "丽娟", "文博", "静怡", "国栋", "雅琴", "振宇", "玉梅",
    "俊杰", "淑芳", "鹏飞", "春燕", "立新", "红霞", "宏伟", "晓东", "亚楠", "永刚", "桂英", "子涵",
    "佳琪", "明轩", "雪梅", "德胜", "美玲", "卫东", "小军", "丽萍", "建军", "慧敏", "少华", "秋菊",
    "思远", "晓峰", "婉清", "嘉伟",
];
/// The fake range has four free digits.
const MAX_PEOPLE: usize = 9999;

struct People {
    rows: Vec<Person>,
    surnames: Vec<char>,
    names: HashSet<String>,
    k: usize,
}

impl People {
    fn new() -> Self {
        People {
            rows: Vec::new(),
            surnames: SURNAMES.chars().collect(),
            names: HashSet::new(),
            k: 0,
        }
    }

    /// Surname and given name step through their lists at different strides, skipping a
    /// name already given; once every pair is used (3,760 people) a number tells them apart.
    fn next_name(&mut self, n: usize) -> String {
        let pairs = self.surnames.len() * GIVEN.len();
        while self.k < pairs * 2 {
            let k = self.k;
            self.k += 1;
            let name = format!(
                "{}{}",
                self.surnames[(k * 7) % self.surnames.len()],
                GIVEN[(k * 11 + k / GIVEN.len()) % GIVEN.len()]
            );
            if self.names.insert(name.clone()) {
                return name;
            }
        }
        format!(
            "{}{}{n}",
            self.surnames[n % self.surnames.len()],
            GIVEN[n % GIVEN.len()]
        )
    }

    fn add(&mut self, title: String) -> Result<String, ImportError> {
        let n = self.rows.len() + 1;
        if n > MAX_PEOPLE {
            return Err(ImportError::TooManyPeople { max: MAX_PEOPLE });
        }
        let name = self.next_name(n);
        let id = format!("P{n:04}");
        self.rows.push(Person {
            id: id.clone(),
            name,
            phone: format!("1380000{n:04}"),
            title,
        });
        Ok(id)
    }
}

/// Build the district file for `sites` (in the order given, which becomes file order).
pub(crate) fn district_file(
    spec: DistrictSpec,
    sites: &[Site],
) -> Result<DistrictFile, ImportError> {
    let mut people = People::new();
    let duty_leader = people.add(format!("{}防汛指挥部值班领导", spec.name))?;
    let maintenance = people.add("设备运维".into())?;

    let mut subs: BTreeMap<String, SubDistrict> = BTreeMap::new();
    let mut comms: BTreeMap<String, Community> = BTreeMap::new();
    let mut grids: BTreeMap<String, Grid> = BTreeMap::new();
    let mut points = Vec::with_capacity(sites.len());
    for s in sites {
        if !subs.contains_key(&s.sub_district.0) {
            let cadre = people.add(format!("{} 街道包保干部", s.sub_district.1))?;
            subs.insert(
                s.sub_district.0.clone(),
                SubDistrict {
                    id: s.sub_district.0.clone(),
                    name: s.sub_district.1.clone(),
                    cadre,
                },
            );
        }
        if !comms.contains_key(&s.community.0) {
            let director = people.add(format!("{} 社区主任", s.community.1))?;
            comms.insert(
                s.community.0.clone(),
                Community {
                    id: s.community.0.clone(),
                    name: s.community.1.clone(),
                    sub_district: s.sub_district.0.clone(),
                    director,
                },
            );
        }
        if !grids.contains_key(&s.grid.0) {
            let worker = people.add(format!("{} 网格员", s.grid.1))?;
            grids.insert(
                s.grid.0.clone(),
                Grid {
                    id: s.grid.0.clone(),
                    name: s.grid.1.clone(),
                    community: s.community.0.clone(),
                    worker,
                },
            );
        }
        let owner_a = people.add(format!("{} 点位责任人(A岗)", s.name))?;
        let owner_b = people.add(format!("{} 点位责任人(B岗)", s.name))?;
        points.push(PointConfig {
            id: s.point_id.clone(),
            name: s.name.clone(),
            kind: s.kind,
            grid: s.grid.0.clone(),
            lat: s.lat,
            lon: s.lon,
            owner_a,
            owner_b,
            camera: None,
            rain_gauge: None,
            plan: String::new(),
            sensors: vec![s.sensor.clone()],
            thresholds: ThresholdOverrides::default(),
        });
    }
    Ok(DistrictFile {
        district: DistrictInfo {
            id: spec.id,
            name: spec.name,
            sms_signature: spec.sms_signature,
            duty_leader,
            maintenance: Some(maintenance),
        },
        defaults: spec.defaults,
        escalation: Escalation::default(),
        closure: ClosurePolicy::default(),
        people: people.rows,
        sub_districts: subs.into_values().collect(),
        communities: comms.into_values().collect(),
        grids: grids.into_values().collect(),
        cameras: Vec::new(),
        points,
    })
}

/// Write the file as TOML behind a comment block, and prove it by parsing it back through the
/// model's validator: what the importer returns is exactly what a replay will load.
pub(crate) fn to_toml(
    comment: &str,
    file: &DistrictFile,
) -> Result<(String, District), ImportError> {
    let body = toml::to_string(file).map_err(|e| ImportError::Toml(e.to_string()))?;
    // Points never get overrides here; drop the empty tables the serializer writes for them.
    let body = body.replace("\n[points.thresholds]\n", "\n");
    let mut text = String::with_capacity(body.len() + comment.len() + 64);
    for line in comment.lines() {
        if line.is_empty() {
            text.push_str("#\n");
        } else {
            text.push_str("# ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push('\n');
    text.push_str(&body);
    let district = District::from_toml_str(&text).map_err(ImportError::District)?;
    Ok((text, district))
}

/// Ids in the generated config are ASCII letters, digits, `-`, `_` and `.`: they end up in
/// Kafka keys, URLs and line-protocol tags. Common accented letters fold to their base letter
/// (FloodNet has `BX-louis-niñé-bl-...`); anything else becomes `-`.
pub(crate) fn sanitize_id(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ñ' => 'n',
            'ç' => 'c',
            'Á' | 'À' | 'Â' | 'Ä' | 'Ã' | 'Å' => 'A',
            'É' | 'È' | 'Ê' | 'Ë' => 'E',
            'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
            'Ó' | 'Ò' | 'Ô' | 'Ö' | 'Õ' => 'O',
            'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
            'Ñ' => 'N',
            'Ç' => 'C',
            _ => '-',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fold_accents_and_replace_the_rest() {
        assert_eq!(
            sanitize_id("BX-louis-niñé-bl-southern-bl-0pmu80"),
            "BX-louis-nine-bl-southern-bl-0pmu80"
        );
        assert_eq!(sanitize_id("a b/c"), "a-b-c");
    }

    #[test]
    fn names_do_not_repeat_within_the_first_thousands() {
        let mut p = People::new();
        for _ in 0..5000 {
            p.add("t".into()).unwrap();
        }
        let names: std::collections::HashSet<_> = p.rows.iter().map(|r| &r.name).collect();
        assert_eq!(names.len(), 5000);
        assert_eq!(p.rows[0].phone, "13800000001");
        assert_eq!(p.rows[2999].phone, "13800003000");
    }
}
