#!/usr/bin/env python3
"""Generate config/xincheng.toml, the district file of 西安市新城区 (Xincheng District, Xi'an).

Usage:
    python3 scripts/gen_xincheng.py            # writes config/xincheng.toml next to this script's repo
    python3 scripts/gen_xincheng.py --stdout   # prints the TOML instead

The output is deterministic (no clock, no random module: jitter comes from md5 of fixed strings),
so re-running it reproduces the committed file byte for byte. Python 3.11 stdlib only.

What is real and what is not:
  * The nine sub-districts (街道) are the real ones of 新城区.
  * Community (社区) and grid (网格) names are plausible, built from real road and place names;
    they are not an official roster.
  * Every person is fictional; every phone number is fake (1380000xxxx).
  * Point names use real road names of the area, but which intersections flood is illustrative.
  * Coordinates are approximate (WGS84): each sub-district gets its own rectangle of the district's
    bounding box and its points are spread over it, so the map looks sensible, not surveyed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Defaults: copied from model/src/config.rs (LevelThresholds::*_default, Cadence::default,
# QualityControl, RainIntensityRule, Flapping and Rise defaults, Escalation::default). Keep in
# sync by hand.
# ---------------------------------------------------------------------------------------------

LOW_SRC = "domain notes default (城市内涝 10-25 cm scale; Shanghai 25 cm no-passage)"
DEFAULTS = {
    "low_point": [
        ("blue", 10.0, 8.0, 60, None, LOW_SRC),
        ("yellow", 15.0, 13.0, 60, None, LOW_SRC),
        ("orange", 20.0, 18.0, 60, None, LOW_SRC),
        ("red", 25.0, 22.0, 60, None, LOW_SRC),
    ],
    "underpass": [
        ("blue", 10.0, 8.0, 30, None, "domain notes default"),
        ("yellow", 15.0, 13.0, 30, None, "domain notes default"),
        ("orange", 20.0, 18.0, 30, None, "Shanghai Putuo closed a tunnel at ~20 cm (2021-07-26)"),
        ("red", 25.0, 22.0, 30, None, "Shanghai: closure above 25 cm; Xi'an staff line 30 cm"),
    ],
    "rain_gauge": [
        ("blue", 50.0, 40.0, 0, 720, "暴雨蓝色预警信号: 12 h ≥ 50 mm"),
        ("yellow", 50.0, 40.0, 0, 360, "暴雨黄色预警信号: 6 h ≥ 50 mm"),
        ("orange", 50.0, 40.0, 0, 180, "暴雨橙色预警信号: 3 h ≥ 50 mm"),
        ("red", 100.0, 80.0, 0, 180, "暴雨红色预警信号: 3 h ≥ 100 mm"),
    ],
}
CADENCE = [
    ("depth_normal_s", 600),
    ("depth_storm_s", 60),
    ("rain_normal_s", 300),
    ("rain_storm_s", 60),
    ("silent_after_missed", 3),
]
# Quality control, the short-duration heavy rain rule, flap detection and rate of rise: the
# Rust defaults of QualityControl, RainIntensityRule, Flapping and Rise. Values are TOML literals
# (str goes through s(), float through f(), int as is).
EXTRA_DEFAULTS = [
    ("qc", [
        ("spike_cm", 15.0),
        ("median_of", 5),
        ("max_rate_cm_per_min", 10.0),
        ("stuck_after_s", 1800),
        ("stuck_after_readings", 10),
        ("rain_max_mm_h", 200.0),
        ("rain_min_interval_s", 60),
        ("source", "floodcmd defaults: median of 5 as FloodNet sensors do; 15 cm spike, "
                   "10 cm/min rate, stuck = same value ≥ 30 min and ≥ 10 readings; rain cap "
                   "200 mm/h (mainland hourly record 201.9 mm, Zhengzhou 2021-07-20; Houston "
                   "gauge 520's 100.6 mm in 5 min during Harvey was a fault)"),
    ]),
    ("rain_intensity", [
        ("window_min", 60),
        ("mm", 20.0),
        ("reset", 16.0),
        ("level", "blue"),
        ("source", "短时强降水 ≥ 20 mm/h (operational convention, domain notes); reset at 80 % "
                   "like the rainstorm signal rules here"),
    ]),
    ("flapping", [
        ("history", 21),
        ("low", 0.25),
        ("high", 0.5),
        ("source", "Kapacitor flap detection: history 21, low 0.25, high 0.5 (domain notes)"),
    ]),
    ("rise", [
        ("window_min", 10),
        ("min_cm_per_min", 0.1),
        ("horizon_min", 60),
        ("source", "floodcmd defaults: 10 min least squares; below 0.1 cm/min or beyond 60 min "
                   "a prediction is noise"),
    ]),
]
# Escalation per level (the Rust defaults): rungs told at once, the highest rung it climbs to,
# seconds to acknowledge, seconds from acknowledgement to on-site check-in (到岗), repeat loops.
ESCALATION = [
    ("blue", ["owner_a"], "grid", 900, 3600, 0),
    ("yellow", ["owner_a", "grid"], "community", 600, 1800, 1),
    ("orange", ["owner_a", "owner_b", "grid"], "sub_district", 300, 1200, 2),
    ("red", ["owner_a", "owner_b", "grid", "community", "sub_district"], "district", 180, 900, 3),
    ("silent", ["grid"], "grid", 1800, 7200, 0),
]

# ---------------------------------------------------------------------------------------------
# Geography. Box of the district: lat 34.255-34.300, lon 108.945-109.020 (approximate, WGS84).
# Each sub-district gets its own rectangle (lat_min, lat_max, lon_min, lon_max); the rectangles
# do not overlap.
# ---------------------------------------------------------------------------------------------

LAT_BOX = (34.255, 34.300)
LON_BOX = (108.945, 109.020)

# Sub-district: id, name, area, communities [(name, grid count)], rain gauges, underpasses, low points.
SUB_DISTRICTS = [
    {
        "id": "xiyilu",
        "name": "西一路",
        # inside the city wall, west part of the district (新城广场, 北新街)
        "area": (34.258, 34.270, 108.945, 108.955),
        "communities": [("西一路社区", 2), ("北新街社区", 1)],
        "rain_gauges": ["西一路雨量站", "新城广场雨量站"],
        "underpasses": ["尚德门下穿", "西七路下穿"],
        "low_points": [
            "西一路与北新街十字低洼处",
            "尚德路与西五路十字低洼处",
            "西四路与尚俭路十字低洼处",
            "北大街新城广场东侧低洼处",
        ],
    },
    {
        "id": "changlezhonglu",
        "name": "长乐中路",
        # east of 金花路 along 长乐中路, up to 东二环
        "area": (34.266, 34.279, 108.989, 109.006),
        "communities": [("长乐中路社区", 2), ("幸福北路社区", 1), ("万寿北路社区", 1)],
        "rain_gauges": ["长乐中路雨量站", "幸福北路雨量站"],
        "underpasses": ["幸福北路下穿", "东二环长乐立交下穿"],
        "low_points": [
            "长乐中路与幸福北路十字低洼处",
            "长乐中路与万寿北路十字低洼处",
            "幸福北路与华清东路十字低洼处",
            "长乐中路与公园北路十字低洼处",
        ],
    },
    {
        "id": "zhongshanmen",
        "name": "中山门",
        # inside the city wall, east part (东新街, 顺城东路)
        "area": (34.256, 34.266, 108.956, 108.970),
        "communities": [("中山门社区", 1), ("东新街社区", 2)],
        "rain_gauges": ["中山门雨量站", "东新街雨量站"],
        "underpasses": ["中山门下穿", "朝阳门下穿"],
        "low_points": [
            "东新街与顺城东路十字低洼处",
            "东新街与解放路十字低洼处",
            "东四路与顺城东路十字低洼处",
            "东一路与尚勤路十字低洼处",
        ],
    },
    {
        "id": "hansenzhai",
        "name": "韩森寨",
        # south-east, around 韩森路 and 韩森冢
        "area": (34.255, 34.265, 108.972, 109.008),
        "communities": [("韩森寨社区", 2), ("韩森东路社区", 1), ("万寿中路社区", 2)],
        "rain_gauges": ["韩森寨雨量站", "韩森冢雨量站", "万寿路雨量站"],
        "underpasses": ["韩森路下穿", "万寿中路下穿"],
        "low_points": [
            "韩森路与幸福中路十字低洼处",
            "韩森路与万寿中路十字低洼处",
            "韩森东路与公园南路十字低洼处",
            "新科路与幸福中路十字低洼处",
        ],
    },
    {
        "id": "jiefangmen",
        "name": "解放门",
        # north part inside the wall and the railway station (解放路, 东五路-东八路)
        "area": (34.267, 34.280, 108.956, 108.968),
        "communities": [("解放门社区", 1), ("东五路社区", 2), ("东七路社区", 1)],
        "rain_gauges": ["解放门雨量站", "火车站雨量站"],
        "underpasses": ["解放门下穿", "环城北路解放路下穿"],
        "low_points": [
            "东五路与尚德路十字低洼处",
            "解放路与东六路十字低洼处",
            "东七路与尚勤路十字低洼处",
            "解放路与环城北路十字低洼处",
        ],
    },
    {
        "id": "ziqianglu",
        "name": "自强路",
        # north of the railway, west part (自强路, 童家巷, 建强路)
        "area": (34.281, 34.298, 108.945, 108.960),
        "communities": [("自强西路社区", 2), ("童家巷社区", 1)],
        "rain_gauges": ["自强路雨量站", "童家巷雨量站"],
        "underpasses": ["自强西路铁路下穿", "童家巷下穿"],
        "low_points": [
            "自强西路与建强路十字低洼处",
            "童家巷与环城北路十字低洼处",
            "自强东路与二马路十字低洼处",
            "北关正街与自强西路十字低洼处",
        ],
    },
    {
        "id": "taihualu",
        "name": "太华路",
        # north of the railway along 太华路, south of 大明宫
        "area": (34.281, 34.299, 108.961, 108.980),
        "communities": [("太华南路社区", 1), ("二马路社区", 2)],
        "rain_gauges": ["太华路雨量站", "二马路雨量站"],
        "underpasses": ["太华路铁路下穿", "二马路下穿"],
        "low_points": [
            "太华南路与二马路十字低洼处",
            "太华北路与玄武路十字低洼处",
            "八府庄东路低洼处",
            "太华北路与含元路十字低洼处",
        ],
    },
    {
        "id": "changlexilu",
        "name": "长乐西路",
        # east of 长乐门 along 长乐西路, up to 金花北路
        "area": (34.266, 34.279, 108.970, 108.988),
        "communities": [("长乐西路社区", 2), ("康复路社区", 1)],
        "rain_gauges": ["长乐西路雨量站", "康复路雨量站"],
        "underpasses": ["长乐门下穿", "金花北路下穿"],
        "low_points": [
            "长乐西路与金花北路十字低洼处",
            "康复路与长乐西路十字低洼处",
            "长乐西路与互助路十字低洼处",
            "金花北路与华清西路十字低洼处",
        ],
    },
    {
        "id": "hujiamiao",
        "name": "胡家庙",
        # north-east: 胡家庙, 长缨路, 华清路
        "area": (34.280, 34.300, 108.981, 109.020),
        "communities": [("胡家庙社区", 2), ("长缨路社区", 1), ("华清路社区", 1)],
        "rain_gauges": ["胡家庙雨量站", "长缨路雨量站", "华清路雨量站"],
        "underpasses": ["华清立交下穿", "长缨路铁路下穿"],
        "low_points": [
            "长缨西路与金花北路十字低洼处",
            "华清西路与万寿北路十字低洼处",
            "胡家庙十字东南角低洼处",
            "长缨路与幸福北路十字低洼处",
        ],
    },
]

# Per-point threshold overrides (一点一策), by point name. Values are illustrative local-plan
# numbers; each stays consistent with the validator (raise strictly increasing, reset <= raise).
OVERRIDES = {
    "解放门下穿": [
        ("red", 30.0, 27.0, 30, None, "西安下穿黄色警戒线30cm"),
    ],
    "太华路铁路下穿": [
        ("red", 30.0, 27.0, 30, None, "西安下穿黄色警戒线30cm"),
    ],
    "中山门下穿": [
        ("orange", 18.0, 16.0, 30, None, "一点一策(示例值): 坡底泵站能力小, 提前一级预警"),
    ],
    "东新街与解放路十字低洼处": [
        ("blue", 8.0, 6.0, 60, None, "一点一策(示例值): 临近地下车库入口, 提前蓝色预警"),
    ],
    "韩森寨雨量站": [
        ("red", 60.0, 50.0, 0, 60, "一点一策(示例值): 老旧小区排水能力弱, 1 h ≥ 60 mm 即红色"),
    ],
}

PLANS = {
    "underpass": [
        "请立即封闭下穿并到岗值守",
        "请立即封闭下穿、启动泵站强排并到岗值守",
        "请立即封闭下穿并在两端设置绕行指引，到岗值守",
    ],
    "low_point": [
        "请到岗排查并设置警示",
        "请到岗排查、清掏雨水箅子并设置警示",
        "请到岗排查并设置警示，必要时协助临街商户转移物资",
    ],
    "rain_gauge": [
        "请关注雨情并通知辖区低洼点",
    ],
}

# Fictional names: common surnames x common two-character given names, taken in a fixed order.
SURNAMES = (
    "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董程曹袁邓许沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎"
    "余潘杜戴夏钟汪田任姜范方石姚谭廖邹熊金陆郝孔白崔康毛邱秦江史顾侯邵孟万段雷钱汤尹黎易常武乔贺"
)
GIVEN = [
    "建华", "晓燕", "志强", "秀兰", "海涛", "丽娟", "文博", "静怡", "国栋", "雅琴",
    "振宇", "玉梅", "俊杰", "淑芳", "鹏飞", "春燕", "立新", "红霞", "宏伟", "晓东",
    "亚楠", "永刚", "桂英", "子涵", "佳琪", "明轩", "雪梅", "德胜", "美玲", "卫东",
    "小军", "丽萍", "建军", "慧敏", "少华", "秋菊", "长安", "秦川", "渭平", "文静",
    "宝林", "爱玲", "正阳", "思远", "晓峰", "婉清", "嘉伟", "如意", "金生", "翠萍",
]


def h01(key: str) -> float:
    """A deterministic number in [0, 1) from a string."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000


