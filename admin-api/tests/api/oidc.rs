//! OpenID Connect bearer tokens against a local identity provider: an axum server on loopback
//! serving a discovery document and a JWKS of keys the test generates (ECDSA P-256 with ring;
//! one fixed RSA key, ring having no RSA key generation), and counting every request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use modelgw_admin_api::identity::{Principal, PrincipalKind, Role};
use modelgw_admin_api::oidc::{
    InvalidToken, JwksError, OidcConfig, OidcError, OidcVerifier, RoleMap, looks_like_jwt,
};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const AUDIENCE: &str = "0b5e1c2d-0000-4000-8000-00000000a11d";
const OID: &str = "9f3c0000-0000-4000-8000-000000000001";

// ---------------------------------------------------------------------------------------------
// The identity provider

#[derive(Default)]
struct IdpState {
    issuer: Mutex<String>,
    /// Overrides the discovery document's `issuer` (another tenant's document).
    discovery_issuer: Mutex<Option<String>>,
    keys: Mutex<Vec<Value>>,
    cache_control: Mutex<Option<&'static str>>,
    /// `/jwks` answers 500 while set.
    jwks_down: AtomicBool,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
}

#[derive(Clone)]
struct Idp(Arc<IdpState>);

impl Idp {
    async fn start(keys: &[&TestKey]) -> Idp {
        let idp = Idp(Arc::default());
        idp.publish(keys);
        let app = Router::new()
            .route("/tenant/v2.0/.well-known/openid-configuration", get(discovery))
            .route("/tenant/discovery/v2.0/keys", get(jwks))
            .with_state(idp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *idp.0.issuer.lock().unwrap() = format!("http://{addr}/tenant/v2.0");
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        idp
    }

    fn issuer(&self) -> String {
        self.0.issuer.lock().unwrap().clone()
    }

    fn jwks_uri(&self) -> String {
        self.issuer().replace("/tenant/v2.0", "/tenant/discovery/v2.0/keys")
    }

    /// Replaces the published key set (a rotation withdraws the old key with this).
    fn publish(&self, keys: &[&TestKey]) {
        *self.0.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    fn jwks_hits(&self) -> usize {
        self.0.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> usize {
        self.0.discovery_hits.load(Ordering::SeqCst)
    }

    /// A configuration trusting this provider; `AUDIENCE` and `api://modelgw` accepted.
    fn config(&self) -> OidcConfig {
        OidcConfig::new(self.issuer(), vec![AUDIENCE.to_owned(), "api://modelgw".to_owned()])
    }

    fn verifier(&self, tweak: impl FnOnce(&mut OidcConfig)) -> OidcVerifier {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = self.config();
        tweak(&mut config);
        OidcVerifier::new(config, reqwest::Client::new()).unwrap()
    }

    /// Claims of a valid token: this issuer, `AUDIENCE`, valid now for ten minutes.
    fn claims(&self, roles: Value) -> Value {
        let now = now();
        json!({
            "iss": self.issuer(), "aud": AUDIENCE, "iat": now - 10, "nbf": now - 10,
            "exp": now + 600, "oid": OID, "sub": "pairwise-subject", "tid": "tenant",
            "roles": roles,
        })
    }
}

async fn discovery(State(idp): State<Idp>) -> Response {
    idp.0.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let issuer = idp.0.discovery_issuer.lock().unwrap().clone().unwrap_or_else(|| idp.issuer());
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": idp.jwks_uri(),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<Idp>) -> Response {
    idp.0.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if idp.0.jwks_down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys = idp.0.keys.lock().unwrap().clone();
    let mut headers = HeaderMap::new();
    if let Some(value) = *idp.0.cache_control.lock().unwrap() {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    }
    (headers, axum::Json(json!({ "keys": keys }))).into_response()
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

struct TestKey {
    kid: String,
    alg: &'static str,
    signer: Signer,
}

/// Test-only RSA-2048 key (PKCS#1 DER), trusted nowhere: ring cannot generate RSA keys, and
/// RS256 is what Entra ID signs with.
const RSA_KEY_DER_BASE64: &str = concat!(
    "MIIEowIBAAKCAQEAoSgcadd+mcJHA6+Mx4t2atpzE79lFODO61lV1hIvsp3zgmDvPHCfBuEGrlSi9Gncv9X8YEk6",
    "kmuD95K4PImL1FY5mknqL3tEnqoyYuCTAsI2/PbDmJJpuHQ9cPF/1tEmBf4VyNRY4WrfE2UDcZzRwaAK9ZFduFYF",
    "pIx+qU03Bs87BPE6HIL9gVhgXSU1gDe+vNY3f2CPCCZ6ZF2aGEDaeXv0F6s9ZrER7qvHBqy5VT182sNH4+9UrgSP",
    "dK7Blw9Zqno9M+cQzNxIERdXIG4bFlsY8VV9Q23fCwxi9JEQ340Ex1SBYQJRlRDYOxFvwRGnEYQqMm9cjmJCzLnd",
    "FyrBxwIDAQABAoIBAAa2jwhxq5poF2E17N1bF+G3m9eUv3cxLi1rmUHDnC0Km1wxAYY5AsbclNSqPeeEiWeMWGkC",
    "Y+g5hlPHztjmueZseRXOQm0b623YlSS9SiJxSK0c8mTmpHTEktKjnLmsGLNjNDEbd2BcfVJngM84wxwXuJ0mIwtM",
    "ugtytswCpWopItXAxKj91xeR8ow8iqpTrYRDfJQWy7sqXsFnuF/c2JpPEt4lN8TeGHdNVsJd7YdH4zpJ971XvV34",
    "g9A+x0W250xNl463Nkn9vL2QnBuoEOJTia6wysk4DpbqPxDZw7xNFwC8HG8TVwhWIK2QKiKX8smdRC/JlG/an9Go",
    "ERCwb3ECgYEAzfCmVUr+/6Vqt8mFMgg9xe+hPoGigpCUjRqOemzSfDcLWy7++rFYIODOP44YlY9wbjlpqVQUU6Zd",
    "x4Ernugks9OALPuIkhilNKHjFf0hyVBBiAoyNDxNtrXXPMWADdbwniot8QjFvOAt7RAeRNi+K/kFLQXU8YTPolbW",
    "qcqNZYMCgYEAyFSocMAG5Ah3flySbPm52IyY2wYNlcEUF1HUNUbKyN1iC8KX03xYoQdRzUQAXQxfe5PsFwfvAT6d",
    "DIWODvHanIlv2u2nWyUdgEbBUc3yzzSGV34RVHeS9BqdbSkstrJDMb4N4sDojNwphzwgBPPCMN5aD6R3g3iwGibA",
    "/9dCA20CgYEAr6dyiE+mfrE9/DLz2//xiJHi66iwz0K4oj4jhsKpKe/dTNIiA/weGjUFVmpCB9dH44wu1pHzoIHH",
    "fXJsnWaOX5+ntTZ6f3pr9x+ZzNiS593/dySTO8Cv3IbvZlNi7OsHYzDA7NU5q+de5NQZrUlds638PzG5NqO8YlBF",
    "Wp98yTcCgYAoiFh8V54NTVlAC+LkgbKEig3zYsok3qf9/+R70xL8iS5pSroFZEdabWyzp2qbaQF4s3k1P7mv+scz",
    "3WHczDp7KaOkHCmcW2oYpjg/IPhbzDjSQwOmn3rwQOJRT99oJ7FIwzd0BawHtBQC9LtVxSwpTxPRzmkQBL88y1KJ",
    "cTg+EQKBgE9+GK2McrVukw6adkvBS6ozawvtGByvzLaJiwZptAAjBUMF/T3pcdHkqi/Z6jQ2CgCO7VnwvjUpl1b8",
    "qeqmmbvoINVtJsoSBlVcTB07cZHzNjMxxrHsw1XDCNyV4AXhDZfXqQlNcUinTPmwkxP5L5tB9drPfWrz2dSfQYuf",
    "6IMN",
);

impl TestKey {
    /// A fresh ECDSA P-256 key.
    fn es256(kid: &str) -> TestKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        TestKey { kid: kid.to_owned(), alg: "ES256", signer: Signer::Ec(pair) }
    }

    fn rs256(kid: &str) -> TestKey {
        let der = STANDARD.decode(RSA_KEY_DER_BASE64).unwrap();
        let pair = RsaKeyPair::from_der(&der).unwrap();
        TestKey { kid: kid.to_owned(), alg: "RS256", signer: Signer::Rsa(pair) }
    }

    /// The JWKS entry, shaped as Entra ID's (`use`, `kid`, no `alg` for RSA).
    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({
                    "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
                    "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                })
            }
            Signer::Rsa(pair) => {
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({
                    "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid,
                    "n": b64(&public.n), "e": b64(&public.e),
                })
            }
        }
    }

    fn header(&self) -> Value {
        json!({"typ": "JWT", "alg": self.alg, "kid": self.kid})
    }

    /// `claims` signed with this key, under this key's `alg` and `kid`.
    fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }

    /// Any header and claims, signed with this key.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!("{}.{}", b64_json(header), b64_json(claims));
        let rng = SystemRandom::new();
        let signature = match &self.signer {
            Signer::Ec(pair) => pair.sign(&rng, message.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut signature).unwrap();
                signature
            }
        };
        format!("{message}.{}", b64(&signature))
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(value: &Value) -> String {
    b64(value.to_string().as_bytes())
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `base` with `patch`'s fields set (a `null` removes the field).
fn with(base: &Value, patch: Value) -> Value {
    let mut out = base.as_object().unwrap().clone();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

#[track_caller]
fn expect_invalid(result: Result<Principal, OidcError>, expected: InvalidToken, token: &str) {
    let error = result.expect_err("token is rejected");
    assert!(
        matches!(error, OidcError::Invalid(reason) if reason == expected),
        "expected {expected:?}, got {error:?}"
    );
    assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    assert!(!token.is_empty() && !error.to_string().contains(token), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn valid_tokens_map_to_their_principal() {
    let ec = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let idp = Idp::start(&[&ec, &rsa]).await;
    let verifier = idp.verifier(|_| {});

    // Name from `oid`; the highest role among the claim's values.
    let token = ec.token(&idp.claims(json!(["viewer", "operator", "unmapped"])));
    assert!(looks_like_jwt(&token));
    let principal = verifier.verify(&token).await.unwrap();
    assert_eq!(
        principal,
        Principal {
            kind: PrincipalKind::Oidc { issuer: idp.issuer() },
            name: OID.to_owned(),
            role: Role::Operator,
        }
    );
    assert_eq!(principal.actor(), format!("oidc:{OID}"));

    // RS256 (Entra ID's algorithm); `sub` when there is no `oid`; `aud` as an array holding
    // the second accepted audience; `exp` just past, within the 60 s leeway.
    let claims = with(
        &idp.claims(json!(["admin"])),
        json!({"oid": null, "aud": ["other-api", "api://modelgw"], "exp": now() - 30}),
    );
    let principal = verifier.verify(&rsa.token(&claims)).await.unwrap();
    assert_eq!((principal.name.as_str(), principal.role), ("pairwise-subject", Role::Admin));
    assert_eq!((idp.discovery_hits(), idp.jwks_hits()), (1, 1), "one discovery, one JWKS");

    // Groups mapped by a configured role map; an explicit JWKS URI skips discovery.
    let group = "1f6c0000-0000-4000-8000-00000000beef";
    let by_groups = idp.verifier(|c| {
        c.roles_claim = "groups".to_owned();
        c.role_map = RoleMap::parse(&format!("ModelGateway.Admin=admin,{group}=operator")).unwrap();
        c.jwks_uri = Some(idp.jwks_uri().parse().unwrap());
    });
    let claims = with(&idp.claims(json!(["admin"])), json!({"groups": ["g-other", group]}));
    assert_eq!(by_groups.verify(&ec.token(&claims)).await.unwrap().role, Role::Operator);
    let claims = with(&claims, json!({"groups": "ModelGateway.Admin"}));
    assert_eq!(by_groups.verify(&ec.token(&claims)).await.unwrap().role, Role::Admin);
    assert_eq!((idp.discovery_hits(), idp.jwks_hits()), (1, 2));
}

#[tokio::test]
async fn invalid_tokens_are_rejected_as_not_valid_and_never_logged() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let key = TestKey::es256("ec-1");
    let rsa = TestKey::rs256("rsa-1");
    let impostor = TestKey::es256("ec-1"); // same kid, another key
    let idp = Idp::start(&[&key, &rsa]).await;
    let verifier = idp.verifier(|_| {});
    let valid = idp.claims(json!(["admin"]));
    let now = now();
    let hs256 = |secret: &[u8]| {
        let message =
            format!("{}.{}", b64_json(&json!({"alg": "HS256", "kid": "ec-1"})), b64_json(&valid));
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            message.as_bytes(),
        );
        format!("{message}.{}", b64(tag.as_ref()))
    };
    let public_jwk = key.jwk().to_string();
    let Signer::Ec(pair) = &key.signer else { unreachable!() };
    let public_point = pair.public_key().as_ref().to_vec();
    let tampered = {
        let token = key.token(&with(&valid, json!({"roles": ["viewer"]})));
        let parts: Vec<&str> = token.split('.').collect();
        format!("{}.{}.{}", parts[0], b64_json(&valid), parts[2])
    };

    let cases: Vec<(&str, String, InvalidToken)> = vec![
        ("expired", key.token(&with(&valid, json!({"exp": now - 3600}))), InvalidToken::Expired),
        ("past leeway", key.token(&with(&valid, json!({"exp": now - 120}))), InvalidToken::Expired),
        (
            "not yet valid",
            key.token(&with(&valid, json!({"nbf": now + 3600}))),
            InvalidToken::NotYetValid,
        ),
        ("another key", impostor.token(&valid), InvalidToken::BadSignature),
        ("tampered claims", tampered, InvalidToken::BadSignature),
        (
            "wrong audience",
            key.token(&with(&valid, json!({"aud": "another-app"}))),
            InvalidToken::WrongAudience,
        ),
        (
            "wrong issuer",
            key.token(&with(
                &valid,
                json!({"iss": "https://login.microsoftonline.com/other/v2.0"}),
            )),
            InvalidToken::WrongIssuer,
        ),
        (
            "alg none",
            format!("{}.{}.", b64_json(&json!({"alg": "none", "kid": "ec-1"})), b64_json(&valid)),
            InvalidToken::AlgorithmNotAllowed,
        ),
        (
            "alg None, signed",
            key.sign(&json!({"alg": "None", "kid": "ec-1"}), &valid),
            InvalidToken::AlgorithmNotAllowed,
        ),
        (
            "HS256 with the JWK as secret",
            hs256(public_jwk.as_bytes()),
            InvalidToken::AlgorithmNotAllowed,
        ),
        (
            "HS256 with the public point as secret",
            hs256(&public_point),
            InvalidToken::AlgorithmNotAllowed,
        ),
        (
            "alg not configured (ES384)",
            key.sign(&json!({"alg": "ES384", "kid": "ec-1"}), &valid),
            InvalidToken::AlgorithmNotAllowed,
        ),
        (
            "RS256 header on the EC key",
            rsa.sign(&json!({"alg": "RS256", "kid": "ec-1"}), &valid),
            InvalidToken::KeyMismatch,
        ),
        ("no kid", key.sign(&json!({"alg": "ES256"}), &valid), InvalidToken::MissingKeyId),
        (
            "exp as a string (jsonwebtoken's type confusion)",
            key.token(&with(&valid, json!({"exp": (now + 600).to_string()}))),
            InvalidToken::MissingClaim,
        ),
        (
            "nbf as a string, far ahead",
            key.token(&with(&valid, json!({"nbf": "99999999999"}))),
            InvalidToken::Malformed,
        ),
        ("no exp", key.token(&with(&valid, json!({"exp": null}))), InvalidToken::MissingClaim),
        ("no aud", key.token(&with(&valid, json!({"aud": null}))), InvalidToken::MissingClaim),
        (
            "no subject",
            key.token(&with(&valid, json!({"oid": null, "sub": null}))),
            InvalidToken::NoSubject,
        ),
        (
            "claims not JSON",
            format!("{}.{}.{}", b64_json(&key.header()), b64(b"{roles"), b64(b"sig")),
            InvalidToken::BadSignature,
        ),
        (
            "header not JSON",
            format!("{}.{}.{}", b64(b"{alg"), b64_json(&valid), b64(b"sig")),
            InvalidToken::Malformed,
        ),
        ("not a JWT", "mgw_0123456789abcdef".to_owned(), InvalidToken::Malformed),
        ("four segments", format!("{}.x", key.token(&valid)), InvalidToken::Malformed),
        (
            "too long",
            format!("{}.{}.x", b64_json(&key.header()), "A".repeat(40_000)),
            InvalidToken::Malformed,
        ),
    ];
    let mut tokens = Vec::new();
    for (case, token, expected) in cases {
        let result = verifier.verify(&token).await;
        let error = result.as_ref().err().map(|e| format!("{e:?}"));
        assert!(
            matches!(&result, Err(OidcError::Invalid(reason)) if *reason == expected),
            "{case}: expected {expected:?}, got {error:?}"
        );
        expect_invalid(result, expected, &token);
        tokens.push(token);
    }
    // The control: the same key and claims verify.
    verifier.verify(&key.token(&valid)).await.unwrap();

    let logs = logs.text();
    assert_eq!(logs.matches("OIDC bearer token rejected").count(), tokens.len(), "{logs}");
    for token in &tokens {
        // No token, nor its signature, nor its claims segment appears in any log line.
        for part in std::iter::once(token.as_str()).chain(token.split('.').filter(|p| p.len() > 20))
        {
            assert!(!logs.contains(part), "a token part was logged: {part}");
        }
    }
    // A wrong issuer or audience is logged with the token's own value, to say what to fix.
    assert!(logs.contains("another-app") && logs.contains("login.microsoftonline.com/other"));
}

#[tokio::test]
async fn a_valid_token_without_a_mapped_role_is_forbidden() {
    let key = TestKey::es256("ec-1");
    let idp = Idp::start(&[&key]).await;
    let verifier = idp.verifier(|_| {});
    for roles in
        [json!(["reader", "Admin"]), json!([]), json!(""), json!({"admin": true}), Value::Null]
    {
        let claims = with(&idp.claims(json!([])), json!({ "roles": roles }));
        let error = verifier.verify(&key.token(&claims)).await.expect_err("no role");
        let OidcError::NoRole { subject, claim } = &error else { panic!("{roles}: {error:?}") };
        assert_eq!((subject.as_str(), claim.as_str()), (OID, "roles"));
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn a_key_rotation_is_picked_up_with_one_fetch() {
    let old = TestKey::es256("2026-01");
    let new = TestKey::es256("2026-07");
    let idp = Idp::start(&[&old]).await;
    let verifier = idp.verifier(|c| c.min_fetch_interval = Duration::from_millis(200));
    let claims = idp.claims(json!(["viewer"]));
    verifier.verify(&old.token(&claims)).await.unwrap();
    assert_eq!(idp.jwks_hits(), 1);

    // The provider rotates: the new key replaces the old one.
    idp.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let (verifier, token) = (verifier.clone(), new.token(&claims));
        tasks.spawn(async move { verifier.verify(&token).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().role, Role::Viewer);
    }
    assert_eq!(idp.jwks_hits(), 2, "twenty tokens with the new kid, one fetch");

    // The withdrawn key is gone with the old set.
    let token = old.token(&claims);
    expect_invalid(verifier.verify(&token).await, InvalidToken::UnknownKey, &token);
    assert_eq!(idp.jwks_hits(), 2);
    assert_eq!(idp.discovery_hits(), 1, "the discovered jwks_uri is kept");
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    let key = TestKey::es256("ec-1");
    let idp = Idp::start(&[&key]).await;
    let interval = Duration::from_millis(400);
    let verifier = idp.verifier(|c| c.min_fetch_interval = interval);
    let claims = idp.claims(json!(["viewer"]));

    // Concurrent first use: one discovery, one JWKS fetch.
    let mut tasks = JoinSet::new();
    for _ in 0..20 {
        let (verifier, token) = (verifier.clone(), key.token(&claims));
        tasks.spawn(async move { verifier.verify(&token).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!((idp.discovery_hits(), idp.jwks_hits()), (1, 1));

    let flood = |round: usize| {
        let mut tasks = JoinSet::new();
        for i in 0..100 {
            let garbage = TestKey::es256(&format!("garbage-{round}-{i}"));
            let (verifier, token) = (verifier.clone(), garbage.token(&claims));
            tasks.spawn(async move { (verifier.verify(&token).await, token) });
        }
        tasks
    };
    // Right after a fetch: none.
    let mut tasks = flood(0);
    while let Some(result) = tasks.join_next().await {
        let (result, token) = result.unwrap();
        expect_invalid(result, InvalidToken::UnknownKey, &token);
    }
    assert_eq!(idp.jwks_hits(), 1, "a flood within the interval fetches nothing");

    // Once the interval has passed: one, however many arrive together, then none again.
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    for round in 1..=2 {
        let mut tasks = flood(round);
        while let Some(result) = tasks.join_next().await {
            let (result, token) = result.unwrap();
            expect_invalid(result, InvalidToken::UnknownKey, &token);
        }
    }
    assert_eq!(idp.jwks_hits(), 2, "200 unknown kids after the interval, one fetch");
    // Valid tokens were never held up.
    verifier.verify(&key.token(&claims)).await.unwrap();
    assert_eq!(idp.jwks_hits(), 2);
}

#[tokio::test]
async fn keys_are_refreshed_when_their_max_age_passes() {
    let old = TestKey::es256("old");
    let new = TestKey::es256("new");
    let idp = Idp::start(&[&old, &new]).await;
    let verifier = idp.verifier(|c| {
        c.jwks_max_age = Duration::from_millis(300);
        c.min_fetch_interval = Duration::from_millis(100);
    });
    let claims = idp.claims(json!(["viewer"]));
    let old_token = old.token(&claims);
    verifier.verify(&old_token).await.unwrap();
    idp.publish(&[&new]);
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(idp.jwks_hits(), 1, "a fresh set is used as it is");

    tokio::time::sleep(Duration::from_millis(350)).await;
    expect_invalid(verifier.verify(&old_token).await, InvalidToken::UnknownKey, &old_token);
    assert_eq!(idp.jwks_hits(), 2, "the stale set was fetched again, once");
    verifier.verify(&new.token(&claims)).await.unwrap();

    // The response's Cache-Control: max-age overrides the configured age.
    *idp.0.cache_control.lock().unwrap() = Some("public, max-age=3600");
    tokio::time::sleep(Duration::from_millis(350)).await;
    verifier.verify(&new.token(&claims)).await.unwrap();
    assert_eq!(idp.jwks_hits(), 3);
    tokio::time::sleep(Duration::from_millis(350)).await;
    verifier.verify(&new.token(&claims)).await.unwrap();
    assert_eq!(idp.jwks_hits(), 3, "max-age=3600 keeps the set");
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_and_a_failed_refresh_keeps_the_last_good_set() {
    let key = TestKey::es256("ec-1");
    let idp = Idp::start(&[&key]).await;
    let verifier = idp.verifier(|c| {
        c.jwks_max_age = Duration::from_millis(200);
        c.min_fetch_interval = Duration::from_millis(200);
    });
    let token = key.token(&idp.claims(json!(["viewer"])));

    idp.0.jwks_down.store(true, Ordering::SeqCst);
    let error = verifier.verify(&token).await.expect_err("no keys");
    assert!(matches!(error, OidcError::KeysUnavailable(JwksError::Status { .. })), "{error:?}");
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(error.is_retryable() && !error.to_string().contains(&token));
    // Asked again at once: refused without asking the provider.
    let error = verifier.verify(&token).await.expect_err("no keys");
    assert!(matches!(error, OidcError::KeysUnavailable(JwksError::Backoff { .. })), "{error:?}");
    assert_eq!(idp.jwks_hits(), 1);
    assert!(verifier.fetch_keys().await.is_err(), "an explicit fetch reports the failure");
    assert_eq!(idp.jwks_hits(), 2);

    // The provider recovers: the next fetch after the interval succeeds.
    idp.0.jwks_down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    verifier.verify(&token).await.unwrap();
    assert_eq!(idp.jwks_hits(), 3);

    // It fails again while the set goes stale: tokens still verify with the last good set.
    idp.0.jwks_down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(idp.jwks_hits(), 4, "one refresh attempt, then the interval");
}

#[tokio::test]
async fn a_discovery_document_of_another_issuer_is_refused() {
    let key = TestKey::es256("ec-1");
    let idp = Idp::start(&[&key]).await;
    *idp.0.discovery_issuer.lock().unwrap() =
        Some("https://login.microsoftonline.com/evil/v2.0".into());
    let verifier = idp.verifier(|_| {});
    let error = verifier.fetch_keys().await.expect_err("issuer mismatch");
    assert!(
        matches!(error, OidcError::KeysUnavailable(JwksError::IssuerMismatch { .. })),
        "{error:?}"
    );
    assert_eq!((idp.discovery_hits(), idp.jwks_hits()), (1, 0), "its keys are never fetched");

    // A plain-http issuer off loopback is refused before anything is fetched.
    let config = OidcConfig::new("http://login.example/tenant", vec![AUDIENCE.to_owned()]);
    let error = OidcVerifier::new(config, reqwest::Client::new()).expect_err("plain http");
    assert_eq!(error.setting, "issuer");
}

/// Log output, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Through the admin API itself, with the real verifier: a token with the `operator` role
/// changes configuration and is the actor of its audit entry; an expired, wrongly signed or
/// wrong-audience token gets 401; a `viewer` token gets 403 on a change; a token whose
/// identity provider cannot be reached gets 503.
#[tokio::test]
async fn the_admin_api_signs_in_with_openid_connect_tokens() {
    use crate::harness::{Harness, endpoint_body};
    let key = TestKey::es256("k1");
    let idp = Idp::start(&[&key]).await;
    let h = Harness::start_with_verifier(Arc::new(idp.verifier(|_| {}))).await;
    let call = |token: String, method: &str, path: &str, body: Option<Value>| {
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                axum::body::Body::from(v.to_string())
            }
            None => axum::body::Body::empty(),
        };
        h.send(request.body(body).unwrap())
    };
    let operator = key.token(&idp.claims(json!(["operator"])));
    let created = call(
        operator.clone(),
        "POST",
        "/api/v1/inference-endpoints",
        Some(endpoint_body("eus", "azkey-0123456789abcdef-1")),
    )
    .await
    .expect(StatusCode::CREATED);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let log = h.get(&format!("/api/v1/audit-log?entity_id={id}")).await.expect(StatusCode::OK);
    assert_eq!(log.json()["entries"][0]["actor"], format!("oidc:{OID}"), "{}", log.text);

    let viewer = key.token(&idp.claims(json!(["viewer"])));
    call(viewer.clone(), "GET", "/api/v1/inference-endpoints", None).await.expect(StatusCode::OK);
    call(viewer, "DELETE", &format!("/api/v1/inference-endpoints/{id}"), None)
        .await
        .expect(StatusCode::FORBIDDEN);

    let base = idp.claims(json!(["admin"]));
    let expired = key.token(&with(&base, json!({"exp": now() - 3600, "nbf": now() - 7200})));
    let wrong_audience = key.token(&with(&base, json!({"aud": "api://someone-else"})));
    let other_key = TestKey::es256("k1").token(&base);
    for (what, token) in
        [("expired", expired), ("wrong audience", wrong_audience), ("wrong signature", other_key)]
    {
        let reply = call(token, "GET", "/api/v1/status", None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {}", reply.text);
        assert_eq!(reply.json()["type"], "urn:modelgw:problem:unauthorized", "{what}");
    }

    // An identity provider that cannot be reached: 503, not a 401 calling the token bad.
    let gone = Harness::start_with_verifier(Arc::new(idp.verifier(|c| {
        c.jwks_uri = Some("http://127.0.0.1:9/keys".parse().unwrap());
        c.fetch_timeout = Duration::from_millis(500);
    })))
    .await;
    let request = axum::http::Request::builder()
        .uri("/api/v1/status")
        .header(header::AUTHORIZATION, format!("Bearer {operator}"))
        .body(axum::body::Body::empty())
        .unwrap();
    gone.send(request).await.expect(StatusCode::SERVICE_UNAVAILABLE);
}
