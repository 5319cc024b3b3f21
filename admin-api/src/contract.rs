//! The rules the validators enforce, stated in the OpenAPI document from the same sources.
//!
//! utoipa's schema attributes take literals only, so the bounds, patterns and enums of request
//! fields are not written on the request types: [`Rules`] sets them on the generated schemas
//! from `modelgw_model::limits` (the constants and pattern builders the validators use) and from
//! the enums the validators parse. Rules that depend on another field (`auth` decides whether
//! `api_key` is required; a partial update must set at least one field) are added as JSON
//! Schema combinators next to the properties.
//!
//! `tests/api/contract.rs` proves the two agree: each rule's limit is accepted, and one past it
//! is refused with a 422 naming the field.

use std::ops::RangeInclusive;

use modelgw_control_plane::distribution::join_tokens::{
    MAX_DATA_PLANES_PER_TOKEN_RANGE, MAX_TOKEN_NAME_CHARS, token_name_pattern,
};
use modelgw_control_plane::store::AuthMode;

use crate::api_tokens::{MAX_EXPIRES_IN_SECONDS, MIN_EXPIRES_IN_SECONDS};
use crate::gateways::{
    DEFAULT_COMPLETION_TOKENS_RANGE, MAX_REDACT_FIELD_CHARS, QUOTA_RESERVE_PERCENT_RANGE,
    QUOTA_WINDOW_SECS_RANGE,
};
use crate::keys::MAX_KEY_LIMIT;
use modelgw_control_plane::store::{MAX_TRACE_MAX_COUNT, MAX_TRACE_RETENTION_DAYS};
use modelgw_model::limits::{
    MAX_API_KEY_CHARS, MAX_GATEWAY_MEMBERS, MAX_GATEWAY_NAME_CHARS, MAX_IMPORT_IDS, MAX_TEXT_CHARS,
    PRIORITY_RANGE, REQUEST_TIMEOUT_MS_RANGE, UUID_PATTERN, WEIGHT_RANGE, api_key_pattern,
    base_url_pattern, gateway_name_pattern, text_pattern,
};
use modelgw_model::traces::{MAX_PAYLOAD_BYTES, MAX_REDACT_FIELDS};
use serde_json::{Value, json};
use utoipa::Modify;
use utoipa::openapi::schema::{Array, ArrayItems, Object, Schema, SchemaType};
use utoipa::openapi::{Components, RefOr, Type};

/// Every `auth` mode, as the validators parse it.
const AUTH_MODES: [AuthMode; 2] = [AuthMode::ApiKey, AuthMode::Entra];

