//! The web dashboard (`outbox dashboard`, or `outbox relay --dashboard-addr`): server-rendered pages
//! over the stores' operator queries, a sampler that keeps the last hour of each pipeline's figures,
//! token access, a read-only mode, and CSRF-protected actions.

mod pages;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use outbox::{
    CancellationToken, Cursor, DeadLetterFilter, MessageFilter, MessageId, MessageState, OutboxStats, RelayInfo, Store,
};

use crate::Failure;

/// How long the samples reach back.
const SAMPLES_SPAN: Duration = Duration::from_secs(3600);
/// Rows per page of a listing.
const PAGE: usize = 50;
/// Dead letters changed per statement by a bulk action.
const ACTION_BATCH: usize = 500;
/// Relays heard from within this long are alive (three missed heartbeats).
const RELAY_ALIVE_WITHIN: Duration = Duration::from_secs(30);
/// The cookie that carries the access token.
const TOKEN_COOKIE: &str = "outbox_dashboard_token";

/// How the dashboard is served.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// Every page and action needs this token; without one the dashboard listens on loopback only.
    pub(crate) token: Option<String>,
    /// No actions: hidden on the pages and refused when posted.
    pub(crate) read_only: bool,
    /// How often each pipeline's figures are read for the overview and its charts.
    pub(crate) sample_every: Duration,
}

/// One reading of a pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) at: DateTime<Utc>,
    pub(crate) stats: OutboxStats,
    pub(crate) relays: Vec<RelayInfo>,
    /// Messages published a second since the previous sample, by the relays alive in both.
    pub(crate) rate: f64,
}

/// A pipeline as the dashboard sees it.
pub(crate) struct Pipeline {
    pub(crate) name: String,
    pub(crate) store: Arc<dyn Store>,
}

pub(crate) struct Dashboard {
    pub(crate) pipelines: Vec<Pipeline>,
    pub(crate) samples: Mutex<HashMap<String, VecDeque<Sample>>>,
    pub(crate) access: Access,
    /// The token every form carries back (one per process).
    pub(crate) csrf: String,
}

type Shared = Arc<Dashboard>;

/// A page that says what went wrong, with its status.
pub(crate) struct Problem(StatusCode, String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (self.0, pages::problem(self.0, &self.1)).into_response()
    }
}

fn bad_request(reason: impl Into<String>) -> Problem {
    Problem(StatusCode::BAD_REQUEST, reason.into())
}

fn store_failed(pipeline: &str, e: &outbox::Error) -> Problem {
    Problem(StatusCode::SERVICE_UNAVAILABLE, format!("pipeline {pipeline}: {}", e.report()))
}

/// Starts the dashboard on `addr` over `pipelines` until `shutdown`.
pub(crate) async fn start(
    addr: SocketAddr,
    pipelines: Vec<Pipeline>,
    access: Access,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    if access.sample_every < Duration::from_secs(1) {
        return Err(Failure::Config("--sample-every: at least 1s".into()));
    }
    if access.token.is_none() && !addr.ip().is_loopback() {
        return Err(Failure::Config(format!(
            "dashboard address {addr}: without a token (--token or OUTBOX_DASHBOARD_TOKEN) the dashboard listens on loopback only"
        )));
    }
    for pipeline in &pipelines {
        if pipeline.store.admin().is_none() {
            return Err(Failure::Config(format!("pipeline {}: its store offers no operator queries", pipeline.name)));
        }
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Config(format!("dashboard address {addr}: {e}")))?;
    let csrf = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let dashboard = Arc::new(Dashboard { pipelines, samples: Mutex::new(HashMap::new()), access, csrf });
    tokio::spawn(sampler(dashboard.clone(), shutdown.clone()));
    let app = router(dashboard);
    println!("dashboard on http://{addr}/");
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(e) = served {
            eprintln!("outbox: dashboard: {e}");
        }
    });
    Ok(())
}

