//! What the ARM mock serves: subscriptions, Cognitive Services accounts, their deployments and
//! keys, built with chained setters.

use serde_json::{Value, json};

/// The tenant's subscriptions as the ARM mock serves them.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub subscriptions: Vec<Subscription>,
}

impl Inventory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn subscription(mut self, subscription: Subscription) -> Self {
        self.subscriptions.push(subscription);
        self
    }

    pub(crate) fn find_subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.id.eq_ignore_ascii_case(id))
    }
}

#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: String,
    pub display_name: String,
    /// `Enabled`, `Warned`, `PastDue`, `Disabled` or `Deleted`.
    pub state: String,
    pub accounts: Vec<Account>,
}

impl Subscription {
    pub fn new(id: impl Into<String>, display_name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            display_name: display_name.into(),
            state: "Enabled".into(),
            accounts: Vec::new(),
        }
    }

    pub fn account(mut self, account: Account) -> Self {
        self.accounts.push(account);
        self
    }

    pub(crate) fn to_json(&self, tenant: &str) -> Value {
        json!({
            "id": format!("/subscriptions/{}", self.id),
            "subscriptionId": self.id,
            "tenantId": tenant,
            "displayName": self.display_name,
            "state": self.state,
            "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01", "spendingLimit": "Off"},
            "authorizationSource": "RoleBased",
            "managedByTenants": [],
            "tags": {},
        })
    }
}

/// A Cognitive Services account (`kind` `OpenAI`, `AIServices`, `Face`, …).
#[derive(Clone, Debug)]
pub struct Account {
    pub resource_group: String,
    pub name: String,
    pub kind: String,
    pub location: String,
    pub provisioning_state: String,
    /// Whether `properties.endpoints` lists the "OpenAI Language Model Instance API" entry.
    pub openai_endpoints_entry: bool,
    pub key1: String,
    pub key2: String,
    pub deployments: Vec<Deployment>,
    /// Reported instead of the `https://{name}.openai.azure.com/` host when set, so that
    /// discovered endpoints can point at a running mock region.
    pub endpoint_override: Option<String>,
}

impl Account {
    /// An account with two random 32-hex-digit keys, like Azure's.
    pub fn new(
        resource_group: impl Into<String>,
        name: impl Into<String>,
        kind: impl Into<String>,
        location: impl Into<String>,
    ) -> Self {
        Self {
            resource_group: resource_group.into(),
            name: name.into(),
            kind: kind.into(),
            location: location.into(),
            provisioning_state: "Succeeded".into(),
            openai_endpoints_entry: true,
            key1: uuid::Uuid::new_v4().simple().to_string(),
            key2: uuid::Uuid::new_v4().simple().to_string(),
            deployments: Vec::new(),
            endpoint_override: None,
        }
    }

    /// Reports `url` as both `properties.endpoint` and the OpenAI endpoint (e.g. a `MockAzure`
    /// region's base URL), instead of the Azure host derived from the name.
    pub fn with_endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint_override = Some(url.into());
        self
    }

    pub fn deployment(mut self, deployment: Deployment) -> Self {
        self.deployments.push(deployment);
        self
    }

    /// Drops the `endpoints` map's OpenAI entry, so only `properties.endpoint` is left.
    pub fn without_openai_endpoints_entry(mut self) -> Self {
        self.openai_endpoints_entry = false;
        self
    }

    pub fn id(&self, subscription: &str) -> String {
        format!(
            "/subscriptions/{subscription}/resourceGroups/{}/providers/Microsoft.CognitiveServices/accounts/{}",
            self.resource_group, self.name
        )
    }

    /// The OpenAI endpoint this account reports (what discovery should pick).
    pub fn openai_endpoint(&self) -> String {
        if let Some(url) = &self.endpoint_override {
            return url.clone();
        }
        if self.kind.eq_ignore_ascii_case("OpenAI") || self.openai_endpoints_entry {
            format!("https://{}.openai.azure.com/", self.name)
        } else {
            self.endpoint()
        }
    }

    /// `properties.endpoint`.
    pub fn endpoint(&self) -> String {
        if let Some(url) = &self.endpoint_override {
            return url.clone();
        }
        if self.kind.eq_ignore_ascii_case("OpenAI") {
            format!("https://{}.openai.azure.com/", self.name)
        } else {
            format!("https://{}.cognitiveservices.azure.com/", self.name)
        }
    }

    pub(crate) fn to_json(&self, subscription: &str) -> Value {
        let mut endpoints = serde_json::Map::new();
        let is_openai = self.kind.eq_ignore_ascii_case("OpenAI");
        let is_ai_services = self.kind.eq_ignore_ascii_case("AIServices");
        if (is_openai || is_ai_services) && self.openai_endpoints_entry {
            endpoints
                .insert("OpenAI Language Model Instance API".into(), json!(self.openai_endpoint()));
        }
        if is_ai_services {
            let services = format!("https://{}.services.ai.azure.com/", self.name);
            endpoints.insert("Azure AI Model Inference API".into(), json!(services));
            endpoints.insert("AI Foundry API".into(), json!(services));
        }
        if !is_openai && !is_ai_services {
            endpoints.insert(self.kind.clone(), json!(self.endpoint()));
        }
        json!({
            "id": self.id(subscription),
            "name": self.name,
            "type": "Microsoft.CognitiveServices/accounts",
            "location": self.location,
            "kind": self.kind,
            "sku": {"name": "S0"},
            "etag": format!("\"{}\"", uuid::Uuid::new_v4()),
            "tags": {},
            "properties": {
                "provisioningState": self.provisioning_state,
                "customSubDomainName": self.name,
                "endpoint": self.endpoint(),
                "endpoints": endpoints,
                "publicNetworkAccess": "Enabled",
                "disableLocalAuth": false,
            },
        })
    }
}

