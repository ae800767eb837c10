//! The camera file server cannot be made to read outside `cameras_dir`: not with `..`, not
//! with `..` percent-encoded, not with absolute paths, and not through symlinks planted in
//! the directory that lead outside it. A file inside (also through a link that stays
//! inside) is served.

use floodcmd_dashboard::assets::routes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "the-secret-outside-the-cameras-dir";

/// `<tmp>/outside.txt` (the secret), `<tmp>/cameras/cam1/index.m3u8`, and links in
/// `cameras/`: `leak.txt` → the secret, `leakdir` → `<tmp>`, `abs` → `/etc`, `cam2` → `cam1`.
fn layout(tag: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("floodcmd-static-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cams = root.join("cameras");
    std::fs::create_dir_all(cams.join("cam1")).unwrap();
    std::fs::write(root.join("outside.txt"), SECRET).unwrap();
    std::fs::write(cams.join("cam1/index.m3u8"), "#EXTM3U\n").unwrap();
    std::os::unix::fs::symlink(root.join("outside.txt"), cams.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink("../outside.txt", cams.join("cam1/rel-leak.txt")).unwrap();
    std::os::unix::fs::symlink(&root, cams.join("leakdir")).unwrap();
    std::os::unix::fs::symlink("/etc", cams.join("abs")).unwrap();
    std::os::unix::fs::symlink("cam1", cams.join("cam2")).unwrap();
    (root, cams)
}

/// Serve the routes on a free port.
async fn serve(cams: Option<&Path>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = routes(cams.map(Path::to_path_buf));
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    addr
}

/// The request line written as given, over a raw socket: an HTTP client library would
/// normalise `..` away before sending, and an attacker's does not.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: wall\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {path}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[tokio::test]
async fn nothing_outside_the_cameras_dir_can_be_read() {
    let (root, cams) = layout("escape");
    let addr = serve(Some(&cams)).await;
    let (s, body) = get(addr, "/cameras/cam1/index.m3u8").await;
    assert_eq!((s, body.as_str()), (200, "#EXTM3U\n"));
    let (s, body) = get(addr, "/cameras/cam2/index.m3u8").await;
    assert_eq!(
        (s, body.as_str()),
        (200, "#EXTM3U\n"),
        "a link inside stays allowed"
    );

    let outside = root.join("outside.txt");
    let abs = outside.display().to_string();
    for path in [
        "/cameras/../outside.txt".to_string(),
        "/cameras/cam1/../../outside.txt".to_string(),
        "/cameras/%2e%2e/outside.txt".to_string(),
        "/cameras/%2E%2E/outside.txt".to_string(),
        "/cameras/cam1/%2e%2e%2f%2e%2e%2foutside.txt".to_string(),
        "/cameras/..%2foutside.txt".to_string(),
        "/cameras/..%5coutside.txt".to_string(),
        format!("/cameras/{abs}"),
        format!("/cameras/{}", abs.replace('/', "%2f")),
        "/cameras//etc/passwd".to_string(),
        "/cameras/%2fetc%2fpasswd".to_string(),
        "/cameras/leak.txt".to_string(),
        "/cameras/cam1/rel-leak.txt".to_string(),
        "/cameras/leakdir/outside.txt".to_string(),
        "/cameras/abs/passwd".to_string(),
        "/cameras/abs/hostname".to_string(),
    ] {
        let (s, body) = get(addr, &path).await;
        assert!(s == 404 || s == 400, "{path} answered {s}: {body}");
        assert!(!body.contains(SECRET), "{path} leaked the secret");
        assert!(!body.contains("root:"), "{path} leaked /etc/passwd");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn without_a_cameras_dir_nothing_is_served_from_disk() {
    let (_root, cams) = layout("none");
    let addr = serve(None).await;
    assert_eq!(get(addr, "/cameras/cam1/index.m3u8").await.0, 404);
    let (s, body) = get(addr, "/").await;
    assert_eq!(s, 200, "the page itself is embedded");
    assert!(body.to_lowercase().contains("<html"), "{body}");
    std::fs::remove_dir_all(cams.parent().unwrap()).unwrap();
}
