//! Discovery: walks subscriptions → Cognitive Services accounts of kind `OpenAI`/`AIServices` →
//! their deployments (and keys), and returns an inventory with warnings an operator should read
//! before importing it.
//!
//! Two phases, each with at most [`DiscoveryOptions::concurrency`] scopes in flight: first every
//! subscription's account list, then every account's deployments and keys. A failure on one
//! scope (403, exhausted 429 retries, …) is recorded as a [`DiscoveryError`] naming the scope and,
//! for a 403, the missing permission; discovery goes on with the rest.
//!
//! Progress is published on a `watch` channel as it happens. A subscription counts as scanned
//! once its accounts are listed; an account once its deployments (and keys) are.
//!
//! Never logs, or puts in an error, an account key or a token.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::StreamExt;
use modelgw_model::Secret;
use tokio::sync::watch;
use tracing::Instrument;

use crate::azure::arm::{ArmAccount, ArmClient, ArmDeployment, ArmError, ArmRateLimit};

/// Scopes (subscriptions, then accounts) scanned at once. ARM grants each principal a bucket of
/// 250 reads per subscription refilled at 25/s; an account costs two or three calls, so 4 in
/// flight stays far below the refill rate while still cutting a large tenant's wall time ~4×.
pub const DEFAULT_DISCOVERY_CONCURRENCY: usize = 4;

/// Environment variable restricting discovery to listed subscriptions (comma-separated ids).
pub const SUBSCRIPTIONS_ENV: &str = "MODELGW_AZURE_SUBSCRIPTIONS";

/// Account kinds that serve Azure OpenAI deployments.
pub const OPENAI_ACCOUNT_KINDS: &[&str] = &["OpenAI", "AIServices"];

/// The RBAC permissions discovery needs, named in [`DiscoveryError`]s.
pub mod permissions {
    pub const SUBSCRIPTIONS_READ: &str = "Microsoft.Resources/subscriptions/read";
    pub const RESOURCE_GROUPS_READ: &str = "Microsoft.Resources/subscriptions/resourceGroups/read";
    pub const ACCOUNTS_READ: &str = "Microsoft.CognitiveServices/accounts/read";
    pub const DEPLOYMENTS_READ: &str = "Microsoft.CognitiveServices/accounts/deployments/read";
    pub const LIST_KEYS: &str = "Microsoft.CognitiveServices/accounts/listKeys/action";
}

/// `versionUpgradeOption` meaning the deployment never changes model version by itself.
pub const NO_AUTO_UPGRADE: &str = "NoAutoUpgrade";
/// What ARM means when `versionUpgradeOption` is absent (azure-wire.md §3).
pub const DEFAULT_VERSION_UPGRADE_OPTION: &str = "OnceCurrentVersionExpired";
/// The `endpoints` entry holding an account's Azure OpenAI URL.
pub const OPENAI_ENDPOINT_KEY: &str = "OpenAI Language Model Instance API";

/// Which subscriptions to scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SubscriptionScope {
    /// Every subscription the credential can see.
    #[default]
    All,
    /// Exactly these subscription ids.
    Only(Vec<String>),
}

/// What to discover and how hard to push ARM.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    pub subscriptions: SubscriptionScope,
    /// Call `listKeys`; `false` when the endpoints will authenticate with Entra instead.
    pub fetch_keys: bool,
    /// See [`DEFAULT_DISCOVERY_CONCURRENCY`]; 0 is treated as 1.
    pub concurrency: usize,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            subscriptions: SubscriptionScope::All,
            fetch_keys: true,
            concurrency: DEFAULT_DISCOVERY_CONCURRENCY,
        }
    }
}

impl DiscoveryOptions {
    /// Reads [`SUBSCRIPTIONS_ENV`] through `lookup`; the rest keeps its defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let ids: Vec<String> = lookup(SUBSCRIPTIONS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let subscriptions =
            if ids.is_empty() { SubscriptionScope::All } else { SubscriptionScope::Only(ids) };
        Self { subscriptions, ..Self::default() }
    }
}

/// Counters observable while discovery runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DiscoveryProgress {
    pub subscriptions_total: usize,
    pub subscriptions_scanned: usize,
    /// OpenAI/AIServices accounts found so far (grows while subscriptions are scanned).
    pub accounts_total: usize,
    pub accounts_scanned: usize,
    pub deployments_found: usize,
    pub errors: usize,
    pub finished: bool,
}

