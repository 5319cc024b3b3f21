//! The `model` of a multipart/form-data body (audio transcriptions and translations, image
//! edits). On `/openai/v1/…` `OpenAI(base_url=…/openai/v1/)` sends the deployment as this
//! form field; on a deployment path an OpenAI-compatible endpoint still routes by it. The part
//! is found by one scan of the body (the delimiter searched with `memchr::memmem`, only part
//! headers read), checked like a JSON `model` (`auth::check_model`) and, per attempt, the
//! endpoint's deployment is spliced into that part's bytes under the JSON rewrite's rules
//! (`RequestPlan::body`): the form is never re-encoded, file parts never read.
//!
//! Strict, for the reason `rewrite` is: the gateway and the upstream must read the same
//! `model`. The request has exactly one `Content-Type: multipart/form-data; boundary=…` header,
//! and its body is exactly one form delimited by that boundary — the first delimiter at byte
//! 0 (no preamble), a line end right after every delimiter, the close delimiter last (then
//! nothing but line ends), every part a header section of well-formed `CRLF` lines with exactly
//! one `Content-Disposition: form-data` naming the part, then a blank line — with at most one
//! part named `model`. What a lenient parser could read another way is refused
//! ([`FormRefusal`], a 400) before any upstream sees it:
//! - a part name some parser would decode to `model` (`name*=`, backslash or percent escapes);
//! - a quoted parameter whose closing quote follows an odd run of backslashes: an
//!   escape-aware parser reads on, and a `name="model"` hidden in a `filename` appears;
//! - a `model` part that is not a plain text field: a file name, a transfer encoding, a
//!   content type other than `text/plain` in UTF-8 (or ASCII).

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use memchr::memmem;

use super::rewrite::{ModelField, ModelProbe, ValueSyntax};

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// Why a multipart body is refused (a 400 in Azure's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FormRefusal {
    /// Not exactly one `Content-Type: multipart/form-data` header.
    NotMultipart,
    /// The `boundary` parameter is missing, repeated, or not 1–70 boundary characters.
    Boundary,
    /// The body is not one well-formed form; what is wrong.
    Malformed(&'static str),
    /// A second part named `model`.
    DuplicateModel,
    /// The `model` part is not a plain text field; why.
    ModelPart(&'static str),
}

impl FormRefusal {
    /// The message of the 400; says what is wrong, never echoes the body.
    pub(crate) fn message(&self) -> String {
        match self {
            FormRefusal::NotMultipart => "This operation takes a multipart/form-data body, \
                with one Content-Type header naming its boundary."
                .to_owned(),
            FormRefusal::Boundary => {
                "The multipart boundary must be given once, as 1 to 70 boundary characters."
                    .to_owned()
            }
            FormRefusal::Malformed(why) => {
                format!("The request body is not one well-formed multipart/form-data body: {why}.")
            }
            FormRefusal::DuplicateModel => {
                "The request body has more than one 'model' part.".to_owned()
            }
            FormRefusal::ModelPart(why) => {
                format!("The 'model' part must be a plain text field: {why}.")
            }
        }
    }

    /// Low-cardinality reason for logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            FormRefusal::NotMultipart => "not_multipart",
            FormRefusal::Boundary => "bad_boundary",
            FormRefusal::Malformed(_) => "malformed_multipart",
            FormRefusal::DuplicateModel => "duplicate_model",
            FormRefusal::ModelPart(_) => "model_part_not_text",
        }
    }
}

/// The `model` part of the form in `body`, as the request's one `Content-Type` delimits it.
pub(crate) fn probe_form(headers: &HeaderMap, body: &[u8]) -> Result<ModelProbe, FormRefusal> {
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let (Some(content_type), None) = (types.next(), types.next()) else {
        // None, or two: the upstream might take the other one's boundary.
        return Err(FormRefusal::NotMultipart);
    };
    let boundary = boundary(content_type.as_bytes())?;
    scan(body, boundary)
}

