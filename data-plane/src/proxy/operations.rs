//! The operations a gateway key reaches: the one table of path × method → operation, for the
//! dated surface (`/openai/deployments/{d}/…?api-version=`, `/openai/…`) and the `v1` surface
//! (`/openai/v1/…`, `/openai/v1/deployments/{d}/…`) alike.
//!
//! Everything the table does not name is answered by the gateway itself with Azure's 404,
//! before any upstream is contacted: a key for one gateway must never reach the management
//! surfaces of the Azure resources behind it (files, batches, fine-tuning, vector stores,
//! assistants, stored chat completions), which the resource's own key would open for every
//! team sharing it. Those are recognised as [`Lookup::Stateful`] so that a later change can
//! enable them per gateway (with pinning to the endpoint that holds the state) at one place:
//! [`stateful_surface_enabled`].
//!
//! Responses by id (`responses/{id}`, its `cancel` and `input_items`) are served: only for ids
//! the gateway minted itself (`pin.rs`), which name the endpoint holding the response, so a
//! key reaches the responses created through its own gateway and nothing else.
//!
//! The upstream path of an operation comes from this table ([`Operation::path`]), never from
//! the client's path, so nothing a client writes after a known prefix reaches an upstream.

use http::Method;

/// An inference operation the gateway serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    /// `POST …/responses`: create (streamed when the body says `"stream": true`).
    Responses,
    ImageGenerations,
    /// multipart/form-data.
    ImageEdits,
    /// multipart/form-data.
    AudioTranscriptions,
    /// multipart/form-data.
    AudioTranslations,
    AudioSpeech,
    /// `GET …/models`.
    Models,
    /// `GET …/responses/{id}`: a stored response, from the endpoint that holds it.
    ResponsesRetrieve,
    /// `DELETE …/responses/{id}`.
    ResponsesDelete,
    /// `POST …/responses/{id}/cancel` (a background response).
    ResponsesCancel,
    /// `GET …/responses/{id}/input_items`.
    ResponsesInputItems,
}

/// What an operation's request body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// One JSON object, whose top-level `model` the gateway reads and may rewrite.
    Json,
    /// multipart/form-data, whose `model` part the gateway reads and may rewrite like JSON's
    /// (`multipart.rs`).
    Multipart,
    /// No body.
    Empty,
}

/// Which surface a path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Surface {
    /// `/openai/deployments/{d}/…` and `/openai/…` with a dated `api-version`.
    Dated,
    /// `/openai/v1/…`: the body's `model` names the deployment.
    V1,
}

/// Where in a surface an operation's path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// After `deployments/{d}/`.
    Deployment,
    /// Directly under the surface's prefix.
    Surface,
}