fn router(dashboard: Shared) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/relays", get(relays))
        .route("/pipelines/{pipeline}/messages", get(messages))
        .route("/pipelines/{pipeline}/blocked", get(blocked))
        .route("/pipelines/{pipeline}/dead", get(dead_letters))
        .route("/pipelines/{pipeline}/dead/{id}", get(dead_letter))
        .route("/pipelines/{pipeline}/dead-actions", post(dead_action))
        .route("/login", get(login))
        .layer(middleware::from_fn_with_state(dashboard.clone(), guard))
        .with_state(dashboard)
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The token a request carries: `Authorization: Bearer ...` or the dashboard's cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == TOKEN_COOKIE).then(|| value.to_owned())
    })
}

/// Every request but `/login` needs the token when one is configured.
async fn guard(State(dashboard): State<Shared>, request: Request, next: Next) -> Response {
    let Some(token) = &dashboard.access.token else { return next.run(request).await };
    if request.uri().path() == "/login" {
        return next.run(request).await;
    }
    match presented_token(request.headers()) {
        Some(presented) if same(&presented, token) => next.run(request).await,
        Some(_) => Problem(StatusCode::UNAUTHORIZED, "wrong token".into()).into_response(),
        None => Problem(StatusCode::UNAUTHORIZED, "this dashboard needs its token: open /login?token=...".into())
            .into_response(),
    }
}

/// `/login?token=...`: a right token is kept in a cookie for the session.
async fn login(State(dashboard): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let params = Params::parse(query.as_deref());
    match (&dashboard.access.token, params.get("token")) {
        (None, _) => Redirect::to("/").into_response(),
        (Some(token), Some(given)) if same(given, token) => (
            [(header::SET_COOKIE, format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"))],
            Redirect::to("/"),
        )
            .into_response(),
        _ => Problem(StatusCode::UNAUTHORIZED, "wrong token".into()).into_response(),
    }
}

/// Reads every pipeline's figures now, then every `sample_every` until `shutdown`.
async fn sampler(dashboard: Shared, shutdown: CancellationToken) {
    sample_all(&dashboard).await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(dashboard.access.sample_every) => sample_all(&dashboard).await,
        }
    }
}

async fn sample_all(dashboard: &Dashboard) {
    for pipeline in &dashboard.pipelines {
        let Ok(stats) = pipeline.store.stats().await else { continue };
        let relays = match pipeline.store.registry() {
            Some(registry) => registry.relays(RELAY_ALIVE_WITHIN).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let at = Utc::now();
        let mut samples = dashboard.samples.lock().unwrap_or_else(|p| p.into_inner());
        let kept = samples.entry(pipeline.name.clone()).or_default();
        let rate = kept.back().map_or(0.0, |previous| publish_rate(previous, &relays, at));
        kept.push_back(Sample { at, stats, relays, rate });
        let kept_from = at - chrono::Duration::from_std(SAMPLES_SPAN).unwrap_or_default();
        while kept.front().is_some_and(|oldest| oldest.at < kept_from) {
            kept.pop_front();
        }
    }
}

/// Messages a second published between `previous` and now by the relays listed in both.
fn publish_rate(previous: &Sample, relays: &[RelayInfo], at: DateTime<Utc>) -> f64 {
    let seconds = (at - previous.at).num_milliseconds() as f64 / 1000.0;
    if seconds <= 0.0 {
        return 0.0;
    }
    let published: u64 = relays
        .iter()
        .filter_map(|relay| {
            let before = previous.relays.iter().find(|r| r.id == relay.id)?;
            Some(relay.published.saturating_sub(before.published))
        })
        .sum();
    published as f64 / seconds
}

/// A relay's messages a second over the samples that list it.
pub(crate) fn relay_rate(samples: &VecDeque<Sample>, relay: &RelayInfo) -> Option<f64> {
    let mut seen = samples.iter().filter_map(|s| s.relays.iter().find(|r| r.id == relay.id).map(|r| (s.at, r)));
    let (first_at, first) = seen.next()?;
    let (last_at, last) = seen.next_back()?;
    let seconds = (last_at - first_at).num_milliseconds() as f64 / 1000.0;
    (seconds > 0.0).then(|| last.published.saturating_sub(first.published) as f64 / seconds)
}

/// Query or form parameters, repeated names kept.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn parse(text: Option<&str>) -> Self {
        Self::from_bytes(text.unwrap_or_default().as_bytes())
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(bytes).into_owned().collect())
    }

    /// The value of `name`, if given and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn cursor(&self) -> Result<Option<Cursor>, Problem> {
        self.get("after")
            .map(|text| text.parse().map_err(|_| bad_request(format!("after={text:?} is not a page cursor"))))
            .transpose()
    }
}

