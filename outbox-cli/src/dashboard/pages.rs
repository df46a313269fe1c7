//! The dashboard's pages, rendered on the server (maud escapes every value it prints).

use std::collections::{HashMap, VecDeque};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use outbox::{BlockedKey, DeadLetter, DeadLetterPage, MessageFilter, MessagePage, MessageState};

use super::{relay_rate, Dashboard, DeadSearch, Sample, Selection};

const CSS: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
nav{background:#1d2330;color:#cfd5e1;padding:.6em 1.2em}nav a{color:#fff;margin-right:.9em;text-decoration:none}
nav .badge{background:#b7791f;color:#fff;border-radius:3px;padding:0 .4em;margin-left:1em}
main{padding:1em 1.4em}h1{font-size:1.35em;margin:.2em 0 .8em}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:1em;min-width:330px}
.card h2{margin:0 0 .5em;font-size:1.1em}dl{display:grid;grid-template-columns:auto auto;gap:.15em 1.2em;margin:0 0 .6em}
dl.detail{grid-template-columns:7em auto}dl.detail dd{text-align:left}
dt{color:#5b6475}dd{margin:0;text-align:right;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;background:#fff;width:100%;margin:.5em 0}th,td{border:1px solid #dde1e8;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef0f4}td.num{text-align:right}code,pre{font-family:ui-monospace,monospace;font-size:12.5px}
pre{background:#fff;border:1px solid #dde1e8;padding:.7em;overflow:auto;max-height:30em}
.error{color:#9b2c2c;white-space:pre-wrap;word-break:break-word}form.inline{display:inline}
.tabs a{margin-right:1em}.tabs a.on{font-weight:bold;text-decoration:none;color:#1d2330}
button{margin:.2em .4em .2em 0}.muted{color:#5b6475}svg{background:#fff;border:1px solid #dde1e8}
";

fn layout(dashboard: &Dashboard, title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content="10"; }
                title { (title) " · outbox" }
                style { (PreEscaped(CSS)) }
            }
            body {
                nav {
                    a href="/" { "Overview" }
                    a href="/relays" { "Relays" }
                    @for p in &dashboard.pipelines {
                        span.muted { (p.name) ": " }
                        a href=(format!("/pipelines/{}/messages", p.name)) { "messages" }
                        a href=(format!("/pipelines/{}/blocked", p.name)) { "blocked keys" }
                        a href=(format!("/pipelines/{}/dead", p.name)) { "dead letters" }
                    }
                    @if dashboard.access.read_only { span.badge { "read-only" } }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page that says what went wrong.
pub(super) fn problem(status: StatusCode, reason: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status.as_u16()) " · outbox" } style { (PreEscaped(CSS)) } }
            body { main {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or_default()) }
                p.error id="reason" { (reason) }
                p { a href="/" { "Overview" } }
            } }
        }
    }
}

fn age(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 5400.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86_400.0),
    }
}

fn since(at: DateTime<Utc>) -> String {
    age((Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0)
}

fn when(at: DateTime<Utc>) -> String {
    let seconds = (at - Utc::now()).num_milliseconds() as f64 / 1000.0;
    if seconds > 0.0 {
        format!("in {}", age(seconds))
    } else {
        format!("{} ago", age(-seconds))
    }
}

/// A line chart of `values` (oldest first) as inline SVG.
fn chart(label: &str, values: &[f64]) -> Markup {
    const W: f64 = 320.0;
    const H: f64 = 64.0;
    let top = values.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let step = if values.len() > 1 { W / (values.len() - 1) as f64 } else { W };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, H - 4.0 - v / top * (H - 8.0)))
        .collect();
    html! {
        div {
            span.muted { (label) " (last hour, max " (format!("{top:.0}")) ")" }
            br;
            svg width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) {
                polyline fill="none" stroke="#2b6cb0" stroke-width="1.5" points=(points.join(" ")) {}
                @if values.len() < 30 {
                    @for point in &points {
                        @let (x, y) = point.split_once(',').unwrap_or_default();
                        circle cx=(x) cy=(y) r="2" fill="#2b6cb0" {}
                    }
                }
            }
        }
    }
}