/// A scope discovery could not read, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiscoveryError {
    /// ARM scope: `/` (tenant), `/subscriptions/{id}`, or an account's resource id.
    pub scope: String,
    /// The RBAC permission missing, for a 403.
    pub permission: Option<String>,
    /// Human-readable; names the permission for a 403. Never contains a secret.
    pub message: String,
}

/// One discovered deployment, ready to become an Inference Endpoint.
///
/// Serialized (into the stored discovery job) without its `api_key`: a stored report never
/// holds a key, and reads back with `api_key: None`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DiscoveredDeployment {
    /// ARM resource id of the deployment.
    pub id: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub account: String,
    /// `OpenAI` or `AIServices`.
    pub account_kind: String,
    pub location: String,
    /// The account's Azure OpenAI endpoint URL.
    pub endpoint: String,
    pub deployment: String,
    pub model_name: String,
    pub model_version: String,
    pub model_format: String,
    pub sku: String,
    pub capacity: Option<u32>,
    /// As ARM reports it; absent means [`DEFAULT_VERSION_UPGRADE_OPTION`].
    pub version_upgrade_option: Option<String>,
    pub provisioning_state: String,
    pub rate_limits: Vec<ArmRateLimit>,
    pub warnings: Vec<String>,
    /// `key1` from `listKeys`, when fetched and permitted. Never serialized.
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

/// An account of another kind (Face, Speech, …), listed but not scanned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkippedAccount {
    pub id: String,
    pub kind: String,
}

/// Everything a discovery run found. Serializes without any account key (see
/// [`DiscoveredDeployment`]), which is what lets a discovery job store it.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DiscoveryReport {
    /// Each deployment once, sorted by id.
    pub deployments: Vec<DiscoveredDeployment>,
    pub errors: Vec<DiscoveryError>,
    pub skipped_accounts: Vec<SkippedAccount>,
    pub progress: DiscoveryProgress,
}

/// Runs discovery, publishing progress on `progress` (create it with
/// `watch::channel(DiscoveryProgress::default())`; nobody needs to be listening).
#[tracing::instrument(name = "azure.discovery", skip_all, fields(arm = %arm.base(), fetch_keys = options.fetch_keys))]
pub async fn discover(
    arm: &ArmClient,
    options: &DiscoveryOptions,
    progress: &watch::Sender<DiscoveryProgress>,
) -> DiscoveryReport {
    let concurrency = options.concurrency.max(1);
    progress.send_replace(DiscoveryProgress::default());
    let mut report = DiscoveryReport::default();

    let subscription_ids = match &options.subscriptions {
        SubscriptionScope::Only(ids) => ids.clone(),
        SubscriptionScope::All => match arm.list_subscriptions().await {
            Ok(subs) => subs.into_iter().map(|s| s.subscription_id).collect(),
            Err(error) => {
                record(
                    &mut report,
                    progress,
                    to_error("/", permissions::SUBSCRIPTIONS_READ, &error),
                );
                return finish(report, progress);
            }
        },
    };
    progress.send_modify(|p| p.subscriptions_total = subscription_ids.len());

    // Phase 1: accounts of every subscription.
    let mut accounts: Vec<(String, ArmAccount)> = Vec::new();
    let mut listings = futures::stream::iter(subscription_ids.into_iter().map(|sub| {
        let span = tracing::info_span!("azure.discovery.subscription", subscription_id = %sub);
        async move {
            let result = arm.list_accounts(&sub).await;
            (sub, result)
        }
        .instrument(span)
    }))
    .buffer_unordered(concurrency);
    while let Some((sub, result)) = listings.next().await {
        match result {
            Ok(listed) => {
                let mut wanted = 0;
                for account in listed {
                    let kind = account.kind.clone().unwrap_or_default();
                    if OPENAI_ACCOUNT_KINDS.iter().any(|k| k.eq_ignore_ascii_case(&kind)) {
                        wanted += 1;
                        accounts.push((sub.clone(), account));
                    } else {
                        report.skipped_accounts.push(SkippedAccount { id: account.id, kind });
                    }
                }
                tracing::info!(subscription_id = %sub, accounts = wanted, "subscription scanned");
                progress.send_modify(|p| p.accounts_total += wanted);
            }
            Err(error) => {
                let scope = format!("/subscriptions/{sub}");
                record(&mut report, progress, to_error(&scope, permissions::ACCOUNTS_READ, &error));
            }
        }
        progress.send_modify(|p| p.subscriptions_scanned += 1);
    }
    drop(listings);

    // Phase 2: deployments (and keys) of every account.
    let fetch_keys = options.fetch_keys;
    let mut scans = futures::stream::iter(accounts.into_iter().map(|(sub, account)| {
        let resource_group = resource_group_of(&account.id).unwrap_or_default();
        let span = tracing::info_span!(
            "azure.discovery.account",
            subscription_id = %sub,
            resource_group = %resource_group,
            account = %account.name,
        );
        scan_account(arm, sub, account, fetch_keys).instrument(span)
    }))
    .buffer_unordered(concurrency);
    let mut seen = HashSet::new();
    while let Some(scan) = scans.next().await {
        for error in scan.errors {
            record(&mut report, progress, error);
        }
        let mut added = 0;
        for deployment in scan.deployments {
            // ARM ids are case-insensitive; a page boundary shifting under us could repeat one.
            if seen.insert(deployment.id.to_ascii_lowercase()) {
                report.deployments.push(deployment);
                added += 1;
            }
        }
        progress.send_modify(|p| {
            p.accounts_scanned += 1;
            p.deployments_found += added;
        });
    }
    drop(scans);

    add_inventory_warnings(&mut report.deployments);
    report.deployments.sort_by(|a, b| a.id.cmp(&b.id));
    finish(report, progress)
}

