#!/usr/bin/env python3
"""Renders outbox-bench JSON files (--json) as the markdown table of docs/benchmarks.md.

    python3 scripts/bench-table.py results/*.json
"""
import json
import sys

ROWS = [
    ("raw_broker_msgs_per_s", "raw broker, publisher alone (msg/s)", "{:,.0f}"),
    ("raw_database_rows_per_s", "raw database, claim + acknowledge alone (rows/s)", "{:,.0f}"),
    ("relay_msgs_per_s", "relay, draining the backlog (msg/s)", "{:,.0f}"),
    ("relay_ratio", "relay / min(raw broker, raw database)", "{:.2f}x"),
    ("raw_broker_latency_p99_ms", "raw broker p99 at 1,000 msg/s, one message per publish (ms)", "{:.1f}"),
    ("raw_broker_latency_loaded_p99_ms", "the same while the database commits 1,000 tx/s (ms)", "{:.1f}"),
    ("claim_latency_notify_p50_ms", "commit -> claimed p50 at 1,000 msg/s, notifications (ms)", "{:.1f}"),
    ("claim_latency_notify_p99_ms", "commit -> claimed p99, notifications (ms)", "{:.1f}"),
    ("latency_notify_p50_ms", "commit -> ack p50 at 1,000 msg/s, notifications (ms)", "{:.1f}"),
    ("latency_notify_p99_ms", "commit -> ack p99, notifications (ms)", "{:.1f}"),
    ("latency_notify_max_ms", "commit -> ack max, notifications (ms)", "{:.1f}"),
    ("claims_per_message_notify", "claim statements per message at 1,000 msg/s, notifications", "{:.2f}"),
    ("latency_poll_p99_ms", "commit -> ack p99, polling only (ms)", "{:.1f}"),
    ("tx_plain_p50_ms", "one-row business transaction p50 (ms)", "{:.2f}"),
    ("tx_outbox_p50_ms", "the same plus one outbox message p50 (ms)", "{:.2f}"),
    ("tx_outbox_10_p50_ms", "the same plus 10 outbox messages, one enqueue_batch, p50 (ms)", "{:.2f}"),
    ("tx_round_trip_p50_ms", "the same plus a bare SELECT 1 instead p50 (ms)", "{:.2f}"),
    ("enqueue_overhead_pct", "enqueue overhead", "{:.0f}%"),
    ("round_trip_overhead_pct", "overhead of any second statement (SELECT 1)", "{:.0f}%"),
    ("tx_outbox_one_statement_p50_ms", "the row and the message in one statement (execute_with) p50 (ms)", "{:.2f}"),
    ("enqueue_one_statement_overhead_pct", "enqueue overhead with execute_with", "{:.0f}%"),
    ("enqueue_listening_connections", "connections listening in the database during the enqueue test", "{:.0f}"),
    ("producers_business_tx_per_s", "8 producers: one-row business transactions (tx/s)", "{:,.0f}"),
    ("producers_outbox_tx_per_s", "8 producers: the same plus one outbox message (tx/s)", "{:,.0f}"),
    ("producers_outbox_without_notifications_tx_per_s", "the same without enqueue notifications (tx/s)", "{:,.0f}"),
    ("claim_p50_ms_fresh", "claim 256 of 5,000 pending p50 (ms)", "{:.2f}"),
    ("claim_p50_ms_old_rows", "the same with 1,000,000 old rows p50 (ms)", "{:.2f}"),
    ("claim_cost_ratio", "claim cost ratio (old rows / fresh)", "{:.2f}x"),
    ("idle_queries_per_s", "idle relay, queries per second", "{:.2f}"),
]



def column(r):
    name = f"{r['store']} -> {r['publisher']}"
    if r.get("amqp_queue"):
        name += f" ({r['amqp_queue']} queue)"
    extras = [f"{r['keys']} keys" if r.get("keys") else "", f"{r['relays']} relays" if r.get("relays", 1) > 1 else ""]
    extras = [e for e in extras if e]
    return name + (f" ({', '.join(extras)})" if extras else "")


runs = [json.load(open(path)) for path in sys.argv[1:]]
header = ["figure"] + [column(r) for r in runs]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for key, label, fmt in ROWS:
    cells = [fmt.format(r["results"][key]) if key in r["results"] else "–" for r in runs]
    if any(c != "–" for c in cells):
        print("| " + " | ".join([label] + cells) + " |")
