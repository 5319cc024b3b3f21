//! What the OpenID Connect verifier trusts: one issuer, its audiences, algorithms and how claims
//! become a [`Role`]; read from `MODELGW_OIDC_*` ([`OidcConfig::from_env`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

use crate::identity::Role;

pub const ENV_ISSUER: &str = "MODELGW_OIDC_ISSUER";
pub const ENV_AUDIENCE: &str = "MODELGW_OIDC_AUDIENCE";
pub const ENV_JWKS_URI: &str = "MODELGW_OIDC_JWKS_URI";
pub const ENV_ROLES_CLAIM: &str = "MODELGW_OIDC_ROLES_CLAIM";
pub const ENV_ROLE_MAP: &str = "MODELGW_OIDC_ROLE_MAP";

/// Clock difference tolerated on `exp` and `nbf`. Entra ID's own guidance is up to five
/// minutes; one is enough between NTP-synchronised hosts and keeps an expired token short-lived.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// How long a JWKS is used before it is fetched again when its response has no
/// `Cache-Control: max-age`. Keys announced for a rotation appear in the JWKS well before use,
/// and an unknown `kid` triggers a fetch anyway; this only bounds how long a withdrawn key
/// stays trusted.
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The least time between two JWKS fetches (whatever triggered them: an unknown `kid`, an
/// expired set, a failed fetch). Bounds what a flood of tokens with made-up `kid`s can make the
/// gateway send to the identity provider: one request per interval.
pub const DEFAULT_MIN_FETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How long one discovery or JWKS request may take. Past it the request is refused with 503
/// (no keys yet) rather than held open.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A JWS algorithm the verifier can accept. Public-key algorithms only: HMAC (`HS*`) and
/// `none` cannot be expressed, so no configuration can enable them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256: what Entra ID signs with.
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    Es384,
    /// Ed25519.
    EdDsa,
}

impl SigningAlgorithm {
    pub const ALL: [SigningAlgorithm; 9] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::EdDsa,
    ];

    /// The `alg` header value (RFC 7518).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Exact match on the `alg` header value.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub(super) fn jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::Rs256 => A::RS256,
            Self::Rs384 => A::RS384,
            Self::Rs512 => A::RS512,
            Self::Ps256 => A::PS256,
            Self::Ps384 => A::PS384,
            Self::Ps512 => A::PS512,
            Self::Es256 => A::ES256,
            Self::Es384 => A::ES384,
            Self::EdDsa => A::EdDSA,
        }
    }
}

impl std::fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Claim value → role, e.g. an Entra app role value (`ModelGateway.Admin`) or a group object
/// id. Exact, case-sensitive match. A principal gets the highest role any of its values maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleMap(HashMap<String, Role>);

impl RoleMap {
    pub fn new(entries: impl IntoIterator<Item = (String, Role)>) -> Self {
        Self(entries.into_iter().collect())
    }

    /// `value=role[,value=role…]`, e.g. `ModelGateway.Admin=admin,<group-object-id>=operator`.
    /// The role is after the last `=`, so values may contain `=`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut map = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (value, role) = entry
                .rsplit_once('=')
                .ok_or_else(|| format!("`{entry}` is not `claim-value=role`"))?;
            let (value, role) = (value.trim(), role.trim());
            if value.is_empty() {
                return Err(format!("`{entry}` has an empty claim value"));
            }
            let role = Role::parse(role).ok_or_else(|| {
                format!("`{entry}`: role `{role}` is not one of viewer, operator, admin")
            })?;
            if let Some(earlier) = map.insert(value.to_owned(), role)
                && earlier != role
            {
                return Err(format!("`{value}` is mapped to both {earlier} and {role}"));
            }
        }
        if map.is_empty() {
            return Err("maps no claim value to a role".to_owned());
        }
        Ok(Self(map))
    }

    pub fn get(&self, value: &str) -> Option<Role> {
        self.0.get(value).copied()
    }

    /// The highest role any of `values` maps to.
    pub fn highest<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        values.into_iter().filter_map(|v| self.get(v)).max()
    }
}

impl Default for RoleMap {
    /// The role names themselves: `viewer`, `operator`, `admin`.
    fn default() -> Self {
        Self::new(Role::ALL.map(|r| (r.as_str().to_owned(), r)))
    }
}