/// The dead-letter search a page or form names.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeadSearch {
    pub(crate) topic: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) older_than: Option<String>,
}

impl DeadSearch {
    fn from_params(params: &Params) -> Result<(Self, DeadLetterFilter), Problem> {
        let search = Self {
            topic: params.get("topic").map(str::to_owned),
            error: params.get("error").map(str::to_owned),
            older_than: params.get("older_than").map(str::to_owned),
        };
        let mut filter = DeadLetterFilter::new();
        if let Some(topic) = &search.topic {
            filter = filter.topic(topic);
        }
        if let Some(error) = &search.error {
            filter = filter.error_contains(error);
        }
        if let Some(age) = &search.older_than {
            let age = crate::commands::parse_age(age).map_err(|e| bad_request(format!("older_than: {e}")))?;
            let age = chrono::Duration::from_std(age).map_err(|_| bad_request("older_than: too long"))?;
            filter = filter.dead_before(Utc::now().checked_sub_signed(age).unwrap_or(DateTime::<Utc>::MIN_UTC));
        }
        Ok((search, filter))
    }

    /// The search as query parameters.
    pub(crate) fn query(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [("topic", &self.topic), ("error", &self.error), ("older_than", &self.older_than)] {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }
}

fn pipeline<'d>(dashboard: &'d Dashboard, name: &str) -> Result<&'d Pipeline, Problem> {
    dashboard
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Problem(StatusCode::NOT_FOUND, format!("no pipeline named {name:?}")))
}

fn admin(pipeline: &Pipeline) -> Result<&dyn outbox::Admin, Problem> {
    pipeline.store.admin().ok_or_else(|| {
        Problem(
            StatusCode::NOT_IMPLEMENTED,
            format!("pipeline {}: its store offers no operator queries", pipeline.name),
        )
    })
}

async fn overview(State(dashboard): State<Shared>) -> Response {
    let samples = dashboard.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    pages::overview(&dashboard, &samples).into_response()
}

async fn relays(State(dashboard): State<Shared>) -> Response {
    let samples = dashboard.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    pages::relays(&dashboard, &samples).into_response()
}

async fn messages(
    State(dashboard): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let pipeline = pipeline(&dashboard, &name)?;
    let params = Params::parse(query.as_deref());
    let state = match params.get("state").unwrap_or("pending") {
        "pending" => MessageState::Pending,
        "retrying" => MessageState::Retrying,
        "scheduled" => MessageState::Scheduled,
        other => return Err(bad_request(format!("state={other:?}: expected pending, retrying or scheduled"))),
    };
    let mut filter = MessageFilter::new(state);
    if let Some(topic) = params.get("topic") {
        filter = filter.topic(topic);
    }
    if let Some(key) = params.get("key") {
        filter = filter.key(key);
    }
    let page =
        admin(pipeline)?.search_messages(&filter, params.cursor()?, PAGE).await.map_err(|e| store_failed(&name, &e))?;
    Ok(pages::messages(&dashboard, &name, &filter, &page).into_response())
}

async fn blocked(State(dashboard): State<Shared>, Path(name): Path<String>) -> Result<Response, Problem> {
    let pipeline = pipeline(&dashboard, &name)?;
    let keys = admin(pipeline)?.blocked_keys(PAGE * 4).await.map_err(|e| store_failed(&name, &e))?;
    Ok(pages::blocked(&dashboard, &name, &keys).into_response())
}

async fn dead_letters(
    State(dashboard): State<Shared>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let pipeline = pipeline(&dashboard, &name)?;
    let params = Params::parse(query.as_deref());
    let (search, filter) = DeadSearch::from_params(&params)?;
    let queries = admin(pipeline)?;
    let page =
        queries.search_dead_letters(&filter, params.cursor()?, PAGE).await.map_err(|e| store_failed(&name, &e))?;
    let matching = queries.count_dead_letters(&filter).await.map_err(|e| store_failed(&name, &e))?;
    Ok(pages::dead_letters(&dashboard, &name, &search, matching, &page).into_response())
}

