//! `[crowdsec]`: the CrowdSec Local API whose decisions the loader enforces in the kernel (as a
//! bouncer). Validated here with the line of every bad value; followed by `crate::crowdsec`.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use serde::Serialize;
use toml::Spanned;

use super::{
    alerts::Secret,
    diagnostic::Reporter,
    validate::{PolicyFiles, duration},
};

/// Where the decisions come from, and which are taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrowdSec {
    /// The LAPI's base URL (`http://127.0.0.1:8080`).
    pub lapi: String,
    /// The file the bouncer key was read from (the key itself is never shown).
    pub api_key_file: PathBuf,
    #[serde(skip)]
    pub api_key: Secret,
    /// How often the decision stream is asked for changes.
    #[serde(rename = "update_every_secs", with = "super::secs")]
    pub update_every: Duration,
    /// The decision scopes asked for: `ip`, `range`.
    pub scopes: Vec<Scope>,
    /// Only decisions of these origins (`crowdsec`, `cscli`, `CAPI`, `lists`, ...); empty: all.
    pub origins: Vec<String>,
    /// Machine credentials: portguard's own automatic blocks go to the LAPI as alerts.
    pub machine: Option<Machine>,
}

/// A machine's login (`cscli machines add NAME --password ... -f FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// The file they were read from (the password is never shown).
    pub file: PathBuf,
    pub login: String,
    #[serde(skip)]
    pub password: Secret,
}

/// The `login:` and `password:` of the YAML file `cscli machines add -f` writes (its `url:` is
/// the LAPI as cscli saw it; portguard uses `lapi`).
fn machine_credentials(path: &std::path::Path, text: &[u8]) -> Result<Machine, String> {
    let text = std::str::from_utf8(text).map_err(|_| "is not UTF-8 text".to_string())?;
    let (mut login, mut password) = (None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line \"{}\" is not `key: value`", crate::printable(line)));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        match key.trim() {
            "login" => login = Some(value.to_owned()),
            "password" => password = Some(value.to_owned()),
            _ => {}
        }
    }
    match (login, password) {
        (Some(login), Some(password)) if !login.is_empty() && !password.is_empty() => Ok(Machine {
            file: path.to_owned(),
            login,
            password: Secret::new(password.into_bytes()),
        }),
        _ => Err("has no `login:` and `password:` (write it with `cscli machines add NAME --password ... -f FILE`)".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ip,
    Range,
}

impl Scope {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Range => "range",
        }
    }
}

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrowdSec {
    pub lapi: Option<Spanned<String>>,
    pub api_key_file: Option<Spanned<String>>,
    pub update_every: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub machine_credentials_file: Option<Spanned<String>>,
}

/// Shortest and longest `update_every`.
const UPDATE_EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