/// A rule on one property of a request schema.
#[derive(Clone, Debug)]
pub enum Rule {
    /// `limits::text_pattern`, at most `MAX_TEXT_CHARS`.
    Text,
    /// `limits::api_key_pattern`, at most `MAX_API_KEY_CHARS`.
    ApiKey,
    /// `limits::base_url_pattern`.
    BaseUrl,
    /// `limits::gateway_name_pattern` (which holds the length).
    GatewayName,
    /// `limits::UUID_PATTERN`.
    Uuid,
    /// `join_tokens::token_name_pattern` (which holds the length), at most
    /// `MAX_TOKEN_NAME_CHARS`.
    DataPlaneTokenName,
    /// An inclusive integer range.
    Range(RangeInclusive<i64>),
    /// Array length bounds.
    Items { min: usize, max: usize },
    /// At most `max` strings of 1 to `max_chars` characters each.
    StringItems { max: usize, max_chars: usize },
    /// The accepted strings (`null` stays accepted where the property is nullable).
    Enum(Vec<&'static str>),
}

/// (schema, property, rule) for every property a validator checks beyond its JSON type.
pub fn rules() -> Vec<(&'static str, &'static str, Rule)> {
    let auth = Rule::Enum(AUTH_MODES.iter().map(|m| m.as_str()).collect());
    let mut rules = Vec::new();
    for schema in ["CreateEndpointRequest", "UpdateEndpointRequest"] {
        for field in ["name", "deployment", "model_name", "model_version", "region"] {
            rules.push((schema, field, Rule::Text));
        }
        rules.push((schema, "endpoint", Rule::BaseUrl));
        rules.push((schema, "api_key", Rule::ApiKey));
        rules.push((schema, "auth", auth.clone()));
    }
    rules.push(("CreateKeyRequest", "name", Rule::Text));
    rules.push(("UpdateKeyRequest", "name", Rule::Text));
    for field in ["requests", "prompt_tokens", "completion_tokens", "total_tokens"] {
        rules.push(("WindowLimitsInput", field, Rule::Range(1..=MAX_KEY_LIMIT)));
    }
    rules.push((
        "KeyLimitPolicyInput",
        "default_completion_tokens",
        Rule::Range(DEFAULT_COMPLETION_TOKENS_RANGE),
    ));
    for schema in ["CreateGatewayRequest", "UpdateGatewayRequest"] {
        rules.push((schema, "name", Rule::GatewayName));
        rules.push((schema, "endpoints", Rule::Items { min: 0, max: MAX_GATEWAY_MEMBERS }));
    }
    rules.push(("GatewayMemberInput", "endpoint_id", Rule::Uuid));
    rules.push(("GatewayMemberInput", "priority", Rule::Range(PRIORITY_RANGE)));
    rules.push(("GatewayMemberInput", "weight", Rule::Range(WEIGHT_RANGE)));
    rules.push(("RoutingInput", "request_timeout_ms", Rule::Range(REQUEST_TIMEOUT_MS_RANGE)));
    for schema in ["QuotaPolicyInput", "QuotaPolicyResponse"] {
        for field in ["request_window_secs", "token_window_secs"] {
            rules.push((schema, field, Rule::Range(QUOTA_WINDOW_SECS_RANGE)));
        }
        rules.push((schema, "reserve_percent", Rule::Range(QUOTA_RESERVE_PERCENT_RANGE)));
    }
    rules.push(("TracesInput", "max_payload_bytes", Rule::Range(1..=i64::from(MAX_PAYLOAD_BYTES))));
    rules.push((
        "TracesInput",
        "retention_days",
        Rule::Range(1..=i64::from(MAX_TRACE_RETENTION_DAYS)),
    ));
    rules.push(("TracesInput", "max_count", Rule::Range(1..=i64::from(MAX_TRACE_MAX_COUNT))));
    rules.push((
        "TracesInput",
        "redact_fields",
        Rule::StringItems { max: MAX_REDACT_FIELDS, max_chars: MAX_REDACT_FIELD_CHARS },
    ));
    rules.push(("RoutingResponse", "request_timeout_ms", Rule::Range(REQUEST_TIMEOUT_MS_RANGE)));
    rules.push(("ImportRequest", "deployment_ids", Rule::Items { min: 1, max: MAX_IMPORT_IDS }));
    rules.push(("ImportRequest", "auth", auth));
    rules.push(("CreateApiTokenRequest", "name", Rule::Text));
    rules.push((
        "CreateApiTokenRequest",
        "expires_in_seconds",
        Rule::Range(MIN_EXPIRES_IN_SECONDS..=MAX_EXPIRES_IN_SECONDS),
    ));
    rules.push(("CreateDataPlaneTokenRequest", "name", Rule::DataPlaneTokenName));
    rules.push((
        "CreateDataPlaneTokenRequest",
        "max_data_planes",
        Rule::Range(MAX_DATA_PLANES_PER_TOKEN_RANGE),
    ));
    rules
}

/// Sets every rule of [`rules`] and the cross-field rules on the document's schemas.
pub struct Rules;

impl Modify for Rules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (schema, field, rule) in rules() {
            if !apply(components, schema, field, &rule) {
                // The contract test fails on this too; the document is still served.
                tracing::error!(schema, field, "OpenAPI rule names a property the schema lacks");
            }
        }
        let auth = |mode: AuthMode| mode.as_str();
        // Create: `auth` absent, null or `api_key` requires a key; `entra` takes none.
        combine(
            components,
            "CreateEndpointRequest",
            "oneOf",
            json!([
                {
                    "properties": {
                        "auth": {"enum": [null, auth(AuthMode::ApiKey)]},
                        "api_key": {"type": "string"},
                    },
                    "required": ["api_key"],
                },
                {
                    "properties": {
                        "auth": {"enum": [auth(AuthMode::Entra)]},
                        "api_key": {"type": "null"},
                    },
                    "required": ["auth"],
                },
            ]),
        );
        // Update: `auth: api_key` needs a key, `auth: entra` takes none, no `auth` leaves the
        // mode to the key (a key selects `api_key` mode); and at least one field is set.
        let set_fields = ["name", "platform", "endpoint", "deployment", "model_name"]
            .into_iter()
            .chain(["model_version", "region", "auth", "api_key"]);
        combine(
            components,
            "UpdateEndpointRequest",
            "allOf",
            json!([
                {"oneOf": [
                    {"properties": {"auth": {"type": "null"}}},
                    {
                        "properties": {
                            "auth": {"enum": [auth(AuthMode::ApiKey)]},
                            "api_key": {"type": "string"},
                        },
                        "required": ["auth", "api_key"],
                    },
                    {
                        "properties": {
                            "auth": {"enum": [auth(AuthMode::Entra)]},
                            "api_key": {"type": "null"},
                        },
                        "required": ["auth"],
                    },
                ]},
                {"anyOf": set_fields.map(non_null).collect::<Vec<_>>()},
            ]),
        );
        combine(
            components,
            "UpdateGatewayRequest",
            "anyOf",
            Value::Array(
                ["name", "endpoints", "routing", "key_limits", "traces"]
                    .into_iter()
                    .map(non_null)
                    .collect(),
            ),
        );
        // A key's patch sets at least one field (`null` clears `expires_at` and `limits`:
        // there it counts as set).
        combine(
            components,
            "UpdateKeyRequest",
            "anyOf",
            json!([non_null("name"), {"required": ["expires_at"]}, {"required": ["limits"]}]),
        );
    }
}

