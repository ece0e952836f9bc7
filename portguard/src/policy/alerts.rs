//! `[alerts]`: where alerts go (a webhook, a program), in which shape (generic JSON or a chat
//! service's payload), signed how, and which events are sent. Validated here with the line of
//! every bad value; delivered by `crate::alerts`.

use std::{
    collections::BTreeSet,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Serialize, Serializer};
use toml::Spanned;

use super::{
    diagnostic::Reporter,
    raw::RawAlerts,
    validate::{PolicyFiles, ProgramFile, duration, integer_in},
};
use crate::events::EventType;

/// Where alerts go (`[alerts]`).
#[derive(Clone, Debug, Serialize)]
pub struct Alerts {
    /// Receives one document (POST) per alert.
    pub webhook: Option<String>,
    /// The shape of the webhook's body.
    pub format: WebhookFormat,
    /// Extra request headers (`[alerts.headers]`); their values may be credentials, so only
    /// the names are ever shown.
    #[serde(serialize_with = "header_names")]
    pub headers: Vec<(String, String)>,
    /// The file the HMAC key was read from (the key itself is never shown).
    pub hmac_secret_file: Option<PathBuf>,
    #[serde(skip)]
    pub hmac_secret: Option<Secret>,
    /// Runs once per alert: the alert as JSON on stdin, key fields in `PORTGUARD_*`.
    pub exec: Option<String>,
    /// The event types sent to the sinks.
    pub events: BTreeSet<EventType>,
    #[serde(rename = "timeout_secs", with = "super::secs")]
    pub timeout: Duration,
    pub retries: u32,
    pub max_per_minute: u32,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            webhook: None,
            format: WebhookFormat::Json,
            headers: Vec::new(),
            hmac_secret_file: None,
            hmac_secret: None,
            exec: None,
            events: default_events(),
            timeout: Duration::from_secs(5),
            retries: 3,
            max_per_minute: 60,
        }
    }
}

impl Alerts {
    /// Whether any sink is configured.
    pub fn any_sink(&self) -> bool {
        self.webhook.is_some() || self.exec.is_some()
    }

    /// Whether events of this type go to the sinks.
    pub fn sends(&self, event: EventType) -> bool {
        self.events.contains(&event)
    }

    /// Where the webhook posts, for people: scheme, host and port only (a chat service's URL
    /// holds its token in the path or the query).
    pub fn webhook_shown(&self) -> Option<String> {
        let url = self.webhook.as_deref()?;
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        // Credentials in the authority (`user:password@host`) are not shown either.
        let host = authority.rsplit('@').next().unwrap_or(authority);
        let hidden = rest.len() > authority.len() || host.len() < authority.len();
        Some(format!("{scheme}://{host}{}", if hidden { "/…" } else { "" }))
    }
}

/// The alerts and the audit trail: the events sent unless `[alerts] events` says otherwise.
pub fn default_events() -> BTreeSet<EventType> {
    EventType::ALL.into_iter().filter(|t| t.is_alert() || t.is_audit()).collect()
}

/// The body a webhook receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The event's JSON object, as `attach --json` prints it.
    Json,
    /// A Slack incoming webhook: `{"text": ..., "blocks": [...]}`.
    Slack,
    /// A Microsoft Teams incoming webhook or Workflows (Power Automate) trigger: an Adaptive
    /// Card in a `message` attachment.
    Teams,
    /// A DingTalk custom robot: `{"msgtype":"text","text":{"content":...}}`, signed the way
    /// DingTalk checks when a key is given.
    Dingtalk,
    /// A WeCom (WeChat Work) group robot: `{"msgtype":"text","text":{"content":...}}` (text
    /// rather than markdown, which the WeChat app does not show).
    Wecom,
}

impl WebhookFormat {
    const ALL: [Self; 5] = [Self::Json, Self::Slack, Self::Teams, Self::Dingtalk, Self::Wecom];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Slack => "slack",
            Self::Teams => "teams",
            Self::Dingtalk => "dingtalk",
            Self::Wecom => "wecom",
        }
    }
}