pub(super) fn overview(dashboard: &Dashboard, samples: &HashMap<String, VecDeque<Sample>>) -> Markup {
    let body = html! {
        div.cards {
            @for p in &dashboard.pipelines {
                @let kept = samples.get(&p.name);
                section.card id=(format!("pipeline-{}", p.name)) {
                    h2 { (p.name) }
                    @match kept.and_then(|k| k.back()) {
                        None => p.muted { "no figures yet (the store did not answer)" },
                        Some(last) => {
                            dl {
                                dt { "pending" } dd.pending { (last.stats.pending) }
                                dt { "retrying" } dd.retrying { (last.stats.retrying) }
                                dt { "scheduled" } dd.scheduled { (last.stats.scheduled) }
                                dt { "dead letters" } dd.dead { (last.stats.dead_letters) }
                                dt { "oldest pending" } dd.oldest {
                                    (last.stats.oldest_pending_age.map_or("-".to_owned(), |a| age(a.as_secs_f64())))
                                }
                                dt { "publish rate" } dd.rate { (format!("{:.1}", last.rate)) " msg/s" }
                                dt { "relays alive" } dd.relays { (last.relays.len()) }
                            }
                            @let backlog: Vec<f64> = kept.map(|k| k.iter().map(|s| s.stats.pending as f64).collect()).unwrap_or_default();
                            @let rates: Vec<f64> = kept.map(|k| k.iter().map(|s| s.rate).collect()).unwrap_or_default();
                            (chart("backlog", &backlog))
                            (chart("publish rate (msg/s)", &rates))
                            p.muted { "as of " (since(last.at)) " ago" }
                        }
                    }
                    p {
                        a href=(format!("/pipelines/{}/messages", p.name)) { "messages" } " · "
                        a href=(format!("/pipelines/{}/blocked", p.name)) { "blocked keys" } " · "
                        a href=(format!("/pipelines/{}/dead", p.name)) { "dead letters" }
                    }
                }
            }
        }
    };
    layout(dashboard, "Overview", true, body)
}

pub(super) fn relays(dashboard: &Dashboard, samples: &HashMap<String, VecDeque<Sample>>) -> Markup {
    let body = html! {
        @for p in &dashboard.pipelines {
            @let kept = samples.get(&p.name);
            h2 { (p.name) }
            @match kept.and_then(|k| k.back()) {
                None => p.muted { "no figures yet" },
                Some(last) if last.relays.is_empty() => p.muted { "no relay alive (none heartbeat within 30 s)" },
                Some(last) => table.relays {
                    tr { th { "name" } th { "id" } th { "host" } th { "pid" } th { "started" } th { "last heartbeat" }
                         th { "claims held" } th { "published" } th { "throughput" } }
                    @for r in &last.relays {
                        tr {
                            td { (r.name) } td { code { (r.id) } } td { (r.host) } td.num { (r.pid) }
                            td { (since(r.started_at)) " ago" } td { (since(r.heartbeat_at)) " ago" }
                            td.num { (r.claims_held) } td.num { (r.published) }
                            td.num { (kept.and_then(|k| relay_rate(k, r)).map_or("-".to_owned(), |rate| format!("{rate:.1} msg/s"))) }
                        }
                    }
                }
            }
        }
    };
    layout(dashboard, "Relays", true, body)
}

fn state_name(state: MessageState) -> &'static str {
    match state {
        MessageState::Retrying => "retrying",
        MessageState::Scheduled => "scheduled",
        _ => "pending",
    }
}

