//! Single sign-on: the authorization code flow with PKCE against a local OpenID Connect
//! provider (an axum server on loopback with an ES256 key), the API verifying the ID token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode, header};
use modelgw_admin_api::oidc::{OidcConfig, OidcVerifier};
use modelgw_console::OidcSignIn;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Console, HOST};

const CLIENT_ID: &str = "5a1e0000-0000-4000-8000-00000000c0de";
const OID: &str = "0b1d0000-0000-4000-8000-000000000042";

/// What the provider does with the next authorization.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Twist {
    None,
    /// The ID token carries another nonce (a replayed token).
    WrongNonce,
    /// The user has no Model Gateway role.
    NoRole,
}

struct IdpState {
    issuer: String,
    key: EcdsaKeyPair,
    /// code → (nonce, code_challenge, redirect_uri)
    codes: Mutex<HashMap<String, (String, String, String)>>,
    twist: Mutex<Twist>,
    redeemed: Mutex<Vec<HashMap<String, String>>>,
}

#[derive(Clone)]
struct Idp(Arc<IdpState>);

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Idp {
    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/tenant/v2.0", listener.local_addr().unwrap());
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let idp = Idp(Arc::new(IdpState {
            issuer,
            key,
            codes: Mutex::default(),
            twist: Mutex::new(Twist::None),
            redeemed: Mutex::default(),
        }));
        let app = Router::new()
            .route("/tenant/v2.0/.well-known/openid-configuration", get(discovery))
            .route("/tenant/keys", get(jwks))
            .route("/tenant/authorize", get(authorize))
            .route("/tenant/token", post(token))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        idp
    }

    fn base(&self) -> String {
        self.0.issuer.trim_end_matches("/v2.0").to_owned()
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": "k1"});
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.0.key.sign(&SystemRandom::new(), message.as_bytes()).unwrap();
        format!("{message}.{}", b64(signature.as_ref()))
    }
}

async fn discovery(State(idp): State<Idp>) -> Json<Value> {
    Json(json!({
        "issuer": idp.0.issuer,
        "authorization_endpoint": format!("{}/authorize", idp.base()),
        "token_endpoint": format!("{}/token", idp.base()),
        "jwks_uri": format!("{}/keys", idp.base()),
    }))
}

async fn jwks(State(idp): State<Idp>) -> Json<Value> {
    let point = idp.0.key.public_key().as_ref().to_vec();
    Json(json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "k1",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    }]}))
}

/// Signs the user in at once and sends the browser back with a code.
async fn authorize(State(idp): State<Idp>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    let code = format!("code-{}", q["state"].len() + idp.0.codes.lock().unwrap().len());
    idp.0.codes.lock().unwrap().insert(
        code.clone(),
        (q["nonce"].clone(), q["code_challenge"].clone(), q["redirect_uri"].clone()),
    );
    let to = format!("{}?code={code}&state={}", q["redirect_uri"], q["state"]);
    Redirect::to(&to).into_response()
}

async fn token(State(idp): State<Idp>, Form(f): Form<HashMap<String, String>>) -> Response {
    idp.0.redeemed.lock().unwrap().push(f.clone());
    let Some((nonce, challenge, redirect_uri)) = idp.0.codes.lock().unwrap().remove(&f["code"])
    else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response();
    };
    // PKCE: the verifier must hash to the challenge of the authorization.
    if b64(&Sha256::digest(f["code_verifier"].as_bytes())) != challenge
        || f["redirect_uri"] != redirect_uri
    {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response();
    }
    let twist = *idp.0.twist.lock().unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": idp.0.issuer, "aud": CLIENT_ID, "oid": OID, "sub": "pairwise-sub",
        "iat": now, "nbf": now, "exp": now + 3600,
        "nonce": if twist == Twist::WrongNonce { "another-nonce".to_owned() } else { nonce },
        "roles": ["operator"],
    });
    if twist == Twist::NoRole {
        claims["roles"] = json!([]);
    }
    Json(json!({"token_type": "Bearer", "id_token": idp.sign(&claims), "access_token": "opaque"}))
        .into_response()
}

