//! Errors the gateway itself answers with, and their JSON form.
//!
//! Every response weir makes up (as opposed to relaying an upstream's) goes
//! through [`GatewayError::into_response`], so clients always get the same
//! shape: `{"error":{"status":404,"code":"no_route","message":"…",
//! "request_id":"…"}}`. Each variant says where the fault lies and whether a
//! retry on another target is safe, the way the proxy loop needs it.
//!
//! What a client reads never names an upstream, a target address or the
//! HTTP library's error text ([`GatewayError::public_message`]); that
//! detail goes to the log, at WARN for upstream failures, on a line that
//! carries the same request id ([`GatewayError::into_response`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{ClientBodyError, Full};

/// Where a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed or was unreachable.
    Upstream,
    /// Configuration or the gateway itself.
    Internal,
}

/// A failure the gateway answers on its own.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request uses a feature the gateway does not implement (a
    /// transfer coding other than `chunked`).
    #[error("{0}")]
    NotImplemented(String),
    /// No route matches.
    #[error("no route matches {method} {host}{path}")]
    NoRoute {
        /// Request method.
        method: String,
        /// Host the client asked for (may be empty).
        host: String,
        /// Request path.
        path: String,
    },
    /// The client stopped sending its request body.
    #[error("the client stopped sending the request body")]
    RequestTimeout,
    /// The request body is larger than allowed.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The request head is larger than allowed.
    #[error("request headers exceed the limit of {limit} bytes")]
    HeadersTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The request carries more header fields than allowed.
    #[error("request carries more than {limit} header fields")]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },
    /// No target could be reached, or the upstream broke the exchange.
    #[error("upstream `{upstream}` failed: {reason}")]
    BadGateway {
        /// Upstream id.
        upstream: String,
        /// What went wrong, without secrets.
        reason: String,
    },
    /// Every target is marked down.
    #[error("upstream `{upstream}` has no healthy target")]
    NoHealthyUpstream {
        /// Upstream id.
        upstream: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream `{upstream}` did not answer within {timeout}")]
    UpstreamTimeout {
        /// Upstream id.
        upstream: String,
        /// Which timeout fired, e.g. `read timeout 5s`.
        timeout: String,
    },
}

impl GatewayError {
    /// The HTTP status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            GatewayError::NoRoute { .. } => StatusCode::NOT_FOUND,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge { .. } | GatewayError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            GatewayError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::NoHealthyUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::NotImplemented(_) => "not_implemented",
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::HeadersTooLarge { .. } => "headers_too_large",
            GatewayError::TooManyHeaders { .. } => "too_many_headers",
            GatewayError::BadGateway { .. } => "upstream_error",
            GatewayError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
        }
    }

    /// Where the fault lies.
    pub fn source(&self) -> Source {
        match self {
            GatewayError::BadRequest(_)
            | GatewayError::NotImplemented(_)
            | GatewayError::RequestTimeout
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::HeadersTooLarge { .. }
            | GatewayError::TooManyHeaders { .. } => Source::Downstream,
            GatewayError::NoRoute { .. } => Source::Internal,
            GatewayError::BadGateway { .. }
            | GatewayError::NoHealthyUpstream { .. }
            | GatewayError::UpstreamTimeout { .. } => Source::Upstream,
        }
    }

    /// The message a client reads: for upstream failures, what happened
    /// without which upstream, which target or what the HTTP library said
    /// (that is [`std::fmt::Display`]'s, for the log); for the others, the
    /// full text, which only repeats what the client sent.
    pub fn public_message(&self) -> std::borrow::Cow<'_, str> {
        match self {
            GatewayError::BadGateway { .. } => {
                "the upstream could not be reached or did not answer properly".into()
            }
            GatewayError::NoHealthyUpstream { .. } => "no healthy target is available".into(),
            GatewayError::UpstreamTimeout { timeout, .. } => {
                format!("the upstream did not answer within the {timeout}").into()
            }
            other => other.to_string().into(),
        }
    }

    /// The JSON error response. A refused body may still be on the wire,
    /// so those responses also close the connection.
    ///
    /// The detail the response leaves out is logged here, with the request
    /// id: at WARN when the upstream failed, at DEBUG when the client sent
    /// something refused (those are the client's to fix, and a flood of
    /// them must not flood the log).
    pub fn into_response(self, request_id: &HeaderValue) -> Response<Full> {
        let rid = request_id.to_str().unwrap_or_default();
        if self.source() == Source::Upstream {
            tracing::warn!(request_id = rid, code = self.code(), error = %self, "upstream request failed");
        } else {
            tracing::debug!(request_id = rid, code = self.code(), error = %self, "request refused");
        }
        let close = matches!(
            self,
            GatewayError::PayloadTooLarge { .. }
                | GatewayError::RequestTimeout
                | GatewayError::NotImplemented(_)
        );
        let mut r = error_response(
            self.status(),
            self.code(),
            &self.public_message(),
            request_id,
        );
        if close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<ClientBodyError> for GatewayError {
    fn from(e: ClientBodyError) -> Self {
        match e {
            ClientBodyError::TooLarge { limit } => GatewayError::PayloadTooLarge { limit },
            ClientBodyError::Timeout => GatewayError::RequestTimeout,
            ClientBodyError::Unreadable => {
                GatewayError::BadRequest("the request body could not be read".into())
            }
        }
    }
}

/// Builds the JSON error response for any status and code.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Full> {
    let body = serde_json::json!({
        "error": {
            "status": status.as_u16(),
            "code": code,
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        }
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(crate::headers::X_REQUEST_ID, request_id.clone());
    resp
}

/// An error with its sources, `outer: inner: …`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client reads of an upstream failure names no upstream, no
    /// target and no library text; the log's text has them all.
    #[tokio::test]
    async fn upstream_failures_tell_the_client_nothing_internal() {
        use http_body_util::BodyExt;
        let secret = ["users-v2", "10.0.3.7:8080", "Connection refused"];
        let reason = "connect to 10.0.3.7:8080 failed: tcp connect error: Connection refused";
        for e in [
            GatewayError::BadGateway {
                upstream: "users-v2".into(),
                reason: reason.into(),
            },
            GatewayError::NoHealthyUpstream {
                upstream: "users-v2".into(),
            },
            GatewayError::UpstreamTimeout {
                upstream: "users-v2".into(),
                timeout: "read timeout 5s".into(),
            },
        ] {
            let rid = HeaderValue::from_static("rid-1");
            let public = e.public_message().into_owned();
            let logged = e.to_string();
            assert!(logged.contains("users-v2"), "{logged}");
            let resp = e.into_response(&rid);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            for s in secret {
                assert!(!body.contains(s), "{body} leaks {s}");
            }
            assert!(body.contains(&public) && body.contains("rid-1"), "{body}");
        }
    }
}
