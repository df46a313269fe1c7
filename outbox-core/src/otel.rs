//! Trace context (feature `otel`): a message carries the OpenTelemetry context it was enqueued in, as
//! W3C `traceparent` / `tracestate` headers, so a consumer's span joins the trace of the request
//! that wrote the row, not of whatever batch carried it.
//!
//! - At enqueue ([`NewMessage::into_parts`](crate::NewMessage::into_parts), which every store calls)
//!   the current context ([`opentelemetry::Context::current`]) is written into the message's headers,
//!   unless they hold a `traceparent` already. With `tracing-opentelemetry`, attach the span's context
//!   first: `let _guard = tracing::Span::current().context().attach();`.
//! - The relay starts one producer span per batch through the global tracer provider, named
//!   `publish {topic}` (or `publish` for a batch of several topics), with a link to each message's
//!   creation context and the OpenTelemetry messaging attributes.
//! - The headers go to the broker with the message; receivers rebuild the context with [`extract`].

use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};

use crate::message::{Headers, Message};

/// The W3C trace-context header with the trace and span ids.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace-context header with vendor state.
pub const TRACESTATE: &str = "tracestate";

/// Writes the current OpenTelemetry context into `headers`, unless there is none or they already
/// carry one.
pub(crate) fn inject_current(headers: &mut Headers) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    let context = Context::current();
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return;
    }
    headers.insert(
        TRACEPARENT.to_owned(),
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8()),
    );
    let state = span_context.trace_state().header();
    if !state.is_empty() {
        headers.insert(TRACESTATE.to_owned(), state);
    }
}

/// The creation context a message carries in its headers, if it has a valid one.
pub fn extract(headers: &Headers) -> Option<SpanContext> {
    let mut parts = headers.get(TRACEPARENT)?.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let state = headers.get(TRACESTATE).and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
    let context = SpanContext::new(trace_id, span_id, flags, true, state);
    context.is_valid().then_some(context)
}

/// Starts the producer span of one batch, linked to each message's creation context.
pub(crate) fn publish_span(batch: &[Message]) -> BoxedSpan {
    let first = batch.first().map(|m| m.topic.as_str());
    let single = first.filter(|topic| batch.iter().all(|m| m.topic == *topic));
    let name = single.map_or_else(|| "publish".to_owned(), |topic| format!("publish {topic}"));
    let links: Vec<Link> = batch
        .iter()
        .filter_map(|m| {
            extract(&m.headers)
                .map(|context| Link::new(context, vec![KeyValue::new("messaging.message.id", m.id.to_string())], 0))
        })
        .collect();
    let mut attributes = vec![
        KeyValue::new("messaging.system", "outbox"),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.operation.name", "publish"),
        KeyValue::new("messaging.batch.message_count", batch.len() as i64),
    ];
    if let Some(topic) = single {
        attributes.push(KeyValue::new("messaging.destination.name", topic.to_owned()));
    }
    global::tracer("outbox")
        .span_builder(name)
        .with_kind(SpanKind::Producer)
        .with_links(links)
        .with_attributes(attributes)
        .start(&global::tracer("outbox"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_ignored() {
        let mut headers = Headers::new();
        headers.insert(TRACEPARENT.into(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        headers.insert(TRACESTATE.into(), "vendor=value".into());
        let context = extract(&headers).expect("a valid traceparent");
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(context.trace_state().header(), "vendor=value");
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            headers.insert(TRACEPARENT.into(), bad.into());
            assert!(extract(&headers).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn nothing_is_injected_without_a_current_context() {
        let mut headers = Headers::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
    }
}
