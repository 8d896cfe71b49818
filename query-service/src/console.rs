//! The web console at `/console/`: three files embedded in the binary (`console/`), so that no
//! asset is fetched from anywhere else. They hold no data and are served without a token; the
//! page asks for one and sends it with every API call (see `console/README.md`).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// What every answer of the console says about where its page may load from: only here.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The console's routes, to be served outside `require_token`.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/console/index.html", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/console/console.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/console/console.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_nothing_outside_itself() {
        // Attributes and rules that make a browser fetch, pointing anywhere but here. (The SVG
        // namespace and the webhook field's placeholder are URLs that are never fetched.)
        let fetching = ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "url(http", "url(//", "@import", "fetch('http", "fetch(\"http", "fetch(`http"];
        for (name, text) in [("index.html", INDEX), ("console.js", SCRIPT), ("console.css", STYLE)] {
            for pattern in fetching {
                assert!(!text.contains(pattern), "{name} fetches from outside: {pattern}");
            }
        }
        assert!(INDEX.contains("src=\"console.js\"") && INDEX.contains("href=\"console.css\""));
    }
}
