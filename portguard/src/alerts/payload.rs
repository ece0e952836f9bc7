//! What a webhook receives for one event: the body in the shape its service expects (generic
//! JSON, Slack, Microsoft Teams, DingTalk, WeCom), the headers, and the signatures.

use ring::hmac;
use serde_json::{Value, json};

use crate::{
    events::EventRecord,
    policy::{Alerts, WebhookFormat, alerts::SIGNATURE_HEADER},
};

/// One POST.
#[derive(Debug)]
pub struct WebhookRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Longest chat message text, in characters: under what each service takes (WeCom: 2048
/// bytes of text; Slack: 3000 characters in a section), so a long reason cannot get an
/// alert refused.
const CHAT_TEXT_MAX: usize = 600;

/// The request for `record` under `config` (which has a webhook). `now_ms`: Unix time in
/// milliseconds, for DingTalk's signature.
pub fn webhook_request(config: &Alerts, url: &str, record: &EventRecord, now_ms: u128) -> WebhookRequest {
    let body = match config.format {
        WebhookFormat::Json => record.json(),
        WebhookFormat::Slack => slack(record).to_string(),
        WebhookFormat::Teams => teams(record).to_string(),
        WebhookFormat::Dingtalk | WebhookFormat::Wecom => {
            json!({ "msgtype": "text", "text": { "content": chat_text(record) } }).to_string()
        }
    }
    .into_bytes();
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("user-agent".to_string(), concat!("portguard/", env!("CARGO_PKG_VERSION")).to_string()),
        ("x-portguard-event".to_string(), record.event.name().to_string()),
    ];
    let mut url = url.to_owned();
    if let Some(secret) = &config.hmac_secret {
        headers.push((SIGNATURE_HEADER.to_string(), format!("sha256={}", hex(&sign(secret.bytes(), &body)))));
        if config.format == WebhookFormat::Dingtalk {
            url = dingtalk_signed(&url, secret.bytes(), now_ms);
        }
    }
    headers.extend(config.headers.iter().cloned());
    WebhookRequest { url, headers, body }
}

/// HMAC-SHA256 of `data` under `key`.
pub fn sign(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// DingTalk's signed robot URL: `timestamp` (ms) and `sign`, the Base64 of the HMAC-SHA256 of
/// "timestamp\nkey" under the key, URL-encoded.
fn dingtalk_signed(url: &str, key: &[u8], now_ms: u128) -> String {
    use base64::Engine as _;
    let mut signed = format!("{now_ms}\n").into_bytes();
    signed.extend_from_slice(key);
    let digest = base64::engine::general_purpose::STANDARD.encode(sign(key, &signed));
    let encoded: String = digest
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            c => c.to_string(),
        })
        .collect();
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}timestamp={now_ms}&sign={encoded}")
}

/// `portguard on gw1, eth0: SCAN 192.0.2.66 -> ...` and the time, on two lines.
fn chat_text(record: &EventRecord) -> String {
    format!("{}\n{}", headline(record), record.time)
}

fn headline(record: &EventRecord) -> String {
    let host = record.host.as_deref().unwrap_or("an unnamed host");
    let text = format!("portguard on {host}, {}: {}", record.interface, record.summary());
    cut(&crate::printable(&text))
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(CHAT_TEXT_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Slack reads `<...>` as links and mentions (`<!channel>`) and `&` as an entity: escaped, so
/// text from outside stays text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An incoming webhook's message: `text` (the notification, and what clients without blocks
/// show) and a section with the same, plus a context line.
fn slack(record: &EventRecord) -> Value {
    let headline = slack_escape(&headline(record));
    json!({
        "text": headline,
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": headline } },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("`{}` at {}", record.event, record.time) }
            ] }
        ]
    })
}