/// The boundary of a `multipart/form-data` content type.
fn boundary(content_type: &[u8]) -> Result<&[u8], FormRefusal> {
    let (media_type, params) = split_value(content_type);
    if !media_type.eq_ignore_ascii_case(b"multipart/form-data") {
        return Err(FormRefusal::NotMultipart);
    }
    let mut found = None;
    for param in Params(params) {
        let param = param.map_err(|_| FormRefusal::Boundary)?;
        if param.name.eq_ignore_ascii_case(b"boundary") {
            if found.is_some() {
                return Err(FormRefusal::Boundary);
            }
            found = Some(param.value);
        }
    }
    let boundary = found.ok_or(FormRefusal::Boundary)?;
    let valid = (1..=MAX_BOUNDARY).contains(&boundary.len())
        && boundary.iter().all(|&b| is_bchar(b) || b == b' ')
        && boundary.last() != Some(&b' ');
    if valid { Ok(boundary) } else { Err(FormRefusal::Boundary) }
}

/// RFC 2046's `bcharsnospace`.
fn is_bchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&b)
}

/// One pass over the body: each part's extent from the delimiters, each part's header section
/// read, its content skipped.
fn scan(body: &[u8], boundary: &[u8]) -> Result<ModelProbe, FormRefusal> {
    use FormRefusal::Malformed;
    let first = body.strip_prefix(b"--").and_then(|rest| rest.strip_prefix(boundary));
    if first.is_none() {
        return Err(Malformed("it does not start with the boundary's delimiter"));
    }
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"\r\n--");
    delimiter.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delimiter);
    let mut model: Option<ModelField> = None;
    // Just after a delimiter.
    let mut at = 2 + boundary.len();
    loop {
        let rest = &body[at..];
        if let Some(epilogue) = rest.strip_prefix(b"--") {
            // Line ends only (form-data-encoder, in older Node SDKs, ends with two): a parser
            // that splits at every delimiter would find more parts in anything else.
            if !epilogue.iter().all(|&b| b == b'\r' || b == b'\n') {
                return Err(Malformed("bytes after the closing delimiter"));
            }
            break;
        }
        if !rest.starts_with(b"\r\n") {
            return Err(Malformed("a delimiter not followed by a line end"));
        }
        let start = at + 2;
        let Some(length) = finder.find(&body[start..]) else {
            return Err(Malformed("a part without a closing delimiter"));
        };
        let end = start + length;
        let part = &body[start..end];
        // A part that starts with a blank line has no headers, so no name; a part without one
        // has no content section (some parsers would take the next delimiter as its content).
        let headers_end = match memmem::find(part, b"\r\n\r\n") {
            Some(end) if !part.starts_with(b"\r\n") => end,
            _ => return Err(Malformed("a part without a header section and a blank line")),
        };
        let headers = read_part_headers(&part[..headers_end])?;
        if headers.name == b"model" {
            if model.is_some() {
                return Err(FormRefusal::DuplicateModel);
            }
            headers.check_text_field()?;
            let content = start + headers_end + 4..end;
            let value = std::str::from_utf8(&body[content.clone()]).ok().map(str::to_owned);
            model = Some(ModelField { span: content, value, syntax: ValueSyntax::FormPart });
        }
        at = end + delimiter.len();
    }
    Ok(model.map_or(ModelProbe::Absent, ModelProbe::Present))
}

/// What a part's header section says, as far as the probe needs it.
struct PartHeaders<'a> {
    /// The `name` of its `Content-Disposition`.
    name: &'a [u8],
    /// Its `Content-Disposition` has a `filename` or `filename*`.
    file: bool,
    /// Its `Content-Type` value, if any.
    content_type: Option<&'a [u8]>,
    /// Its `Content-Transfer-Encoding` value, if any.
    transfer_encoding: Option<&'a [u8]>,
    /// It repeats `Content-Type` or `Content-Transfer-Encoding`.
    repeated: bool,
}