/// What the table says about a path and method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    Served(Operation),
    /// An operation on one stored object, whose id (`[A-Za-z0-9_-]`, bounded) the path names.
    ServedById(Operation, &'a str),
    /// A path the table knows, asked with another method.
    WrongMethod(Operation),
    /// A stateful management surface (files, batches…): off.
    Stateful(&'static str),
    Unknown,
}

impl Operation {
    /// The operation's path below the surface prefix (and below `deployments/{d}/` for
    /// deployment-scoped operations); also the upstream's.
    pub(crate) const fn path(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat/completions",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
            Operation::ImageGenerations => "images/generations",
            Operation::ImageEdits => "images/edits",
            Operation::AudioTranscriptions => "audio/transcriptions",
            Operation::AudioTranslations => "audio/translations",
            Operation::AudioSpeech => "audio/speech",
            Operation::Models => "models",
            Operation::ResponsesRetrieve
            | Operation::ResponsesDelete
            | Operation::ResponsesCancel
            | Operation::ResponsesInputItems => "responses",
        }
    }

    /// For an operation on one stored object: what follows `{path}/{id}` (also upstream).
    pub(crate) const fn object_suffix(self) -> Option<&'static str> {
        match self {
            Operation::ResponsesRetrieve | Operation::ResponsesDelete => Some(""),
            Operation::ResponsesCancel => Some("/cancel"),
            Operation::ResponsesInputItems => Some("/input_items"),
            _ => None,
        }
    }

    /// Whether its answers carry response ids the gateway replaces by pinned ones (a response
    /// object, or the confirmation of a deletion). Every other operation pays one match here.
    #[inline]
    pub(crate) const fn mints_response_ids(self) -> bool {
        matches!(
            self,
            Operation::Responses
                | Operation::ResponsesRetrieve
                | Operation::ResponsesDelete
                | Operation::ResponsesCancel
        )
    }

    /// The operation's index in `metrics::OPERATIONS` (its declaration order).
    #[inline]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Whether a streamed request takes `stream_options.include_usage` (chat and legacy
    /// completions; the Responses API always reports usage in `response.completed`).
    pub(crate) const fn takes_stream_options(self) -> bool {
        matches!(self, Operation::ChatCompletions | Operation::Completions)
    }

    /// Low-cardinality name for logs.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat_completions",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
            Operation::ImageGenerations => "image_generations",
            Operation::ImageEdits => "image_edits",
            Operation::AudioTranscriptions => "audio_transcriptions",
            Operation::AudioTranslations => "audio_translations",
            Operation::AudioSpeech => "audio_speech",
            Operation::Models => "models",
            Operation::ResponsesRetrieve => "responses_retrieve",
            Operation::ResponsesDelete => "responses_delete",
            Operation::ResponsesCancel => "responses_cancel",
            Operation::ResponsesInputItems => "responses_input_items",
        }
    }

    pub(crate) fn method(self) -> Method {
        match self {
            Operation::Models | Operation::ResponsesRetrieve | Operation::ResponsesInputItems => {
                Method::GET
            }
            Operation::ResponsesDelete => Method::DELETE,
            _ => Method::POST,
        }
    }

    pub(crate) const fn body(self) -> BodyKind {
        match self {
            Operation::ImageEdits
            | Operation::AudioTranscriptions
            | Operation::AudioTranslations => BodyKind::Multipart,
            Operation::Models
            | Operation::ResponsesRetrieve
            | Operation::ResponsesDelete
            | Operation::ResponsesCancel
            | Operation::ResponsesInputItems => BodyKind::Empty,
            _ => BodyKind::Json,
        }
    }

    /// Whether Azure serves it below `deployments/{d}/` (dated) — and so whether the v1
    /// surface's `deployments/{d}/` form serves it too.
    const fn deployment_scoped(self) -> bool {
        !self.dated_unscoped()
    }

    /// Whether the dated surface serves it without a deployment in the path (`/openai/responses`,
    /// `/openai/responses/{id}…`, `/openai/models`).
    const fn dated_unscoped(self) -> bool {
        matches!(self, Operation::Responses | Operation::Models) || self.object_suffix().is_some()
    }
}

/// Every operation.
#[cfg(test)]
pub(crate) const ALL: [Operation; 14] = [
    Operation::ChatCompletions,
    Operation::Completions,
    Operation::Embeddings,
    Operation::Responses,
    Operation::ImageGenerations,
    Operation::ImageEdits,
    Operation::AudioTranscriptions,
    Operation::AudioTranslations,
    Operation::AudioSpeech,
    Operation::Models,
    Operation::ResponsesRetrieve,
    Operation::ResponsesDelete,
    Operation::ResponsesCancel,
    Operation::ResponsesInputItems,
];

/// First path segments of the stateful management surfaces (Azure's and OpenAI's), answered
/// 404 while [`stateful_surface_enabled`] says no.
const STATEFUL: [&str; 12] = [
    "files",
    "batches",
    "fine_tuning",
    "fine-tunes",
    "vector_stores",
    "assistants",
    "threads",
    "uploads",
    "evals",
    "containers",
    "conversations",
    "realtime",
];

