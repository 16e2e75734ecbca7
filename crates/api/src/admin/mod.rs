//! The admin surface: the operators' console ([`crate::console`]), its login, and email subscriptions.
//!
//! Off (every route 404) unless `ADMIN_TOKEN` is set. The console's routes and its login answer only to the names in
//! `ALLOWED_HOSTS` and loopback (421 otherwise, against DNS rebinding); the subscription routes, used by automation
//! with a bearer token, answer to any `Host`. When `ADMIN_PORT` is set too, these routes are served only on
//! that port ([`crate::admin_router`]) and the main port answers 404 for them ([`crate::public_router`]); a load
//! balancer that forwards only the main port then never exposes them. [`auth`] holds the rules every route here
//! follows: bearer token or session cookie, CSRF on cookie-authenticated state changes, constant-time comparisons.
//!
//! Routes: `GET/POST /console/login`, `POST /console/logout`, `GET /console/api/session`, every route of
//! [`crate::console::routes`], `POST /api/suscripcion`, `GET /api/suscripcion/estado/{email}`.
//!
//! For console handlers: take [`Admin`] as an extractor to get the session's CSRF token
//! ([`Admin::csrf_token`]) for the page, and escape everything displayed with [`escape_html`].

pub mod auth;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, Uri};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub use auth::{Admin, AdminAuth, AdminError, AdminToken, Credential};

use crate::error::ApiError;
use crate::extract::RawBody;
use crate::routes::subscriptions;
use crate::AppState;

/// Every admin route, each behind [`auth::admin_enabled`], and all but the login behind [`auth::require_admin`].
/// `state` is only read by the layers: the router gets its state where it is finished.
pub fn routes(state: &AppState) -> Router<AppState> {
    // route_layer, not layer: unknown paths keep falling through to the app's 404 rather than asking for a login.
    let console = Router::new()
        .merge(crate::console::routes(state.console.clone()))
        .route("/console/logout", post(logout))
        .route("/console/api/session", get(session))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_admin))
        .route(auth::LOGIN_PATH, get(login_page).post(login))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.allowed_hosts),
            platform::http::require_allowed_host,
        ));
    let subscriptions = Router::new()
        .route("/api/suscripcion", post(subscriptions::subscribe))
        .route("/api/suscripcion/estado/{email}", get(subscriptions::status))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_admin));
    Router::new()
        .merge(console)
        .merge(subscriptions)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::admin_enabled))
}

/// The login page, served from the binary: no scripts, no external assets.
const LOGIN_PAGE: &str = include_str!("login.html");

/// Only the page itself, its inline styles and a form posting back here.
const LOGIN_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether `headers` carry an operator's credentials (a console session or the admin bearer token): operators read
/// every order on the tracking routes. Always false with the admin surface off.
pub fn is_operator(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    state.admin.as_ref().is_some_and(|auth| auth::authenticate(auth, headers, auth::unix_now()).is_ok())
}

/// Escapes text for HTML content and attribute values. Everything the console displays goes through this.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `GET /console/login`: the form, or straight to the console for a browser that already has a session.
async fn login_page(State(state): State<AppState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let Some(auth) = state.admin.as_deref() else {
        return AdminError::Disabled.into_response();
    };
    if matches!(
        auth::authenticate(auth, &headers, auth::unix_now()),
        Ok(Admin { credential: Credential::Session { .. }, .. })
    ) {
        return auth::see_other("/console");
    }
    // Only a fixed message is ever shown: nothing from the request reaches the page.
    let failed = query.as_deref().is_some_and(|q| q.split('&').any(|p| p == "error" || p.starts_with("error=")));
    let message = if failed { r#"<p class="error" role="alert">That token is not valid.</p>"# } else { "" };
    let mut response = Html(LOGIN_PAGE.replace("<!--error-->", message)).into_response();
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(LOGIN_CSP));
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: Option<String>,
}

/// The client address as logged: the peer's IP, or `unknown` for requests that did not come through the server.
fn client_label(peer: Option<IpAddr>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// `POST /console/login` (form field `token`): on the right token, a new session's cookie and a 303 to `/console`.
/// On a wrong one, a browser is sent back to the form with a message; anything else gets a 401. An address that
/// failed too often gets 429 with `Retry-After` before its token is even looked at.
async fn login(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    extensions: Extensions,
    RawBody(body): RawBody,
) -> Response {
    let Some(auth) = state.admin.as_deref() else {
        return AdminError::Disabled.into_response();
    };
    let peer = platform::http::peer(&extensions).map(|addr| addr.ip());
    let client = client_label(peer);
    // Another site must not be able to log a browser into a session (login CSRF).
    if let Err(error) = auth::same_origin(&headers, &uri) {
        tracing::warn!(%client, reason = %error, "admin login refused");
        return error.into_response();
    }
    if let Err(wait) = auth.login_allowed(peer) {
        let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        tracing::warn!(%client, retry_after, "admin login refused: too many failures from this address");
        return AdminError::Throttled { retry_after }.into_response();
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        tracing::warn!(%client, "admin login refused: not a form");
        return AdminError::NotAForm.into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        tracing::warn!(%client, "admin login refused: malformed form");
        return ApiError::BadRequest("the login form is not valid application/x-www-form-urlencoded".into())
            .into_response();
    };
    if form.token.as_deref().is_some_and(|token| auth.token_matches(token.trim())) {
        let session = match auth.start_session(auth::unix_now()) {
            Ok(session) => session,
            Err(e) => {
                return ApiError::Internal(format!("no session id: the OS random number generator failed: {e}"))
                    .into_response()
            }
        };
        auth.login_succeeded(peer);
        let mut response = auth::see_other("/console");
        if let Ok(cookie) = HeaderValue::from_str(&auth::session_cookie(&session.value)) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        tracing::info!(%client, "admin login");
        return response;
    }
    let lockout = auth.login_failed(peer);
    tracing::warn!(%client, lockout = ?lockout, "admin login refused: wrong token");
    let browser =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"));
    if browser {
        auth::see_other("/console/login?error=1")
    } else {
        AdminError::WrongToken.into_response()
    }
}

/// `POST /console/logout`: ends the session (its cookie is refused from now on, wherever it was copied), removes
/// the cookie and goes back to the login page.
async fn logout(State(state): State<AppState>, admin: Admin) -> Response {
    if let (Some(auth), Credential::Session { value, .. }) = (state.admin.as_deref(), &admin.credential) {
        auth.end_session(value);
    }
    tracing::info!("admin logout");
    let mut response = auth::see_other(auth::LOGIN_PATH);
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static(auth::clear_session_cookie()));
    response
}

/// Body of `GET /console/api/session`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// `cookie` or `bearer`.
    pub authenticated_by: &'static str,
    /// Send it as `X-CSRF-Token` on every POST of this session; `null` for bearer requests, which need none.
    pub csrf_token: Option<String>,
    /// When the session ends (Unix seconds); `null` for bearer requests.
    pub expires_at: Option<u64>,
}

/// `GET /console/api/session`: how this request is authenticated, and the CSRF token its POSTs must carry.
async fn session(admin: Admin) -> Json<SessionInfo> {
    Json(SessionInfo {
        authenticated_by: match admin.credential {
            Credential::Bearer => "bearer",
            Credential::Session { .. } => "cookie",
        },
        csrf_token: admin.csrf_token().map(str::to_owned),
        expires_at: admin.expires_at(),
    })
}

#[cfg(test)]
mod tests {
    use super::escape_html;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<script>alert("x&'y")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape_html("pedido ñ 59.98"), "pedido ñ 59.98");
    }
}
