//! `modelgw-mock-arm`: faithful, scriptable mocks of the Azure *management* services the control
//! plane's Azure discovery (and the data plane's Entra ID auth) talks to — not the inference API
//! the gateway proxies to, which `modelgw-mock-openai` mocks. Faithful to Azure's documented
//! wire (Resource Manager's Cognitive Services REST API, the Microsoft identity platform's token
//! endpoints):
//!
//! - [`TokenMock`]: Entra ID's `POST /{tenant}/oauth2/v2.0/token` (client credentials with a
//!   secret or a federated assertion) and the App Service managed-identity endpoint
//!   (`GET /msi/token`, `x-identity-header`). Tokens have a configurable lifetime so refresh can
//!   be tested; requests are counted.
//! - [`ArmMock`]: Azure Resource Manager's subscriptions, Cognitive Services accounts (any
//!   `kind`), deployments and `listKeys`, built from an [`Inventory`]. It checks the bearer token
//!   against the token mock (401 `InvalidAuthenticationToken` / `ExpiredAuthenticationToken`),
//!   pages through absolute `nextLink`s, and can be scripted to answer 429 with `Retry-After` on a
//!   path once ([`ArmMock::throttle_once`]) or 403 `AuthorizationFailed` for an action on a scope
//!   ([`ArmMock::forbid`]). Every request is recorded with its time and status.
//! - [`RedirectTransport`]: an azure_core HTTP client that sends Entra calls to the token mock,
//!   since azure_identity only accepts an `https` authority host.
//!
//! Both mocks listen on 127.0.0.1, port 0. Who runs them: the control-plane, admin-API and
//! data-plane tests, and `modelgw demo`, whose mocked Azure estate they are. The `modelgw` binary
//! links this crate for `demo`, and only `demo` starts its servers: no path that serves real
//! traffic (`control-plane`, `data-plane`) does. It never logs a token, secret or key.

mod arm;
mod inventory;
mod server;
mod token;
mod transport;

pub use arm::{
    ARM_AUDIENCE, ArmAuth, ArmMock, ArmMockBuilder, ArmRequest, COGNITIVE_API_VERSIONS,
    SUBSCRIPTION_API_VERSIONS, actions, count_by_path,
};
pub use inventory::{Account, Deployment, Inventory, Subscription};
pub use token::{
    DEFAULT_TOKEN_LIFETIME, Grant, IssuedToken, MSI_PATH, TokenCheck, TokenMock, TokenMockBuilder,
};
pub use transport::RedirectTransport;