/// The hook for the stateful surfaces: off for every gateway until per-gateway enabling with
/// endpoint pinning exists.
pub(crate) const fn stateful_surface_enabled() -> bool {
    false
}

/// The operation `rest` (the path after the surface prefix, and after `deployments/{d}/` when
/// `scope` is [`Scope::Deployment`]) names for `method` on `surface`.
pub(crate) fn lookup<'a>(
    surface: Surface,
    scope: Scope,
    rest: &'a str,
    method: &Method,
) -> Lookup<'a> {
    let mut object = None;
    let operation = match rest {
        "chat/completions" => Operation::ChatCompletions,
        "completions" => Operation::Completions,
        "embeddings" => Operation::Embeddings,
        "responses" => Operation::Responses,
        "images/generations" => Operation::ImageGenerations,
        "images/edits" => Operation::ImageEdits,
        "audio/transcriptions" => Operation::AudioTranscriptions,
        "audio/translations" => Operation::AudioTranslations,
        "audio/speech" => Operation::AudioSpeech,
        "models" => Operation::Models,
        _ if rest.starts_with("responses/") => match stored_response(rest, method) {
            Ok((operation, id)) => {
                object = Some(id);
                operation
            }
            Err(lookup) => return lookup,
        },
        _ => {
            let first = rest.split('/').next().unwrap_or("");
            // `chat/completions/{id}` (stored completions), `models/{id}`…
            return match STATEFUL.iter().find(|s| first.eq_ignore_ascii_case(s)) {
                Some(surface) => Lookup::Stateful(surface),
                None if first == "chat" => Lookup::Stateful("stored chat completions"),
                None => Lookup::Unknown,
            };
        }
    };
    let in_table = match (surface, scope) {
        (_, Scope::Deployment) => operation.deployment_scoped(),
        (Surface::Dated, Scope::Surface) => operation.dated_unscoped(),
        (Surface::V1, Scope::Surface) => true,
    };
    if !in_table {
        return Lookup::Unknown;
    }
    if *method != operation.method() {
        return Lookup::WrongMethod(operation);
    }
    match object {
        Some(id) => Lookup::ServedById(operation, id),
        None => Lookup::Served(operation),
    }
}

