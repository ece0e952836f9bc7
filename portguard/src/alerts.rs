//! Alert sinks: a webhook that receives one JSON document per alert, and a program run per
//! alert (the event as JSON on stdin, key fields in the environment). Deliveries happen on a
//! thread of their own behind a bounded queue, so a slow or dead receiver never holds up the
//! event reader (and the kernel never waits for anything): what does not fit is counted.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use log::warn;

use crate::{events::EventRecord, metrics::LoaderCounts, policy::Alerts};

/// Alerts waiting for delivery before new ones are dropped (and counted).
const QUEUE: usize = 256;

/// The events that are alerts (drops are not: they are sampled telemetry).
pub fn is_alert(record: &EventRecord) -> bool {
    matches!(record.event.as_str(), "scan_detected" | "auto_blocked" | "trap_hit" | "block_expired")
}

pub struct Sinks {
    queue: SyncSender<EventRecord>,
    counts: Arc<Mutex<LoaderCounts>>,
    _worker: JoinHandle<()>,
}

impl Sinks {
    /// `None` when the policy configures no sink.
    pub fn start(config: &Alerts, counts: Arc<Mutex<LoaderCounts>>) -> Option<Self> {
        if config.webhook.is_none() && config.exec.is_none() {
            return None;
        }
        let (queue, receiver) = sync_channel(QUEUE);
        let worker = {
            let (config, counts) = (config.clone(), counts.clone());
            std::thread::Builder::new()
                .name("portguard-alerts".into())
                .spawn(move || deliver(config, receiver, counts))
                .expect("starting the alert thread")
        };
        Some(Self { queue, counts, _worker: worker })
    }

    /// Hands an alert to the delivery thread; never waits.
    pub fn send(&self, record: &EventRecord) {
        if !is_alert(record) {
            return;
        }
        match self.queue.try_send(record.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counts.lock().unwrap().alerts_dropped += 1;
            }
        }
    }
}

fn deliver(config: Alerts, alerts: Receiver<EventRecord>, counts: Arc<Mutex<LoaderCounts>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(true)
        .build()
        .into();
    let mut window = (Instant::now(), 0u32);
    for alert in alerts {
        // A rate limit, so a flood of alerts cannot flood the receiver.
        if window.0.elapsed() >= Duration::from_secs(60) {
            window = (Instant::now(), 0);
        }
        if window.1 >= config.max_per_minute {
            counts.lock().unwrap().alerts_dropped += 1;
            continue;
        }
        window.1 += 1;
        let body = alert.json();
        if let Some(url) = &config.webhook {
            let outcome = with_retries(config.retries, || {
                agent
                    .post(url)
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            record(&counts, "webhook", outcome);
        }
        if let Some(program) = &config.exec {
            let outcome = with_retries(0, || run_program(program, &alert, &body, config.timeout));
            record(&counts, "exec", outcome);
        }
    }
}

fn record(counts: &Mutex<LoaderCounts>, sink: &str, outcome: Result<(), String>) {
    let mut counts = counts.lock().unwrap();
    match outcome {
        Ok(()) => *counts.alerts_delivered.entry(sink.into()).or_default() += 1,
        Err(error) => {
            warn!("alert to {sink} failed: {error}");
            *counts.alerts_failed.entry(sink.into()).or_default() += 1;
        }
    }
}

/// Tries `attempt`, then `retries` more times with exponential backoff (0.5 s, 1 s, 2 s, ...).
fn with_retries(retries: u32, mut attempt: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let mut delay = Duration::from_millis(500);
    let mut result = attempt();
    for _ in 0..retries {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(delay);
        delay *= 2;
        result = attempt();
    }
    result
}

/// Runs the program with the alert as JSON on stdin and its key fields in the environment;
/// killed if it outlives `timeout`.
fn run_program(program: &str, alert: &EventRecord, body: &str, timeout: Duration) -> Result<(), String> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut child = Command::new(program)
        .env("PORTGUARD_EVENT", &alert.event)
        .env("PORTGUARD_INTERFACE", &alert.interface)
        .env("PORTGUARD_TIME", &alert.time)
        .env("PORTGUARD_SOURCE", opt(alert.source.map(|s| s.to_string())))
        .env("PORTGUARD_DESTINATION", opt(alert.destination.map(|s| s.to_string())))
        .env("PORTGUARD_DESTINATION_PORT", opt(alert.destination_port.map(|p| p.to_string())))
        .env("PORTGUARD_PROTOCOL", opt(alert.protocol.clone()))
        .env("PORTGUARD_REASON", opt(alert.reason.clone()))
        .env("PORTGUARD_SCAN_KIND", opt(alert.scan_kind.clone()))
        .env("PORTGUARD_ACTION", opt(alert.action.clone()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.as_bytes());
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{program} exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} ran longer than {timeout:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Err(error.to_string()),
        }
    }
}