/// What the verifier trusts. Built by [`OidcConfig::from_env`] or by hand (tests, embedding);
/// [`OidcVerifier::new`](super::OidcVerifier::new) checks it.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The `iss` every token must carry, exactly (Entra ID v2.0:
    /// `https://login.microsoftonline.com/<tenant-id>/v2.0`). https, except on loopback.
    pub issuer: String,
    /// Accepted `aud` values; a token needs one of them (Entra ID: the application (client) id,
    /// and/or its Application ID URI `api://…`).
    pub audiences: Vec<String>,
    /// Where the signing keys are. `None`: `jwks_uri` of
    /// `<issuer>/.well-known/openid-configuration`, whose `issuer` must equal [`Self::issuer`].
    pub jwks_uri: Option<Url>,
    /// The claim holding role values: a string or an array of strings (Entra ID app roles:
    /// `roles`; security groups: `groups`).
    pub roles_claim: String,
    pub role_map: RoleMap,
    /// The principal's name is the first of these claims present (a non-empty string). Entra
    /// ID: `oid`, the user's or service principal's object id, the same in every application;
    /// `sub` is pairwise (differs per application) and is the fallback for other providers.
    pub subject_claims: Vec<String>,
    /// See [`DEFAULT_LEEWAY`].
    pub leeway: Duration,
    /// Accepted `alg` values. Default RS256 (Entra ID) and ES256.
    pub algorithms: Vec<SigningAlgorithm>,
    /// See [`DEFAULT_JWKS_MAX_AGE`]; a response's `Cache-Control: max-age` overrides it
    /// (clamped to between [`Self::min_fetch_interval`] and a day).
    pub jwks_max_age: Duration,
    /// See [`DEFAULT_MIN_FETCH_INTERVAL`].
    pub min_fetch_interval: Duration,
    /// See [`DEFAULT_FETCH_TIMEOUT`].
    pub fetch_timeout: Duration,
}

/// A bad OIDC setting: names the variable (from the environment) or the field (built by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct OidcConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl OidcConfigError {
    fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self { setting, problem: problem.into() }
    }
}

impl OidcConfig {
    /// The defaults for `issuer` and `audiences`: roles from `roles`, the role names as the
    /// map, subject from `oid` then `sub`, RS256 and ES256.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            jwks_uri: None,
            roles_claim: "roles".to_owned(),
            role_map: RoleMap::default(),
            subject_claims: vec!["oid".to_owned(), "sub".to_owned()],
            leeway: DEFAULT_LEEWAY,
            algorithms: vec![SigningAlgorithm::Rs256, SigningAlgorithm::Es256],
            jwks_max_age: DEFAULT_JWKS_MAX_AGE,
            min_fetch_interval: DEFAULT_MIN_FETCH_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    /// `MODELGW_OIDC_ISSUER`, `_AUDIENCE` (comma-separated), `_JWKS_URI`, `_ROLES_CLAIM`,
    /// `_ROLE_MAP` from the process environment. `Ok(None)`: OIDC is off (no issuer, and no
    /// other `MODELGW_OIDC_*` variable set). Empty values count as unset.
    pub fn from_env() -> Result<Option<Self>, OidcConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OidcConfigError> {
        let var = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let Some(issuer) = var(ENV_ISSUER) else {
            let others = [ENV_AUDIENCE, ENV_JWKS_URI, ENV_ROLES_CLAIM, ENV_ROLE_MAP];
            if let Some(set) = others.into_iter().find(|name| var(name).is_some()) {
                return Err(OidcConfigError::new(
                    ENV_ISSUER,
                    format!("not set, but {set} is: set both, or neither to turn OIDC off"),
                ));
            }
            return Ok(None);
        };
        check_issuer(&issuer).map_err(|p| OidcConfigError::new(ENV_ISSUER, p))?;

        let audiences = var(ENV_AUDIENCE)
            .map(|v| split_list(&v))
            .filter(|list| !list.is_empty())
            .ok_or_else(|| {
            OidcConfigError::new(
                ENV_AUDIENCE,
                "required with MODELGW_OIDC_ISSUER: the application (client) id or \
                     Application ID URI tokens are issued for (comma-separated for several)",
            )
        })?;
        let mut config = Self::new(issuer, audiences);

        if let Some(uri) = var(ENV_JWKS_URI) {
            let uri = Url::parse(&uri)
                .map_err(|e| OidcConfigError::new(ENV_JWKS_URI, format!("not a URL: {e}")))?;
            check_fetch_url(&uri).map_err(|p| OidcConfigError::new(ENV_JWKS_URI, p))?;
            config.jwks_uri = Some(uri);
        }
        if let Some(claim) = var(ENV_ROLES_CLAIM) {
            config.roles_claim = claim;
        }
        if let Some(spec) = var(ENV_ROLE_MAP) {
            config.role_map =
                RoleMap::parse(&spec).map_err(|p| OidcConfigError::new(ENV_ROLE_MAP, p))?;
        }
        Ok(Some(config))
    }