async fn dead_letter(
    State(dashboard): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let pipeline = pipeline(&dashboard, &name)?;
    let id: MessageId = id.parse().map_err(|_| bad_request(format!("{id:?} is not a message id (a UUID)")))?;
    let found = admin(pipeline)?.dead_letter_by_id(id).await.map_err(|e| store_failed(&name, &e))?;
    let dead = found.ok_or_else(|| Problem(StatusCode::NOT_FOUND, format!("no dead letter with id {id}")))?;
    Ok(pages::dead_letter(&dashboard, &name, &dead).into_response())
}

/// What a dead-letter action changes.
pub(crate) enum Selection {
    Ids(Vec<MessageId>),
    Matching(DeadSearch),
}

/// `POST .../dead-actions`: replay or purge the selected dead letters, or all that match a search;
/// asks for confirmation first, then reports how many changed.
async fn dead_action(
    State(dashboard): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    if dashboard.access.read_only {
        return Err(Problem(StatusCode::FORBIDDEN, "this dashboard is read-only".into()));
    }
    let form = Params::from_bytes(&body);
    if !form.get("csrf").is_some_and(|token| same(token, &dashboard.csrf)) {
        return Err(Problem(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page".into(),
        ));
    }
    let pipeline = pipeline(&dashboard, &name)?;
    let verb = match form.get("action") {
        Some("replay") => "replay",
        Some("purge") => "purge",
        other => return Err(bad_request(format!("action={other:?}: expected replay or purge"))),
    };
    let queries = admin(pipeline)?;
    let (selection, filter) = if form.get("all_matching").is_some() {
        let (search, filter) = DeadSearch::from_params(&form)?;
        (Selection::Matching(search), Some(filter))
    } else {
        let ids = form
            .all("ids")
            .map(|id| id.parse().map_err(|_| bad_request(format!("{id:?} is not a message id (a UUID)"))))
            .collect::<Result<Vec<MessageId>, Problem>>()?;
        if ids.is_empty() {
            return Err(bad_request("select at least one dead letter"));
        }
        (Selection::Ids(ids), None)
    };
    let count = match (&selection, &filter) {
        (Selection::Ids(ids), _) => ids.len() as u64,
        (_, Some(filter)) => queries.count_dead_letters(filter).await.map_err(|e| store_failed(&name, &e))?,
        _ => 0,
    };
    if form.get("confirmed").is_none() {
        return Ok(pages::confirm(&dashboard, &name, verb, &selection, count).into_response());
    }
    let (store, name) = (&pipeline.store, name.as_str());
    let apply = |ids: Vec<MessageId>| async move {
        let done =
            if verb == "replay" { store.replay_dead_letters(&ids).await } else { store.purge_dead_letters(&ids).await };
        done.map_err(|e| store_failed(name, &e))
    };
    let mut changed = 0;
    match (selection, filter) {
        (Selection::Ids(ids), _) => {
            for chunk in ids.chunks(ACTION_BATCH) {
                changed += apply(chunk.to_vec()).await?;
            }
        }
        (Selection::Matching(_), Some(filter)) => {
            let mut after = None;
            loop {
                let page = queries
                    .search_dead_letters(&filter, after, ACTION_BATCH)
                    .await
                    .map_err(|e| store_failed(name, &e))?;
                let ids: Vec<MessageId> = page.items.iter().map(|d| d.message.id).collect();
                if !ids.is_empty() {
                    changed += apply(ids).await?;
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        _ => {}
    }
    println!("dashboard: {verb} in pipeline {name}: {changed} dead letter(s) changed");
    Ok(pages::done(&dashboard, name, verb, changed).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_bearer_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=b; outbox_dashboard_token=s3cret".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"));
        headers.insert(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("other"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn repeated_form_fields_are_all_kept() {
        let form = Params::from_bytes(b"ids=a&ids=b&action=purge&topic=");
        assert_eq!(form.all("ids").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(form.get("action"), Some("purge"));
        assert_eq!(form.get("topic"), None, "an empty field is no filter");
    }
}
