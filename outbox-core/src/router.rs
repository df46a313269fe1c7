//! [`Router`]: one relay, many destinations. Maps topic patterns to publishers.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::publisher::{PublishError, Publisher};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Any,
}

impl Pattern {
    fn parse(pattern: &str) -> Result<Self> {
        let invalid = |why: &str| Error::invalid_config(format!("route pattern {pattern:?} {why}"));
        if pattern == "*" {
            return Ok(Self::Any);
        }
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(body) => (body, true),
            None => (pattern, false),
        };
        if body.is_empty() {
            return Err(invalid("is empty"));
        }
        if body.contains('*') {
            return Err(invalid("may only end with '*'"));
        }
        if body.chars().any(char::is_control) {
            return Err(invalid("contains a control character"));
        }
        Ok(if prefix { Self::Prefix(body.to_owned()) } else { Self::Exact(body.to_owned()) })
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t == topic,
            Self::Prefix(p) => topic.starts_with(p.as_str()),
            Self::Any => true,
        }
    }
}

/// A [`Publisher`] that sends each message to the publisher of the first route whose pattern matches
/// its topic. Patterns are an exact topic (`"mail"`), a prefix ending in `*` (`"orders.*"`), or `"*"`.
/// A message no route matches fails permanently (it is dead-lettered, not lost).
///
/// ```
/// use outbox_engine::{publisher_fn, PublishError, Router};
///
/// let email = publisher_fn(|_msg| async { Ok::<(), PublishError>(()) });
/// let audit = publisher_fn(|_msg| async { Ok::<(), PublishError>(()) });
/// let router = Router::new().route("mail", email)?.route("audit.*", audit)?;
/// # Ok::<(), outbox_engine::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<(Pattern, Arc<dyn Publisher>)>,
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route; earlier routes win. Fails on an invalid pattern.
    pub fn route(self, pattern: &str, publisher: impl Publisher) -> Result<Self> {
        self.route_shared(pattern, Arc::new(publisher))
    }

    /// Adds a route to a shared publisher.
    pub fn route_shared(mut self, pattern: &str, publisher: Arc<dyn Publisher>) -> Result<Self> {
        self.routes.push((Pattern::parse(pattern)?, publisher));
        Ok(self)
    }

    fn route_of(&self, topic: &str) -> Option<usize> {
        self.routes.iter().position(|(p, _)| p.matches(topic))
    }
}

#[async_trait]
impl Publisher for Router {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let routes: Vec<Option<usize>> = batch.iter().map(|m| self.route_of(&m.topic)).collect();
        if let Some(first) = routes.first().copied().flatten() {
            if routes.iter().all(|r| *r == Some(first)) {
                return self.routes[first].1.publish(batch).await;
            }
        }
        let mut groups: Vec<(usize, Vec<usize>, Vec<Message>)> = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let Some(route) = *route else { continue };
            let group = match groups.iter().position(|(r, _, _)| *r == route) {
                Some(g) => g,
                None => {
                    groups.push((route, Vec::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[group].1.push(index);
            groups[group].2.push(batch[index].clone());
        }
        let outcomes = futures::future::join_all(
            groups.iter().map(|(route, _, messages)| self.routes[*route].1.publish(messages)),
        )
        .await;
        let mut results: Vec<Option<Result<(), PublishError>>> = batch.iter().map(|_| None).collect();
        for ((_, indexes, _), group_outcomes) in groups.iter().zip(outcomes) {
            for (index, outcome) in indexes.iter().zip(group_outcomes) {
                results[*index] = Some(outcome);
            }
        }
        results
            .into_iter()
            .zip(batch)
            .map(|(outcome, message)| {
                outcome.unwrap_or_else(|| {
                    Err(PublishError::permanent(format!("no route matches topic {:?}", message.topic)))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(Pattern::parse("orders.*").unwrap().matches("orders.placed"));
        assert!(!Pattern::parse("orders.*").unwrap().matches("order"));
        assert!(Pattern::parse("mail").unwrap().matches("mail"));
        assert!(!Pattern::parse("mail").unwrap().matches("mail2"));
        assert!(Pattern::parse("*").unwrap().matches("x"));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a*b").is_err());
    }
}
