//! One look at a feed: a conditional GET (the saved copy's `ETag` and `Last-Modified` sent
//! back), bounded in time and in size, and a body read exactly as a local blocklist file. A body
//! with one bad line is refused whole: a feed is taken all of it or not at all.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use ipnet::IpNet;

use super::{CopyInfo, FeedList, Validators};
use crate::{policy::sources::parse_source_list, state::now_unix};

/// Largest body read (FireHOL's level 3 is under 1 MiB; a million entries about 20 MiB).
pub const BODY_MAX: u64 = 64 << 20;
/// How long one request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a feed answered.
#[derive(Debug)]
pub enum Fetched {
    /// 304 Not Modified: the saved copy is current.
    NotModified,
    /// A list that parsed without a bad line.
    List(FeedList),
}

/// The HTTP client every fetch of one loader shares (HTTPS with the bundled web PKI roots).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        // 304 and the errors are told apart here.
        .http_status_as_error(false)
        .user_agent(concat!("portguard/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Asks `url` for its list, conditionally when there is a saved copy (`saved`).
pub fn fetch(agent: &ureq::Agent, url: &str, saved: Option<&CopyInfo>) -> Result<Fetched> {
    let mut request = agent.get(url);
    if let Some(saved) = saved {
        if let Some(etag) = &saved.validators.etag {
            request = request.header("If-None-Match", etag);
        }
        if let Some(date) = &saved.validators.last_modified {
            request = request.header("If-Modified-Since", date);
        }
    }
    let mut response = request.call().map_err(|error| anyhow!("{error}"))?;
    let status = response.status().as_u16();
    match status {
        304 if saved.is_some() => return Ok(Fetched::NotModified),
        304 => bail!("answered 304 Not Modified to a request that was not conditional"),
        200 => {}
        _ => bail!("answered HTTP {status}"),
    }
    let header =
        |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(ToOwned::to_owned);
    let validators = Validators { etag: header("etag"), last_modified: header("last-modified") };
    let body = match response.body_mut().with_config().limit(BODY_MAX).read_to_vec() {
        Ok(body) => body,
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            bail!("sent more than {} MiB; nothing of it is taken", BODY_MAX >> 20)
        }
        Err(error) => bail!("reading the list: {error}"),
    };
    let entries = parse(&body).map_err(|problem| anyhow!("{problem}; nothing of it is taken"))?;
    let info = CopyInfo { url: url.to_owned(), validators, fetched_at: now_unix(), entries: entries.len() };
    Ok(Fetched::List(FeedList { info, body, entries }))
}

/// A feed's body as a blocklist file, but strict: any bad line refuses it (an error page, a
/// truncated download), and so do an empty list and one that lists a whole address family.
pub fn parse(body: &[u8]) -> Result<Vec<IpNet>, String> {
    let list = parse_source_list(body);
    if let Some(first) = list.bad_lines.first() {
        let more = list.bad_lines.len() - 1;
        return Err(format!(
            "line {}: {}{}",
            first.line,
            crate::printable(&first.reason),
            if more > 0 { format!(" (and {more} more bad lines)") } else { String::new() }
        ));
    }
    if list.entries.is_empty() {
        return Err("the list has no entries (an empty answer is taken for a broken one)".into());
    }
    if let Some(all) = list.entries.iter().find(|net| net.prefix_len() == 0) {
        return Err(format!("the list holds {all}, which blocks every source of its family"));
    }
    Ok(list.entries)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        net::TcpListener,
    };

    use super::*;

    /// Answers one request on 127.0.0.1 with `answer`; hands back the request's header lines.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/list.txt", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut lines = Vec::new();
            let mut reader = BufReader::new(&stream);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                    break;
                }
                lines.push(line.trim().to_ascii_lowercase());
            }
            (&stream).write_all(answer.as_bytes()).unwrap();
            lines
        });
        (url, server)
    }

    #[test]
    fn a_list_its_validators_and_a_conditional_304() {
        let (url, server) = serve_once(
            "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nLast-Modified: Wed, 02 Dec 2026 08:00:00 GMT\r\n\
             Content-Length: 26\r\nConnection: close\r\n\r\n198.51.100.0/24 ; SBL123\n\n",
        );
        let Fetched::List(list) = fetch(&agent(), &url, None).unwrap() else { panic!("not a list") };
        assert_eq!(list.entries.len(), 1);
        assert_eq!(list.info.validators.etag.as_deref(), Some("\"abc\""));
        assert!(
            !server.join().unwrap().iter().any(|h| h.starts_with("if-")),
            "not conditional without a copy"
        );

        let (url, server) = serve_once("HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
        let saved = CopyInfo { url: url.clone(), ..list.info };
        assert!(matches!(fetch(&agent(), &url, Some(&saved)).unwrap(), Fetched::NotModified));
        let headers = server.join().unwrap();
        assert!(headers.contains(&"if-none-match: \"abc\"".to_string()), "{headers:?}");
        assert!(
            headers.contains(&"if-modified-since: wed, 02 dec 2026 08:00:00 gmt".to_string()),
            "{headers:?}"
        );

        let (url, server) = serve_once("HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n");
        let error = fetch(&agent(), &url, None).unwrap_err().to_string();
        assert!(error.contains("not conditional"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn errors_and_bad_bodies_are_refused() {
        let (url, server) = serve_once(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(fetch(&agent(), &url, None).unwrap_err().to_string(), "answered HTTP 500");
        server.join().unwrap();
        let (url, server) = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 31\r\nConnection: close\r\n\r\n198.51.100.0/24\nnot an address\n",
        );
        let error = fetch(&agent(), &url, None).unwrap_err().to_string();
        assert!(error.starts_with("line 2: ") && error.ends_with("nothing of it is taken"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn feeds_parse_like_files_but_strictly() {
        let drop = "; Spamhaus DROP List 2026/12/02\n; Expires: Wed, 02 Dec 2026 09:00:00 GMT\n\
                    198.51.100.0/24 ; SBL123\n203.0.113.0/25 ; SBL456\n";
        assert_eq!(parse(drop.as_bytes()).unwrap().len(), 2);
        let netset = "#\n# firehol_level1\n#\n198.51.100.0/24\n203.0.113.7\n2001:db8::/32\n";
        assert_eq!(parse(netset.as_bytes()).unwrap().len(), 3);

        let page = "<html>\n<body>Service Unavailable</body>\n</html>\n";
        let error = parse(page.as_bytes()).unwrap_err();
        assert!(error.starts_with("line 1: `<html>` is not"), "{error}");
        assert!(error.ends_with("(and 2 more bad lines)"), "{error}");
        let one_bad = parse(b"198.51.100.0/24\n203.0.113.0/33\n").unwrap_err();
        assert!(one_bad.starts_with("line 2: "), "{one_bad}");

        assert!(parse(b"# nothing today\n").unwrap_err().contains("no entries"));
        assert!(parse(b"0.0.0.0/0\n").unwrap_err().contains("every source"));
    }
}
