//! The registry, read as data, turned into one OTLP export request.
//!
//! `prometheus-client` encodes the registry into the Prometheus protobuf
//! data model (`io.prometheus.client.MetricFamily`); this maps each family
//! onto an OTLP metric:
//!
//! | Prometheus | OTLP |
//! | --- | --- |
//! | counter | monotonic cumulative `Sum` |
//! | gauge, untyped | `Gauge` |
//! | histogram | cumulative explicit-bucket `Histogram` |
//!
//! Names: the Prometheus family name loses its unit suffix (`_seconds`
//! becomes unit `s`, `_bytes` unit `By`) and its underscores become dots,
//! except `http_server_active_requests`, the semantic conventions'
//! `http.server.active_requests`. Label names `weir_x` become `weir.x`;
//! `http_request_method` and `http_response_status_class` become
//! `http.request.method` and `http.response.status_class`; the others stay.
//! The OpenTelemetry Collector's Prometheus exporter turns every such name
//! back into the one `/metrics` serves (a test checks it), so a dashboard
//! works over either source.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
    self as pm, MetricFamily, MetricType,
};

/// Instrumentation scope of every exported metric, as for spans.
const SCOPE_NAME: &str = "weir";

/// When the points were read and since when they accumulate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Times {
    /// Start of the cumulative series (the process start).
    pub start_unix_nano: u64,
    /// Collection time.
    pub now_unix_nano: u64,
}

/// What one collection turned into, and how many points it holds.
pub(crate) struct Converted {
    pub request: ExportMetricsServiceRequest,
    pub points: usize,
}

/// One export request for `set`.
pub(crate) fn to_request(set: Vec<MetricFamily>, resource: &[KeyValue], times: Times) -> Converted {
    let mut points = 0;
    let metrics: Vec<Metric> = set
        .into_iter()
        .filter_map(|f| family(f, times))
        // A family nothing was recorded in yet has no points to send.
        .filter(|m| point_count(m) > 0)
        .inspect(|m| points += point_count(m))
        .collect();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    Converted { request, points }
}

fn point_count(m: &Metric) -> usize {
    match &m.data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        _ => 0,
    }
}

/// The OTLP name and unit of a Prometheus family name.
pub(crate) fn otel_name(prometheus: &str) -> (String, &'static str) {
    if prometheus == "http_server_active_requests" {
        return ("http.server.active_requests".into(), "{request}");
    }
    let (base, unit) = if let Some(b) = prometheus.strip_suffix("_seconds") {
        (b, "s")
    } else if let Some(b) = prometheus.strip_suffix("_bytes") {
        (b, "By")
    } else {
        (prometheus, "")
    };
    (base.replace('_', "."), unit)
}

/// The OTLP attribute name of a Prometheus label.
pub(crate) fn otel_attribute(label: &str) -> String {
    match label {
        "http_request_method" => "http.request.method".into(),
        "http_response_status_class" => "http.response.status_class".into(),
        l => match l.strip_prefix("weir_") {
            Some(rest) => format!("weir.{rest}"),
            None => l.to_string(),
        },
    }
}

