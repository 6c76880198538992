//! `mask = ["secrets"]` on a Kubernetes service (DESIGN.md §6): in
//! responses to requests for Secrets, every value under `data` (base64,
//! Kubernetes API `Secret` v1) becomes the base64 of `****` and every value
//! under `stringData` becomes `****`, wherever the object sits: a Secret
//! (get, create, update, patch, delete), a `SecretList`'s `items` (list),
//! a watch event's `object`, a Table row's `object`. The
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, which
//! holds the Secret as last applied, is masked the same way inside.
//!
//! A get or list is buffered and masked whole ([`mask_document`]); a watch
//! is a stream of JSON events, one per line, masked line by line as they
//! arrive ([`SecretWatch`]) so events are not held back.
use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use serde_json::Value;

use super::{
    json_mask,
    kube::KubeRequest,
    reply::{self, ProxyBody},
    session::ConnCtx,
};
use crate::{config::MASK_SECRETS, guard::Session, recorder::Event};

/// A masked `data` value: base64 of `****`.
pub const MASKED_DATA: &str = "KioqKg==";
/// A masked `stringData` value.
pub const MASKED_STRING: &str = "****";
/// The annotation `kubectl apply` keeps the applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Masks every Secret value in `doc`; returns how many were masked.
pub fn mask_value(doc: &mut Value) -> u64 {
    match doc {
        Value::Object(map) => {
            let mut count = 0;
            for (key, child) in map.iter_mut() {
                count += match (key.as_str(), child) {
                    ("data", Value::Object(values)) => replace_all(values, MASKED_DATA),
                    ("stringData", Value::Object(values)) => replace_all(values, MASKED_STRING),
                    ("annotations", Value::Object(notes)) => mask_last_applied(notes),
                    (_, child) => mask_value(child),
                };
            }
            count
        }
        Value::Array(items) => items.iter_mut().map(mask_value).sum(),
        _ => 0,
    }
}

fn replace_all(values: &mut serde_json::Map<String, Value>, with: &str) -> u64 {
    let mut count = 0;
    for v in values.values_mut().filter(|v| !v.is_null()) {
        *v = Value::String(with.into());
        count += 1;
    }
    count
}

/// Masks inside the last-applied annotation (JSON in a string); one that
/// does not parse is replaced whole.
fn mask_last_applied(notes: &mut serde_json::Map<String, Value>) -> u64 {
    let Some(Value::String(applied)) = notes.get_mut(LAST_APPLIED) else {
        return 0;
    };
    match serde_json::from_str::<Value>(applied) {
        Ok(mut inner) => {
            let count = mask_value(&mut inner);
            *applied = inner.to_string();
            count
        }
        Err(_) => {
            *applied = MASKED_STRING.into();
            1
        }
    }
}

/// Masks a whole JSON response body.
///
/// # Errors
/// A message for a 502 when the body is not JSON: it is never passed on
/// unmasked.
pub fn mask_document(body: &[u8]) -> Result<(Vec<u8>, u64), String> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|_| {
        "upstream answered a request for Secrets with a body that is not JSON, which Sluice cannot mask; refused".to_string()
    })?;
    let count = mask_value(&mut doc);
    let out = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
    Ok((out, count))
}

/// Masks the response to a request for Secrets: a watch as it streams, a
/// body (at most `limit` bytes) whole, recording what was masked.
///
/// # Errors
/// A message for a 502: an encoded body, one that is not JSON (protobuf
/// despite `Accept`), or one over `limit`; never passed on unmasked.
pub async fn mask_response(
    ctx: &Arc<ConnCtx>,
    session: &Session,
    request: &KubeRequest,
    limit: usize,
    headers: &hyper::HeaderMap,
    body: ProxyBody,
) -> Result<ProxyBody, String> {
    super::reply::unencoded(headers, "Sluice cannot mask")?;
    let content_type = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.is_empty() && !json_mask::is_json(content_type) {
        return Err(format!("upstream answered a request for Secrets with {content_type}, which Sluice cannot mask; refused"));
    }
    if request.is_watch() {
        return Ok(SecretWatch::wrap(body, ctx.clone(), limit));
    }
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| format!("response cannot be masked ({e}; limit {limit} bytes, gateway.json_mask_max_bytes); refused"))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(reply::full(bytes));
    }
    let (masked, count) = mask_document(&bytes)?;
    if count > 0 && session.record(masked_event(count)).is_err() {
        return Err("session record cannot be written".into());
    }
    Ok(reply::full(Bytes::from(masked)))
}