/// `responses/{id}`, `responses/{id}/cancel`, `responses/{id}/input_items`: the operation (by
/// method for the bare id) and the id; an id outside `[A-Za-z0-9_-]` or longer than any
/// pinned id is unknown (it reaches nothing, and never an upstream path).
fn stored_response<'a>(rest: &'a str, method: &Method) -> Result<(Operation, &'a str), Lookup<'a>> {
    let after = &rest["responses/".len()..];
    let (id, suffix) = match after.split_once('/') {
        Some((id, suffix)) => (id, Some(suffix)),
        None => (after, None),
    };
    let operation = match suffix {
        None if *method == Method::DELETE => Operation::ResponsesDelete,
        None => Operation::ResponsesRetrieve,
        Some("cancel") => Operation::ResponsesCancel,
        Some("input_items") => Operation::ResponsesInputItems,
        Some(_) => return Err(Lookup::Unknown),
    };
    if id.len() > crate::pin::MAX_PINNED_ID || !crate::pin::is_id(id.as_bytes()) {
        return Err(Lookup::Unknown);
    }
    Ok((operation, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_operation_labels_follow_the_operations() {
        for op in ALL {
            assert_eq!(crate::metrics::OPERATIONS[op.index()], op.label());
        }
    }

    #[test]
    fn every_operation_is_found_at_its_own_path_with_its_method() {
        for op in ALL.into_iter().filter(|op| op.object_suffix().is_none()) {
            let scoped = lookup(Surface::Dated, Scope::Deployment, op.path(), &op.method());
            let v1 = lookup(Surface::V1, Scope::Surface, op.path(), &op.method());
            if op.deployment_scoped() {
                assert_eq!(scoped, Lookup::Served(op), "{op:?}");
            } else {
                assert_eq!(scoped, Lookup::Unknown, "{op:?}");
                assert_eq!(
                    lookup(Surface::Dated, Scope::Surface, op.path(), &op.method()),
                    Lookup::Served(op)
                );
            }
            assert_eq!(v1, Lookup::Served(op), "{op:?}");
            let other = if op.method() == Method::GET { Method::POST } else { Method::GET };
            assert_eq!(
                lookup(Surface::V1, Scope::Surface, op.path(), &other),
                Lookup::WrongMethod(op)
            );
        }
    }

    #[test]
    fn responses_by_id_are_served_on_both_surfaces_without_a_deployment() {
        use Operation::{ResponsesCancel, ResponsesDelete, ResponsesInputItems, ResponsesRetrieve};
        let id = "resp_mgw1abc_x-Y9";
        for (surface, scope) in [(Surface::V1, Scope::Surface), (Surface::Dated, Scope::Surface)] {
            let at = |rest: &'static str, method: Method| lookup(surface, scope, rest, &method);
            assert_eq!(
                at("responses/resp_mgw1abc_x-Y9", Method::GET),
                Lookup::ServedById(ResponsesRetrieve, id)
            );
            assert_eq!(
                at("responses/resp_mgw1abc_x-Y9", Method::DELETE),
                Lookup::ServedById(ResponsesDelete, id)
            );
            assert_eq!(
                at("responses/resp_mgw1abc_x-Y9/cancel", Method::POST),
                Lookup::ServedById(ResponsesCancel, id)
            );
            assert_eq!(
                at("responses/resp_mgw1abc_x-Y9/input_items", Method::GET),
                Lookup::ServedById(ResponsesInputItems, id)
            );
            assert_eq!(
                at("responses/resp_1", Method::POST),
                Lookup::WrongMethod(ResponsesRetrieve)
            );
            assert_eq!(
                at("responses/resp_1/cancel", Method::GET),
                Lookup::WrongMethod(ResponsesCancel)
            );
            for unknown in [
                "responses/",
                "responses/resp_1/",
                "responses/resp_1/other",
                "responses/resp_1/cancel/x",
                "responses/resp%2F1",
                "responses/resp.1",
                "responses/resp 1",
            ] {
                assert_eq!(at(unknown, Method::GET), Lookup::Unknown, "{unknown}");
                assert_eq!(at(unknown, Method::POST), Lookup::Unknown, "{unknown}");
            }
            let long = format!("responses/{}", "a".repeat(crate::pin::MAX_PINNED_ID + 1));
            assert_eq!(lookup(surface, scope, &long, &Method::GET), Lookup::Unknown);
        }
        assert_eq!(
            lookup(Surface::Dated, Scope::Deployment, "responses/resp_1", &Method::GET),
            Lookup::Unknown,
            "not below a deployment"
        );
        for op in [ResponsesRetrieve, ResponsesDelete, ResponsesCancel, ResponsesInputItems] {
            assert_eq!(op.body(), BodyKind::Empty);
            assert_eq!(op.path(), "responses");
        }
    }

    #[test]
    fn management_surfaces_are_stateful_and_off() {
        assert!(!stateful_surface_enabled());
        let get = Method::GET;
        for path in [
            "files",
            "files/file-abc",
            "batches",
            "fine_tuning/jobs",
            "vector_stores",
            "assistants",
            "chat/completions/chatcmpl-1",
        ] {
            assert!(
                matches!(lookup(Surface::V1, Scope::Surface, path, &get), Lookup::Stateful(_)),
                "{path}"
            );
        }
        assert_eq!(lookup(Surface::V1, Scope::Surface, "anything/at/all", &get), Lookup::Unknown);
        assert_eq!(
            lookup(Surface::Dated, Scope::Surface, "chat/completions", &Method::POST),
            Lookup::Unknown,
            "the dated surface serves chat only under a deployment"
        );
        assert!(!matches!(
            lookup(Surface::Dated, Scope::Deployment, "chat/completions/", &Method::POST),
            Lookup::Served(_)
        ));
    }
}
