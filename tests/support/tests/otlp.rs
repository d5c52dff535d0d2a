//! The OTLP receiver, driven by hand-made export requests over real sockets.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message;
use tokio::io::AsyncReadExt;
use weir_testsupport::{AttrValue, OtlpReceiver, ReceiverKind, SpanKind, SpanStatus, http_client};

const WAIT: Duration = Duration::from_secs(10);

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn export_request(name: &str) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: (1..=16).collect(),
        span_id: vec![0xab; 8],
        parent_span_id: vec![0xcd; 8],
        name: name.into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: vec![
            kv(
                "http.request.method",
                any_value::Value::StringValue("GET".into()),
            ),
            kv("http.response.status_code", any_value::Value::IntValue(503)),
            kv("flag", any_value::Value::BoolValue(true)),
        ],
        status: Some(Status {
            message: "boom".into(),
            code: status::StatusCode::Error as i32,
        }),
        flags: 1,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("svc".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "scope".into(),
                    ..Default::default()
                }),
                spans: vec![span],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn check_span(receiver: &OtlpReceiver, name: &str) {
    let spans = receiver.spans();
    let span = spans
        .iter()
        .find(|s| s.name == name)
        .expect("span received");
    assert_eq!(span.trace_id, "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(span.span_id, "abababababababab");
    assert_eq!(span.parent_span_id.as_deref(), Some("cdcdcdcdcdcdcdcd"));
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.status, SpanStatus::Error);
    assert_eq!(span.status_message, "boom");
    assert_eq!(span.str_attr("http.request.method"), Some("GET"));
    assert_eq!(span.int_attr("http.response.status_code"), Some(503));
    assert_eq!(span.attributes["flag"], AttrValue::Bool(true));
    assert_eq!(span.resource_str("service.name"), Some("svc"));
    assert_eq!(span.scope, "scope");
    assert_eq!(span.flags, 1);
}

async fn grpc_client(receiver: &OtlpReceiver) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(receiver.endpoint())
        .await
        .expect("connect to the receiver")
}

async fn post(receiver: &OtlpReceiver, body: Vec<u8>, content_type: &str) -> reqwest::Response {
    http_client()
        .post(receiver.traces_url())
        .header("content-type", content_type)
        .header("x-api-key", "k")
        .body(body)
        .send()
        .await
        .expect("post to the receiver")
}

#[tokio::test]
async fn grpc_export_is_stored() {
    let receiver = OtlpReceiver::grpc().await;
    assert_eq!(receiver.protocol(), ReceiverKind::Grpc);
    let mut client = grpc_client(&receiver).await;
    let mut req = tonic::Request::new(export_request("via-grpc"));
    req.metadata_mut().insert("x-api-key", "k".parse().unwrap());
    client.export(req).await.expect("export accepted");
    let spans = receiver.wait_for_spans(1, WAIT).await;
    assert_eq!(spans.len(), 1);
    check_span(&receiver, "via-grpc");
    assert_eq!(receiver.request_headers()[0]["x-api-key"], "k");
    assert_eq!(receiver.export_requests(), 1);

    receiver.clear();
    assert!(receiver.spans().is_empty());
}

#[tokio::test]
async fn http_export_is_stored() {
    let receiver = OtlpReceiver::http().await;
    let response = post(
        &receiver,
        export_request("via-http").encode_to_vec(),
        "application/x-protobuf",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    receiver.wait_for_spans(1, WAIT).await;
    check_span(&receiver, "via-http");
    assert_eq!(receiver.request_headers()[0]["x-api-key"], "k");
}

#[tokio::test]
async fn http_rejects_what_is_not_an_export() {
    let receiver = OtlpReceiver::http().await;
    let client = http_client();
    let wrong_path = client
        .post(format!("{}/v1/logs", receiver.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_path.status(), 404);
    let wrong_method = client.get(receiver.traces_url()).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    let json = post(&receiver, b"{}".to_vec(), "application/json").await;
    assert_eq!(json.status(), 415);
    let garbage = post(&receiver, vec![0xff; 10], "application/x-protobuf").await;
    assert_eq!(garbage.status(), 400);
    assert!(receiver.spans().is_empty());
}

#[tokio::test]
async fn stalling_takes_requests_and_never_answers() {
    let receiver = OtlpReceiver::http().await;
    receiver.set_stalling(true);
    let body = export_request("stalled").encode_to_vec();
    let stalled = http_client()
        .post(receiver.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(stalled.expect_err("no answer").is_timeout());
    assert_eq!(receiver.export_requests(), 1);
    assert!(receiver.spans().is_empty());

    receiver.set_stalling(false);
    let response = post(&receiver, body, "application/x-protobuf").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn stalling_grpc_never_answers() {
    let receiver = OtlpReceiver::grpc().await;
    receiver.set_stalling(true);
    let mut client = grpc_client(&receiver).await;
    let call = client.export(export_request("stalled"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err()
    );
    receiver.set_stalling(false);
    client
        .export(export_request("later"))
        .await
        .expect("answered again");
}

#[tokio::test]
async fn stop_refuses_connections() {
    let receiver = OtlpReceiver::grpc().await;
    let addr = receiver.addr();
    assert!(receiver.is_running());
    receiver.stop().await;
    assert!(!receiver.is_running());
    let err = tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("the port is closed");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn stop_ends_a_stalled_request() {
    let receiver = OtlpReceiver::http().await;
    receiver.set_stalling(true);
    let url = receiver.traces_url();
    let call = tokio::spawn(async move {
        http_client()
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(export_request("x").encode_to_vec())
            .send()
            .await
    });
    weir_testsupport::wait_until("the request to arrive", WAIT, || async {
        receiver.export_requests() == 1
    })
    .await;
    receiver.stop().await;
    let result = tokio::time::timeout(WAIT, call)
        .await
        .expect("the call ends")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn silent_accepts_and_says_nothing() {
    let receiver = OtlpReceiver::silent().await;
    let mut stream = tokio::net::TcpStream::connect(receiver.addr())
        .await
        .expect("accepted");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    assert!(read.is_err(), "the receiver said something: {read:?}");
    receiver.stop().await;
    // Stopping closes the connections it held.
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "3 spans at the otlp receiver")]
async fn waiting_for_spans_names_what_was_missing() {
    let receiver = OtlpReceiver::grpc().await;
    receiver.wait_for_spans(3, Duration::from_secs(1)).await;
}