/// The `masked` line for `count` values.
pub fn masked_event(count: u64) -> Event {
    Event::Masked {
        fields: vec![MASK_SECRETS.into()],
        count,
    }
}

/// A watch response body masked event by event: bytes are held only
/// until the end of their line (at most `limit` bytes), then the line is
/// masked and sent. A line that is not JSON, or longer than `limit`, ends
/// the stream with an `error` line (the client re-establishes its watch).
pub struct SecretWatch {
    inner: ProxyBody,
    ctx: Arc<ConnCtx>,
    pending: BytesMut,
    limit: usize,
    done: bool,
}

impl SecretWatch {
    /// Wraps the upstream's watch body.
    pub fn wrap(inner: ProxyBody, ctx: Arc<ConnCtx>, limit: usize) -> ProxyBody {
        SecretWatch {
            inner,
            ctx,
            pending: BytesMut::new(),
            limit,
            done: false,
        }
        .boxed()
    }

    /// Masks the complete lines in `pending`; `Err` ends the stream.
    fn complete_lines(&mut self) -> Result<Bytes, String> {
        let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else {
            if self.pending.len() > self.limit {
                return Err(format!(
                    "a watch event over {} bytes (gateway.json_mask_max_bytes) cannot be masked; watch ended",
                    self.limit
                ));
            }
            return Ok(Bytes::new());
        };
        let lines = self.pending.split_to(end + 1);
        let mut out = Vec::with_capacity(lines.len());
        let mut count = 0;
        for line in lines
            .as_ref()
            .split(|b| *b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
        {
            let (masked, n) = mask_document(line)?;
            out.extend_from_slice(&masked);
            out.push(b'\n');
            count += n;
        }
        if count > 0 && !self.ctx.record(masked_event(count)) {
            return Err("session record cannot be written; watch ended".into());
        }
        Ok(Bytes::from(out))
    }

    fn end(&mut self, message: String) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.done = true;
        self.ctx.record(Event::Error { message });
        Poll::Ready(None)
    }
}

impl Body for SecretWatch {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.pending.extend_from_slice(&data);
                        match self.complete_lines() {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                            Err(msg) => return self.end(msg),
                        }
                    }
                    // Trailers carry no object.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.done = true;
                    if self.pending.trim_ascii().is_empty() {
                        return Poll::Ready(None);
                    }
                    self.pending.extend_from_slice(b"\n");
                    return match self.complete_lines() {
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(msg) => self.end(msg),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_lists_events_and_last_applied_are_masked() {
        let applied = r#"{"apiVersion":"v1","kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;
        let list = serde_json::json!({
            "kind": "SecretList",
            "items": [{
                "metadata": {"name": "db", "annotations": {LAST_APPLIED: applied, "team": "a"}},
                "data": {"password": "aHVudGVyMg==", "empty": null},
                "stringData": {"user": "admin"},
                "type": "Opaque"
            }]
        });
        let (out, count) = mask_document(list.to_string().as_bytes()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(count, 3);
        assert!(
            !text.contains("aHVudGVyMg") && !text.contains("admin"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["items"][0]["data"]["password"], MASKED_DATA);
        assert_eq!(v["items"][0]["data"]["empty"], Value::Null);
        assert_eq!(v["items"][0]["stringData"]["user"], MASKED_STRING);
        assert_eq!(v["items"][0]["metadata"]["annotations"]["team"], "a");
        assert_eq!(v["items"][0]["type"], "Opaque");
        let event = br#"{"type":"ADDED","object":{"kind":"Secret","data":{"k":"dg=="}}}"#;
        let (out, count) = mask_document(event).unwrap();
        assert_eq!(count, 1);
        assert!(String::from_utf8(out).unwrap().contains(MASKED_DATA));
        assert!(mask_document(b"\x0ak8s\x00protobuf").is_err());
        // A Table (`Accept: application/json;as=Table`) with full objects.
        let table = br#"{"kind":"Table","columnDefinitions":[],"rows":[{"cells":["db","Opaque",1],"object":{"kind":"Secret","data":{"k":"dg=="}}}]}"#;
        let (out, count) = mask_document(table).unwrap();
        assert_eq!(count, 1);
        assert!(!String::from_utf8(out).unwrap().contains("dg=="));
    }
}
