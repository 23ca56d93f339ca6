//! The auditors' page (docs/auditors.md): read-only, server-rendered HTML over the stored
//! history, on `UI_LISTEN`. No route writes anything; no script runs in the browser. A strict
//! Content-Security-Policy and escaping of every GitLab-provided string keep a hostile name
//! inert; off loopback, `UI_TOKEN_FILE` is required (bearer token, or a login form that sets a
//! cookie derived from it), compared in constant time.

mod html;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

pub use html::esc;

/// What the page reads and who may read it.
pub struct Ui {
    pub store: Store,
    /// Configured connector ids (the page's default is the only one, else the newest stored).
    pub connectors: Vec<String>,
    /// The token from `UI_TOKEN_FILE`; `None` only on a loopback address.
    pub token: Option<gitlab_connector::Secret>,
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const COOKIE: &str = "gitlab_ui";
/// Form bodies (the login form) above this are refused.
const MAX_BODY: usize = 4096;

impl Ui {
    /// The cookie the login form sets: a digest of the token, never the token itself.
    fn session_value(&self) -> Option<String> {
        self.token.as_ref().map(|t| {
            let d = Sha256::digest(format!("gitlab-worker-ui-session\n{}", t.expose()).as_bytes());
            gitlab_connector::snapshot::hex(&d)
        })
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let headers = req.headers();
        if let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return bool::from(given.trim().as_bytes().ct_eq(token.expose().as_bytes()));
        }
        let expected = self.session_value().unwrap_or_default();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().strip_prefix(&format!("{COOKIE}=")))
            .any(|v| bool::from(v.as_bytes().ct_eq(expected.as_bytes())))
    }
}

pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(pages::snapshots))
        .route("/search", get(pages::search))
        .route("/users/{id}", get(pages::user))
        .route("/resources/{kind}/{id}", get(pages::resource))
        .route("/changes", get(pages::changes))
        .route("/diff", get(pages::diff))
        .route("/ui.css", get(stylesheet))
        .route("/login", get(login_form).post(login))
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .layer(middleware::from_fn(security_headers))
        .with_state(ui)
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::CSS,
    )
}

/// Only reads (and the login form) pass; without the token, a page asks for it.
async fn guard(State(ui): State<Arc<Ui>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = path == "/login" || path == "/ui.css";
    if !matches!(*req.method(), Method::GET | Method::HEAD) && path != "/login" {
        return (StatusCode::METHOD_NOT_ALLOWED, "this page is read-only\n").into_response();
    }
    if open || ui.authorized(&req) {
        return next.run(req).await;
    }
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        Redirect::to("/login").into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a token is needed: Authorization: Bearer <the token in UI_TOKEN_FILE>\n",
        )
            .into_response()
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

async fn login_form(State(ui): State<Arc<Ui>>) -> Response {
    if ui.token.is_none() {
        return Redirect::to("/").into_response();
    }
    let body = html::page(
        "Sign in",
        r#"<form method="post" action="/login"><label>Token <input type="password" name="token" autocomplete="current-password" maxlength="1024"></label> <button type="submit">Sign in</button></form>
<p class="muted">The token is in the worker's UI_TOKEN_FILE.</p>"#,
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn login(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let Some(token) = &ui.token else {
        return Redirect::to("/").into_response();
    };
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "too large\n").into_response(),
    };
    let given = url_form_value(&body, "token").unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "wrong token\n").into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        ui.session_value().unwrap_or_default()
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

/// One field of an `application/x-www-form-urlencoded` body.
fn url_form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the page on `addr` until `stop`; the address bound (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    ui: Ui,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    crate::http::serve_with(
        addr,
        router(Arc::new(ui)),
        stop,
        crate::http::HEADER_READ_TIMEOUT,
        crate::http::CONNECTION_TIMEOUT,
    )
    .await
}
