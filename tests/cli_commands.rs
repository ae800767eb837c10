//! The binary as a user runs it: `check-config` and a short `demo`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn floodcmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_floodcmd"))
}

#[test]
fn check_config_accepts_the_sample_and_lists_every_problem_of_a_broken_file() {
    let ok = floodcmd()
        .args(["check-config", "config/xincheng.toml"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let out = String::from_utf8(ok.stdout).unwrap();
    assert!(
        out.contains("ok: 新城区") && out.contains("18 underpasses"),
        "{out}"
    );

    let broken = include_str!("../config/xincheng.toml")
        .replacen("phone = \"13800000001\"", "phone = \"1380000\"", 1)
        .replacen("owner_b = \"", "owner_b = \"NOBODY", 1);
    let dir = std::env::temp_dir().join(format!("floodcmd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let bad = floodcmd().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(
        err.contains("people[0].phone: \"1380000\" is not an 11-digit mobile number"),
        "{err}"
    );
    assert!(err.contains(".owner_b: unknown person \"NOBODY"), "{err}");

    std::fs::write(&path, "[stream]\nworkers = 0\n").unwrap();
    let bad = floodcmd().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8(bad.stderr)
        .unwrap()
        .contains("stream.workers: 0 must be 1 to 256"));
}

#[test]
fn demo_prints_its_url_serves_the_wall_and_exits_by_itself() {
    let mut child = floodcmd()
        .args(["demo", "--port", "0", "--duration", "6", "--speed", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("demo printed its URL").unwrap();
        if let Some(rest) = line.strip_prefix("command wall:") {
            break rest.trim().to_string();
        }
    };
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let health = std::process::Command::new("curl")
        .args(["-sf", &format!("{url}healthz")])
        .output();
    if let Ok(h) = health {
        assert_eq!(String::from_utf8_lossy(&h.stdout), "ok");
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exits 0 after --duration");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("stopping:") && l.contains("accepted")),
        "{rest:?}"
    );
    let _ = Duration::ZERO;
}