pub(super) fn messages(dashboard: &Dashboard, pipeline: &str, filter: &MessageFilter, page: &MessagePage) -> Markup {
    let base = format!("/pipelines/{pipeline}/messages");
    let query = |state: &str, after: Option<String>| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("state", state);
        if let Some(topic) = &filter.topic {
            q.append_pair("topic", topic);
        }
        if let Some(key) = &filter.key {
            q.append_pair("key", key);
        }
        if let Some(after) = after {
            q.append_pair("after", &after);
        }
        format!("{base}?{}", q.finish())
    };
    let current = state_name(filter.state);
    let body = html! {
        p.tabs {
            @for state in ["pending", "retrying", "scheduled"] {
                a class=@if state == current { "on" } href=(query(state, None)) { (state) }
            }
        }
        form method="get" action=(base) {
            input type="hidden" name="state" value=(current);
            label { "topic " input name="topic" value=(filter.topic.clone().unwrap_or_default()); } " "
            label { "key " input name="key" value=(filter.key.clone().unwrap_or_default()); } " "
            button type="submit" { "Filter" }
        }
        table.messages {
            tr { th { "id" } th { "topic" } th { "key" } th { "attempts" } th { "next attempt" } th { "last error" } }
            @for m in &page.items {
                tr {
                    td { code { (m.message.id) } } td { (m.message.topic) } td { (m.message.key.clone().unwrap_or_default()) }
                    td.num { (m.message.attempts) } td { (when(m.available_at)) }
                    td.error { (m.message.last_error.clone().unwrap_or_default()) }
                }
            }
        }
        @if page.items.is_empty() { p.muted { "none" } }
        @if let Some(next) = page.next { p { a.next href=(query(current, Some(next.to_string()))) { "next page" } } }
    };
    layout(dashboard, &format!("{pipeline}: {current} messages"), false, body)
}

pub(super) fn blocked(dashboard: &Dashboard, pipeline: &str, keys: &[BlockedKey]) -> Markup {
    let body = html! {
        p.muted { "Keys whose oldest unpublished message failed: none of the key's later messages is published before it." }
        table.blocked {
            tr { th { "key" } th { "waiting behind" } th { "head message" } th { "topic" } th { "attempts" } th { "next attempt" } th { "error" } }
            @for b in keys {
                tr {
                    td.key { (b.key) } td.num.waiting { (b.waiting) } td { code { (b.head.message.id) } }
                    td { (b.head.message.topic) } td.num { (b.head.message.attempts) } td { (when(b.head.available_at)) }
                    td.error { (b.head.message.last_error.clone().unwrap_or_default()) }
                }
            }
        }
        @if keys.is_empty() { p.muted { "no key is blocked" } }
    };
    layout(dashboard, &format!("{pipeline}: blocked keys"), false, body)
}

fn hidden_search(search: &DeadSearch) -> Markup {
    html! {
        @if let Some(topic) = &search.topic { input type="hidden" name="topic" value=(topic); }
        @if let Some(error) = &search.error { input type="hidden" name="error" value=(error); }
        @if let Some(age) = &search.older_than { input type="hidden" name="older_than" value=(age); }
    }
}

pub(super) fn dead_letters(
    dashboard: &Dashboard,
    pipeline: &str,
    search: &DeadSearch,
    matching: u64,
    page: &DeadLetterPage,
) -> Markup {
    let base = format!("/pipelines/{pipeline}/dead");
    let actions = format!("/pipelines/{pipeline}/dead-actions");
    let writable = !dashboard.access.read_only;
    let body = html! {
        form.search method="get" action=(base) {
            label { "topic " input name="topic" value=(search.topic.clone().unwrap_or_default()); } " "
            label { "error contains " input name="error" value=(search.error.clone().unwrap_or_default()); } " "
            label { "older than " input name="older_than" placeholder="2h" size="6" value=(search.older_than.clone().unwrap_or_default()); } " "
            button type="submit" { "Search" }
        }
        p { span id="matching" { (matching) } " dead letter(s) match" }
        form method="post" action=(actions) id="selected" {
            input type="hidden" name="csrf" value=(dashboard.csrf);
            table.dead {
                tr { @if writable { th {} } th { "id" } th { "topic" } th { "key" } th { "attempts" } th { "parked" } th { "error" } }
                @for d in &page.items {
                    tr {
                        @if writable { td { input type="checkbox" name="ids" value=(d.message.id); } }
                        td { a href=(format!("{base}/{}", d.message.id)) { code { (d.message.id) } } }
                        td { (d.message.topic) } td { (d.message.key.clone().unwrap_or_default()) }
                        td.num { (d.message.attempts) } td { (since(d.dead_at)) " ago" }
                        td.error { (d.error) }
                    }
                }
            }
            @if writable && !page.items.is_empty() {
                button.action type="submit" name="action" value="replay" { "Replay selected" }
                button.action type="submit" name="action" value="purge" { "Purge selected" }
            }
        }
        @if writable && matching > 0 {
            form method="post" action=(actions) id="matching-actions" {
                input type="hidden" name="csrf" value=(dashboard.csrf);
                input type="hidden" name="all_matching" value="1";
                (hidden_search(search))
                button.action type="submit" name="action" value="replay" { "Replay all " (matching) " matching" }
                button.action type="submit" name="action" value="purge" { "Purge all " (matching) " matching" }
            }
        }
        @if let Some(next) = page.next {
            @let query = search.query();
            p { a.next href=(format!("{base}?{query}{}after={next}", if query.is_empty() { "" } else { "&" })) { "next page" } }
        }
    };
    layout(dashboard, &format!("{pipeline}: dead letters"), false, body)
}

