//! A short, human label for a session: the `device_name` the user gave, or a
//! summary of the User-Agent ("Firefox on Linux"), bounded either way.

use crate::oauth::request::{MAX_DEVICE_NAME_LEN, clean_label};

/// Browsers and clients recognised in a User-Agent, most specific first
/// (Edge and Opera also say "Chrome", Chrome also says "Safari").
const BROWSERS: [(&str, &str); 9] = [
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chromium/", "Chromium"),
    ("HeadlessChrome/", "Headless Chrome"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("okhttp/", "okhttp"),
];

const SYSTEMS: [(&str, &str); 7] = [
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
];

/// The label stored with a new session.
pub fn device_label(device_name: Option<&str>, user_agent: Option<&str>) -> Option<String> {
    if let Some(name) = device_name.map(clean_label).filter(|n| !n.is_empty()) {
        return Some(name);
    }
    let ua = user_agent?.trim();
    if ua.is_empty() {
        return None;
    }
    let browser = BROWSERS.iter().find(|(k, _)| ua.contains(k)).map(|b| b.1);
    let system = SYSTEMS.iter().find(|(k, _)| ua.contains(k)).map(|s| s.1);
    Some(match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.to_string(),
        (None, Some(s)) => format!("unknown client on {s}"),
        // Unrecognised: the product token (before the first space or slash).
        (None, None) => clean_label(ua.split([' ', '/']).next().unwrap_or(ua))
            .chars()
            .take(MAX_DEVICE_NAME_LEN)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_prefer_the_users_name_then_summarise_the_user_agent() {
        assert_eq!(
            device_label(Some("  Work laptop "), Some("curl/8.0")).as_deref(),
            Some("Work laptop")
        );
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(
            device_label(None, Some(firefox)).as_deref(),
            Some("Firefox on Linux")
        );
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0";
        assert_eq!(
            device_label(None, Some(edge)).as_deref(),
            Some("Edge on Windows")
        );
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
        assert_eq!(
            device_label(None, Some(iphone)).as_deref(),
            Some("Safari on iOS")
        );
        assert_eq!(
            device_label(None, Some("reqwest")).as_deref(),
            Some("reqwest")
        );
        assert_eq!(
            device_label(None, Some(&"x".repeat(300))).map(|l| l.len()),
            Some(MAX_DEVICE_NAME_LEN)
        );
        assert_eq!(device_label(Some(""), None), None);
    }
}
