//! Where the datastream is: the URL derivation of the Schematic clients.

/// Why a datastream URL cannot be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The value is not an absolute URL with a host.
    #[error("not a usable URL: {0:?}")]
    Invalid(String),
    /// The scheme is neither http(s) nor ws(s).
    #[error("unsupported scheme {scheme:?} in {url:?} (expected http, https, ws or wss)")]
    Scheme {
        /// The scheme found.
        scheme: String,
        /// The URL.
        url: String,
    },
}

/// The datastream URL: `datastream_url` as given when set, otherwise derived
/// from the API URL (spec §1): `https`→`wss`, `http`→`ws`; a first host label
/// `api` of a host with several labels becomes `datastream`; the path is
/// replaced by `/datastream`; the port is kept. A `ws://`/`wss://` API URL is
/// used as given.
///
/// ```
/// use emcachers::schematic::datastream::datastream_url;
/// assert_eq!(
///     datastream_url(None, "https://api.schematichq.com").unwrap(),
///     "wss://datastream.schematichq.com/datastream"
/// );
/// assert_eq!(
///     datastream_url(None, "http://localhost:8080").unwrap(),
///     "ws://localhost:8080/datastream"
/// );
/// ```
pub fn datastream_url(datastream_url: Option<&str>, api_url: &str) -> Result<String, UrlError> {
    if let Some(url) = datastream_url.map(str::trim).filter(|u| !u.is_empty()) {
        return Ok(url.to_owned());
    }
    let api_url = api_url.trim();
    let (scheme, rest) = api_url
        .split_once("://")
        .ok_or_else(|| UrlError::Invalid(api_url.to_owned()))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "wss" => return Ok(api_url.to_owned()),
        "https" => "wss",
        "http" => "ws",
        other => {
            return Err(UrlError::Scheme {
                scheme: other.to_owned(),
                url: api_url.to_owned(),
            });
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Credentials are not part of the datastream address.
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(UrlError::Invalid(api_url.to_owned()));
    }
    let (host, port) = split_port(authority);
    let host = match host.split_once('.') {
        Some((first, tail)) if first.eq_ignore_ascii_case("api") && !tail.is_empty() => {
            format!("datastream.{tail}")
        }
        _ => host.to_owned(),
    };
    Ok(match port {
        Some(port) => format!("{ws_scheme}://{host}:{port}/datastream"),
        None => format!("{ws_scheme}://{host}/datastream"),
    })
}

/// The REST base URL (no trailing slash).
pub fn api_base(api_url: &str) -> String {
    api_url.trim().trim_end_matches('/').to_owned()
}

/// Host and port of an authority; IPv6 literals keep their brackets.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find("]:") {
            Some(end) => (&authority[..=end], Some(&authority[end + 2..])),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_datastream_url_like_the_schematic_clients() {
        let cases = [
            (
                "https://api.schematichq.com",
                "wss://datastream.schematichq.com/datastream",
            ),
            ("http://localhost:8080", "ws://localhost:8080/datastream"),
            (
                "https://api.example.com:8443/v1/",
                "wss://datastream.example.com:8443/datastream",
            ),
            ("http://api:9000", "ws://api:9000/datastream"),
            ("http://127.0.0.1:4000/x", "ws://127.0.0.1:4000/datastream"),
            ("http://[::1]:4000", "ws://[::1]:4000/datastream"),
            ("ws://somewhere:1/custom", "ws://somewhere:1/custom"),
            ("HTTPS://API.acme.io", "wss://datastream.acme.io/datastream"),
        ];
        for (api, expected) in cases {
            assert_eq!(datastream_url(None, api).unwrap(), expected, "{api}");
        }
    }

    #[test]
    fn an_explicit_url_wins() {
        assert_eq!(
            datastream_url(Some("ws://x:1/ds"), "https://api.schematichq.com").unwrap(),
            "ws://x:1/ds"
        );
        assert_eq!(
            datastream_url(Some("  "), "http://h").unwrap(),
            "ws://h/datastream"
        );
    }

    #[test]
    fn bad_urls_are_errors() {
        assert!(matches!(
            datastream_url(None, "localhost:8080"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            datastream_url(None, "ftp://api.x.com"),
            Err(UrlError::Scheme { .. })
        ));
        assert!(datastream_url(None, "http://").is_err());
    }
}
