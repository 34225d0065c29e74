//! The router without TLS, on a real store in a temporary directory and a
//! queue in memory: authentication, CSRF, validation errors naming the
//! field, and every documented operation routed.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use postern_config::{Settings, DEFAULT_CERT_NAME};
use postern_spool::{DeliveryState, Envelope, QueueId, QueuedEnvelope, RecipientState};
use postern_store::{CertificateRecord, Store, StoreLocation};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::queue::{BoxFuture, QueueControl, QueueError};
use crate::{auth, AdminOptions, AdminServer, Metrics};

const QUEUE_ID: &str = "00000000000ABCDE";

struct MemoryQueue(Mutex<Vec<QueuedEnvelope>>);

impl QueueControl for MemoryQueue {
    fn list(&self) -> Result<Vec<QueuedEnvelope>, QueueError> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn get(&self, id: &QueueId) -> Result<QueuedEnvelope, QueueError> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|q| &q.id == id)
            .cloned()
            .ok_or(QueueError::NotFound)
    }
    fn retry(&self, _id: QueueId) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async { Ok(()) })
    }
    fn delete(&self, id: QueueId) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.0.lock().unwrap().retain(|q| q.id != id);
            Ok(())
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    app: Router,
    token: String,
}

fn queued() -> QueuedEnvelope {
    QueuedEnvelope {
        id: QUEUE_ID.parse().unwrap(),
        envelope: Envelope {
            sender: "alice@example.test".into(),
            recipients: vec!["bob@corp.example".into()],
            received_at: 1_700_000_000,
            client_addr: "127.0.0.1:5000".into(),
            helo: "client.test".into(),
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            body: "7BIT".into(),
            smtputf8: false,
            message_id: Some("<m1@example.test>".into()),
            requiretls: false,
            tls_required_no: false,
        },
        recipients: vec![RecipientState {
            address: "bob@corp.example".into(),
            state: DeliveryState::Deferred,
            attempts: 1,
            next_attempt: Some(1_700_000_300),
            last_error: Some("mx.corp.example: connection refused".into()),
        }],
        size: 1234,
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::Sqlite(dir.path().join("postern.db"));
    let store = postern_store::open(&location, "gw1").unwrap();
    store
        .ensure_default_certificate(DEFAULT_CERT_NAME, &mut || {
            let g =
                postern_tls::generate_self_signed(postern_tls::KeyKind::EcdsaP256, "mx.test", &[])
                    .map_err(|e| e.to_string())?;
            Ok(CertificateRecord {
                name: "x".into(),
                chain_pem: g.chain_pem,
                key_pem: Some(g.key_pem),
                created_at: 0,
            })
        })
        .unwrap();
    store
        .set_admin_password_hash(&auth::hash_password("correct horse battery").unwrap())
        .unwrap();
    let token = auth::new_token();
    store
        .add_api_token("tests", &auth::token_hash(&token))
        .unwrap();
    let server = AdminServer::new(
        AdminOptions {
            hostname: "mx.test".into(),
            node_name: "gw1".into(),
            certificate: None,
        },
        store.clone(),
        Arc::new(MemoryQueue(Mutex::new(vec![queued()]))),
        Arc::new(Metrics::new()),
    );
    server.load_certificate().unwrap();
    Fixture {
        _dir: dir,
        store,
        app: server.router(),
        token,
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn request(method: Method, uri: &str, auth: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = auth {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

/// Log in through the API; (cookie header value, csrf token).
async fn login(app: &Router) -> (String, String) {
    let reply = send(
        app,
        request(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"password": "correct horse battery"})),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let cookie = reply
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    (
        pair,
        reply.json()["csrf_token"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let f = fixture();
    let doc: Value = serde_json::from_str(crate::api::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            let method = match method.as_str() {
                "get" => Method::GET,
                "post" => Method::POST,
                "put" => Method::PUT,
                "delete" => Method::DELETE,
                _ => continue,
            };
            let uri = path
                .replace("{name}", "nothing-here")
                .replace("{id}", QUEUE_ID)
                .replace("{request}", "1");
            let body = matches!(method, Method::POST | Method::PUT).then(|| json!({}));
            let reply = send(&f.app, request(method.clone(), &uri, Some(&f.token), body)).await;
            assert!(
                reply.status != StatusCode::METHOD_NOT_ALLOWED
                    && !(reply.status == StatusCode::NOT_FOUND && reply.body.contains("no route")),
                "{method} {uri}: {} {}",
                reply.status,
                reply.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 22, "{checked} operations");
}

#[tokio::test]
async fn without_authentication_only_public_routes_answer() {
    let f = fixture();
    for (method, uri) in [
        (Method::GET, "/api/v1/settings"),
        (Method::PUT, "/api/v1/settings"),
        (Method::GET, "/api/v1/certificates"),
        (Method::DELETE, "/api/v1/certificates/Default%20Cert"),
        (Method::GET, "/api/v1/queue"),
        (Method::POST, "/api/v1/queue/0000000000000ABC/retry"),
        (Method::GET, "/api/v1/messages?q=x"),
        (Method::GET, "/metrics"),
    ] {
        let reply = send(&f.app, request(method.clone(), uri, None, None)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert!(reply.json()["error"].is_string(), "{uri}: {}", reply.body);
    }
    // A wrong token is a 401 too, and so is a cookie for /metrics.
    let reply = send(
        &f.app,
        request(
            Method::GET,
            "/api/v1/settings",
            Some(&auth::new_token()),
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let (cookie, _) = login(&f.app).await;
    let reply = send(
        &f.app,
        Request::get("/metrics")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // Pages redirect to the login page.
    for uri in ["/", "/settings/tls", "/certificates", "/queue", "/tracking"] {
        let reply = send(&f.app, request(Method::GET, uri, None, None)).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{uri}");
        assert_eq!(reply.headers[header::LOCATION], "/login");
    }
    // Public: login page, assets, OpenAPI.
    for uri in [
        "/login",
        "/static/style.css",
        "/static/app.js",
        "/api/v1/openapi.json",
    ] {
        let reply = send(&f.app, request(Method::GET, uri, None, None)).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}");
    }
    let metrics = send(
        &f.app,
        request(Method::GET, "/metrics", Some(&f.token), None),
    )
    .await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.body.contains("postern_queue_messages 1"),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_token() {
    let f = fixture();
    let (cookie, csrf) = login(&f.app).await;
    let put = |csrf: Option<&str>| {
        let mut builder = Request::put("/api/v1/settings")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(csrf) = csrf {
            builder = builder.header("X-CSRF-Token", csrf);
        }
        builder
            .body(Body::from(
                json!({"tls": {"inbound": {"mode": "require"}}}).to_string(),
            ))
            .unwrap()
    };
    let reply = send(&f.app, put(None)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(reply.json()["field"], "X-CSRF-Token");
    let reply = send(&f.app, put(Some("0000"))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = send(&f.app, put(Some(&csrf))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        f.store.settings().unwrap().tls.inbound.mode,
        postern_config::InboundMode::Require
    );
    // GET needs no token; the session endpoint tells it.
    let reply = send(
        &f.app,
        Request::get("/api/v1/session")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json()["csrf_token"], csrf.as_str());
    // HTML forms carry it as a field.
    let form = |token: &str| {
        Request::post("/settings/domains")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "csrf={token}&name=corp.example&relay=true&next_hop=&tls=verify"
            )))
            .unwrap()
    };
    assert_eq!(
        send(&f.app, form("bad")).await.status,
        StatusCode::FORBIDDEN
    );
    let reply = send(&f.app, form(&csrf)).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(f.store.settings().unwrap().domains.len(), 1);
}

#[tokio::test]
async fn login_rotates_the_session_and_logout_ends_it() {
    let f = fixture();
    let (first, _) = login(&f.app).await;
    let reply = send(
        &f.app,
        Request::post("/api/v1/login")
            .header(header::COOKIE, &first)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"password": "correct horse battery"}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    let second = reply.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let second = second.split(';').next().unwrap().to_string();
    assert_ne!(first, second);
    let get = |cookie: &str| {
        Request::get("/api/v1/settings")
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&f.app, get(&first)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send(&f.app, get(&second)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn repeated_failures_lock_the_login() {
    let f = fixture();
    let attempt = |password: &str| {
        request(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({ "password": password })),
        )
    };
    for _ in 0..5 {
        let reply = send(&f.app, attempt("wrong password!")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json()["field"], "password");
    }
    let reply = send(&f.app, attempt("correct horse battery")).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.body
    );
    let wait: u64 = reply.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let f = fixture();
    let t = Some(f.token.as_str());
    let cases = [
        (
            Method::PUT,
            "/api/v1/settings",
            json!({"tls": {"inbound": {"mode": "always"}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tls.inbound.mode",
        ),
        (
            Method::PUT,
            "/api/v1/settings",
            json!({"tls": {"inbound": {"certificate": "No Such Cert"}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tls.inbound.certificate",
        ),
        (
            Method::PUT,
            "/api/v1/settings",
            json!({"mta": {"max_size": 1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "mta",
        ),
        (
            Method::POST,
            "/api/v1/domains",
            json!({"name": "corp.example", "next_hop": "10.0.0.1:25"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "next_hop",
        ),
        (
            Method::POST,
            "/api/v1/domains",
            json!({"name": "not a domain"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            Method::POST,
            "/api/v1/domains",
            json!({"name": "corp.example", "tls": "strict"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tls",
        ),
        (
            Method::POST,
            "/api/v1/certificates",
            json!({"name": "../../etc/passwd", "generate": {"key": "ecdsa-p256"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            Method::POST,
            "/api/v1/certificates",
            json!({"name": "x", "generate": {"key": "dsa1024"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "key",
        ),
        (
            Method::POST,
            "/api/v1/certificates",
            json!({"name": "x", "chain_pem": "garbage"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "chain_pem",
        ),
    ];
    for (method, uri, body, status, field) in cases {
        let reply = send(&f.app, request(method.clone(), uri, t, Some(body.clone()))).await;
        assert_eq!(
            reply.status, status,
            "{method} {uri} {body}: {}",
            reply.body
        );
        let got = reply.json()["field"].as_str().unwrap_or("").to_string();
        assert!(
            got.starts_with(field),
            "{body}: field {got:?}, wanted {field}"
        );
    }
    // Not JSON at all: 400.
    let reply = send(
        &f.app,
        Request::put("/api/v1/settings")
            .header(header::AUTHORIZATION, format!("Bearer {}", f.token))
            .body(Body::from("{not json"))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["field"], "body");
    // Nothing changed.
    assert_eq!(
        f.store.settings().unwrap(),
        postern_config::Settings::default()
    );
    // Oversized bodies: 413.
    let big = "x".repeat(crate::http::MAX_BODY + 1);
    let reply = send(
        &f.app,
        request(
            Method::POST,
            "/api/v1/certificates",
            t,
            Some(json!({"name": "big", "chain_pem": big})),
        ),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn ecdsa_certificate_must_not_be_rsa() {
    let f = fixture();
    let t = Some(f.token.as_str());
    for (name, key) in [("RSA Cert", "rsa2048"), ("EC Cert", "ecdsa-p256")] {
        let body = json!({"name": name, "generate": {"key": key}});
        let reply = send(
            &f.app,
            request(Method::POST, "/api/v1/certificates", t, Some(body)),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let with_ecdsa = |name: &str| {
        let mut settings = Settings::default();
        settings.tls.inbound.ecdsa_certificate = name.into();
        serde_json::to_value(&settings).unwrap()
    };
    let reply = send(
        &f.app,
        request(
            Method::PUT,
            "/api/v1/settings",
            t,
            Some(with_ecdsa("RSA Cert")),
        ),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.json()["field"], "tls.inbound.ecdsa_certificate");
    assert!(reply.body.contains("RSA key"), "{}", reply.body);
    assert_eq!(f.store.settings().unwrap(), Settings::default());
    let reply = send(
        &f.app,
        request(
            Method::PUT,
            "/api/v1/settings",
            t,
            Some(with_ecdsa("EC Cert")),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        f.store.settings().unwrap().tls.inbound.ecdsa_certificate,
        "EC Cert"
    );
}

#[tokio::test]
async fn tls_page_sets_tickets_and_ecdsa_certificate_and_keeps_them_when_absent() {
    let f = fixture();
    let (cookie, csrf) = login(&f.app).await;
    let t = Some(f.token.as_str());
    let body = json!({"name": "Own EC", "generate": {"key": "ecdsa-p256"}});
    let reply = send(
        &f.app,
        request(Method::POST, "/api/v1/certificates", t, Some(body)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let post = |extra: &str| {
        let base = "tls.inbound.mode=offer&tls.inbound.certificate=Default+Cert\
            &tls.inbound.client_certificate=none&tls.inbound.min_version=1.2\
            &tls.outbound.mode=opportunistic&tls.outbound.trusted_ca=system\
            &tls.outbound.client_certificate=";
        Request::post("/settings/tls")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}&{base}{extra}")))
            .unwrap()
    };
    let reply = send(
        &f.app,
        post("&tls.inbound.session_tickets=off&tls.inbound.ecdsa_certificate=Own+EC"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let inbound = f.store.settings().unwrap().tls.inbound;
    assert!(!inbound.session_tickets);
    assert_eq!(inbound.ecdsa_certificate, "Own EC");
    // A form without the two fields (an older page) leaves them alone.
    let reply = send(&f.app, post("")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let inbound = f.store.settings().unwrap().tls.inbound;
    assert!(!inbound.session_tickets);
    assert_eq!(inbound.ecdsa_certificate, "Own EC");
    // Nonsense is refused next to the field; nothing changes.
    let reply = send(&f.app, post("&tls.inbound.session_tickets=sometimes")).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(reply.body.contains("is not on or off"), "{}", reply.body);
    assert!(!f.store.settings().unwrap().tls.inbound.session_tickets);
    // The page shows both.
    let reply = send(&f.app, request(Method::GET, "/settings/tls", t, None)).await;
    assert!(reply.body.contains("tls.inbound.session_tickets"));
    assert!(reply.body.contains("ECDSA certificate beside it"));
}

#[tokio::test]
async fn certificates_generate_show_and_delete_in_use() {
    let f = fixture();
    let t = Some(f.token.as_str());
    let reply = send(
        &f.app,
        request(
            Method::POST,
            "/api/v1/certificates",
            t,
            Some(json!({"name": "EC Cert", "generate": {"key": "ecdsa-p256", "cn": "mx.example.test"}})),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let created = reply.json();
    assert_eq!(created["key_type"], "ECDSA P-256");
    assert_eq!(created["sans"], json!(["mx.example.test"]));
    assert!(reply.body.find("PRIVATE KEY").is_none());
    let reply = send(
        &f.app,
        request(Method::GET, "/api/v1/certificates/EC%20Cert", t, None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json()["chain_pem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(!reply.body.contains("PRIVATE KEY"));
    let reply = send(
        &f.app,
        request(
            Method::GET,
            "/api/v1/certificates/EC%20Cert?format=pem",
            t,
            None,
        ),
    )
    .await;
    assert_eq!(
        reply.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"EC_Cert.pem\""
    );
    let reply = send(
        &f.app,
        request(
            Method::DELETE,
            "/api/v1/certificates/Default%20Cert",
            t,
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert_eq!(reply.json()["field"], "tls.inbound.certificate");
    let reply = send(
        &f.app,
        request(
            Method::GET,
            "/api/v1/certificates/..%2F..%2Fetc%2Fpasswd",
            t,
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = send(
        &f.app,
        request(Method::DELETE, "/api/v1/certificates/EC%20Cert", t, None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn queue_and_pages_render() {
    let f = fixture();
    let t = Some(f.token.as_str());
    let reply = send(
        &f.app,
        request(Method::GET, "/api/v1/queue?state=deferred", t, None),
    )
    .await;
    assert_eq!(reply.json().as_array().unwrap().len(), 1);
    let reply = send(
        &f.app,
        request(Method::GET, "/api/v1/queue?sender=nobody", t, None),
    )
    .await;
    assert_eq!(reply.json().as_array().unwrap().len(), 0);
    let reply = send(
        &f.app,
        request(Method::GET, "/api/v1/queue?state=lost", t, None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let reply = send(
        &f.app,
        request(Method::GET, "/api/v1/queue/not-an-id", t, None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    for uri in [
        "/",
        "/settings/tls",
        "/settings/domains",
        "/certificates",
        "/queue",
        &format!("/queue/{}", QUEUE_ID),
        "/tracking",
    ] {
        let reply = send(&f.app, request(Method::GET, uri, t, None)).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        assert!(reply.body.starts_with("<!DOCTYPE html>"), "{uri}");
        assert!(reply.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
    }
    let reply = send(&f.app, request(Method::GET, "/settings/tls", t, None)).await;
    for label in [
        "No TLS encryption",
        "Attempt TLS encryption",
        "Require TLS encryption",
        "Do not request",
        "Check TLS possibility",
        "Require TLS, don&#39;t verify certificate",
        "Require TLS and verify certificate",
    ] {
        assert!(
            reply.body.contains(label) || reply.body.contains(&label.replace("&#39;", "'")),
            "{label}"
        );
    }
    let reply = send(
        &f.app,
        request(
            Method::DELETE,
            &format!("/api/v1/queue/{}", QUEUE_ID),
            t,
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = send(
        &f.app,
        request(Method::GET, &format!("/api/v1/queue/{}", QUEUE_ID), t, None),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// A message on node gw2, as gw2 publishes it.
fn on_gw2(store: &dyn Store) -> QueueId {
    let mut other = queued();
    other.id = "00000000001FGHJK".parse().unwrap();
    other.envelope.sender = "carol@example.test".into();
    store
        .publish_queue(&postern_store::QueueSnapshot {
            node: "gw2".into(),
            messages: 7,
            deferred: 1,
            entries: vec![crate::queue::snapshot_entry(&other)],
            published_at: 0,
            age: 0,
        })
        .unwrap();
    other.id
}

fn gw2_registered(store: &dyn Store) {
    store
        .register_node(&postern_store::NodeStatus {
            name: "gw2".into(),
            hostname: "gw2.test".into(),
            version: "0.1.0".into(),
            started_at: 1,
            last_seen: 0,
            seen_ago: 0,
            applied_generation: 1,
            fingerprints: Vec::new(),
            queue_messages: 7,
            queue_deferred: 1,
        })
        .unwrap();
}

#[tokio::test]
async fn queue_lists_every_node_and_asks_the_owner_of_another_nodes_message() {
    let f = fixture();
    let t = Some(f.token.as_str());
    let other = on_gw2(f.store.as_ref());
    let reply = send(&f.app, request(Method::GET, "/api/v1/queue", t, None)).await;
    let nodes: Vec<(String, String)> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            (QUEUE_ID.to_string(), "gw1".to_string()),
            (other.to_string(), "gw2".to_string())
        ]
    );
    let shown = send(
        &f.app,
        request(Method::GET, &format!("/api/v1/queue/{other}"), t, None),
    )
    .await;
    assert_eq!(shown.json()["node"], "gw2");
    assert_eq!(shown.json()["sender"], "carol@example.test");
    let page = send(&f.app, request(Method::GET, "/queue", t, None)).await;
    assert!(page.body.contains(r#"data-node="gw2""#), "{}", page.body);
    assert!(page.body.contains("the oldest 1 listed"), "{}", page.body);

    // gw2 is not in the node registry: nothing would carry a request out.
    let retry = format!("/api/v1/queue/{other}/retry");
    let reply = send(&f.app, request(Method::POST, &retry, t, None)).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert_eq!(reply.json()["field"], "node");
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains(r#"node "gw2" is unreachable"#));
    assert!(f.store.waiting_queue_requests("gw2").unwrap().is_empty());
    let summary = send(&f.app, request(Method::GET, "/api/v1/queue/nodes", t, None)).await;
    assert_eq!(summary.json()["nodes"][1]["unreachable"], true);

    // Registered: recorded for gw2, 202 with the request to follow.
    gw2_registered(f.store.as_ref());
    let reply = send(&f.app, request(Method::POST, &retry, t, None)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let body = reply.json();
    assert_eq!(
        (body["node"].as_str(), body["status"].as_str()),
        (Some("gw2"), Some("waiting"))
    );
    let request_id = body["request"].as_i64().unwrap();
    let delete = send(
        &f.app,
        request(Method::DELETE, &format!("/api/v1/queue/{other}"), t, None),
    )
    .await;
    assert_eq!(delete.status, StatusCode::ACCEPTED, "{}", delete.body);
    let waiting: Vec<(String, postern_store::QueueAction)> = f
        .store
        .waiting_queue_requests("gw2")
        .unwrap()
        .into_iter()
        .map(|r| (r.queue_id, r.action))
        .collect();
    assert_eq!(
        waiting,
        [
            (other.to_string(), postern_store::QueueAction::Retry),
            (other.to_string(), postern_store::QueueAction::Delete)
        ]
    );
    let status_uri = format!("/api/v1/queue/requests/{request_id}");
    let status = send(&f.app, request(Method::GET, &status_uri, t, None)).await;
    assert_eq!(status.json()["status"], "waiting");
    f.store
        .finish_queue_request(request_id, &Ok("due now".into()))
        .unwrap();
    let status = send(&f.app, request(Method::GET, &status_uri, t, None)).await;
    assert_eq!(
        (
            status.json()["status"].as_str(),
            status.json()["result"].as_str()
        ),
        (Some("done"), Some("due now"))
    );
    let missing = send(
        &f.app,
        request(Method::GET, "/api/v1/queue/requests/999999", t, None),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // This node's own message is still changed at once, as before.
    let own = send(
        &f.app,
        request(
            Method::DELETE,
            &format!("/api/v1/queue/{QUEUE_ID}"),
            t,
            None,
        ),
    )
    .await;
    assert_eq!(own.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn queue_page_forms_ask_the_owner_of_another_nodes_message() {
    let f = fixture();
    let other = on_gw2(f.store.as_ref());
    gw2_registered(f.store.as_ref());
    let (cookie, csrf) = login(&f.app).await;
    let post = |uri: String| {
        Request::post(uri)
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap()
    };
    let get = |uri: &str| {
        Request::get(uri)
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .unwrap()
    };
    let detail = send(&f.app, get(&format!("/queue/{other}"))).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    assert!(detail.body.contains("On node"), "{}", detail.body);
    assert!(detail.body.contains("carol@example.test"));

    let reply = send(&f.app, post(format!("/queue/{other}/retry"))).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let location = reply.headers[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(location, format!("/queue/{other}?ok=requested"));
    let shown = send(&f.app, get(&location)).await;
    assert!(shown
        .body
        .contains("Requested from the node that holds the message"));
    let reply = send(&f.app, post(format!("/queue/{other}/delete"))).await;
    assert_eq!(
        reply.headers[header::LOCATION].to_str().unwrap(),
        "/queue?ok=requested"
    );
    let actions: Vec<postern_store::QueueAction> = f
        .store
        .waiting_queue_requests("gw2")
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        [
            postern_store::QueueAction::Retry,
            postern_store::QueueAction::Delete
        ]
    );
    // This node's own message: deleted at once, nothing requested.
    let reply = send(&f.app, post(format!("/queue/{QUEUE_ID}/delete"))).await;
    assert_eq!(
        reply.headers[header::LOCATION].to_str().unwrap(),
        "/queue?ok=deleted"
    );
    assert_eq!(f.store.waiting_queue_requests("gw2").unwrap().len(), 2);
    assert!(f.store.waiting_queue_requests("gw1").unwrap().is_empty());
}