/// An Adaptive Card in a `message` attachment: what Teams incoming webhooks and the Workflows
/// "when a Teams webhook request is received" trigger both post.
fn teams(record: &EventRecord) -> Value {
    let host = record.host.as_deref().unwrap_or("an unnamed host");
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    { "type": "TextBlock", "text": format!("portguard on {host}"), "weight": "Bolder", "size": "Medium", "wrap": true },
                    { "type": "TextBlock", "text": cut(&crate::printable(&record.summary())), "wrap": true },
                    { "type": "FactSet", "facts": [
                        { "title": "Host", "value": host },
                        { "title": "Interface", "value": record.interface },
                        { "title": "Event", "value": record.event.name() },
                        { "title": "Time", "value": record.time }
                    ] }
                ]
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::events::EventType;

    fn record() -> EventRecord {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut record = EventRecord::new(time, "eth0", EventType::Blocked);
        record.host = Some("gw1".into());
        record.source = Some("203.0.113.7".parse().unwrap());
        record.reason = Some("<!channel> & friends".into());
        record
    }

    fn config(format: WebhookFormat) -> Alerts {
        Alerts { webhook: Some("https://hooks.example/x?access_token=t".into()), format, ..Alerts::default() }
    }

    fn body(request: &WebhookRequest) -> Value {
        serde_json::from_slice(&request.body).unwrap()
    }

    #[test]
    fn each_service_gets_its_shape() {
        let url = "https://hooks.example/x?access_token=t";
        let json = webhook_request(&config(WebhookFormat::Json), url, &record(), 0);
        assert_eq!(body(&json)["event"], "blocked");
        assert_eq!(body(&json)["host"], "gw1");

        let slack = body(&webhook_request(&config(WebhookFormat::Slack), url, &record(), 0));
        let text = slack["text"].as_str().unwrap();
        assert!(text.starts_with("portguard on gw1, eth0: MANUAL-BLOCK 203.0.113.7"), "{text}");
        assert!(text.contains("&lt;!channel&gt; &amp; friends"), "no mention, no entity: {text}");
        assert_eq!(slack["blocks"][0]["text"]["type"], "mrkdwn");

        let teams = body(&webhook_request(&config(WebhookFormat::Teams), url, &record(), 0));
        let card = &teams["attachments"][0];
        assert_eq!(card["contentType"], "application/vnd.microsoft.card.adaptive");
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        assert_eq!(card["content"]["body"][2]["facts"][0]["value"], "gw1");

        for format in [WebhookFormat::Dingtalk, WebhookFormat::Wecom] {
            let chat = body(&webhook_request(&config(format), url, &record(), 0));
            assert_eq!(chat["msgtype"], "text");
            assert!(chat["text"]["content"].as_str().unwrap().ends_with("\n2027-01-15T08:00:00.000Z"));
        }

        let mut long = record();
        long.reason = Some("x".repeat(5000));
        let chat = body(&webhook_request(&config(WebhookFormat::Wecom), url, &long, 0));
        assert!(chat["text"]["content"].as_str().unwrap().chars().count() < 700);
    }

    #[test]
    fn signatures() {
        // RFC 4231, test case 2.
        assert_eq!(
            hex(&sign(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut signed = config(WebhookFormat::Json);
        signed.hmac_secret = Some(crate::policy::alerts::Secret::new(b"k".to_vec()));
        signed.headers = vec![("Authorization".into(), "Bearer abc".into())];
        let request = webhook_request(&signed, "https://hooks.example/x", &record(), 0);
        let header = |name: &str| request.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(header(SIGNATURE_HEADER), Some(format!("sha256={}", hex(&sign(b"k", &request.body)))));
        assert_eq!(header("Authorization").as_deref(), Some("Bearer abc"));
        assert_eq!(request.url, "https://hooks.example/x", "only DingTalk's URL is signed");

        signed.format = WebhookFormat::Dingtalk;
        let request = webhook_request(
            &signed,
            "https://oapi.dingtalk.com/robot/send?access_token=t",
            &record(),
            1_700_000_000_000,
        );
        let expected = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(sign(b"k", b"1700000000000\nk"))
        };
        let expected = expected.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        assert_eq!(
            request.url,
            format!(
                "https://oapi.dingtalk.com/robot/send?access_token=t&timestamp=1700000000000&sign={expected}"
            )
        );
    }
}
