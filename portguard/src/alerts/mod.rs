//! Alert sinks: a webhook that receives one document per alert (generic JSON or a chat
//! service's payload, see `payload`), and a program run per alert (the event as JSON on stdin,
//! key fields in the environment). Deliveries happen on a thread of their own behind a bounded
//! queue, so a slow or dead receiver never holds up the event reader (and the kernel never
//! waits for anything): what does not fit is counted.

pub mod payload;

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use log::warn;

use crate::{events::EventRecord, lock, metrics::LoaderCounts, policy::Alerts};

/// Alerts waiting for delivery before new ones are dropped (and counted).
const QUEUE: usize = 256;

/// The alert sinks of one loader: one delivery thread for its whole life, so a reload changes
/// where alerts go without a second thread (or a second rate limit) appearing.
pub struct Sinks {
    /// `None` once closed.
    queue: Option<SyncSender<EventRecord>>,
    config: Arc<Mutex<Alerts>>,
    counts: Arc<Mutex<LoaderCounts>>,
    /// Says when the delivery thread has delivered everything and ended.
    finished: Receiver<()>,
    _worker: JoinHandle<()>,
}

impl Sinks {
    pub fn start(config: &Alerts, counts: Arc<Mutex<LoaderCounts>>) -> Self {
        let (queue, receiver) = sync_channel(QUEUE);
        let (finish, finished) = sync_channel(1);
        let config = Arc::new(Mutex::new(config.clone()));
        let worker = {
            let (config, counts) = (config.clone(), counts.clone());
            std::thread::Builder::new()
                .name("portguard-alerts".into())
                .spawn(move || {
                    deliver(&config, receiver, &counts);
                    let _ = finish.send(());
                })
                .expect("starting the alert thread")
        };
        Self { queue: Some(queue), config, counts, finished, _worker: worker }
    }

    /// After a reload: alerts from now on go where the new policy says.
    pub fn reconfigure(&self, config: &Alerts) {
        *lock(&self.config) = config.clone();
    }

    /// Hands an event to the delivery thread if the policy sends its type; never waits.
    pub fn send(&self, record: &EventRecord) {
        let wanted = {
            let config = lock(&self.config);
            config.any_sink() && config.sends(record.event)
        };
        let Some(queue) = &self.queue else { return };
        if !wanted {
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = queue.try_send(record.clone()) {
            lock(&self.counts).alerts_dropped += 1;
        }
    }

    /// Takes no more alerts and waits up to `wait` for those queued to be delivered: the last
    /// events of a loader that stops (its detach, a rollback) still reach the receivers.
    /// Returns whether everything was delivered in time.
    pub fn close(&mut self, wait: Duration) -> bool {
        if self.queue.take().is_none() {
            return true;
        }
        self.finished.recv_timeout(wait).is_ok()
    }
}

fn deliver(config: &Mutex<Alerts>, alerts: Receiver<EventRecord>, counts: &Mutex<LoaderCounts>) {
    let mut agent: Option<(Duration, ureq::Agent)> = None;
    let mut window = (Instant::now(), 0u32);
    for alert in alerts {
        let config = lock(config).clone();
        // A rate limit, so a flood of alerts cannot flood the receiver.
        if window.0.elapsed() >= Duration::from_secs(60) {
            window = (Instant::now(), 0);
        }
        if window.1 >= config.max_per_minute {
            lock(counts).alerts_dropped += 1;
            continue;
        }
        window.1 += 1;
        let body = alert.json();
        if let Some(url) = &config.webhook {
            let agent = match &agent {
                Some((timeout, agent)) if *timeout == config.timeout => agent.clone(),
                _ => {
                    let built: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(Some(config.timeout))
                        .http_status_as_error(true)
                        .build()
                        .into();
                    agent = Some((config.timeout, built.clone()));
                    built
                }
            };
            let outcome = with_retries(config.retries, || {
                // Built per attempt: DingTalk's signature holds the time.
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let request = payload::webhook_request(&config, url, &alert, now_ms);
                let mut post = agent.post(&request.url);
                for (name, value) in &request.headers {
                    post = post.header(name, value);
                }
                post.send(&request.body[..]).map(|_| ()).map_err(|e| e.to_string())
            });
            record(counts, "webhook", outcome);
        }
        if let Some(program) = &config.exec {
            let outcome = run_program(program, &alert, &body, config.timeout);
            record(counts, "exec", outcome);
        }
    }
}

fn record(counts: &Mutex<LoaderCounts>, sink: &str, outcome: Result<(), String>) {
    let mut counts = lock(counts);
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

/// Runs the program with the alert as JSON on stdin and its key fields in the environment, in
/// a process group of its own: if it outlives `timeout`, it and whatever it started are killed.
fn run_program(program: &str, alert: &EventRecord, body: &str, timeout: Duration) -> Result<(), String> {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut child = Command::new(program)
        .env("PORTGUARD_EVENT", alert.event.name())
        .env("PORTGUARD_HOST", opt(alert.host.clone()))
        .env("PORTGUARD_INTERFACE", &alert.interface)
        .env("PORTGUARD_TIME", &alert.time)
        .env("PORTGUARD_SOURCE", opt(alert.source.map(|s| s.to_string())))
        .env("PORTGUARD_DESTINATION", opt(alert.destination.map(|s| s.to_string())))
        .env("PORTGUARD_DESTINATION_PORT", opt(alert.destination_port.map(|p| p.to_string())))
        .env("PORTGUARD_PROTOCOL", opt(alert.protocol.clone()))
        .env("PORTGUARD_REASON", opt(alert.reason.clone()))
        .env("PORTGUARD_SCAN_KIND", opt(alert.scan_kind.clone()))
        .env("PORTGUARD_ACTION", opt(alert.action.clone()))
        .env("PORTGUARD_MODE", opt(alert.monitored().then(|| "monitor".to_string())))
        .env("PORTGUARD_USER", opt(alert.user.clone()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
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
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!("{program} ran longer than {timeout:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Err(error.to_string()),
        }
    }
}
