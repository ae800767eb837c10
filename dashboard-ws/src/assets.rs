//! What the browser loads besides data: the page bundle and the camera streams.
//!
//! The page is `web/dist/` (index.html, app.js, app.css), compiled into the binary so the
//! wall needs no CDN, no internet and no files beside the binary. The bundle is built from
//! `web/src/` and the npm packages pinned in `web/package-lock.json` by `web/build.mjs`
//! (esbuild) and committed; CI rebuilds it and fails when it differs from the committed one
//! (see `web/README.md`), so `cargo build` on a fresh clone needs no Node.
//!
//! Camera streams (HLS playlists and segments) are served from a directory named in the
//! settings (`dashboard.cameras_dir`) at `/cameras/<camera id>/index.m3u8`, as
//! `scripts/cameras.sh` writes them.
//!
//! Only files inside that directory are served. warp's `fs::dir` already refuses `..`
//! segments (also percent-encoded) and backslashes, and joins absolute-looking paths under
//! the root; it does follow symlinks, so every file is also checked after resolving links:
//! a link that leads outside the directory (planted, or left by a careless copy) is a 404,
//! as if it were not there. `tests/static_files.rs` proves each case.

use std::path::{Path, PathBuf};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

const INDEX_HTML: &[u8] = include_bytes!("../web/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../web/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../web/dist/app.css");

fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    let r = warp::reply::with_header(body, "content-type", content_type);
    // The bundle changes with the binary: let browsers re-check it rather than cache it
    // across an upgrade.
    warp::reply::with_header(r, "cache-control", "no-cache").into_response()
}

/// `/`, `/assets/app.js`, `/assets/app.css` and, with a directory, `/cameras/...`.
pub fn routes(cameras_dir: Option<PathBuf>) -> BoxedFilter<(Response,)> {
    let index = warp::path::end()
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let js = warp::path!("assets" / "app.js")
        .and(warp::get())
        .map(|| asset(APP_JS, "application/javascript; charset=utf-8"));
    let css = warp::path!("assets" / "app.css")
        .and(warp::get())
        .map(|| asset(APP_CSS, "text/css; charset=utf-8"));
    let pages = index.or(js).unify().or(css).unify();
    match cameras_dir {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "serving camera streams at /cameras/");
            // Resolved once; a directory that does not exist yet (no camera started) is
            // resolved per request instead.
            let root = dir.canonicalize().ok();
            let root_dir = dir.clone();
            let cameras = warp::path("cameras")
                .and(warp::get())
                .and(warp::fs::dir(dir))
                .and_then(move |f: warp::fs::File| {
                    let root = root.clone().or_else(|| root_dir.canonicalize().ok());
                    async move {
                        match root {
                            Some(root) if inside(&root, f.path()) => Ok(f),
                            _ => {
                                tracing::warn!(path = %f.path().display(), "camera request resolves outside cameras_dir; refused");
                                Err(warp::reject::not_found())
                            }
                        }
                    }
                })
                .map(|f: warp::fs::File| {
                    let hls = f.path().extension().is_some_and(|e| e == "m3u8");
                    let r = f.into_response();
                    if hls {
                        // A live playlist changes every segment: never cached.
                        let r = warp::reply::with_header(
                            r,
                            "content-type",
                            "application/vnd.apple.mpegurl",
                        );
                        warp::reply::with_header(r, "cache-control", "no-store").into_response()
                    } else {
                        r
                    }
                });
            pages.or(cameras).unify().boxed()
        }
        None => pages.boxed(),
    }
}

/// Does `path`, with every symlink resolved, lie inside `root` (already resolved)?
fn inside(root: &Path, path: &Path) -> bool {
    path.canonicalize().is_ok_and(|p| p.starts_with(root))
}
