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
    ("latency_notify_p50_ms", "commit -> ack p50 at 1,000 msg/s, notifications (ms)", "{:.1f}"),
    ("latency_notify_p99_ms", "commit -> ack p99, notifications (ms)", "{:.1f}"),
    ("latency_notify_max_ms", "commit -> ack max, notifications (ms)", "{:.1f}"),
    ("latency_poll_p99_ms", "commit -> ack p99, polling only (ms)", "{:.1f}"),
    ("tx_plain_p50_ms", "one-row business transaction p50 (ms)", "{:.2f}"),
    ("tx_outbox_p50_ms", "the same plus one outbox message p50 (ms)", "{:.2f}"),
    ("enqueue_overhead_pct", "enqueue overhead", "{:.0f}%"),
    ("idle_queries_per_s", "idle relay, queries per second", "{:.2f}"),
]

runs = [json.load(open(path)) for path in sys.argv[1:]]
header = ["figure"] + [f"{r['store']} -> {r['publisher']}" + (f" ({r['keys']} keys)" if r.get("keys") else "") for r in runs]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for key, label, fmt in ROWS:
    cells = [fmt.format(r["results"][key]) if key in r["results"] else "–" for r in runs]
    if any(c != "–" for c in cells):
        print("| " + " | ".join([label] + cells) + " |")
