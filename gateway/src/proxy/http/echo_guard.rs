//! `echo_guard`: for services whose upstream may reflect request headers
//! back (debug endpoints, echo servers, verbose error pages), every
//! occurrence of the secret in the response is overwritten before it
//! reaches the agent: response headers, trailers and the streamed body.
//!
//! A reflection may be encoded, so a [`Redactor`] looks for these forms:
//! - the exact secret bytes;
//! - its base64 encodings (RFC 4648 §4 standard and §5 URL-safe alphabet),
//!   at each of the three byte alignments. A secret inside a longer encoded
//!   string, like the `user:secret` of a Basic `Authorization` header (RFC
//!   7617), shows as the encoding of the secret shifted by the bytes before
//!   it modulo 3; the first and last characters of that run also depend on
//!   the neighbouring bytes, so only the inner characters that depend on the
//!   secret alone are searched for;
//! - its percent-encodings (RFC 3986 §2.1), as Sluice puts it in a query
//!   (unreserved characters kept) and with every non-alphanumeric byte
//!   escaped, each with upper- and lower-case hex digits, plus the
//!   `application/x-www-form-urlencoded` form (space as `+`).
//!
//! Encoded forms shorter than [`MIN_ENCODED_PATTERN`] characters are not
//! searched for (only a secret of 5 bytes or fewer gets there): they would
//! match ordinary text. The exact secret is searched for whatever its length.
//!
//! The body is scanned as it streams: the last `longest pattern - 1` bytes
//! of each chunk are held back until the next one arrives, so an occurrence
//! split across chunks is still caught. Each matched byte is overwritten
//! with [`REDACTED_BYTE`], so `Content-Length` stays right. The matcher is
//! an Aho-Corasick automaton over all forms; its tables hold the encoded
//! forms and are not zeroized on drop (the plain patterns are).
use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use aho_corasick::AhoCorasick;
use base64::{
    engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
    Engine,
};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    body::{Body, Frame},
    header::HeaderValue,
    HeaderMap,
};
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

use super::{credential::QUERY_VALUE, reply::ProxyBody};

/// Byte written over each byte of a reflected secret.
pub const REDACTED_BYTE: u8 = b'*';

/// The shortest encoded form (base64 or percent-encoded) searched for, in
/// characters. The inner base64 run of an `n`-byte secret is about
/// `4n/3 - 2` characters long, so secrets of 6 bytes or more are covered at
/// every alignment.
pub const MIN_ENCODED_PATTERN: usize = 8;

/// `application/x-www-form-urlencoded` (WHATWG URL §5.2): alphanumerics and
/// `*-._` are kept; space becomes `+`, handled apart.
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// Finds and overwrites a secret and its encoded forms in response bytes.
/// Cheap to share: clones point at the same automaton.
#[derive(Clone)]
pub struct Redactor {
    /// `None` for an empty secret: nothing to find.
    matcher: Option<Arc<AhoCorasick>>,
    /// The longest pattern, in bytes: what the body scan holds back.
    longest: usize,
}

impl Redactor {
    /// A redactor for `secret` and the encodings listed in the module doc.
    pub fn new(secret: &[u8]) -> Self {
        let patterns = patterns(secret);
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let matcher = (!patterns.is_empty())
            .then(|| AhoCorasick::new(patterns.iter().map(|p| p.as_slice())).ok())
            .flatten()
            .map(Arc::new);
        Self { matcher, longest }
    }

    /// The longest form searched for, in bytes.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// Overwrites every occurrence of any form in `buf`, overlapping ones
    /// included; returns how many were found.
    pub fn redact_in_place(&self, buf: &mut [u8]) -> usize {
        let Some(matcher) = &self.matcher else {
            return 0;
        };
        let spans: Vec<(usize, usize)> = matcher
            .find_overlapping_iter(&*buf)
            .map(|m| (m.start(), m.end()))
            .collect();
        for &(start, end) in &spans {
            buf[start..end].fill(REDACTED_BYTE);
        }
        spans.len()
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("longest", &self.longest)
            .finish_non_exhaustive()
    }
}

