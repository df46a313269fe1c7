//! The faults of a chaos run: the relay processes it kills and starts again, and the schedule that
//! terminates connections and restarts the database and the broker.

use std::sync::Arc;
use std::time::Duration;

use outbox_engine::BoxError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::report::{bump, Counters};
use super::stores::ChaosStore;
use super::{brokers, shell, Plan};

/// A fault the chaos driver injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// SIGKILL a random relay process and start it again.
    RelayKill,
    /// Terminate the run's database connections (PostgreSQL `pg_terminate_backend`, MariaDB `KILL`).
    DbTerminate,
    /// Restart the database server (`--db-restart-cmd`).
    DbRestart,
    /// Disturb the broker: drop its clients' connections, and every other time restart it where that
    /// loses nothing (RabbitMQ `stop_app`/`start_app`, Redis `SHUTDOWN SAVE` and a start; a
    /// memory-backed Kafka only has its connections dropped).
    Broker,
}

/// Keeps one relay process running: starts it, starts it again when it exits or is killed, and
/// kills it for good when `stop` is cancelled.
pub(super) async fn supervise(
    plan: Arc<Plan>,
    slot: usize,
    mut kill: mpsc::Receiver<()>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    loop {
        let mut child: Child = match plan.relay_command(slot).and_then(|mut c| Ok(c.spawn()?)) {
            Ok(child) => child,
            Err(e) => {
                eprintln!("chaos: cannot start relay {slot}: {e}");
                bump(&counters.fault_errors, 1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        tokio::select! {
            status = child.wait() => {
                bump(&counters.relay_exits, 1);
                eprintln!("chaos: relay {slot} exited by itself ({status:?}); see relay-{slot}.log; starting it again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(()) = kill.recv() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bump(&counters.relay_kills, 1);
            }
            _ = stop.cancelled() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return;
            }
        }
    }
}

/// Runs every enabled fault on its schedule until `stop`; a fault under way finishes first, so the
/// services are up when this returns.
pub(super) async fn inject_faults(
    plan: Arc<Plan>,
    store: ChaosStore,
    kill_switches: Vec<mpsc::Sender<()>>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let o = &plan.options;
    let mut tasks = Vec::new();
    for (n, fault) in plan.faults.iter().copied().enumerate() {
        let every = match fault {
            Fault::RelayKill => o.kill_every,
            Fault::DbTerminate => o.db_terminate_every,
            Fault::DbRestart => o.db_restart_every,
            Fault::Broker => o.broker_every,
        };
        let (plan, store, kill_switches, stop, counters) =
            (plan.clone(), store.clone(), kill_switches.clone(), stop.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(31).wrapping_add(n as u64));
            let mut round = 0u64;
            loop {
                // Each wait is the interval give or take a quarter, so faults drift across each other.
                let wait = Duration::from_secs_f64(every * rng.random_range(0.75..1.25));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                round += 1;
                let injected = match fault {
                    Fault::RelayKill => {
                        let slot = rng.random_range(0..kill_switches.len());
                        kill_switches[slot].send(()).await.map_err(|e| -> BoxError { e.into() })
                    }
                    Fault::DbTerminate => terminate_patiently(&store).await.map(|n| {
                        bump(&counters.db_terminate_rounds, 1);
                        bump(&counters.backends_terminated, n);
                    }),
                    Fault::DbRestart => restart_database(&plan, &store).await.map(|()| bump(&counters.db_restarts, 1)),
                    Fault::Broker => {
                        let down_for = Duration::from_secs_f64(plan.options.broker_down);
                        brokers::disturb(
                            plan.options.publisher,
                            &plan.broker_url,
                            round % 2 == 0,
                            down_for,
                            &plan.options.redis_start_cmd,
                        )
                        .await
                        .map(|what| {
                            eprintln!("chaos: {what}");
                            bump(&counters.broker_faults, 1);
                        })
                    }
                };
                if let Err(e) = injected {
                    eprintln!("chaos: could not inject {fault:?}: {e}");
                    bump(&counters.fault_errors, 1);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Restarts the database and waits until it answers again.
async fn restart_database(plan: &Plan, store: &ChaosStore) -> Result<(), BoxError> {
    eprintln!("chaos: restarting the database");
    shell(&plan.db_restart_cmd).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match store.dyn_store().stats().await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("the database did not come back within 60 s: {e}").into())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Terminates the run's database connections, waiting out a database restart under way (the
/// restart also cuts the connection this query would use).
async fn terminate_patiently(store: &ChaosStore) -> Result<u64, BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match store.terminate_backends().await {
            Ok(terminated) => return Ok(terminated),
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => return Err(e),
        }
    }
}
