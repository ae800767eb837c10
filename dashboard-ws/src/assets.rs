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

use std::path::PathBuf;
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
            let cameras = warp::path("cameras")
                .and(warp::get())
                .and(warp::fs::dir(dir))
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
