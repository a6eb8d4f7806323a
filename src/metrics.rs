//! Prometheus metrics: one registry per server instance (so tests can run
//! several servers in one process), rendered as text at `/metrics`.

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub rooms: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub messages_in: Counter<u64, AtomicU64>,
    pub messages_out: Counter<u64, AtomicU64>,
    pub slow_consumers: Counter<u64, AtomicU64>,
    /// 1 while Redis answers this node (many nodes only).
    pub redis_up: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub cluster_nodes: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub dead_nodes: Counter<u64, AtomicU64>,
    pub adapter_errors: Counter<u64, AtomicU64>,
    /// Webhook requests the receiver accepted (2xx), first try or retry.
    pub webhooks_sent: Counter<u64, AtomicU64>,
    /// Webhook requests given up (retry window over, or too many retrying).
    pub webhooks_failed: Counter<u64, AtomicU64>,
    pub webhooks_retried: Counter<u64, AtomicU64>,
    /// Webhook events dropped because a URL's queue was full.
    pub webhooks_dropped: Counter<u64, AtomicU64>,
    errors: Family<CodeLabel, Counter>,
    store_seconds: Family<OpLabel, Histogram>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let connections = Gauge::default();
        let rooms = Gauge::default();
        let messages_in = Counter::default();
        let messages_out = Counter::default();
        let slow_consumers = Counter::default();
        let redis_up = Gauge::default();
        let cluster_nodes = Gauge::default();
        let dead_nodes = Counter::default();
        let adapter_errors = Counter::default();
        let webhooks_sent = Counter::default();
        let webhooks_failed = Counter::default();
        let webhooks_retried = Counter::default();
        let webhooks_dropped = Counter::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let store_seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0])
        });
        registry.register("connections", "Connected Socket.IO sockets", connections.clone());
        registry.register("rooms", "Rooms with at least one member on this node", rooms.clone());
        registry.register(
            "messages_in",
            "Chat messages stored (new, not retries)",
            messages_in.clone(),
        );
        registry.register("messages_out", "Events delivered to sockets", messages_out.clone());
        registry.register(
            "slow_consumer_disconnects",
            "Sockets disconnected because their send buffer was full",
            slow_consumers.clone(),
        );
        registry.register(
            "redis_up",
            "1 while Redis answers this node's heartbeats, 0 when it does not (many nodes only)",
            redis_up.clone(),
        );
        registry.register(
            "cluster_nodes",
            "Nodes with a live heartbeat in Redis, as last seen by this node",
            cluster_nodes.clone(),
        );
        registry.register(
            "dead_nodes",
            "Nodes this node found silent and reaped (their users taken offline)",
            dead_nodes.clone(),
        );
        registry.register(
            "adapter_errors",
            "Broadcasts or room changes that could not be handed to the other nodes, or were lost on the way in",
            adapter_errors.clone(),
        );
        registry.register(
            "webhooks_sent",
            "Webhook requests accepted by the receiver (2xx)",
            webhooks_sent.clone(),
        );
        registry.register(
            "webhooks_failed",
            "Webhook requests given up after retrying",
            webhooks_failed.clone(),
        );
        registry.register("webhooks_retried", "Webhook request retries", webhooks_retried.clone());
        registry.register(
            "webhooks_dropped",
            "Webhook events dropped because the queue was full",
            webhooks_dropped.clone(),
        );
        registry.register("errors", "Errors answered to clients, by code", errors.clone());
        registry.register(
            "store_seconds",
            "Store call latency by operation",
            store_seconds.clone(),
        );
        Self {
            registry,
            connections,
            rooms,
            messages_in,
            messages_out,
            slow_consumers,
            redis_up,
            cluster_nodes,
            dead_nodes,
            adapter_errors,
            webhooks_sent,
            webhooks_failed,
            webhooks_retried,
            webhooks_dropped,
            errors,
            store_seconds,
        }
    }

    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn observe_store(&self, op: &'static str, elapsed: Duration) {
        self.store_seconds
            .get_or_create(&OpLabel { op })
            .observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
