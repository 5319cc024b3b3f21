//! Azure discovery: which Entra credential the control plane uses ([`credential`]), a small
//! Azure Resource Manager client ([`arm`]), and the walk from subscriptions to Azure OpenAI
//! deployments with their keys and warnings ([`discovery`]).
//!
//! Owns: reading Azure's control plane. Never: stores what it finds (the import path does),
//! proxies inference traffic, or lets a token, client secret or account key reach a log line,
//! an error message or a serialized value.

pub mod arm;
pub mod credential;
pub mod discovery;

pub use arm::{ARM_SCOPE, ArmClient, ArmClientOptions, ArmError};
pub use credential::{
    CredentialAttempt, CredentialChoice, CredentialError, CredentialKind, CredentialOptions,
    CredentialSettings, ResolvedCredential, build_chosen, resolve,
};
pub use discovery::{
    DiscoveredDeployment, DiscoveryError, DiscoveryOptions, DiscoveryProgress, DiscoveryReport,
    SubscriptionScope, discover,
};
