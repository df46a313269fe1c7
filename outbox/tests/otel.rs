//! Trace context end to end: a message enqueued inside a span carries that span's context to the
//! broker, and the relay's publish span links back to it (PostgreSQL -> Kafka, in-memory exporter).
#![cfg(all(feature = "otel", feature = "postgres", feature = "kafka", feature = "test-util"))]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use outbox::kafka::{read_back, KafkaOptions, KafkaPublisher};
use outbox::postgres::PostgresStore;
use outbox::prelude::*;
use outbox::StoreOptions;
use outbox_testkit::env::{backend, unique_name};

#[tokio::test]
async fn the_enqueue_context_reaches_the_broker_and_the_publish_span_links_to_it() {
    let (Some(url), Some(brokers)) =
        (backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL"), backend("OUTBOX_TEST_KAFKA_BROKERS", "Kafka"))
    else {
        return;
    };
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let prefix = unique_name("otel");
    let store =
        PostgresStore::connect_with(&url, StoreOptions::default().table_prefix(&prefix).unwrap()).await.unwrap();
    store.migrate().await.unwrap();
    let topic = unique_name("otel-orders");

    // The request that writes the row: its span is the current context at enqueue.
    let span = provider.tracer("app").start("place order");
    let request = Context::current_with_span(span);
    let trace_id = request.span().span_context().trace_id();
    {
        let _attached = request.clone().attach();
        let mut tx = store.pool().begin().await.unwrap();
        store.enqueue(&mut *tx, NewMessage::new(&topic, "order 1")).await.unwrap();
        tx.commit().await.unwrap();
    }
    request.span().end();

    let publisher = KafkaPublisher::new(KafkaOptions::new(&brokers)).unwrap();
    let relay = Relay::builder(store.clone(), publisher).build().unwrap();
    assert_eq!(relay.dispatch_once().await.unwrap(), 1);
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let enqueue = spans.iter().find(|s| s.name == "place order").expect("the request's span");
    let publish = spans.iter().find(|s| s.name == format!("publish {topic}")).expect("the relay's publish span");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_ne!(publish.span_context.trace_id(), trace_id, "the publish span is not a child of the request");
    let linked: Vec<_> = publish.links.iter().map(|l| l.span_context.clone()).collect();
    assert!(
        linked.iter().any(|c| c.trace_id() == trace_id && c.span_id() == enqueue.span_context.span_id()),
        "the publish span links to the request's span: {linked:?}"
    );

    let (brokers, read_topic) = (brokers.clone(), topic.clone());
    let received = tokio::task::spawn_blocking(move || read_back(&brokers, &read_topic, 1, Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let traceparent = received[0].headers.get("traceparent").expect("a traceparent header at the broker");
    assert!(traceparent.contains(&trace_id.to_string()), "{traceparent} carries the request's trace id {trace_id}");
}