impl PartHeaders<'_> {
    /// The `model` part must be what every parser reads as the same text.
    fn check_text_field(&self) -> Result<(), FormRefusal> {
        use FormRefusal::ModelPart;
        if self.file {
            return Err(ModelPart("it has a file name"));
        }
        if self.repeated {
            return Err(ModelPart("a repeated part header"));
        }
        if let Some(encoding) = self.transfer_encoding {
            let identity = [&b"7bit"[..], b"8bit", b"binary"];
            if !identity.iter().any(|id| encoding.eq_ignore_ascii_case(id)) {
                return Err(ModelPart("a content transfer encoding"));
            }
        }
        if let Some(content_type) = self.content_type {
            let (media_type, params) = split_value(content_type);
            let utf8 = media_type.eq_ignore_ascii_case(b"text/plain")
                && Params(params).all(|param| {
                    param.is_ok_and(|p| {
                        p.name.eq_ignore_ascii_case(b"charset")
                            && (p.value.eq_ignore_ascii_case(b"utf-8")
                                || p.value.eq_ignore_ascii_case(b"us-ascii"))
                    })
                });
            if !utf8 {
                return Err(ModelPart("a content type other than UTF-8 text"));
            }
        }
        Ok(())
    }
}

/// A part's header lines (`CRLF`-separated, without the blank line).
fn read_part_headers(section: &[u8]) -> Result<PartHeaders<'_>, FormRefusal> {
    use FormRefusal::Malformed;
    let mut disposition = None;
    let mut headers = PartHeaders {
        name: &[],
        file: false,
        content_type: None,
        transfer_encoding: None,
        repeated: false,
    };
    let lines = memmem::find_iter(section, b"\r\n").chain(std::iter::once(section.len())).scan(
        0,
        |start, end| {
            let line = &section[*start..end];
            *start = end + 2;
            Some(line)
        },
    );
    for line in lines {
        if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Malformed("a bare line break in a part header"));
        }
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(Malformed("a folded part header"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Malformed("a part header line without a colon"));
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Malformed("a part header name that is not a token"));
        }
        let slot = if name.eq_ignore_ascii_case(b"content-disposition") {
            if disposition.is_some() {
                return Err(Malformed("a part with two Content-Disposition headers"));
            }
            disposition = Some(value);
            continue;
        } else if name.eq_ignore_ascii_case(b"content-type") {
            &mut headers.content_type
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            &mut headers.transfer_encoding
        } else {
            continue;
        };
        headers.repeated |= slot.is_some();
        *slot = Some(value);
    }
    let Some(disposition) = disposition else {
        return Err(Malformed("a part without Content-Disposition"));
    };
    let (kind, params) = split_value(disposition);
    if !kind.eq_ignore_ascii_case(b"form-data") {
        return Err(Malformed("a part whose Content-Disposition is not form-data"));
    }
    let mut name = None;
    for param in Params(params) {
        let param = param.map_err(Malformed)?;
        if param.name.eq_ignore_ascii_case(b"name") {
            if name.is_some() {
                return Err(Malformed("a part named twice"));
            }
            if param.value.iter().any(|&b| b == b'\\' || b == b'%') {
                return Err(Malformed("a part name with escapes"));
            }
            name = Some(param.value);
        } else if param.name.eq_ignore_ascii_case(b"name*") {
            return Err(Malformed("a part name in extended notation (name*)"));
        } else if param.name.eq_ignore_ascii_case(b"filename")
            || param.name.eq_ignore_ascii_case(b"filename*")
        {
            headers.file = true;
        }
    }
    headers.name = name.ok_or(Malformed("a part without a name"))?;
    Ok(headers)
}

/// A header value split at its first `;`: the value proper (trimmed) and its parameters
/// (from the `;` on, for [`Params`]).
fn split_value(value: &[u8]) -> (&[u8], &[u8]) {
    match value.iter().position(|&b| b == b';') {
        Some(semicolon) => (trim(&value[..semicolon]), &value[semicolon..]),
        None => (trim(value), &[]),
    }
}