struct AccountScan {
    deployments: Vec<DiscoveredDeployment>,
    errors: Vec<DiscoveryError>,
}

async fn scan_account(
    arm: &ArmClient,
    subscription_id: String,
    account: ArmAccount,
    fetch_keys: bool,
) -> AccountScan {
    let mut errors = Vec::new();
    let listed = match arm.list_deployments(&account.id).await {
        Ok(listed) => listed,
        Err(error) => {
            errors.push(to_error(&account.id, permissions::DEPLOYMENTS_READ, &error));
            return AccountScan { deployments: Vec::new(), errors };
        }
    };
    let mut key_warning = None;
    let api_key = if fetch_keys && !listed.is_empty() {
        match arm.list_keys(&account.id).await {
            Ok(keys) => Some(keys.key1),
            Err(error) => {
                let error = to_error(&account.id, permissions::LIST_KEYS, &error);
                key_warning = Some(format!(
                    "no API key: listKeys failed ({}); grant {} or use Entra authentication",
                    error.permission.as_deref().unwrap_or("see discovery errors"),
                    permissions::LIST_KEYS
                ));
                errors.push(error);
                None
            }
        }
    } else {
        None
    };
    let deployments: Vec<DiscoveredDeployment> = listed
        .into_iter()
        .map(|d| {
            let mut deployment = to_discovered(&subscription_id, &account, d, api_key.clone());
            deployment.warnings.extend(key_warning.clone());
            deployment
        })
        .collect();
    tracing::info!(deployments = deployments.len(), key = api_key.is_some(), "account scanned");
    AccountScan { deployments, errors }
}

fn to_discovered(
    subscription_id: &str,
    account: &ArmAccount,
    deployment: ArmDeployment,
    api_key: Option<Secret>,
) -> DiscoveredDeployment {
    let properties = deployment.properties;
    let model = properties.model.unwrap_or_default();
    let provisioning_state = properties.provisioning_state.unwrap_or_else(|| "Unknown".to_owned());
    let upgrade = properties.version_upgrade_option;
    let mut warnings = Vec::new();
    let effective_upgrade = upgrade.as_deref().unwrap_or(DEFAULT_VERSION_UPGRADE_OPTION);
    if !effective_upgrade.eq_ignore_ascii_case(NO_AUTO_UPGRADE) {
        warnings.push(format!(
            "automatic model version upgrade is on (versionUpgradeOption {effective_upgrade}): the model can change under the gateway; pin an exact version with {NO_AUTO_UPGRADE}"
        ));
    }
    if !provisioning_state.eq_ignore_ascii_case("Succeeded") {
        warnings.push(format!(
            "provisioning state is {provisioning_state}, not Succeeded: the deployment may not serve requests yet"
        ));
    }
    let endpoint = account
        .properties
        .endpoints
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(OPENAI_ENDPOINT_KEY))
        .map(|(_, v)| v.clone())
        .or_else(|| account.properties.endpoint.clone())
        .unwrap_or_default();
    if endpoint.is_empty() {
        warnings.push("the account reports no endpoint URL".to_owned());
    }
    let (sku, capacity) = match deployment.sku {
        Some(sku) => (sku.name, sku.capacity),
        None => (String::new(), None),
    };
    DiscoveredDeployment {
        id: deployment.id,
        subscription_id: subscription_id.to_owned(),
        resource_group: resource_group_of(&account.id).unwrap_or_default(),
        account: account.name.clone(),
        account_kind: account.kind.clone().unwrap_or_default(),
        location: account.location.clone().unwrap_or_default(),
        endpoint,
        deployment: deployment.name,
        model_name: model.name.unwrap_or_default(),
        model_version: model.version.unwrap_or_default(),
        model_format: model.format.unwrap_or_default(),
        sku,
        capacity,
        version_upgrade_option: upgrade,
        provisioning_state,
        rate_limits: properties.rate_limits,
        warnings,
        api_key,
    }
}