class People:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._names: set[str] = set()
        self._k = 0

    def _next_name(self) -> str:
        while True:
            k = self._k
            self._k += 1
            name = SURNAMES[(k * 7) % len(SURNAMES)] + GIVEN[(k * 11 + k // len(GIVEN)) % len(GIVEN)]
            if name not in self._names:
                self._names.add(name)
                return name

    def add(self, title: str) -> str:
        n = len(self.rows) + 1
        pid = f"P{n:03d}"
        self.rows.append({"id": pid, "name": self._next_name(), "phone": f"1380000{n:04d}", "title": title})
        return pid


def build() -> dict:
    people = People()
    duty_leader = people.add("新城区防汛指挥部值班领导")
    subs, comms, grids, cams, points = [], [], [], [], []
    counter = {"rain_gauge": 0, "underpass": 0, "low_point": 0}
    prefix = {"rain_gauge": "RG", "underpass": "UP", "low_point": "LP"}

    for sd in SUB_DISTRICTS:
        cadre = people.add(f"{sd['name']}街道办事处副主任")
        subs.append({"id": sd["id"], "name": f"{sd['name']}街道", "cadre": cadre})
        sd_grids = []
        for ci, (cname, ngrids) in enumerate(sd["communities"], start=1):
            cid = f"{sd['id']}-c{ci:02d}"
            director = people.add(f"{cname}主任")
            comms.append({"id": cid, "name": cname, "sub_district": sd["id"], "director": director})
            for gi in range(1, ngrids + 1):
                gname = f"{cname}第{'一二三四'[gi - 1]}网格"
                gid = f"{cid}-g{gi}"
                worker = people.add(f"{gname}网格员")
                grids.append({"id": gid, "name": gname, "community": cid, "worker": worker})
                sd_grids.append(gid)

        # Points of this sub-district, in file order: rain gauges, underpasses, low points.
        sd_points = (
            [("rain_gauge", n) for n in sd["rain_gauges"]]
            + [("underpass", n) for n in sd["underpasses"]]
            + [("low_point", n) for n in sd["low_points"]]
        )
        # Assign grids round-robin; then the owner pool of each grid.
        assigned = [(kind, name, sd_grids[i % len(sd_grids)]) for i, (kind, name) in enumerate(sd_points)]
        per_grid: dict[str, int] = {}
        for _, _, g in assigned:
            per_grid[g] = per_grid.get(g, 0) + 1
        pools: dict[str, list[str]] = {}
        for g in sd_grids:
            n = per_grid.get(g, 0)
            size = 2 if n <= 1 else 3 if n <= 3 else 4
            gname = next(x["name"] for x in grids if x["id"] == g)
            pools[g] = [people.add(f"点位责任人（{gname}）") for _ in range(size)]

        # Coordinates: a lattice over the sub-district's rectangle with deterministic jitter.
        lat0, lat1, lon0, lon1 = sd["area"]
        n = len(assigned)
        cols = 4 if n > 9 else 3
        rows = -(-n // cols)
        # Lattice slots in a fixed pseudo-random order, so the kinds mix on the map.
        slots = sorted(range(rows * cols), key=lambda j: h01(f"{sd['id']}-slot-{j}"))[:n]
        used_in_grid: dict[str, int] = {}
        sd_rg: list[dict] = []
        for i, (kind, name, g) in enumerate(assigned):
            counter[kind] += 1
            pid = f"{prefix[kind]}-{counter[kind]:02d}"
            r, c = divmod(slots[i], cols)
            fy = (r + 0.5 + (h01(pid + "y") - 0.5) * 0.6) / rows
            fx = (c + 0.5 + (h01(pid + "x") - 0.5) * 0.6) / cols
            lat = round(lat0 + (lat1 - lat0) * (0.08 + 0.84 * fy), 6)
            lon = round(lon0 + (lon1 - lon0) * (0.08 + 0.84 * fx), 6)
            pool = pools[g]
            k = used_in_grid.get(g, 0)
            used_in_grid[g] = k + 1
            owner_a, owner_b = pool[k % len(pool)], pool[(k + 1) % len(pool)]
            plans = PLANS[kind]
            p = {
                "id": pid,
                "name": name,
                "kind": kind,
                "grid": g,
                "lat": lat,
                "lon": lon,
                "owner_a": owner_a,
                "owner_b": owner_b,
                "camera": None,
                "rain_gauge": None,
                "plan": plans[(counter[kind] - 1) % len(plans)],
                "sensors": [],
                "thresholds": OVERRIDES.get(name, []),
                "sd": sd["name"],
            }
            if kind == "rain_gauge":
                p["sensors"].append({"id": f"RN-{pid}", "kind": "rain", "calibration_offset_cm": None})
                sd_rg.append(p)
            else:
                offset = [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0][int(h01(pid + "cal") * 8)]
                p["sensors"].append({"id": f"WL-{pid}", "kind": "depth", "calibration_offset_cm": offset})
                if kind == "underpass" and counter[kind] % 2 == 1:
                    offset_b = [0.0, 0.5, 1.0, 1.5, 2.0][int(h01(pid + "calB") * 5)]
                    p["sensors"].append({"id": f"WL-{pid}-B", "kind": "depth", "calibration_offset_cm": offset_b})
                cam = f"CAM-{pid}"
                cams.append({"id": cam, "name": f"{name}摄像头", "stream": f"/cameras/{cam}/index.m3u8"})
                p["camera"] = cam
                # The nearest rain gauge of the same sub-district.
                nearest = min(sd_rg, key=lambda rg: (rg["lat"] - lat) ** 2 + (rg["lon"] - lon) ** 2)
                p["rain_gauge"] = nearest["id"]
            points.append(p)

    # Added last so the ids of everyone else stay stable.
    maintenance = people.add("设备运维值班员")
    return {
        "district": {"id": "xincheng", "name": "新城区", "sms_signature": "新城区防汛", "duty_leader": duty_leader,
                     "maintenance": maintenance},
        "people": people.rows,
        "sub_districts": subs,
        "communities": comms,
        "grids": grids,
        "cameras": cams,
        "points": points,
    }


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def s(v: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes)."""
    return json.dumps(v, ensure_ascii=False)


def f(v: float) -> str:
    return repr(float(v))


def toml_value(v) -> str:
    if isinstance(v, str):
        return s(v)
    if isinstance(v, float):
        return f(v)
    return str(v)


def threshold_lines(header: str, level: str, raise_: float, reset: float, hold: int, window, src: str) -> list[str]:
    out = [f"[{header}.{level}]", f"raise = {f(raise_)}", f"reset = {f(reset)}", f"hold_s = {hold}"]
    if window is not None:
        out.append(f"window_min = {window}")
    out.append(f"source = {s(src)}")
    return out


HEADER = """\
# 西安市新城区 (Xincheng District, Xi'an) — district file for floodcmd.
#
# GENERATED by scripts/gen_xincheng.py — edit the script and re-run it, do not edit by hand:
#     python3 scripts/gen_xincheng.py
#
# Schema: model/src/config.rs (DistrictFile). Hierarchy: 区 → 街道 (sub_districts) → 社区
# (communities) → 网格 (grids) → points. The five-level chain (五级包保) of a point is derived:
# owner_a / owner_b (点位责任人 A/B岗) → grid worker (网格员) → community director (社区主任)
# → sub-district cadre (街道包保干部) → district duty leader (区防汛指挥部值班领导).
#
# What is real and what is not:
#   * The nine sub-districts (街道) are the real ones of 新城区.
#   * Community and grid names are plausible (built from real road/place names), not an official roster.
#   * ALL PEOPLE ARE FICTIONAL. ALL PHONE NUMBERS ARE FAKE (1380000xxxx). Replace before any real use.
#   * Point names use real road names of the area; which spots actually flood is illustrative.
#   * Coordinates are APPROXIMATE (WGS84, box lat 34.255–34.300, lon 108.945–109.020): each
#     sub-district has its own rectangle and its points are spread over it; they are not surveyed.
#   * Threshold overrides marked 示例值 are illustrative local-plan numbers, not official ones.
#
# Ids: people P001…, rain gauges RG-xx, underpasses UP-xx, low-lying points LP-xx; depth sensors
# WL-<point> (second sensor WL-<point>-B), rain sensors RN-<point>, cameras CAM-<point>.
"""


def render(d: dict) -> str:
    L: list[str] = [HEADER]
    di = d["district"]
    L += ["[district]"] + [f"{k} = {s(di[k])}" for k in ("id", "name", "sms_signature", "duty_leader", "maintenance")] + [""]

    L.append("# Defaults, written out explicitly; the numbers equal the Rust defaults in model/src/config.rs.")
    for kind in ("low_point", "underpass", "rain_gauge"):
        for level, raise_, reset, hold, window, src in DEFAULTS[kind]:
            L += threshold_lines(f"defaults.{kind}", level, raise_, reset, hold, window, src) + [""]
    L.append("[defaults.cadence]")
    L += [f"{k} = {v}" for k, v in CADENCE] + [""]
    for section, fields in EXTRA_DEFAULTS:
        L.append(f"[defaults.{section}]")
        L += [f"{k} = {toml_value(v)}" for k, v in fields] + [""]

    L.append("# Escalation per level (the Rust defaults), derived from each point's chain.")
    for lvl, at_once, up_to, ack, checkin, loops in ESCALATION:
        L.append(f"[escalation.{lvl}]")
        L.append(f"at_once = [{', '.join(s(x) for x in at_once)}]")
        L += [f"up_to = {s(up_to)}", f"ack_timeout_s = {ack}", f"checkin_timeout_s = {checkin}",
              f"repeat_loops = {loops}", ""]
    L.append("# Underpass closures: below yellow this long before 解封 (the Rust default).")
    L += ["[closure]", "reopen_hold_s = 1800", ""]

    L.append("# ---- People (fictional; phones fake) ----")
    for p in d["people"]:
        L += ["[[people]]"] + [f"{k} = {s(p[k])}" for k in ("id", "name", "phone", "title")] + [""]

    L.append("# ---- 街道 ----")
    for x in d["sub_districts"]:
        L += ["[[sub_districts]]"] + [f"{k} = {s(x[k])}" for k in ("id", "name", "cadre")] + [""]

    L.append("# ---- 社区 ----")
    for x in d["communities"]:
        L += ["[[communities]]"] + [f"{k} = {s(x[k])}" for k in ("id", "name", "sub_district", "director")] + [""]

    L.append("# ---- 网格 ----")
    for x in d["grids"]:
        L += ["[[grids]]"] + [f"{k} = {s(x[k])}" for k in ("id", "name", "community", "worker")] + [""]

    L.append("# ---- Cameras (one per depth point) ----")
    for x in d["cameras"]:
        L += ["[[cameras]]"] + [f"{k} = {s(x[k])}" for k in ("id", "name", "stream")] + [""]

    L.append("# ---- Points ----")
    current_sd = None
    for p in d["points"]:
        if p["sd"] != current_sd:
            current_sd = p["sd"]
            L.append(f"# {current_sd}街道")
        L.append("[[points]]")
        L += [f"{k} = {s(p[k])}" for k in ("id", "name", "kind", "grid")]
        L += [f"lat = {f(p['lat'])}", f"lon = {f(p['lon'])}"]
        L += [f"{k} = {s(p[k])}" for k in ("owner_a", "owner_b")]
        if p["camera"] is not None:
            L.append(f"camera = {s(p['camera'])}")
        if p["rain_gauge"] is not None:
            L.append(f"rain_gauge = {s(p['rain_gauge'])}")
        L.append(f"plan = {s(p['plan'])}")
        for sn in p["sensors"]:
            L += ["[[points.sensors]]", f"id = {s(sn['id'])}", f"kind = {s(sn['kind'])}"]
            if sn["calibration_offset_cm"] is not None:
                L.append(f"calibration_offset_cm = {f(sn['calibration_offset_cm'])}")
        for level, raise_, reset, hold, window, src in p["thresholds"]:
            L += threshold_lines("points.thresholds", level, raise_, reset, hold, window, src)
        L.append("")
    return "\n".join(L).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render(build())
    if "--stdout" in argv:
        sys.stdout.write(text)
        return 0
    out = Path(__file__).resolve().parent.parent / "config" / "xincheng.toml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