/// The secret and its encoded forms, deduplicated, each at most once.
fn patterns(secret: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    if secret.is_empty() {
        return out;
    }
    let mut add = |p: Vec<u8>, encoded: bool| {
        let p = Zeroizing::new(p);
        if (!encoded || p.len() >= MIN_ENCODED_PATTERN) && !out.contains(&p) {
            out.push(p);
        }
    };
    add(secret.to_vec(), false);
    for aligned in base64_runs(secret) {
        add(aligned, true);
    }
    for set in [QUERY_VALUE, NON_ALPHANUMERIC] {
        let upper = Zeroizing::new(percent_encode(secret, set).to_string());
        add(lower_hex(&upper), true);
        add(upper.as_bytes().to_vec(), true);
    }
    let form = Zeroizing::new(
        secret
            .split(|&b| b == b' ')
            .map(|part| percent_encode(part, FORM_VALUE).to_string())
            .collect::<Vec<_>>()
            .join("+"),
    );
    add(lower_hex(&form), true);
    add(form.as_bytes().to_vec(), true);
    out
}

/// For `shift` = 0, 1, 2 bytes before the secret, in both alphabets: the
/// base64 characters whose 6 bits all come from the secret.
fn base64_runs(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut runs = Vec::new();
    for shift in 0..3usize {
        let mut shifted = Zeroizing::new(vec![0u8; shift]);
        shifted.extend_from_slice(secret);
        // Characters covering any bit of the `shift` leading bytes, and
        // those covering bits past the secret's end, depend on neighbours.
        let first = (8 * shift).div_ceil(6);
        let last = 8 * shifted.len() / 6;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = Zeroizing::new(engine.encode(&*shifted));
            if let Some(run) = encoded.as_bytes().get(first..last) {
                runs.push(run.to_vec());
            }
        }
    }
    runs
}