/// Warns on every deployment of a model that runs in more than one version across the
/// inventory: a gateway mixing them would answer differently depending on the route taken.
fn add_inventory_warnings(deployments: &mut [DiscoveredDeployment]) {
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in deployments.iter() {
        versions
            .entry(d.model_name.to_ascii_lowercase())
            .or_default()
            .insert(d.model_version.clone());
    }
    for d in deployments.iter_mut() {
        if let Some(set) = versions.get(&d.model_name.to_ascii_lowercase()).filter(|s| s.len() > 1)
        {
            let list: Vec<&str> = set.iter().map(String::as_str).collect();
            d.warnings.push(format!(
                "model {} runs in versions {} across the inventory (this one: {}); do not mix them in one gateway",
                d.model_name,
                list.join(", "),
                d.model_version
            ));
        }
    }
}

/// The resource group segment of an ARM id.
pub fn resource_group_of(id: &str) -> Option<String> {
    let mut segments = id.split('/');
    while let Some(segment) = segments.next() {
        if segment.eq_ignore_ascii_case("resourceGroups") {
            return segments.next().map(str::to_owned);
        }
    }
    None
}

/// Turns a failed call on `scope`, which needed `needed`, into a recorded error. For a 403 the
/// permission comes from ARM's `AuthorizationFailed` text when it names one.
fn to_error(scope: &str, needed: &str, error: &ArmError) -> DiscoveryError {
    if error.status() == Some(403) {
        let permission =
            error.arm_message().and_then(action_in_message).unwrap_or_else(|| needed.to_owned());
        let detail = error.arm_message().unwrap_or_default();
        DiscoveryError {
            scope: scope.to_owned(),
            message: format!("missing permission {permission} on {scope}: {detail}"),
            permission: Some(permission),
        }
    } else {
        DiscoveryError { scope: scope.to_owned(), permission: None, message: error.to_string() }
    }
}

/// `… perform action 'X' over scope …` → `X`.
fn action_in_message(message: &str) -> Option<String> {
    let start = message.find("perform action '")? + "perform action '".len();
    let rest = &message[start..];
    let end = rest.find('\'')?;
    Some(rest[..end].to_owned()).filter(|a| !a.is_empty())
}

fn record(
    report: &mut DiscoveryReport,
    progress: &watch::Sender<DiscoveryProgress>,
    error: DiscoveryError,
) {
    tracing::warn!(scope = %error.scope, permission = ?error.permission, message = %error.message, "discovery could not read a scope");
    report.errors.push(error);
    progress.send_modify(|p| p.errors += 1);
}

fn finish(
    mut report: DiscoveryReport,
    progress: &watch::Sender<DiscoveryProgress>,
) -> DiscoveryReport {
    progress.send_modify(|p| p.finished = true);
    report.progress = progress.borrow().clone();
    tracing::info!(
        deployments = report.deployments.len(),
        errors = report.errors.len(),
        skipped_accounts = report.skipped_accounts.len(),
        "discovery finished"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_is_read_from_authorization_failed_text() {
        let text = "The client 'a' with object id 'b' does not have authorization to perform action 'Microsoft.CognitiveServices/accounts/listKeys/action' over scope '/x' or the scope is invalid.";
        assert_eq!(
            action_in_message(text).as_deref(),
            Some("Microsoft.CognitiveServices/accounts/listKeys/action")
        );
        assert_eq!(action_in_message("nothing here"), None);
    }

    #[test]
    fn resource_group_comes_from_the_id() {
        let id =
            "/subscriptions/s/resourceGroups/rg-1/providers/Microsoft.CognitiveServices/accounts/a";
        assert_eq!(resource_group_of(id).as_deref(), Some("rg-1"));
        assert_eq!(resource_group_of("/subscriptions/s"), None);
    }

    #[test]
    fn subscriptions_env_lists_ids() {
        let options = DiscoveryOptions::from_lookup(|_| Some(" a , b,,".into()));
        assert_eq!(options.subscriptions, SubscriptionScope::Only(vec!["a".into(), "b".into()]));
        assert_eq!(DiscoveryOptions::from_lookup(|_| None).subscriptions, SubscriptionScope::All);
    }
}