fn family(f: MetricFamily, times: Times) -> Option<Metric> {
    let kind = MetricType::try_from(f.r#type).unwrap_or(MetricType::Untyped);
    // The Prometheus model names counters with their `_total`.
    let base = match kind {
        MetricType::Counter => f.name.strip_suffix("_total").unwrap_or(&f.name),
        _ => &f.name,
    };
    let (name, unit) = otel_name(base);
    let unit = if f.unit.is_empty() {
        unit.to_string()
    } else {
        f.unit
    };
    let data = match kind {
        MetricType::Counter => metric::Data::Sum(Sum {
            data_points: numbers(f.metric, times, kind),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::Gauge | MetricType::Untyped => metric::Data::Gauge(Gauge {
            data_points: numbers(f.metric, times, kind),
        }),
        MetricType::Histogram => metric::Data::Histogram(Histogram {
            data_points: histograms(f.metric, times),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        // The registry holds none of these.
        MetricType::Summary | MetricType::GaugeHistogram => return None,
    };
    Some(Metric {
        name,
        description: f.help,
        unit,
        metadata: Vec::new(),
        data: Some(data),
    })
}

fn attributes(labels: &[pm::LabelPair]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|l| KeyValue {
            key: otel_attribute(&l.name),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(l.value.clone())),
            }),
            key_strindex: 0,
        })
        .collect()
}

fn numbers(metrics: Vec<pm::Metric>, times: Times, kind: MetricType) -> Vec<NumberDataPoint> {
    metrics
        .into_iter()
        .filter_map(|m| {
            let value = match kind {
                MetricType::Counter => m.counter?.value,
                MetricType::Gauge => m.gauge?.value,
                _ => m.untyped?.value,
            };
            Some(NumberDataPoint {
                attributes: attributes(&m.label),
                start_time_unix_nano: if kind == MetricType::Counter {
                    times.start_unix_nano
                } else {
                    0
                },
                time_unix_nano: times.now_unix_nano,
                exemplars: Vec::new(),
                flags: 0,
                value: Some(number_data_point::Value::AsDouble(value)),
            })
        })
        .collect()
}

fn histograms(metrics: Vec<pm::Metric>, times: Times) -> Vec<HistogramDataPoint> {
    metrics
        .into_iter()
        .filter_map(|m| {
            let h = m.histogram?;
            // Prometheus buckets are cumulative and end with `+Inf`; OTLP
            // counts each bucket on its own and leaves `+Inf` implicit.
            let mut bounds = Vec::with_capacity(h.bucket.len());
            let mut counts = Vec::with_capacity(h.bucket.len() + 1);
            let mut below = 0u64;
            for b in &h.bucket {
                if !b.upper_bound.is_finite() {
                    break;
                }
                bounds.push(b.upper_bound);
                counts.push(b.cumulative_count.saturating_sub(below));
                below = b.cumulative_count.max(below);
            }
            counts.push(h.sample_count.saturating_sub(below));
            Some(HistogramDataPoint {
                attributes: attributes(&m.label),
                start_time_unix_nano: times.start_unix_nano,
                time_unix_nano: times.now_unix_nano,
                count: h.sample_count,
                sum: Some(h.sample_sum),
                bucket_counts: counts,
                explicit_bounds: bounds,
                exemplars: Vec::new(),
                flags: 0,
                min: None,
                max: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::MetricsConfig;
    use crate::metrics::{Column, Counter, Histogram, Metrics, as_metric};

    const TIMES: Times = Times {
        start_unix_nano: 1,
        now_unix_nano: 2,
    };

    /// Per request: a counter, its duration and its body bytes.
    type Request = (Counter, Histogram, Counter);

    /// A registry with series of every kind the gateway's catalogue
    /// (`weir_node::metrics`) records, under its names, plus this crate's
    /// own and two registered the way the cluster registers its.
    fn populated() -> Metrics {
        let m = Metrics::new(&MetricsConfig {
            latency_buckets: vec![0.01, 0.1, 1.0],
            ..MetricsConfig::default()
        });
        let b: Arc<[f64]> = m.latency_buckets().into();
        let requests = m.table(
            "http_server_request",
            [
                ("weir_route", true),
                ("http_request_method", false),
                ("http_response_status_class", false),
                ("weir_upstream", true),
            ],
            move || {
                let h = Histogram::new(b.iter().copied());
                (Counter::default(), h, Counter::default())
            },
            vec![
                Column::counter("weir_http_server_requests", "Requests.", |s: &Request| {
                    as_metric(&s.0)
                }),
                Column::histogram(
                    "http_server_request_duration_seconds",
                    "Time.",
                    |s: &Request| as_metric(&s.1),
                ),
                Column::counter(
                    "weir_http_server_request_body_bytes",
                    "In.",
                    |s: &Request| as_metric(&s.2),
                ),
            ],
        );
        for ms in [5, 50, 500, 5000] {
            requests.with(["users", "GET", "2xx", "pool"], |(n, d, bytes)| {
                n.inc();
                d.observe(Duration::from_millis(ms).as_secs_f64());
                bytes.inc_by(10);
            });
        }
        m.latency_histogram("http_client_request_duration_seconds", "Tries.")
            .observe(0.001);
        m.gauge_vec(
            "weir_upstream_target_up",
            "Up.",
            ["weir_upstream", "weir_target"],
        )
        .set(["pool", "127.0.0.1:1"], 0);
        for (name, labels) in [
            ("weir_upstream_retries", ["pool", "connect_error"]),
            ("weir_auth_failures", ["users", "missing"]),
            ("weir_ratelimit_decisions", ["users", "rejected"]),
            ("weir_cache_requests", ["users", "hit"]),
            ("weir_cache_response_body_bytes", ["users", "hit"]),
        ] {
            m.counter_vec(name, "Counted.", ["weir_x", "reason"])
                .inc(labels);
        }
        m.inc_access_log_lines(1);
        m.inc_access_log_dropped();
        m.inc_spans_dropped(1);
        m.set_config_generation(3);
        m.record_config_reload(true);
        m.gauge("weir_cluster_members", "members").set(3);
        m.counter_vec("weir_gossip_messages", "gossip", ["direction"])
            .inc(["in"]);
        m.gauge("http_server_active_requests", "In flight.").set(1);
        m
    }

    fn convert(m: &Metrics) -> Vec<Metric> {
        let set = m.collect().expect("encode");
        let mut req = to_request(set, &[], TIMES).request;
        req.resource_metrics
            .remove(0)
            .scope_metrics
            .remove(0)
            .metrics
    }

    fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} not exported"))
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
        attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn the_request_counter_is_a_monotonic_cumulative_sum_with_attributes() {
        let metrics = convert(&populated());
        let m = find(&metrics, "weir.http.server.requests");
        let Some(metric::Data::Sum(sum)) = &m.data else {
            panic!("{m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let [p] = sum.data_points.as_slice() else {
            panic!("{sum:?}")
        };
        assert_eq!(p.value, Some(number_data_point::Value::AsDouble(4.0)));
        assert_eq!(attr(&p.attributes, "weir.route"), Some("users"));
        assert_eq!(attr(&p.attributes, "weir.upstream"), Some("pool"));
        assert_eq!(attr(&p.attributes, "http.request.method"), Some("GET"));
        assert_eq!(
            attr(&p.attributes, "http.response.status_class"),
            Some("2xx")
        );
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (1, 2));
    }

    #[test]
    fn histograms_keep_their_buckets_sum_and_count() {
        let metrics = convert(&populated());
        let m = find(&metrics, "http.server.request.duration");
        assert_eq!(m.unit, "s");
        let Some(metric::Data::Histogram(h)) = &m.data else {
            panic!("{m:?}")
        };
        let [p] = h.data_points.as_slice() else {
            panic!("{h:?}")
        };
        assert_eq!(p.explicit_bounds, [0.01, 0.1, 1.0]);
        // 5 ms, 50 ms, 500 ms and 5 s: one in each bucket, `+Inf` included.
        assert_eq!(p.bucket_counts, [1, 1, 1, 1]);
        assert_eq!(p.count, 4);
        let sum = p.sum.expect("sum");
        assert!((sum - 5.555).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn every_series_of_the_exposition_is_exported_and_named_back_by_a_collector() {
        let m = populated();
        let text = m.encode_openmetrics();
        let exposed: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect();
        let metrics = convert(&m);
        // The OpenTelemetry Collector's Prometheus naming: dots become
        // underscores, the unit's suffix is added unless the name has it,
        // and monotonic sums get `_total`.
        let named_back: BTreeSet<String> = metrics
            .iter()
            .map(|m| {
                let mut name = m.name.replace('.', "_");
                let suffix = match m.unit.as_str() {
                    "s" => "seconds",
                    "By" => "bytes",
                    _ => "",
                };
                if !suffix.is_empty() && !name.split('_').any(|t| t == suffix) {
                    name = format!("{name}_{suffix}");
                }
                if matches!(&m.data, Some(metric::Data::Sum(s)) if s.is_monotonic) {
                    name.push_str("_total");
                }
                name
            })
            .collect();
        // `# TYPE` names counters without `_total` in OpenMetrics.
        let exposed_full: BTreeSet<String> = exposed
            .iter()
            .map(|n| {
                if text.contains(&format!("# TYPE {n} counter")) {
                    format!("{n}_total")
                } else {
                    n.clone()
                }
            })
            .collect();
        let has_samples = |family: &str| {
            let base = family.strip_suffix("_total").unwrap_or(family);
            text.lines().filter(|l| !l.starts_with('#')).any(|l| {
                let name = l.split(['{', ' ']).next().unwrap_or("");
                ["", "_total", "_bucket", "_sum", "_count", "_created"]
                    .iter()
                    .any(|suffix| name == format!("{base}{suffix}"))
            })
        };
        let with_samples: BTreeSet<String> = exposed_full
            .iter()
            .filter(|n| has_samples(n))
            .cloned()
            .collect();
        assert_eq!(named_back, with_samples);
        for expected in [
            "weir_http_server_requests_total",
            "http_server_request_duration_seconds",
            "http_client_request_duration_seconds",
            "weir_upstream_target_up",
            "weir_upstream_retries_total",
            "weir_auth_failures_total",
            "weir_ratelimit_decisions_total",
            "weir_cache_requests_total",
            "weir_cache_response_body_bytes_total",
            "weir_http_server_request_body_bytes_total",
            "weir_cluster_members",
            "weir_gossip_messages_total",
            "http_server_active_requests",
        ] {
            assert!(named_back.contains(expected), "{expected}: {named_back:?}");
        }
        let labels: BTreeSet<&str> = metrics
            .iter()
            .flat_map(|m| match &m.data {
                Some(metric::Data::Sum(s)) => s
                    .data_points
                    .iter()
                    .flat_map(|p| &p.attributes)
                    .map(|kv| kv.key.as_str())
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        assert!(labels.iter().all(|l| !l.starts_with("weir_")), "{labels:?}");
    }

    #[test]
    fn names_and_attributes() {
        assert_eq!(
            otel_name("http_server_request_duration_seconds"),
            ("http.server.request.duration".into(), "s")
        );
        assert_eq!(
            otel_name("weir_cache_response_body_bytes"),
            ("weir.cache.response.body".into(), "By")
        );
        assert_eq!(
            otel_name("weir_upstream_target_up"),
            ("weir.upstream.target.up".into(), "")
        );
        assert_eq!(otel_attribute("weir_route"), "weir.route");
        assert_eq!(otel_attribute("outcome"), "outcome");
    }
}
