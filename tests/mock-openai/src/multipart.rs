//! A small, strict `multipart/form-data` parser (RFC 7578) for the audio and image-edit uploads.
//!
//! Strict on purpose: the mock must refuse what Azure refuses (a missing boundary, a part without
//! `Content-Disposition: form-data; name=…`, a body that never reaches its closing delimiter), so
//! a gateway that re-frames or truncates an upload is caught. The whole body is in memory already
//! (it is bounded by [`crate::MAX_REQUEST_BODY_BYTES`]); parts are zero-copy slices of it.

use bytes::Bytes;

/// One field of a form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The `name` of its `Content-Disposition`.
    pub name: String,
    /// The `filename`, for file fields.
    pub filename: Option<String>,
    /// The part's own `Content-Type`, if it sent one.
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// A parsed form, parts in the order they were sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    pub parts: Vec<Part>,
}

impl Form {
    /// The first part named `name`.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// The first part named `name` as UTF-8 text (a plain field).
    pub fn text(&self, name: &str) -> Option<&str> {
        self.part(name).and_then(|p| std::str::from_utf8(&p.data).ok())
    }
}

/// Why a body is not a valid form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the content type is not multipart/form-data")]
    NotMultipart,
    #[error("the content type names no boundary")]
    NoBoundary,
    #[error("the body does not start with the boundary")]
    NoOpeningDelimiter,
    #[error("a part's headers do not end")]
    UnterminatedHeaders,
    #[error("a part has no form-data Content-Disposition with a name")]
    NoName,
    #[error("the body ends before the closing boundary")]
    NoClosingDelimiter,
}

/// The boundary named by a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, FormError> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(FormError::NotMultipart);
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or(FormError::NoBoundary)
}

/// Parses `body` sent with `content_type`.
pub fn parse(content_type: &str, body: &Bytes) -> Result<Form, FormError> {
    let boundary = boundary(content_type)?;
    let opening = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    // A preamble before the first delimiter is allowed by RFC 2046; clients send none.
    let start = if body.starts_with(opening.as_bytes()) {
        opening.len()
    } else {
        find(body, delimiter.as_bytes(), 0).ok_or(FormError::NoOpeningDelimiter)? + delimiter.len()
    };
    let mut parts = Vec::new();
    let mut at = start;
    loop {
        // After a delimiter: `--` closes the form, CRLF opens a part.
        let rest = body.get(at..).ok_or(FormError::NoClosingDelimiter)?;
        if rest.starts_with(b"--") {
            return Ok(Form { parts });
        }
        // Transport padding (spaces/tabs) may follow a delimiter.
        let pad = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(FormError::NoClosingDelimiter);
        }
        let head_start = at + pad + 2;
        let head_end = find(body, b"\r\n\r\n", head_start).ok_or(FormError::UnterminatedHeaders)?;
        let head = std::str::from_utf8(&body[head_start..head_end])
            .map_err(|_| FormError::UnterminatedHeaders)?;
        let data_start = head_end + 4;
        let data_end =
            find(body, delimiter.as_bytes(), data_start).ok_or(FormError::NoClosingDelimiter)?;
        parts.push(part(head, body.slice(data_start..data_end))?);
        at = data_end + delimiter.len();
    }
}

fn part(head: &str, data: Bytes) -> Result<Part, FormError> {
    let mut name = None;
    let mut filename = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else { continue };
        let key = key.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            let mut params = value.split(';');
            if !params.next().is_some_and(|d| d.trim().eq_ignore_ascii_case("form-data")) {
                return Err(FormError::NoName);
            }
            for param in params {
                let Some((k, v)) = param.split_once('=') else { continue };
                let v = v.trim().trim_matches('"').to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(v),
                    "filename" => filename = Some(v),
                    _ => {}
                }
            }
        } else if key.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_owned());
        }
    }
    let name = name.filter(|n| !n.is_empty()).ok_or(FormError::NoName)?;
    Ok(Part { name, filename, content_type, data })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn body(s: &str) -> Bytes {
        Bytes::from(s.replace('\n', "\r\n"))
    }

    #[test]
    fn parses_fields_and_files_as_sent() {
        let b = body(
            "--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nwhisper\n--XyZ\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\nContent-Type: audio/wav\n\nRIFF\n\nbytes\n--XyZ--\n",
        );
        let form = parse(CT, &b).expect("valid form");
        assert_eq!(form.text("model"), Some("whisper"));
        let file = form.part("file").expect("file");
        assert_eq!(file.filename.as_deref(), Some("a.wav"));
        assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(&file.data[..], b"RIFF\r\n\r\nbytes");
    }

    #[test]
    fn refuses_malformed_forms() {
        assert_eq!(parse("application/json", &body("")), Err(FormError::NotMultipart));
        assert_eq!(parse("multipart/form-data", &body("")), Err(FormError::NoBoundary));
        assert_eq!(parse(CT, &body("hello")), Err(FormError::NoOpeningDelimiter));
        assert_eq!(
            parse(CT, &body("--XyZ\nContent-Disposition: form-data; name=\"a\"\n\nvalue")),
            Err(FormError::NoClosingDelimiter)
        );
        assert_eq!(
            parse(CT, &body("--XyZ\nContent-Type: text/plain\n\nv\n--XyZ--")),
            Err(FormError::NoName)
        );
        assert_eq!(
            parse(CT, &body("--XyZ\nContent-Disposition: form-data; name=\"a\"")),
            Err(FormError::UnterminatedHeaders)
        );
    }

    #[test]
    fn a_quoted_boundary_and_an_empty_form_are_fine() {
        let form = parse("multipart/form-data; boundary=\"XyZ\"", &body("--XyZ--\n")).expect("ok");
        assert!(form.parts.is_empty());
    }
}