impl fmt::Display for WebhookFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

fn header_names<S: Serializer>(headers: &[(String, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(headers.iter().map(|(name, _)| name))
}

/// The header that carries the body's HMAC-SHA256 (`sha256=` and 64 hex digits).
pub const SIGNATURE_HEADER: &str = "x-portguard-signature-256";
/// Headers portguard sets itself, or that would break the request.
const RESERVED_HEADERS: [&str; 6] =
    ["content-type", "content-length", "host", "transfer-encoding", "connection", SIGNATURE_HEADER];
/// Largest key file read.
const SECRET_MAX: u64 = 4096;
/// Whether an event type belongs to a group.
type Member = fn(EventType) -> bool;
/// Names that stand for several event types in `[alerts] events`.
const GROUPS: [(&str, Member); 3] =
    [("alerts", EventType::is_alert), ("audit", EventType::is_audit), ("all", |_| true)];

pub(super) fn alerts(
    report: &mut Reporter,
    raw: Option<&RawAlerts>,
    policy_path: &Path,
    files: &dyn PolicyFiles,
) -> Alerts {
    let mut alerts = Alerts::default();
    let Some(raw) = raw else {
        return alerts;
    };
    if let Some(url) = &raw.webhook {
        let text = url.get_ref();
        if text.starts_with("http://") || text.starts_with("https://") {
            alerts.webhook = Some(text.clone());
        } else {
            report.error_at(url.span(), format!("webhook = \"{text}\" is not an http:// or https:// URL"));
        }
    }
    let no_webhook = raw.webhook.is_none();
    if let Some(value) = &raw.format {
        match WebhookFormat::ALL.into_iter().find(|f| f.name() == value.get_ref()) {
            Some(format) => alerts.format = format,
            None => report.error_at(
                value.span(),
                format!(
                    "format = \"{}\" is not one of {}",
                    value.get_ref(),
                    WebhookFormat::ALL.map(|f| format!("\"{f}\"")).join(", ")
                ),
            ),
        }
        if no_webhook {
            report.warning_at(value.span(), "format shapes the webhook's body, and there is no webhook");
        }
    }
    if let Some(headers) = &raw.headers {
        alerts.headers = self::headers(report, headers);
        if no_webhook {
            report
                .warning_at(headers.span(), "[alerts.headers] go with the webhook, and there is no webhook");
        }
    }
    if let Some(file) = &raw.hmac_secret_file {
        let path = policy_path.parent().unwrap_or(Path::new(".")).join(file.get_ref());
        match files.secret(&path) {
            Ok(secret) => {
                alerts.hmac_secret = Some(secret);
                alerts.hmac_secret_file = Some(path);
            }
            Err(problem) => {
                report.error_at(file.span(), format!("hmac_secret_file {}: {problem}", path.display()));
            }
        }
        if no_webhook {
            report.warning_at(
                file.span(),
                "hmac_secret_file signs the webhook's body, and there is no webhook",
            );
        }
    }
    if let Some(program) = &raw.exec {
        alerts.exec = exec(report, program, files);
    }
    if let Some(list) = &raw.events {
        alerts.events = events(report, list);
    }
    if let Some(value) = &raw.timeout {
        alerts.timeout = duration(report, value, "timeout").unwrap_or(alerts.timeout);
    }
    if let Some(value) = &raw.retries {
        alerts.retries = integer_in(report, value, "retries", 0..=10).unwrap_or(alerts.retries);
    }
    if let Some(value) = &raw.max_per_minute {
        alerts.max_per_minute =
            integer_in(report, value, "max_per_minute", 1..=100_000).unwrap_or(alerts.max_per_minute);
    }
    alerts
}

fn headers(
    report: &mut Reporter,
    raw: &Spanned<std::collections::BTreeMap<String, Spanned<String>>>,
) -> Vec<(String, String)> {
    use ureq::http::{HeaderName, HeaderValue};
    let mut headers = Vec::new();
    for (name, value) in raw.get_ref() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            report.error_at(
                value.span(),
                format!("header name \"{}\" is not a valid HTTP header name", crate::printable(name)),
            );
            continue;
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            report.error_at(value.span(), format!("header {name} is set by portguard itself; remove it"));
            continue;
        }
        if HeaderValue::from_str(value.get_ref()).is_err() {
            report.error_at(
                value.span(),
                format!("the value of header {name} holds a character HTTP does not allow (a newline, a control character)"),
            );
            continue;
        }
        headers.push((name.clone(), value.get_ref().clone()));
    }
    headers
}

