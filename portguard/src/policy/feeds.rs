//! `[blocklist] urls` and `refresh`: published blocklists the loader fetches and keeps current
//! (`crate::feeds`). Validated here with the line of every bad value.

use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::{diagnostic::Reporter, raw::RawBlocklist, validate::duration};

/// The feeds a policy follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Feeds {
    /// `http://` or `https://` URLs, in the policy's order, each once.
    pub urls: Vec<String>,
    /// How often each is asked whether it changed.
    #[serde(rename = "refresh_secs", with = "super::secs")]
    pub refresh: Duration,
}

/// Shortest and longest `refresh`: public lists ask for no more than hourly, yet a list of
/// one's own may change faster; a week keeps a forgotten feed from going stale unseen.
pub const REFRESH: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(7 * 24 * 3600));
/// `refresh` when the policy does not say.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
/// Most feeds one policy follows (each is a label value in `/metrics`).
pub const MAX_FEEDS: usize = 32;
/// Longest URL taken (it is shown in `stats` and `/metrics`).
const URL_MAX: usize = 2048;

pub(super) fn feeds(report: &mut Reporter, raw: &RawBlocklist) -> Option<Feeds> {
    if raw.urls.is_empty() {
        if let Some(refresh) = &raw.refresh {
            report.error_at(refresh.span(), "refresh applies to [blocklist] urls, and there are none");
        }
        return None;
    }
    let mut urls: Vec<String> = Vec::new();
    for url in &raw.urls {
        match check_url(url.get_ref()) {
            Ok(()) if urls.contains(url.get_ref()) => {
                report
                    .error_at(url.span(), format!("\"{}\" is listed twice", crate::printable(url.get_ref())));
            }
            Ok(()) => urls.push(url.get_ref().clone()),
            Err(problem) => {
                report.error_at(url.span(), format!("\"{}\" {problem}", crate::printable(url.get_ref())));
            }
        }
    }
    if raw.urls.len() > MAX_FEEDS {
        report.error_at(
            raw.urls[MAX_FEEDS].span(),
            format!("more than {MAX_FEEDS} urls: merge lists, or fetch them into files"),
        );
    }
    let refresh = raw.refresh.as_ref().map_or(Some(DEFAULT_REFRESH), |value| refresh(report, value))?;
    Some(Feeds { urls, refresh })
}

fn refresh(report: &mut Reporter, value: &Spanned<String>) -> Option<Duration> {
    let every = duration(report, value, "refresh")?;
    if (REFRESH.0..=REFRESH.1).contains(&every) {
        Some(every)
    } else {
        report.error_at(value.span(), "refresh must be from 5s to 7d (public lists ask for 1h or more)");
        None
    }
}

/// An absolute `http://` or `https://` URL with a host, and nothing secret in it.
fn check_url(text: &str) -> Result<(), String> {
    if text.len() > URL_MAX {
        return Err(format!("is longer than {URL_MAX} characters"));
    }
    let Some((scheme, _)) = text.split_once("://") else {
        return Err("is not an absolute URL (write https://HOST/PATH)".into());
    };
    if !["http", "https"].iter().any(|known| scheme.eq_ignore_ascii_case(known)) {
        return Err(format!("is a {scheme}:// URL; only http:// and https:// are fetched"));
    }
    let uri: ureq::http::Uri = text.parse().map_err(|error| format!("is not a URL ({error})"))?;
    let Some(authority) = uri.authority() else {
        return Err("has no host".into());
    };
    if authority.as_str().contains('@') {
        return Err("carries credentials (USER@HOST): URLs are shown in stats and metrics".into());
    }
    if authority.host().is_empty() {
        return Err("has no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn only_http_and_https_urls_with_a_host() {
        assert!(check_url("https://www.spamhaus.org/drop/drop.txt").is_ok());
        assert!(check_url("http://127.0.0.1:8000/level1.netset").is_ok());
        assert!(check_url("http://[2001:db8::1]/list").is_ok());
        for (bad, says) in [
            ("ftp://example.org/list", "only http:// and https://"),
            ("file:///etc/list", "only http:// and https://"),
            ("/etc/list", "not an absolute URL"),
            ("example.org/list", "not"),
            ("https://user:secret@example.org/list", "credentials"),
            ("https:///list", "not a URL"),
            ("https://exa mple.org/", "not a URL"),
        ] {
            let error = check_url(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
