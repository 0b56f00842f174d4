//! OpenTelemetry traces, exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set; off otherwise (and with `OTEL_SDK_DISABLED=true`). The exporter
//! reads the standard variables itself: `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf` default, or `http/json`), `..._HEADERS`, `..._TIMEOUT`;
//! the batch processor `OTEL_BSP_*`; the resource `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES`; the sampler `OTEL_TRACES_SAMPLER(_ARG)`.
//!
//! Spans: `ws.connection` (a socket's life, with its close reason),
//! `message.publish` (on the origin node), and `message.deliver` (once per
//! message per delivering node, a child of the publish through the W3C
//! `traceparent` carried in the envelope). None is ever made per recipient.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use roomcast_core::envelope::Envelope;

use crate::config::ConfigError;

/// The node's tracer, or nothing.
#[derive(Debug, Default)]
pub struct Telemetry {
    inner: Option<(SdkTracerProvider, SdkTracer)>,
    node: String,
}

/// A span in progress (a no-op when tracing is off).
/// Boxed: an SDK span is ~300 bytes, and every connection keeps one (a
/// `None` when tracing is off) for its whole life.
pub struct ActiveSpan(Option<Box<opentelemetry_sdk::trace::Span>>);

impl std::fmt::Debug for ActiveSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActiveSpan")
    }
}

impl ActiveSpan {
    /// A span that records nothing.
    pub fn none() -> Self {
        Self(None)
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// The W3C `traceparent` of this span, to carry to other nodes.
    pub fn traceparent(&self) -> Option<String> {
        self.0.as_ref().map(|s| {
            let sc = s.span_context();
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    pub fn end(mut self) {
        if let Some(s) = &mut self.0 {
            s.end();
        }
    }
}

/// Reads a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn remote_parent(traceparent: &str) -> Option<Context> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid()
        .then(|| Context::new().with_remote_span_context(sc))
}

impl Telemetry {
    /// Tracing off.
    pub fn off() -> Arc<Telemetry> {
        Arc::new(Telemetry::default())
    }

    /// From the standard `OTEL_*` environment.
    pub fn from_env(service: &str, node: &str) -> Result<Arc<Telemetry>, ConfigError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let configured = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
        if disabled || !configured {
            return Ok(Arc::new(Telemetry {
                inner: None,
                node: node.to_owned(),
            }));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| ConfigError {
                name: "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                problem: e.to_string(),
            })?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.instance.id", node.to_owned()));
        if var("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("roomcast");
        tracing::info!("exporting traces over OTLP/HTTP");
        Ok(Arc::new(Telemetry {
            inner: Some((provider, tracer)),
            node: node.to_owned(),
        }))
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Option<&Context>,
        start: Option<SystemTime>,
    ) -> ActiveSpan {
        let Some((_, tracer)) = &self.inner else {
            return ActiveSpan(None);
        };
        let mut builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes([KeyValue::new("roomcast.node", self.node.clone())]);
        if let Some(t) = start {
            builder = builder.with_start_time(t);
        }
        let span = match parent {
            Some(cx) => builder.start_with_context(tracer, cx),
            None => builder.start_with_context(tracer, &Context::new()),
        };
        ActiveSpan(Some(Box::new(span)))
    }

    /// A socket's life.
    pub fn connection(&self, room: &str, user: &str) -> ActiveSpan {
        let mut s = self.start("ws.connection", SpanKind::Server, None, None);
        s.set("roomcast.room", room.to_owned());
        s.set("enduser.id", user.to_owned());
        s
    }

    /// Storing and publishing one message on its origin node.
    pub fn publish(&self, room: &str) -> ActiveSpan {
        let mut s = self.start("message.publish", SpanKind::Producer, None, None);
        s.set("roomcast.room", room.to_owned());
        s
    }

    /// One envelope fanned out on this node.
    pub fn delivered(&self, env: &Envelope, targeted: usize, delivered: usize, started: Instant) {
        if !self.enabled() {
            return;
        }
        let Some(parent) = env.trace.as_deref().and_then(remote_parent) else {
            return;
        };
        let start = SystemTime::now().checked_sub(started.elapsed());
        let mut s = self.start("message.deliver", SpanKind::Consumer, Some(&parent), start);
        s.set("roomcast.room", env.room.to_string());
        s.set("roomcast.offset", env.offset as i64);
        s.set("roomcast.origin_node", env.origin_node.to_string());
        s.set("roomcast.recipients", targeted as i64);
        s.set("roomcast.delivered", delivered as i64);
        s.end();
    }

    /// Flushes what is buffered (at exit).
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.inner
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "trace export did not flush");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let cx = remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote() && sc.is_sampled());
        for bad in [
            "",
            "00-abc-def-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(remote_parent(bad).is_none(), "{bad}");
        }
    }
}