    /// Checks what a hand-built configuration could get wrong; errors name the field.
    pub fn check(&self) -> Result<(), OidcConfigError> {
        check_issuer(&self.issuer).map_err(|p| OidcConfigError::new("issuer", p))?;
        if let Some(uri) = &self.jwks_uri {
            check_fetch_url(uri).map_err(|p| OidcConfigError::new("jwks_uri", p))?;
        }
        if self.audiences.iter().all(|a| a.trim().is_empty()) {
            return Err(OidcConfigError::new("audiences", "at least one audience is required"));
        }
        if self.algorithms.is_empty() {
            return Err(OidcConfigError::new("algorithms", "at least one algorithm is required"));
        }
        if self.roles_claim.is_empty() {
            return Err(OidcConfigError::new("roles_claim", "must name a claim"));
        }
        if self.subject_claims.iter().all(String::is_empty) {
            return Err(OidcConfigError::new("subject_claims", "must name a claim"));
        }
        Ok(())
    }

    /// Where discovery looks: `<issuer>/.well-known/openid-configuration` (OIDC Discovery §4).
    pub(super) fn discovery_url(&self) -> Result<Url, url::ParseError> {
        Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        ))
    }
}

fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect()
}

fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = Url::parse(issuer).map_err(|e| format!("`{issuer}` is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{issuer}` has a query or fragment; an issuer has neither"));
    }
    check_fetch_url(&url)
}