async fn console_for(idp: &Idp) -> Console {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = OidcConfig::new(idp.0.issuer.clone(), vec![CLIENT_ID.to_owned()]);
    let verifier = OidcVerifier::new(config, reqwest::Client::new()).unwrap();
    let issuer = idp.0.issuer.clone();
    Console::start_with(
        move |s| {
            s.oidc = Some(OidcSignIn {
                issuer,
                client_id: CLIENT_ID.to_owned(),
                client_secret: None,
                scopes: "openid profile".to_owned(),
                public_url: None,
                provider_name: "Test IdP".to_owned(),
            });
        },
        Some(Arc::new(verifier)),
        Console::no_azure(),
    )
    .await
}

/// Runs the browser's part: start, the provider, the callback. Returns the callback's answer.
async fn sign_in_via(c: &Console) -> crate::harness::Page {
    let start = c.send(Method::GET, "/sign-in/oidc", None, None).await;
    assert_eq!(start.status, StatusCode::SEE_OTHER, "{}", start.body);
    let tx_cookie = start.header("set-cookie").split(';').next().unwrap().to_owned();
    assert!(start.header("set-cookie").contains("SameSite=Lax"));
    let authorize = start.header("location").to_owned();
    assert!(authorize.contains("code_challenge=") && authorize.contains("nonce="), "{authorize}");
    assert!(
        authorize.contains(&format!(
            "redirect_uri=http%3A%2F%2F{}%2Fsign-in%2Foidc%2Fcallback",
            HOST.replace(':', "%3A")
        )),
        "{authorize}"
    );
    let http =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let back = http.get(&authorize).send().await.unwrap();
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
    let callback = back.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let path = callback.split_once(HOST).unwrap().1.to_owned();
    c.send(Method::GET, &path, Some(&tx_cookie), None).await
}

#[tokio::test]
async fn single_sign_on_gives_a_session_as_the_oidc_subject() {
    let idp = Idp::start().await;
    let c = console_for(&idp).await;
    let form = c.send(Method::GET, "/sign-in", None, None).await;
    assert!(form.body.contains("Sign in with Test IdP"), "{}", form.body);

    let done = sign_in_via(&c).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains(r#"http-equiv="refresh""#));
    let cookie = done.session_cookie();
    let overview = c.send(Method::GET, "/", Some(&cookie), None).await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains(&format!("oidc:{OID}")), "the actor is the Entra object id");
    assert!(overview.body.contains("operator"));
    // The public client proved PKCE and sent no secret.
    let redeemed = idp.0.redeemed.lock().unwrap().clone();
    assert_eq!(redeemed.len(), 1);
    assert!(
        redeemed[0].contains_key("code_verifier") && !redeemed[0].contains_key("client_secret")
    );
}

#[tokio::test]
async fn a_callback_with_another_state_or_without_the_transaction_is_refused() {
    let idp = Idp::start().await;
    let c = console_for(&idp).await;
    let start = c.send(Method::GET, "/sign-in/oidc", None, None).await;
    let tx_cookie = start.header("set-cookie").split(';').next().unwrap().to_owned();
    let forged = c
        .send(Method::GET, "/sign-in/oidc/callback?code=x&state=forged", Some(&tx_cookie), None)
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert!(
        forged
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .all(|v| !v.to_str().unwrap().contains("modelgw_session="))
    );
    let no_tx = c.send(Method::GET, "/sign-in/oidc/callback?code=x&state=y", None, None).await;
    assert_eq!(no_tx.status, StatusCode::UNAUTHORIZED);
    assert!(idp.0.redeemed.lock().unwrap().is_empty(), "no code was redeemed");
}

#[tokio::test]
async fn an_id_token_with_another_nonce_or_no_role_gives_no_session() {
    let idp = Idp::start().await;
    let c = console_for(&idp).await;
    *idp.0.twist.lock().unwrap() = Twist::WrongNonce;
    let replayed = sign_in_via(&c).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED, "{}", replayed.body);
    assert!(
        replayed
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .all(|v| !v.to_str().unwrap().contains("modelgw_session="))
    );

    *idp.0.twist.lock().unwrap() = Twist::NoRole;
    let no_role = sign_in_via(&c).await;
    assert_eq!(no_role.status, StatusCode::UNAUTHORIZED);
    assert!(no_role.body.contains("no role"), "{}", no_role.body);
}
