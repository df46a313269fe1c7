//! Redis Streams publisher on redis-rs: one `XADD` per message (fields `id`, `topic`, `key`, `payload`,
//! `headers` as JSON), optional `MAXLEN ~` trimming, a batch sent as one pipeline (one reply per
//! message, so a failed `XADD` fails only its own message), and a reconnecting connection manager.
//!
//! ```no_run
//! use outbox_brokers::redis::{RedisOptions, RedisPublisher};
//! let publisher = RedisPublisher::new(RedisOptions::from_url("redis://127.0.0.1:6379")?.max_len(1_000_000))?;
//! # Ok::<(), outbox_engine::Error>(())
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use outbox_engine::secret::{redact_url, scrub};
use outbox_engine::{Message, PublishError, Publisher, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RetryMethod, Value};
use tokio::sync::Mutex;

use crate::{check_limit, id_text, invalid_url, TopicMap};

/// Reads back a stream (feature `test-util`).
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use crate::test_util::redis::read_back;

/// Settings of a [`RedisPublisher`].
#[derive(Clone)]
pub struct RedisOptions {
    url: String,
    streams: TopicMap,
    max_len: Option<usize>,
    timeout: Duration,
    max_message_bytes: usize,
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("streams", &self.streams)
            .field("max_len", &self.max_len)
            .field("timeout", &self.timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl RedisOptions {
    /// From a Redis URL (`redis://[:password@]host:6379[/db]`): streams named after topics, no trimming,
    /// a 5 s timeout, 16 MiB largest message.
    pub fn from_url(url: &str) -> Result<Self> {
        redis::Client::open(url).map_err(|e| invalid_url("Redis", url, e))?;
        Ok(Self {
            url: url.to_owned(),
            streams: TopicMap::new(),
            max_len: None,
            timeout: Duration::from_secs(5),
            max_message_bytes: 16 * 1024 * 1024,
        })
    }

    /// Maps topics to stream names.
    pub fn streams(mut self, map: TopicMap) -> Self {
        self.streams = map;
        self
    }

    /// Trims each stream to about this many entries (`MAXLEN ~`).
    pub fn max_len(mut self, entries: usize) -> Self {
        self.max_len = Some(entries);
        self
    }

    /// Timeout for connecting and for one batch; past it the batch fails as transient.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Messages larger than this fail permanently before they are sent.
    pub fn max_message_bytes(mut self, bytes: usize) -> Result<Self> {
        check_limit(bytes)?;
        self.max_message_bytes = bytes;
        Ok(self)
    }
}

/// Publishes to Redis Streams. Connects lazily; the connection manager reconnects after a loss.
pub struct RedisPublisher {
    client: redis::Client,
    options: RedisOptions,
    manager: Mutex<Option<ConnectionManager>>,
}

impl fmt::Debug for RedisPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPublisher").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Server errors that report a passing state of the server, not a bad message: out of memory under
/// `maxmemory`, a script still running, too few replicas, snapshots failing (writes refused).
const PASSING_SERVER_ERRORS: [&str; 4] = ["OOM", "BUSY", "NOREPLICAS", "MISCONF"];

fn is_transient(e: &RedisError) -> bool {
    e.code().is_some_and(|code| PASSING_SERVER_ERRORS.contains(&code))
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || !matches!(e.retry_method(), RetryMethod::NoRetry)
}

impl RedisPublisher {
    /// A publisher; nothing connects until the first publish.
    pub fn new(options: RedisOptions) -> Result<Self> {
        let client = redis::Client::open(options.url.as_str()).map_err(|e| invalid_url("Redis", &options.url, e))?;
        Ok(Self { client, options, manager: Mutex::new(None) })
    }

    fn error(&self, e: &RedisError) -> PublishError {
        let text = format!("Redis ({}): {}", redact_url(&self.options.url), scrub(&e.to_string(), &self.options.url));
        if is_transient(e) {
            PublishError::transient(text)
        } else {
            PublishError::permanent(text)
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, PublishError> {
        let mut slot = self.manager.lock().await;
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.options.timeout))
            .set_response_timeout(Some(self.options.timeout))
            .set_number_of_retries(1);
        let manager =
            tokio::time::timeout(self.options.timeout, ConnectionManager::new_with_config(self.client.clone(), config))
                .await
                .map_err(|_| {
                    PublishError::transient(format!("Redis ({}): connect timed out", redact_url(&self.options.url)))
                })?
                .map_err(|e| self.error(&e))?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    fn xadd(&self, message: &Message) -> redis::Cmd {
        // Sized up front: growing a command's buffers one argument at a time reallocates several
        // times a message.
        let headers_len: usize = message.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let text_len = message.topic.len() * 2 + message.key.as_ref().map_or(0, String::len) + headers_len;
        let mut cmd = redis::Cmd::with_capacity(16, message.payload.len() + text_len + 160);
        cmd.arg("XADD").arg(self.options.streams.destination(&message.topic));
        if let Some(max_len) = self.options.max_len {
            cmd.arg("MAXLEN").arg("~").arg(max_len);
        }
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        cmd.arg("*").arg("id").arg(id_text(message.id, &mut id)).arg("topic").arg(&message.topic);
        if let Some(key) = &message.key {
            cmd.arg("key").arg(key);
        }
        cmd.arg("headers");
        if message.headers.is_empty() {
            cmd.arg("{}");
        } else {
            cmd.arg(serde_json::to_string(&message.headers).unwrap_or_else(|_| "{}".to_owned()));
        }
        cmd.arg("payload").arg(&message.payload);
        cmd
    }

    async fn run<T>(&self, query: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, PublishError> {
        match tokio::time::timeout(self.options.timeout, query).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => Err(PublishError::transient(format!("no Redis reply within {:?}", self.options.timeout))),
        }
    }
}

#[async_trait]
impl Publisher for RedisPublisher {
    /// One pipeline on one connection runs the batch's `XADD`s in order.
    fn keeps_key_order(&self) -> bool {
        true
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => {
                let text = e.report();
                return batch.iter().map(|_| Err(PublishError::transient(text.clone()))).collect();
            }
        };
        let mut outcomes: Vec<Option<Result<(), PublishError>>> = Vec::with_capacity(batch.len());
        let mut pipe = redis::Pipeline::with_capacity(batch.len());
        // One reply per command, server errors included, so one failed XADD fails only its message.
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            if message.payload.len() > self.options.max_message_bytes {
                outcomes.push(Some(Err(PublishError::permanent(format!(
                    "message of {} bytes exceeds max_message_bytes {}",
                    message.payload.len(),
                    self.options.max_message_bytes
                )))));
                continue;
            }
            outcomes.push(None);
            pipe.add_command(self.xadd(message));
            sent.push(index);
        }
        if !sent.is_empty() {
            match self.run(pipe.query_async::<Vec<Value>>(&mut conn)).await {
                Ok(replies) => {
                    // A reply missing (never expected) leaves its message `None`: "not sent" below.
                    for (index, reply) in sent.iter().zip(replies) {
                        outcomes[*index] = Some(match reply {
                            Value::ServerError(e) => Err(self.error(&RedisError::from(e))),
                            _ => Ok(()),
                        });
                    }
                }
                Err(e) => {
                    let (transient, text) = (e.is_transient(), e.to_string());
                    for index in &sent {
                        outcomes[*index] = Some(Err(if transient {
                            PublishError::transient(text.clone())
                        } else {
                            PublishError::permanent(text.clone())
                        }));
                    }
                }
            }
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(PublishError::transient("not sent")))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> RedisError {
        match redis::parse_redis_value(reply.as_bytes()).expect("a RESP error reply") {
            Value::ServerError(e) => RedisError::from(e),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn debug_hides_the_password_of_the_url() {
        let options = RedisOptions::from_url("redis://:hunter2@127.0.0.1:6379/0").expect("url");
        let debug = format!("{options:?}");
        assert!(!debug.contains("hunter2") && debug.contains("127.0.0.1"), "{debug}");
        let publisher = RedisPublisher::new(options).expect("publisher");
        let debug = format!("{publisher:?}");
        assert!(!debug.contains("hunter2"), "RedisPublisher Debug shows the password: {debug}");
    }

    #[test]
    fn a_passing_server_state_is_transient_a_bad_command_is_not() {
        for reply in [
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-BUSY Redis is busy running a script.\r\n",
            "-MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.\r\n",
        ] {
            assert!(is_transient(&server_error(reply)), "{reply}");
        }
        let wrong_type = server_error("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert!(!is_transient(&wrong_type));
    }
}