/// Keys and the discovery document come over https, so nobody on the path can substitute their
/// own keys. Plain http only to a loopback host (tests, a local identity provider).
pub(super) fn check_fetch_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(format!("`{url}` is plain http; https is required except on loopback")),
        other => Err(format!("`{url}`: scheme `{other}` is not https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    fn error(vars: &[(&str, &str)]) -> OidcConfigError {
        OidcConfig::from_lookup(lookup(vars)).expect_err("configuration is refused")
    }

    const ENTRA: &str =
        "https://login.microsoftonline.com/72f988bf-0000-4000-8000-000000000010/v2.0";

    #[test]
    fn no_issuer_and_nothing_else_turns_oidc_off() {
        assert!(OidcConfig::from_lookup(lookup(&[])).unwrap().is_none());
        assert!(OidcConfig::from_lookup(lookup(&[(ENV_ISSUER, "  ")])).unwrap().is_none());
        let e = error(&[(ENV_AUDIENCE, "api://modelgw")]);
        assert_eq!(e.setting, ENV_ISSUER);
        assert!(e.problem.contains(ENV_AUDIENCE), "{e}");
    }

    #[test]
    fn an_entra_configuration_parses_with_its_defaults_and_overrides() {
        let config = OidcConfig::from_lookup(lookup(&[
            (ENV_ISSUER, ENTRA),
            (ENV_AUDIENCE, "0b5e1c2d-0000-4000-8000-00000000a11d, api://modelgw"),
            (ENV_ROLES_CLAIM, "groups"),
            (
                ENV_ROLE_MAP,
                "ModelGateway.Admin=admin, 1f6c0000-0000-4000-8000-00000000beef=operator",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.issuer, ENTRA);
        assert_eq!(config.audiences, ["0b5e1c2d-0000-4000-8000-00000000a11d", "api://modelgw"]);
        assert_eq!(config.jwks_uri, None);
        assert_eq!(config.roles_claim, "groups");
        assert_eq!(config.role_map.get("ModelGateway.Admin"), Some(Role::Admin));
        assert_eq!(
            config.role_map.get("1f6c0000-0000-4000-8000-00000000beef"),
            Some(Role::Operator)
        );
        // An explicit map replaces the default one.
        assert_eq!(config.role_map.get("admin"), None);
        assert_eq!(config.subject_claims, ["oid", "sub"]);
        assert_eq!(config.algorithms, [SigningAlgorithm::Rs256, SigningAlgorithm::Es256]);
        assert_eq!(config.leeway, DEFAULT_LEEWAY);
        assert_eq!(
            config.discovery_url().unwrap().as_str(),
            format!("{ENTRA}/.well-known/openid-configuration")
        );
        config.check().unwrap();

        let defaults =
            OidcConfig::from_lookup(lookup(&[(ENV_ISSUER, ENTRA), (ENV_AUDIENCE, "app")]))
                .unwrap()
                .unwrap();
        assert_eq!(defaults.roles_claim, "roles");
        assert_eq!(defaults.role_map, RoleMap::default());
    }

    #[test]
    fn bad_values_are_reported_with_the_variable_that_holds_them() {
        let base = [(ENV_ISSUER, ENTRA), (ENV_AUDIENCE, "app")];
        let with = |extra: (&'static str, &'static str)| {
            let mut vars = base.to_vec();
            vars.retain(|(n, _)| *n != extra.0);
            vars.push(extra);
            error(&vars)
        };
        for (var, value, says) in [
            (ENV_ISSUER, "login.microsoftonline.com/tenant", "not a URL"),
            (ENV_ISSUER, "http://login.microsoftonline.com/tenant/v2.0", "plain http"),
            (ENV_ISSUER, "https://idp.example/tenant?x=1", "query"),
            (ENV_AUDIENCE, " , ", "required"),
            (ENV_JWKS_URI, "not a url", "not a URL"),
            (ENV_JWKS_URI, "http://idp.example/keys", "plain http"),
            (ENV_JWKS_URI, "ftp://idp.example/keys", "scheme"),
            (ENV_ROLE_MAP, "ModelGateway.Admin", "not `claim-value=role`"),
            (ENV_ROLE_MAP, "ModelGateway.Admin=root", "not one of"),
            (ENV_ROLE_MAP, "=admin", "empty claim value"),
            (ENV_ROLE_MAP, "a=admin,a=viewer", "both"),
            (ENV_ROLE_MAP, " , ", "no claim value"),
        ] {
            let e = with((var, value));
            assert_eq!(e.setting, var, "{value}: {e}");
            assert!(e.problem.contains(says), "{var}={value}: {e}");
            assert!(e.to_string().starts_with(var), "{e}");
        }
        let e = error(&[(ENV_ISSUER, ENTRA)]);
        assert_eq!(e.setting, ENV_AUDIENCE);
    }

    #[test]
    fn plain_http_is_allowed_on_loopback_only() {
        for ok in ["http://127.0.0.1:8080/idp", "http://localhost/idp", "http://[::1]:1/x"] {
            assert_eq!(check_issuer(ok), Ok(()), "{ok}");
        }
        for bad in ["http://10.0.0.1/idp", "http://localhost.example/idp", "http://128.0.0.1/"] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_maps_pick_the_highest_role_and_allow_equals_in_values() {
        let map = RoleMap::parse("a=b=viewer,ops=operator,ops=operator,boss=admin").unwrap();
        assert_eq!(map.get("a=b"), Some(Role::Viewer));
        assert_eq!(map.highest(["ops", "a=b", "unknown"]), Some(Role::Operator));
        assert_eq!(map.highest(["unknown"]), None);
        assert_eq!(RoleMap::default().highest(["viewer", "admin"]), Some(Role::Admin));
    }

    #[test]
    fn hand_built_configurations_are_checked_by_field() {
        let mut config = OidcConfig::new("https://idp.example", vec!["app".into()]);
        config.check().unwrap();
        config.algorithms.clear();
        assert_eq!(config.check().unwrap_err().setting, "algorithms");
        let config = OidcConfig::new("http://idp.example", vec!["app".into()]);
        assert_eq!(config.check().unwrap_err().setting, "issuer");
        let config = OidcConfig::new("https://idp.example", vec![]);
        assert_eq!(config.check().unwrap_err().setting, "audiences");
    }
}