/// The payload as pretty JSON, else as text, else as hex.
fn payload(bytes: &[u8]) -> (String, &'static str) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Ok(pretty) = serde_json::to_string_pretty(&value) {
            return (pretty, "JSON");
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), "text"),
        Err(_) => (bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "), "hex"),
    }
}

pub(super) fn dead_letter(dashboard: &Dashboard, pipeline: &str, dead: &DeadLetter) -> Markup {
    let m = &dead.message;
    let (shown, form) = payload(&m.payload);
    let body = html! {
        dl.detail {
            dt { "topic" } dd.topic { (m.topic) }
            dt { "key" } dd { (m.key.clone().unwrap_or_default()) }
            dt { "attempts" } dd.attempts { (m.attempts) }
            dt { "created" } dd { (m.created_at.to_rfc3339()) }
            dt { "parked" } dd { (dead.dead_at.to_rfc3339()) }
        }
        h2 { "Last error" }
        p.error id="error" { (dead.error) }
        h2 { "Headers" }
        table.headers {
            @for (name, value) in &m.headers { tr { th { (name) } td { (value) } } }
        }
        @if m.headers.is_empty() { p.muted { "none" } }
        h2 { "Payload (" (form) ", " (m.payload.len()) " bytes)" }
        pre id="payload" { (shown) }
        @if !dashboard.access.read_only {
            form method="post" action=(format!("/pipelines/{pipeline}/dead-actions")) {
                input type="hidden" name="csrf" value=(dashboard.csrf);
                input type="hidden" name="ids" value=(m.id);
                button.action type="submit" name="action" value="replay" { "Replay" }
                button.action type="submit" name="action" value="purge" { "Purge" }
            }
        }
    };
    layout(dashboard, &format!("{pipeline}: dead letter {}", m.id), false, body)
}

pub(super) fn confirm(dashboard: &Dashboard, pipeline: &str, verb: &str, selection: &Selection, count: u64) -> Markup {
    let body = html! {
        p id="question" { (verb) " " (count) " dead letter(s) of pipeline " (pipeline) "?" }
        form method="post" action=(format!("/pipelines/{pipeline}/dead-actions")) {
            input type="hidden" name="csrf" value=(dashboard.csrf);
            input type="hidden" name="action" value=(verb);
            input type="hidden" name="confirmed" value="1";
            @match selection {
                Selection::Ids(ids) => { @for id in ids { input type="hidden" name="ids" value=(id); } }
                Selection::Matching(search) => { input type="hidden" name="all_matching" value="1"; (hidden_search(search)) }
            }
            button.confirm type="submit" { "Confirm: " (verb) " " (count) }
            " " a href=(format!("/pipelines/{pipeline}/dead")) { "Cancel" }
        }
    };
    layout(dashboard, &format!("{pipeline}: {verb}?"), false, body)
}

pub(super) fn done(dashboard: &Dashboard, pipeline: &str, verb: &str, changed: u64) -> Markup {
    let body = html! {
        p id="done" { (verb) ": " (changed) " dead letter(s) changed" }
        p { a href=(format!("/pipelines/{pipeline}/dead")) { "Dead letters" } }
    };
    layout(dashboard, &format!("{pipeline}: {verb}"), false, body)
}