/// A model deployment.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub name: String,
    pub model_name: String,
    pub model_version: String,
    pub model_format: String,
    pub sku_name: String,
    pub capacity: u32,
    /// `None` leaves the field out, as ARM does when it was never set.
    pub version_upgrade_option: Option<String>,
    pub provisioning_state: String,
    /// `(key, renewalPeriod, count)`.
    pub rate_limits: Vec<(String, u32, u64)>,
}

impl Deployment {
    /// A `Standard` deployment of `capacity` 10 pinned to its version (`NoAutoUpgrade`), with
    /// the rate limits Azure derives from that capacity.
    pub fn new(
        name: impl Into<String>,
        model_name: impl Into<String>,
        model_version: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            model_name: model_name.into(),
            model_version: model_version.into(),
            model_format: "OpenAI".into(),
            sku_name: "Standard".into(),
            capacity: 10,
            version_upgrade_option: Some("NoAutoUpgrade".into()),
            provisioning_state: "Succeeded".into(),
            rate_limits: vec![("request".into(), 10, 10), ("token".into(), 60, 10_000)],
        }
    }

    pub fn sku(mut self, name: impl Into<String>, capacity: u32) -> Self {
        self.sku_name = name.into();
        self.capacity = capacity;
        self
    }

    pub fn version_upgrade(mut self, option: Option<&str>) -> Self {
        self.version_upgrade_option = option.map(str::to_owned);
        self
    }

    pub fn provisioning_state(mut self, state: impl Into<String>) -> Self {
        self.provisioning_state = state.into();
        self
    }

    pub(crate) fn to_json(&self, account_id: &str) -> Value {
        let mut properties = json!({
            "model": {"format": self.model_format, "name": self.model_name, "version": self.model_version},
            "capabilities": {"completion": "true", "chatCompletion": "true"},
            "raiPolicyName": "Microsoft.Default",
            "provisioningState": self.provisioning_state,
            "rateLimits": self.rate_limits.iter().map(|(key, period, count)| json!({"key": key, "renewalPeriod": period, "count": count})).collect::<Vec<_>>(),
        });
        if let Some(option) = &self.version_upgrade_option {
            properties["versionUpgradeOption"] = json!(option);
        }
        json!({
            "id": format!("{account_id}/deployments/{}", self.name),
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "name": self.name,
            "sku": {"name": self.sku_name, "capacity": self.capacity},
            "properties": properties,
            "systemData": {
                "createdBy": "ops@contoso.com", "createdByType": "User", "createdAt": "2025-07-31T16:45:32.622404Z",
                "lastModifiedBy": "ops@contoso.com", "lastModifiedByType": "User", "lastModifiedAt": "2025-07-31T16:45:32.622404Z",
            },
            "etag": format!("\"{}\"", uuid::Uuid::new_v4()),
        })
    }
}