/// The key in a file root alone may read: its bytes, less one trailing line end.
pub(super) fn read_secret(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "can be read or changed by group or others (mode {:o}): chmod 600 it",
            meta.mode() & 0o777
        ));
    }
    let mut bytes =
        crate::files::read_capped(path, SECRET_MAX).map_err(|e| format!("cannot be read: {e}"))?;
    for end in [b"\n".as_slice(), b"\r"] {
        if bytes.ends_with(end) {
            bytes.truncate(bytes.len() - 1);
        }
    }
    if bytes.is_empty() {
        return Err("is empty: put the shared key in it".into());
    }
    Ok(Secret(bytes))
}

fn exec(report: &mut Reporter, program: &Spanned<String>, files: &dyn PolicyFiles) -> Option<String> {
    let path = Path::new(program.get_ref());
    if !path.is_absolute() {
        report.error_at(program.span(), "exec must be an absolute path to a program");
        return None;
    }
    let ProgramFile::Found { mode, uid } = files.program(path) else {
        report.warning_at(program.span(), format!("exec program {} does not exist (yet)", path.display()));
        return Some(program.get_ref().clone());
    };
    // It runs as the loader does (root, with its capabilities): nobody else may change it.
    if mode & 0o022 != 0 {
        report.error_at(
            program.span(),
            format!(
                "exec program {} is writable by group or others, and it would run as root: chmod go-w it",
                path.display()
            ),
        );
        return None;
    }
    if uid != 0 {
        report.warning_at(
            program.span(),
            format!("exec program {} is not owned by root, and it would run as root", path.display()),
        );
    }
    Some(program.get_ref().clone())
}

