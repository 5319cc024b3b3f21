//! The operations a gateway key reaches: the one table of path × method → operation, for the
//! dated surface (`/openai/deployments/{d}/…?api-version=`, `/openai/…`) and the `v1` surface
//! (`/openai/v1/…`, `/openai/v1/deployments/{d}/…`) alike.
//!
//! Everything the table does not name is answered by the gateway itself with Azure's 404,
//! before any upstream is contacted: a key for one gateway must never reach the management
//! surfaces of the Azure resources behind it (files, batches, fine-tuning, vector stores,
//! assistants, stored responses by id), which the resource's own key would open for every
//! team sharing it. Those are recognised as [`Lookup::Stateful`] so that a later change can
//! enable them per gateway (with pinning to the endpoint that holds the state) at one place:
//! [`stateful_surface_enabled`].
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
pub(crate) enum Lookup {
    Served(Operation),
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
        }
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
        }
    }

    pub(crate) fn method(self) -> Method {
        match self {
            Operation::Models => Method::GET,
            _ => Method::POST,
        }
    }

    pub(crate) const fn body(self) -> BodyKind {
        match self {
            Operation::ImageEdits
            | Operation::AudioTranscriptions
            | Operation::AudioTranslations => BodyKind::Multipart,
            Operation::Models => BodyKind::Empty,
            _ => BodyKind::Json,
        }
    }

    /// Whether Azure serves it below `deployments/{d}/` (dated) — and so whether the v1
    /// surface's `deployments/{d}/` form serves it too.
    const fn deployment_scoped(self) -> bool {
        !matches!(self, Operation::Responses | Operation::Models)
    }

    /// Whether the dated surface serves it without a deployment in the path (`/openai/responses`,
    /// `/openai/models`).
    const fn dated_unscoped(self) -> bool {
        matches!(self, Operation::Responses | Operation::Models)
    }
}

/// Every operation.
#[cfg(test)]
pub(crate) const ALL: [Operation; 10] = [
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
pub(crate) fn lookup(surface: Surface, scope: Scope, rest: &str, method: &Method) -> Lookup {
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
        _ => {
            let first = rest.split('/').next().unwrap_or("");
            // `responses/{id}` (stored responses), `models/{id}`, `chat/completions/{id}`…
            return match STATEFUL.iter().find(|s| first.eq_ignore_ascii_case(s)) {
                Some(surface) => Lookup::Stateful(surface),
                None if first == "responses" || first == "chat" => {
                    Lookup::Stateful("stored responses")
                }
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
    Lookup::Served(operation)
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
        for op in ALL {
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
            "responses/resp_123",
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