pub(super) fn crowdsec(
    report: &mut Reporter,
    raw: Option<&Spanned<RawCrowdSec>>,
    policy_path: &std::path::Path,
    files: &dyn PolicyFiles,
) -> Option<CrowdSec> {
    let section = raw?;
    let raw = section.get_ref();
    let mut valid = true;
    let lapi = match &raw.lapi {
        None => {
            report.error_at(
                section.span(),
                "[crowdsec] needs lapi = \"http://127.0.0.1:8080\" (the Local API's URL)",
            );
            valid = false;
            String::new()
        }
        Some(url) => {
            let text = url.get_ref().trim_end_matches('/');
            let host =
                text.split_once("://").map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
            if !(text.starts_with("http://") || text.starts_with("https://"))
                || host.is_none_or(str::is_empty)
            {
                report.error_at(
                    url.span(),
                    format!("lapi = \"{}\" is not an http:// or https:// URL", url.get_ref()),
                );
                valid = false;
            } else if text.contains(['?', '#']) {
                report.error_at(url.span(), "lapi is the API's base URL: no query or fragment");
                valid = false;
            }
            text.to_owned()
        }
    };
    let mut api_key = None;
    let mut api_key_file = PathBuf::new();
    match &raw.api_key_file {
        None => {
            report.error_at(
                section.span(),
                "[crowdsec] needs api_key_file = \"/etc/portguard/crowdsec.key\" (a file holding the key `cscli bouncers add NAME` printed, mode 0600)",
            );
            valid = false;
        }
        Some(file) => {
            let path = policy_path.parent().unwrap_or(std::path::Path::new(".")).join(file.get_ref());
            match files.secret(&path) {
                Ok(secret) => api_key = Some(secret),
                Err(problem) => {
                    report.error_at(file.span(), format!("api_key_file {}: {problem}", path.display()));
                    valid = false;
                }
            }
            api_key_file = path;
        }
    }
    let mut update_every = Duration::from_secs(10);
    if let Some(value) = &raw.update_every {
        match duration(report, value, "update_every") {
            Some(every) if (UPDATE_EVERY.0..=UPDATE_EVERY.1).contains(&every) => update_every = every,
            Some(_) => {
                report.error_at(value.span(), "update_every must be from 1s to 1h");
                valid = false;
            }
            None => valid = false,
        }
    }
    let mut scopes = vec![Scope::Ip, Scope::Range];
    if let Some(list) = &raw.scopes {
        scopes.clear();
        for item in list.get_ref() {
            match item.get_ref().to_ascii_lowercase().as_str() {
                "ip" => scopes.push(Scope::Ip),
                "range" => scopes.push(Scope::Range),
                other => {
                    report.error_at(
                        item.span(),
                        format!("scope \"{other}\" cannot be enforced by address: \"ip\" and \"range\" can"),
                    );
                    valid = false;
                }
            }
        }
        scopes.sort_unstable();
        scopes.dedup();
        if scopes.is_empty() && valid {
            report.error_at(
                list.span(),
                "scopes is empty: nothing would be taken (leave it out for ip and range)",
            );
            valid = false;
        }
    }
    let mut origins = Vec::new();
    if let Some(list) = &raw.origins {
        for item in list.get_ref() {
            let origin = item.get_ref().trim();
            if origin.is_empty() || origin.contains(',') {
                report.error_at(item.span(), format!("origin \"{}\" is not an origin name", item.get_ref()));
                valid = false;
            } else {
                origins.push(origin.to_owned());
            }
        }
        if origins.is_empty() && valid {
            report.error_at(
                list.span(),
                "origins is empty: nothing would be taken (leave it out for every origin)",
            );
            valid = false;
        }
    }
    let mut machine = None;
    if let Some(file) = &raw.machine_credentials_file {
        let path = policy_path.parent().unwrap_or(std::path::Path::new(".")).join(file.get_ref());
        match files.secret(&path).and_then(|text| machine_credentials(&path, text.bytes())) {
            Ok(found) => machine = Some(found),
            Err(problem) => {
                report
                    .error_at(file.span(), format!("machine_credentials_file {}: {problem}", path.display()));
                valid = false;
            }
        }
    }
    Some(CrowdSec { lapi, api_key_file, api_key: api_key?, update_every, scopes, origins, machine })
        .filter(|_| valid)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{LoadOptions, validate::validate};

    fn key_file(dir: &Path, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let key = dir.join("cs.key");
        std::fs::write(&key, "abc123\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        key
    }

    #[test]
    fn a_valid_section_is_read_with_its_defaults() {
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path(), 0o600);
        let text =
            "default = \"allow\"\n[crowdsec]\nlapi = \"http://127.0.0.1:8080/\"\napi_key_file = \"cs.key\"\n";
        let policy = validate(text, &dir.path().join("p.toml"), LoadOptions::default()).unwrap().policy;
        let cs = policy.crowdsec.unwrap();
        assert_eq!(cs.lapi, "http://127.0.0.1:8080");
        assert_eq!(cs.api_key.bytes(), b"abc123");
        assert_eq!(cs.update_every.as_secs(), 10);
        assert_eq!(cs.scopes, [super::Scope::Ip, super::Scope::Range]);
        assert!(cs.origins.is_empty());
        let json = serde_json::to_string(&cs).unwrap();
        assert!(!json.contains("abc123"), "the key is never shown: {json}");
    }

    #[test]
    fn machine_credentials_are_read_from_cscli_s_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path(), 0o600);
        let machine = dir.path().join("m.yaml");
        std::fs::write(&machine, "url: http://127.0.0.1:8080\nlogin: edge-1\npassword: s3cret\n").unwrap();
        std::fs::set_permissions(&machine, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = "default = \"allow\"\n[crowdsec]\nlapi = \"http://127.0.0.1:8080\"\napi_key_file = \"cs.key\"\n\
                    machine_credentials_file = \"m.yaml\"\n";
        let cs = validate(text, &dir.path().join("p.toml"), LoadOptions::default())
            .unwrap()
            .policy
            .crowdsec
            .unwrap();
        let found = cs.machine.unwrap();
        assert_eq!((found.login.as_str(), found.password.bytes()), ("edge-1", b"s3cret".as_slice()));
        std::fs::write(&machine, "url: http://127.0.0.1:8080\n").unwrap();
        let errors =
            validate(text, &dir.path().join("p.toml"), LoadOptions::default()).unwrap_err().to_string();
        assert!(
            errors.contains("p.toml:5:28: error: machine_credentials_file")
                && errors.contains("has no `login:`"),
            "{errors}"
        );
        std::fs::set_permissions(&machine, std::fs::Permissions::from_mode(0o640)).unwrap();
        let errors =
            validate(text, &dir.path().join("p.toml"), LoadOptions::default()).unwrap_err().to_string();
        assert!(errors.contains("can be read or changed by group or others"), "{errors}");
    }

    #[test]
    fn bad_values_are_named_with_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path(), 0o644);
        let text = "default = \"allow\"\n[crowdsec]\nlapi = \"127.0.0.1:8080\"\napi_key_file = \"cs.key\"\n\
                    update_every = \"2h\"\nscopes = [\"country\"]\norigins = [\"\"]\n";
        let errors =
            validate(text, &dir.path().join("p.toml"), LoadOptions::default()).unwrap_err().to_string();
        for expected in [
            "p.toml:3:8: error: lapi = \"127.0.0.1:8080\" is not an http:// or https:// URL",
            "p.toml:4:16: error: api_key_file",
            "can be read or changed by group or others (mode 644): chmod 600 it",
            "p.toml:5:16: error: update_every must be from 1s to 1h",
            "p.toml:6:11: error: scope \"country\" cannot be enforced by address",
            "p.toml:7:12: error: origin \"\" is not an origin name",
        ] {
            assert!(errors.contains(expected), "{expected:?} missing from:\n{errors}");
        }
        let missing = validate(
            "[crowdsec]\nupdate_every = \"5s\"\n",
            &dir.path().join("p.toml"),
            LoadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("needs lapi") && missing.contains("needs api_key_file"), "{missing}");
    }
}