fn events(report: &mut Reporter, list: &Spanned<Vec<Spanned<String>>>) -> BTreeSet<EventType> {
    let mut chosen = BTreeSet::new();
    for item in list.get_ref() {
        let name = item.get_ref().as_str();
        if let Some((_, member)) = GROUPS.iter().find(|(group, _)| *group == name) {
            chosen.extend(EventType::ALL.into_iter().filter(|t| member(*t) && *t != EventType::ClientLagged));
        } else {
            match EventType::from_name(name).filter(|t| *t != EventType::ClientLagged) {
                Some(event) => {
                    chosen.insert(event);
                }
                None => report.error_at(
                    item.span(),
                    format!(
                        "\"{}\" is not an event type: use {}, or one of {}",
                        crate::printable(name),
                        GROUPS.map(|(g, _)| format!("\"{g}\"")).join(", "),
                        EventType::ALL
                            .into_iter()
                            .filter(|t| *t != EventType::ClientLagged)
                            .map(|t| format!("\"{t}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
    }
    if list.get_ref().is_empty() {
        report.warning_at(list.span(), "events = [] sends nothing to the alert sinks");
    }
    if chosen.contains(&EventType::Drop) {
        report.warning_at(
            list.span(),
            "drop events are sampled telemetry, up to [events] drop_events_per_second per CPU: \
             max_per_minute will drop most of them, and alerts with them",
        );
    }
    chosen
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::policy::{LoadOptions, parse};

    fn load(text: &str, dir: &Path) -> Result<crate::policy::Loaded, Vec<String>> {
        parse(text, &dir.join("p.toml"), LoadOptions::default())
            .map_err(|errors| errors.diagnostics.iter().map(ToString::to_string).collect())
    }

    #[track_caller]
    fn assert_has(list: &[String], expected: &str) {
        assert!(list.iter().any(|e| e.contains(expected)), "{expected:?} not in {list:#?}");
    }

    #[test]
    fn presets_headers_keys_and_event_choices() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hook.key");
        std::fs::write(&key, "s3cret\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = "[alerts]\nwebhook = \"https://hooks.slack.com/services/T0/B0/XYZ\"\nformat = \"slack\"\n\
                    hmac_secret_file = \"hook.key\"\nevents = [\"audit\", \"scan_detected\"]\n\
                    [alerts.headers]\nAuthorization = \"Bearer abc\"\nX-Team = \"ops\"\n";
        let loaded = load(text, dir.path()).unwrap();
        let alerts = &loaded.policy.alerts;
        assert_eq!(alerts.format, WebhookFormat::Slack);
        assert_eq!(alerts.hmac_secret.as_ref().unwrap().bytes(), b"s3cret", "one line end trimmed");
        assert_eq!(alerts.hmac_secret_file.as_deref(), Some(key.as_path()));
        assert_eq!(
            alerts.headers,
            [("Authorization".into(), "Bearer abc".into()), ("X-Team".into(), "ops".into())]
        );
        assert!(alerts.sends(EventType::Reloaded) && alerts.sends(EventType::ScanDetected));
        assert!(!alerts.sends(EventType::AutoBlocked) && !alerts.sends(EventType::Drop));
        assert_eq!(alerts.webhook_shown().as_deref(), Some("https://hooks.slack.com/…"));
        // What `check --json` shows: header names, the key's file, never a credential.
        let shown = serde_json::to_string(alerts).unwrap();
        assert!(shown.contains(r#""headers":["Authorization","X-Team"]"#), "{shown}");
        assert!(!shown.contains("Bearer") && !shown.contains("s3cret"), "{shown}");
        assert!(!format!("{alerts:?}").contains("s3cret"));

        let defaults = Alerts::default();
        assert!(defaults.sends(EventType::TrapHit) && defaults.sends(EventType::RolledBack));
        assert!(!defaults.sends(EventType::Drop) && !defaults.sends(EventType::ClientLagged));
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let open_key = dir.path().join("open.key");
        std::fs::write(&open_key, "k").unwrap();
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = "[alerts]\nwebhook = \"https://x.example/h\"\nformat = \"telegram\"\n\
                    hmac_secret_file = \"open.key\"\nevents = [\"scans\"]\n\
                    [alerts.headers]\nContent-Type = \"text/plain\"\n\"Bad Name\" = \"x\"\nX-Ok = \"a\\nb\"\n";
        let errors = load(text, dir.path()).unwrap_err();
        assert_has(
            &errors,
            "p.toml:3:10: error: format = \"telegram\" is not one of \"json\", \"slack\", \"teams\", \"dingtalk\", \"wecom\"",
        );
        assert_has(&errors, "p.toml:4:20: error: hmac_secret_file");
        assert_has(&errors, "can be read or changed by group or others (mode 644): chmod 600 it");
        assert_has(
            &errors,
            "p.toml:5:11: error: \"scans\" is not an event type: use \"alerts\", \"audit\", \"all\", or one of \"drop\"",
        );
        assert_has(&errors, "p.toml:7:16: error: header Content-Type is set by portguard itself");
        assert_has(&errors, "p.toml:8:14: error: header name \"Bad Name\" is not a valid HTTP header name");
        assert_has(
            &errors,
            "p.toml:9:8: error: the value of header X-Ok holds a character HTTP does not allow",
        );

        let errors = load(
            "[alerts]\nwebhook = \"https://x.example/h\"\nhmac_secret_file = \"missing.key\"\n",
            dir.path(),
        )
        .unwrap_err();
        assert_has(&errors, "p.toml:3:20: error: hmac_secret_file");
        assert_has(&errors, "missing.key: cannot be read");

        let loaded = load("[alerts]\nformat = \"teams\"\nevents = []\n", dir.path()).unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_has(
            &warnings,
            "p.toml:2:10: warning: format shapes the webhook's body, and there is no webhook",
        );
        assert_has(&warnings, "p.toml:3:10: warning: events = [] sends nothing to the alert sinks");
    }
}