/// One `; name=value` parameter; a quoted value without its quotes.
struct Param<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// The parameters of a header value, from its first `;` ([`split_value`]): `; name=token` or
/// `; name="quoted"`, optional whitespace around each piece, a trailing `;` allowed. Without
/// allocating; an error ends the iteration.
struct Params<'a>(&'a [u8]);

impl<'a> Iterator for Params<'a> {
    type Item = Result<Param<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = trim_start(self.0);
        if rest.is_empty() {
            return None;
        }
        let parsed = parse_param(rest);
        self.0 = match &parsed {
            Ok((_, after)) => after,
            Err(_) => &[],
        };
        match parsed {
            Ok((Some(param), _)) => Some(Ok(param)),
            Ok((None, _)) => None,
            Err(why) => Some(Err(why)),
        }
    }
}

/// The parameter at the start of `rest` (which starts with `;`, else it is an error) and what
/// follows it; `None` for a trailing `;`.
fn parse_param(rest: &[u8]) -> Result<(Option<Param<'_>>, &[u8]), &'static str> {
    let Some(rest) = rest.strip_prefix(b";") else {
        return Err("a header parameter not separated by ';'");
    };
    let rest = trim_start(rest);
    if rest.is_empty() {
        return Ok((None, rest));
    }
    let name_len = rest.iter().take_while(|&&b| is_tchar(b)).count();
    let (name, rest) = rest.split_at(name_len);
    let Some(rest) = trim_start(rest).strip_prefix(b"=") else {
        return Err("a header parameter without a name and a value");
    };
    if name.is_empty() {
        return Err("a header parameter without a name and a value");
    }
    let rest = trim_start(rest);
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        let Some(close) = quoted.iter().position(|&b| b == b'"') else {
            return Err("an unterminated quoted header parameter");
        };
        let value = &quoted[..close];
        // An odd run of backslashes before the quote escapes it for a parser that reads
        // escapes, and that parser would see different parameters.
        if value.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1 {
            return Err("an escaped quote in a quoted header parameter");
        }
        if value.iter().any(|&b| b < b' ' && b != b'\t') {
            return Err("a control character in a header parameter");
        }
        return Ok((Some(Param { name, value }), &quoted[close + 1..]));
    }
    // Unquoted: up to whitespace or the next `;` (boundaries may hold `/`, `:`, `=`, `?`).
    let len = rest.iter().take_while(|&&b| b > b' ' && b != b';' && b != b'"' && b != 0x7f).count();
    if len == 0 {
        return Err("a header parameter without a name and a value");
    }
    let (value, after) = rest.split_at(len);
    Ok((Some(Param { name, value }), after))
}

/// RFC 9110's `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &bytes[start..]
}

fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start(bytes);
    let end = bytes.len() - bytes.iter().rev().take_while(|&&b| b == b' ' || b == b'\t').count();
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::rewrite::splice;
    use bytes::Bytes;
    use http::HeaderValue;
    use proptest::prelude::*;

    const BOUNDARY: &str = "----modelgw7MA4YWxkTrZu0gW";

    fn headers(content_type: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).expect("header"));
        map
    }

    fn form_type() -> HeaderMap {
        headers(&format!("multipart/form-data; boundary={BOUNDARY}"))
    }

    /// A form of `(part headers, content)` parts, as the SDKs write it.
    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (head, content) in parts {
            body.extend_from_slice(format!("--{BOUNDARY}\r\n{head}\r\n\r\n").as_bytes());
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
                        Content-Type: audio/wav";
    const MODEL: &str = "Content-Disposition: form-data; name=\"model\"";

    fn model_of(body: &[u8]) -> Result<ModelProbe, FormRefusal> {
        probe_form(&form_type(), body)
    }

    fn present(body: &[u8]) -> ModelField {
        match model_of(body) {
            Ok(ModelProbe::Present(field)) => field,
            other => panic!("expected a model part: {other:?}"),
        }
    }

    #[test]
    fn finds_the_model_part_among_files() {
        let audio = b"RIFF\x00\x01\r\n--not-the-boundary\r\n\r\nname=\"model\"";
        let body = form(&[
            (FILE, audio),
            (MODEL, b"gw"),
            ("Content-Disposition: form-data; name=language", b"en"),
        ]);
        let field = present(&body);
        assert_eq!(field.value.as_deref(), Some("gw"));
        assert_eq!(&body[field.span.clone()], b"gw");
        assert_eq!(field.syntax, ValueSyntax::FormPart);
        let out = splice(&Bytes::from(body.clone()), field.span, b"whisper-eus");
        let expected = form(&[
            (FILE, audio),
            (MODEL, b"whisper-eus"),
            ("Content-Disposition: form-data; name=language", b"en"),
        ]);
        assert_eq!(out, expected, "only the model part's text changed");
    }

    #[test]
    fn forms_without_a_model_part_are_absent() {
        assert_eq!(model_of(&form(&[(FILE, b"x")])), Ok(ModelProbe::Absent));
        assert_eq!(model_of(format!("--{BOUNDARY}--").as_bytes()), Ok(ModelProbe::Absent));
        let encoder_footer = format!("--{BOUNDARY}--\r\n\r\n");
        assert_eq!(model_of(encoder_footer.as_bytes()), Ok(ModelProbe::Absent), "two line ends");
        let other_case = "Content-Disposition: form-data; name=\"Model\"";
        assert_eq!(model_of(&form(&[(other_case, b"gw")])), Ok(ModelProbe::Absent));
    }

    #[test]
    fn content_types_and_boundaries() {
        let body = form(&[(MODEL, b"auto")]);
        let probe = |content_type: &str| probe_form(&headers(content_type), &body);
        assert!(
            probe(&format!("Multipart/Form-Data ; charset=utf-8; BOUNDARY=\"{BOUNDARY}\"")).is_ok()
        );
        assert_eq!(probe("application/json"), Err(FormRefusal::NotMultipart));
        assert_eq!(probe("multipart/mixed; boundary=x"), Err(FormRefusal::NotMultipart));
        assert_eq!(probe("multipart/form-data"), Err(FormRefusal::Boundary));
        assert_eq!(
            probe(&format!("multipart/form-data; boundary={BOUNDARY}; boundary=other")),
            Err(FormRefusal::Boundary)
        );
        assert_eq!(probe("multipart/form-data; boundary=\"\""), Err(FormRefusal::Boundary));
        assert_eq!(
            probe(&format!("multipart/form-data; boundary={}", "a".repeat(71))),
            Err(FormRefusal::Boundary)
        );
        assert_eq!(probe("multipart/form-data; boundary=\"a b \""), Err(FormRefusal::Boundary));
        assert_eq!(probe_form(&HeaderMap::new(), &body), Err(FormRefusal::NotMultipart));
        let mut two = form_type();
        two.append(CONTENT_TYPE, HeaderValue::from_static("multipart/form-data; boundary=x"));
        assert_eq!(probe_form(&two, &body), Err(FormRefusal::NotMultipart), "two Content-Types");
        // Boundaries with characters a token does not allow, quoted or not.
        let odd = "a'()+_,-./:=?z";
        let odd_body = format!("--{odd}\r\n{MODEL}\r\n\r\ngw\r\n--{odd}--");
        for content_type in [
            format!("multipart/form-data; boundary={odd}"),
            format!("multipart/form-data; boundary=\"{odd}\""),
        ] {
            let probed = probe_form(&headers(&content_type), odd_body.as_bytes());
            assert!(matches!(probed, Ok(ModelProbe::Present(_))), "{content_type}: {probed:?}");
        }
    }

    #[test]
    fn forms_other_parsers_could_read_otherwise_are_refused() {
        let malformed = |body: &[u8]| match model_of(body) {
            Err(FormRefusal::Malformed(why)) => why,
            other => {
                panic!("expected malformed: {other:?} for {:?}", String::from_utf8_lossy(body))
            }
        };
        let ok = form(&[(MODEL, b"gw")]);
        let text = String::from_utf8(ok.clone()).expect("ascii");
        malformed(format!("preamble\r\n{text}").as_bytes());
        malformed(format!("\r\n{text}").as_bytes());
        malformed(format!("{text}epilogue").as_bytes());
        malformed(&ok[..ok.len() - 4]);
        malformed(
            text.replacen(&format!("--{BOUNDARY}\r\n"), &format!("--{BOUNDARY} \r\n"), 1)
                .as_bytes(),
        );
        malformed(
            text.replacen(&format!("--{BOUNDARY}\r\n"), &format!("--{BOUNDARY}X\r\n"), 1)
                .as_bytes(),
        );
        // A part whose headers end at the next delimiter, without its blank line.
        malformed(format!("--{BOUNDARY}\r\n{MODEL}\r\n--{BOUNDARY}--").as_bytes());
        malformed(format!("--{BOUNDARY}\r\n\r\ngw\r\n--{BOUNDARY}--").as_bytes());
        for head in [
            "Content-Disposition: form-data; name=\"mod\\el\"",
            "Content-Disposition: form-data; name=\"mod%65l\"",
            "Content-Disposition: form-data; name*=UTF-8''model",
            "Content-Disposition: form-data; name=\"x\"; name=\"model\"",
            "Content-Disposition: form-data; filename=\"a\\\"; name=\"model\"",
            "Content-Disposition: form-data; name=\"model",
            "Content-Disposition: form-data; name",
            "Content-Disposition: form-data name=\"model\"",
            "Content-Disposition: attachment; name=\"model\"",
            "Content-Disposition: form-data",
            "Content-Type: text/plain",
            "Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"model\"",
            "Content-Disposition: form-data;\r\n name=\"model\"",
            "Content-Disposition: form-data; name=\"model\"\nX-A: 1",
            "Content Disposition: form-data; name=\"model\"",
            "no colon",
        ] {
            malformed(&form(&[(head, b"gw")]));
        }
        assert_eq!(
            model_of(&form(&[(MODEL, b"gw"), (MODEL, b"o1")])),
            Err(FormRefusal::DuplicateModel)
        );
        let unquoted = "Content-Disposition: form-data; name=model";
        assert_eq!(
            model_of(&form(&[(MODEL, b"gw"), (unquoted, b"o1")])),
            Err(FormRefusal::DuplicateModel)
        );
    }

    #[test]
    fn the_model_part_must_be_plain_text() {
        let refused = |head: &str| match model_of(&form(&[(head, b"gw")])) {
            Err(FormRefusal::ModelPart(why)) => why,
            other => panic!("expected a refused model part: {other:?} for {head}"),
        };
        refused("Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"");
        refused(
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64",
        );
        refused(
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; charset=utf-16",
        );
        refused(
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Type: application/octet-stream",
        );
        refused(
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain\r\nContent-Type: text/plain",
        );
        for head in [
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; charset=UTF-8",
            "Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: 8bit",
            "content-disposition:form-data;name=\"model\";",
        ] {
            assert!(
                matches!(model_of(&form(&[(head, b"gw")])), Ok(ModelProbe::Present(_))),
                "{head}"
            );
        }
        let field = present(&form(&[(MODEL, b"g\xffw")]));
        assert_eq!(field.value, None, "not UTF-8: not a name");
        // A file part may say anything about itself.
        let file = "Content-Disposition: form-data; name=\"image\"; filename=\"C:\\\\x.png\"\r\n\
                    Content-Transfer-Encoding: base64\r\nContent-Type: image/png";
        assert!(model_of(&form(&[(file, b"iVBOR"), (MODEL, b"gw")])).is_ok());
    }

    /// One part of a generated form: its name, whether it is a file, its content.
    fn part() -> impl Strategy<Value = (String, bool, Vec<u8>)> {
        let name = prop_oneof![
            Just("model".to_owned()),
            Just("file".to_owned()),
            Just("prompt".to_owned()),
            "[a-z_\\[\\]]{1,10}",
        ];
        let content = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            // Bytes that look like delimiters and headers inside a file.
            prop::collection::vec(
                prop_oneof![
                    Just(b"\r\n".to_vec()),
                    Just(b"--".to_vec()),
                    Just(BOUNDARY.as_bytes().to_vec()),
                    Just(format!("--{BOUNDARY}").into_bytes()),
                    Just(b"name=\"model\"".to_vec()),
                    Just(b"\r\n\r\n".to_vec()),
                ],
                0..6
            )
            .prop_map(|pieces| pieces.concat()),
        ];
        (name, any::<bool>(), content)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Forms built from parts: the probe finds the `model` part exactly when there is one
        /// (refuses two), and the splice changes that part's text and nothing else.
        #[test]
        fn the_probe_finds_the_one_model_part_and_the_splice_changes_only_it(
            parts in prop::collection::vec(part(), 0..5),
            deployment in "[a-zA-Z0-9._-]{1,16}",
        ) {
            let delimiter = format!("\r\n--{BOUNDARY}");
            // Content holding the delimiter would end its part early: not a form a client writes.
            let parts: Vec<_> = parts
                .into_iter()
                .filter(|(_, _, content)| memmem::find(&[b"\r\n", &content[..], b"\r\n"].concat(), delimiter.as_bytes()).is_none())
                .collect();
            let heads: Vec<String> = parts
                .iter()
                .map(|(name, file, _)| match file {
                    true if name != "model" => format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"f.bin\"\r\nContent-Type: application/octet-stream"),
                    _ => format!("Content-Disposition: form-data; name=\"{name}\""),
                })
                .collect();
            let pieces: Vec<(&str, &[u8])> =
                heads.iter().zip(&parts).map(|(head, (_, _, content))| (head.as_str(), &content[..])).collect();
            let body = form(&pieces);
            let models: Vec<usize> = parts.iter().enumerate().filter(|(_, p)| p.0 == "model").map(|(i, _)| i).collect();
            match (model_of(&body), models.as_slice()) {
                (Ok(ModelProbe::Absent), []) => {}
                (Err(FormRefusal::DuplicateModel), [_, _, ..]) => {}
                (Ok(ModelProbe::Present(field)), [i]) => {
                    prop_assert_eq!(&body[field.span.clone()], &parts[*i].2[..]);
                    let out = splice(&Bytes::from(body.clone()), field.span, deployment.as_bytes());
                    let mut expected = pieces.clone();
                    expected[*i].1 = deployment.as_bytes();
                    prop_assert_eq!(&out[..], &form(&expected)[..]);
                    // The rewritten form reads back with the new model.
                    let again = present(&out);
                    prop_assert_eq!(again.value.as_deref(), Some(deployment.as_str()));
                }
                (other, models) => prop_assert!(false, "{other:?} with model parts at {models:?}"),
            }
        }

        /// Any bytes, under any boundary: the probe never panics, and a `model` it finds is a
        /// span of the body between a blank line and a delimiter.
        #[test]
        fn any_bytes_never_panic_and_a_found_model_sits_between_a_blank_line_and_a_delimiter(
            body in prop::collection::vec(prop_oneof![
                any::<u8>().prop_map(|b| vec![b]),
                Just(b"\r\n".to_vec()),
                Just(format!("--{BOUNDARY}").into_bytes()),
                Just(MODEL.as_bytes().to_vec()),
                Just(b"\"; name=\"".to_vec()),
            ], 0..24).prop_map(|pieces| pieces.concat()),
        ) {
            if let Ok(ModelProbe::Present(field)) = model_of(&body) {
                prop_assert!(body[..field.span.start].ends_with(b"\r\n\r\n"));
                let delimiter = format!("\r\n--{BOUNDARY}");
                prop_assert!(body[field.span.end..].starts_with(delimiter.as_bytes()));
                prop_assert!(memmem::find(&body[field.span.clone()], delimiter.as_bytes()).is_none());
            }
        }
    }
}