/// `text` with the hex digits of its `%XX` escapes in lower case.
fn lower_hex(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'%' {
            for b in out.iter_mut().skip(i + 1).take(2) {
                b.make_ascii_lowercase();
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// Replaces header values that contain the secret in any form the
/// redactor knows. Returns how many occurrences.
pub fn redact_headers(headers: &mut HeaderMap, redactor: &Redactor) -> usize {
    let mut count = 0;
    for value in headers.values_mut() {
        let mut bytes = value.as_bytes().to_vec();
        let n = redactor.redact_in_place(&mut bytes);
        if n > 0 {
            count += n;
            *value = HeaderValue::from_bytes(&bytes)
                .unwrap_or_else(|_| HeaderValue::from_static("[redacted]"));
        }
    }
    count
}

/// A response body with reflected secrets overwritten.
pub struct EchoGuard {
    inner: ProxyBody,
    redactor: Redactor,
    carry: BytesMut,
    /// Trailers seen after the last data, released once `carry` is out.
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl EchoGuard {
    /// Wraps `inner`, guarding against the secret `redactor` looks for.
    pub fn wrap(inner: ProxyBody, redactor: Redactor) -> ProxyBody {
        EchoGuard {
            inner,
            redactor,
            carry: BytesMut::new(),
            trailers: None,
            finished: false,
        }
        .boxed()
    }

    /// Emits everything but the tail that could start a split occurrence.
    fn drain(&mut self, all: bool) -> Option<Bytes> {
        self.redactor.redact_in_place(&mut self.carry);
        let keep = if all {
            0
        } else {
            self.redactor
                .longest()
                .saturating_sub(1)
                .min(self.carry.len())
        };
        let emit = self.carry.len() - keep;
        (emit > 0).then(|| self.carry.split_to(emit).freeze())
    }
}

impl Body for EchoGuard {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if self.finished {
                if let Some(rest) = self.drain(true) {
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                None => self.finished = true,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.carry.extend_from_slice(&data);
                        if let Some(out) = self.drain(false) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            redact_headers(&mut t, &self.redactor);
                            self.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::reply::full;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunked(chunks: &[&'static [u8]]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(stream::iter(frames)).boxed()
    }

    async fn collect(body: ProxyBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_secret_split_across_chunks_is_overwritten() {
        let body = chunked(&[b"auth: Bearer sk_li", b"ve_123 and sk_live_123", b"!"]);
        let out = collect(EchoGuard::wrap(body, Redactor::new(b"sk_live_123"))).await;
        assert_eq!(out, b"auth: Bearer *********** and ***********!".to_vec());
    }

    #[tokio::test]
    async fn bodies_without_the_secret_pass_unchanged() {
        let out = collect(EchoGuard::wrap(
            full(Bytes::from_static(b"{\"ok\":true}")),
            Redactor::new(b"sk"),
        ))
        .await;
        assert_eq!(out, b"{\"ok\":true}".to_vec());
    }

    const SECRET: &str = "sk_live_4f9a+b/c2d8e==";

    /// What an agent recovers by decoding `redacted` as base64, with the
    /// overwritten characters read as `A`.
    fn decoded(redacted: &[u8], engine: &impl Engine) -> String {
        let text = String::from_utf8_lossy(redacted).replace('*', "A");
        let bytes = engine
            .decode(text.trim_end_matches('='))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn base64_of_the_secret_at_any_offset_and_in_either_alphabet_is_overwritten() {
        let redactor = Redactor::new(SECRET.as_bytes());
        for prefix in ["", "a:", "ab:", "abc:", "Bearer ", "user:"] {
            let plain = format!("{prefix}{SECRET} and more");
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let mut body = engine.encode(&plain).into_bytes();
                assert!(redactor.redact_in_place(&mut body) >= 1, "{prefix:?}");
                let seen = decoded(&body, engine);
                assert!(!seen.contains(SECRET), "{prefix:?}: {seen:?}");
                // The neighbours stay readable.
                assert!(seen.ends_with("more"), "{prefix:?}: {seen:?}");
            }
        }
    }

    #[test]
    fn a_reflected_basic_auth_header_is_overwritten() {
        let redactor = Redactor::new(SECRET.as_bytes());
        let basic = STANDARD_NO_PAD.encode(format!("agent:{SECRET}"));
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo-authorization",
            HeaderValue::from_str(&format!("Basic {basic}=")).unwrap(),
        );
        assert_eq!(redact_headers(&mut h, &redactor), 1);
        let value = h["x-echo-authorization"].as_bytes();
        assert!(!decoded(&value[6..], &STANDARD_NO_PAD).contains(SECRET));
    }

    #[test]
    fn percent_encoded_forms_are_overwritten() {
        let redactor = Redactor::new(b"sk+key/with space=");
        for form in [
            "sk%2Bkey%2Fwith%20space%3D",
            "sk%2bkey%2fwith%20space%3d",
            "sk%2Bkey%2Fwith+space%3D",
            "sk%2bkey%2fwith+space%3d",
        ] {
            let mut body = format!("GET /echo?api_key={form}&x=1").into_bytes();
            assert_eq!(redactor.redact_in_place(&mut body), 1, "{form}");
            let expected = format!("GET /echo?api_key={}&x=1", "*".repeat(form.len()));
            assert_eq!(String::from_utf8_lossy(&body), expected);
        }
    }

    #[tokio::test]
    async fn an_encoded_secret_split_across_chunks_is_overwritten() {
        let encoded = STANDARD_NO_PAD.encode(format!("user:{SECRET}"));
        let leaked: &'static [u8] = Box::leak(
            format!("{{\"a\":\"{encoded}\"}}")
                .into_bytes()
                .into_boxed_slice(),
        );
        let redactor = Redactor::new(SECRET.as_bytes());
        for cut in 1..leaked.len() {
            let (a, b) = leaked.split_at(cut);
            let out = collect(EchoGuard::wrap(chunked(&[a, b]), redactor.clone())).await;
            assert_eq!(out.len(), leaked.len());
            let inner = &out[6..6 + encoded.len()];
            assert!(
                !decoded(inner, &STANDARD_NO_PAD).contains(SECRET),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn short_secrets_get_no_short_encoded_patterns() {
        // 3 bytes: every encoded form is under the minimum; only the bytes.
        let redactor = Redactor::new(b"abc");
        assert_eq!(redactor.longest(), 3);
        let mut body = b"YWJj abc".to_vec();
        assert_eq!(redactor.redact_in_place(&mut body), 1);
        assert_eq!(body, b"YWJj ***");
        assert!(patterns(SECRET.as_bytes())
            .iter()
            .all(|p| p.len() >= MIN_ENCODED_PATTERN));
        assert_eq!(Redactor::new(b"").redact_in_place(&mut body), 0);
    }

    #[test]
    fn headers_are_redacted() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo-authorization",
            HeaderValue::from_static("Bearer sk_live_123"),
        );
        assert_eq!(redact_headers(&mut h, &Redactor::new(b"sk_live_123")), 1);
        assert_eq!(h["x-echo-authorization"], "Bearer ***********");
    }
}