/// A subschema that holds when `field` is present and not `null`.
fn non_null(field: &str) -> Value {
    json!({"required": [field], "properties": {field: {"not": {"type": "null"}}}})
}

/// Sets `rule` on `schema.field`; false when there is no such property.
fn apply(components: &mut Components, schema: &str, field: &str, rule: &Rule) -> bool {
    let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
        return false;
    };
    match object.properties.get_mut(field) {
        Some(RefOr::T(Schema::Object(property))) => apply_to_object(property, rule),
        Some(RefOr::T(Schema::Array(property))) => apply_to_array(property, rule),
        _ => false,
    }
}

fn apply_to_object(property: &mut Object, rule: &Rule) -> bool {
    let (max_length, pattern) = match rule {
        Rule::Text => (Some(MAX_TEXT_CHARS), text_pattern()),
        Rule::ApiKey => (Some(MAX_API_KEY_CHARS), api_key_pattern()),
        Rule::BaseUrl => (None, base_url_pattern()),
        Rule::GatewayName => (Some(MAX_GATEWAY_NAME_CHARS), gateway_name_pattern()),
        Rule::DataPlaneTokenName => (Some(MAX_TOKEN_NAME_CHARS), token_name_pattern()),
        Rule::Uuid => (None, UUID_PATTERN.to_owned()),
        Rule::Range(range) => {
            property.minimum = Some((*range.start()).into());
            property.maximum = Some((*range.end()).into());
            return true;
        }
        Rule::Enum(values) => {
            let mut values: Vec<Value> = values.iter().map(|v| json!(v)).collect();
            let nullable = matches!(&property.schema_type, SchemaType::Array(types) if types.contains(&Type::Null));
            if nullable {
                values.push(Value::Null);
            }
            property.enum_values = Some(values);
            return true;
        }
        Rule::Items { .. } | Rule::StringItems { .. } => return false,
    };
    property.max_length = max_length;
    // Every pattern also requires one character at least.
    property.min_length = Some(1);
    property.pattern = Some(pattern);
    true
}

fn apply_to_array(property: &mut Array, rule: &Rule) -> bool {
    match rule {
        Rule::Items { min, max } => {
            property.min_items = (*min > 0).then_some(*min);
            property.max_items = Some(*max);
            true
        }
        Rule::StringItems { max, max_chars } => {
            property.max_items = Some(*max);
            let ArrayItems::RefOrSchema(items) = &mut property.items else { return false };
            let RefOr::T(Schema::Object(item)) = items.as_mut() else { return false };
            item.min_length = Some(1);
            item.max_length = Some(*max_chars);
            true
        }
        _ => false,
    }
}

/// Adds `keyword: value` to the object schema `schema`, next to its properties. utoipa's
/// `Object` has no field for combinators, so they go through its extensions map, which is
/// serialized flat into the schema.
fn combine(components: &mut Components, schema: &str, keyword: &str, value: Value) {
    let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
        tracing::error!(schema, "OpenAPI cross-field rule names a missing schema");
        return;
    };
    object.extensions.get_or_insert_with(Default::default).insert(keyword.to_owned(), value);
}
