//! Outbound HTTP to URLs that workspaces choose (webhook endpoints, runtime-defined providers):
//! the guard against server-side request forgery.
//!
//! Every rule is enforced where the connection is made, not only where the URL is accepted:
//! - https only; plain http only to a loopback host, and only when the operator allows loopback;
//! - no user info in the URL, no redirects (a 3xx is an error, never followed);
//! - the host name is resolved by the client's own resolver, which refuses the whole name when any
//!   address it resolves to lies in a range the policy does not allow, and hands the connector the
//!   very addresses it checked (so a second, different DNS answer cannot be used: no rebinding);
//! - literal IP addresses are checked the same way before the request is sent;
//! - a bounded time for the whole exchange and a bounded response size.
//!
//! Ranges: loopback only with `allow_loopback`; private (RFC 1918), shared (RFC 6598) and unique
//! local IPv6 only with `allow_private_networks`; link-local (cloud metadata endpoints live there),
//! unspecified, broadcast, multicast and documentation ranges never. IPv4 addresses embedded in
//! IPv6 (mapped, NAT64) are judged as IPv4.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

/// What outbound requests may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundPolicy {
    /// Allow loopback addresses (and plain http to them): local development and tests.
    pub allow_loopback: bool,
    /// Allow private (10/8, 172.16/12, 192.168/16), shared (100.64/10) and unique-local IPv6
    /// (fc00::/7) addresses: for deployments whose providers or receivers are internal.
    pub allow_private_networks: bool,
    /// Time allowed for a whole request, connection and body included.
    pub timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        Self {
            allow_loopback: false,
            allow_private_networks: false,
            timeout: Duration::from_secs(10),
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// Why an outbound request was refused or failed. Messages name the URL's host at most, never a
/// path or query (they may carry secrets).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The URL cannot be used: not https, user info, no host, or not a URL at all.
    #[error("url refused: {0}")]
    UrlRefused(String),
    /// The host is, or resolves to, an address the policy does not allow.
    #[error("address not allowed: {host} is in a {range} range")]
    AddressNotAllowed {
        /// The host as written in the URL.
        host: String,
        /// Which range (loopback, private, link-local, ...).
        range: &'static str,
    },
    /// The host name does not resolve.
    #[error("{0} does not resolve")]
    Unresolvable(String),
    /// The server answered with a redirect, which is never followed.
    #[error("redirect refused (HTTP {0})")]
    Redirect(u16),
    /// The response body is larger than allowed.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The exchange took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// The connection failed or broke.
    #[error("connection failed: {0}")]
    Connect(String),
}

impl OutboundError {
    /// True when the policy refused the request (the URL or its addresses), false when the
    /// destination failed (unreachable, slow, misbehaving). A refusal is the caller's to fix;
    /// a failure may be transient.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::UrlRefused(_) | Self::AddressNotAllowed { .. } | Self::Redirect(_)
        )
    }
}

/// A response whose body was read within the size limit.
#[derive(Clone, Debug)]
pub struct OutboundResponse {
    /// The HTTP status (never a 3xx: redirects are errors).
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body, at most `max_response_bytes`.
    pub body: Vec<u8>,
}

/// The HTTP client for workspace-chosen URLs. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct OutboundClient {
    client: reqwest::Client,
    policy: OutboundPolicy,
}

impl OutboundClient {
    /// Builds the client for `policy`.
    pub fn new(policy: OutboundPolicy) -> Result<Self, OutboundError> {
        Self::with_fixed_hosts(policy, BTreeMap::new())
    }

    /// Like [`OutboundClient::new`], with fixed answers for some names instead of DNS (tests,
    /// split-horizon deployments). Fixed answers are checked against the policy like any other.
    pub fn with_fixed_hosts(
        policy: OutboundPolicy,
        fixed: BTreeMap<String, Vec<IpAddr>>,
    ) -> Result<Self, OutboundError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .user_agent("credential-broker")
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
                fixed: Arc::new(fixed),
            }))
            .build()
            .map_err(|_| OutboundError::Connect("cannot build the http client".to_owned()))?;
        Ok(Self { client, policy })
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// The reqwest client, to build requests with; send them with [`OutboundClient::send`].
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Checks what can be checked without resolving: scheme, user info, host, literal addresses.
    /// Use it where a URL is accepted, to refuse it at once with a clear reason.
    pub fn check_url(&self, url: &Url) -> Result<(), OutboundError> {
        check_url(&self.policy, url)
    }

    /// Sends `request` after checking its URL; refuses redirects and reads the body within the
    /// size limit. Host names are resolved and checked by the client's resolver.
    pub async fn send(&self, request: RequestBuilder) -> Result<OutboundResponse, OutboundError> {
        let request = request
            .build()
            .map_err(|_| OutboundError::UrlRefused("the request cannot be built".to_owned()))?;
        self.check_url(request.url())?;
        let mut response = self.client.execute(request).await.map_err(transport)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(OutboundError::Redirect(status.as_u16()));
        }
        let limit = self.policy.max_response_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(OutboundError::TooLarge(limit));
        }
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > limit {
                return Err(OutboundError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(OutboundResponse {
            status,
            headers,
            body,
        })
    }
}

/// The URL checks that need no resolution.
pub fn check_url(policy: &OutboundPolicy, url: &Url) -> Result<(), OutboundError> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(OutboundError::UrlRefused(
            "user info in the url is not allowed".to_owned(),
        ));
    }
    let host = url
        .host()
        .ok_or_else(|| OutboundError::UrlRefused("the url has no host".to_owned()))?;
    let loopback_host = match &host {
        Host::Domain(name) => is_localhost_name(name),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    };
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_loopback && loopback_host => {}
        "http" => {
            return Err(OutboundError::UrlRefused(
                "only https urls are allowed".to_owned(),
            ));
        }
        _ => {
            return Err(OutboundError::UrlRefused(
                "only https urls are allowed".to_owned(),
            ));
        }
    }
    let ip = match host {
        Host::Domain(name) if is_localhost_name(name) => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Host::Domain(_) => None,
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
    };
    match ip.and_then(|ip| refused_range(policy, ip)) {
        Some(range) => Err(OutboundError::AddressNotAllowed {
            host: url.host_str().unwrap_or_default().to_owned(),
            range,
        }),
        None => Ok(()),
    }
}

fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// The range `ip` lies in when the policy refuses it; `None` when it may be reached.
pub fn refused_range(policy: &OutboundPolicy, ip: IpAddr) -> Option<&'static str> {
    let (range, allowed) = classify(ip);
    let ok = match allowed {
        Allowance::Always => true,
        Allowance::Loopback => policy.allow_loopback,
        Allowance::Private => policy.allow_private_networks,
        Allowance::Never => false,
    };
    (!ok).then_some(range)
}

enum Allowance {
    Always,
    Loopback,
    Private,
    Never,
}

fn classify(ip: IpAddr) -> (&'static str, Allowance) {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> (&'static str, Allowance) {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        ("loopback", Allowance::Loopback)
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        ("private", Allowance::Private)
    } else if ip.is_link_local() {
        ("link-local", Allowance::Never)
    } else if ip.is_unspecified() || a == 0 {
        ("unspecified", Allowance::Never)
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        ("broadcast, multicast or reserved", Allowance::Never)
    } else if ip.is_documentation() {
        ("documentation", Allowance::Never)
    } else {
        ("public", Allowance::Always)
    }
}

fn classify_v6(ip: Ipv6Addr) -> (&'static str, Allowance) {
    if ip.is_loopback() {
        ("loopback", Allowance::Loopback)
    } else if ip.is_unique_local() {
        ("private", Allowance::Private)
    } else if ip.is_unicast_link_local() {
        ("link-local", Allowance::Never)
    } else if ip.is_unspecified() {
        ("unspecified", Allowance::Never)
    } else if ip.is_multicast() {
        ("broadcast, multicast or reserved", Allowance::Never)
    } else if ip.segments()[0] == 0x2001 && ip.segments()[1] == 0x0db8 {
        ("documentation", Allowance::Never)
    } else {
        ("public", Allowance::Always)
    }
}

/// The IPv4 address inside an IPv4-mapped (::ffff:0:0/96) or NAT64 (64:ff9b::/96) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]).then(|| {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// Resolves with the system resolver and refuses names with any address outside the policy.
/// The connector uses exactly the addresses returned here.
struct GuardedResolver {
    policy: OutboundPolicy,
    fixed: Arc<BTreeMap<String, Vec<IpAddr>>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        let fixed = self.fixed.get(&host).cloned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match fixed {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await
                    .map_err(|_| OutboundError::Unresolvable(host.clone()))?
                    .collect(),
            };
            if addrs.is_empty() {
                return Err(OutboundError::Unresolvable(host).into());
            }
            if let Some(range) = addrs.iter().find_map(|a| refused_range(&policy, a.ip())) {
                return Err(OutboundError::AddressNotAllowed { host, range }.into());
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Maps a reqwest failure, finding the resolver's refusal in its source chain.
fn transport(err: reqwest::Error) -> OutboundError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(own) = e.downcast_ref::<OutboundError>() {
            return own.clone();
        }
        source = e.source();
    }
    if err.is_timeout() {
        OutboundError::Timeout
    } else {
        // Without the URL: its path or query may carry secrets.
        OutboundError::Connect(err.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_loopback: bool, allow_private_networks: bool) -> OutboundPolicy {
        OutboundPolicy {
            allow_loopback,
            allow_private_networks,
            ..OutboundPolicy::default()
        }
    }

    fn check(p: &OutboundPolicy, url: &str) -> Result<(), OutboundError> {
        check_url(p, &Url::parse(url).expect("url"))
    }

    #[test]
    fn ranges_follow_the_policy() {
        let strict = policy(false, false);
        let open = policy(true, true);
        let table: &[(&str, Option<&str>, Option<&str>)] = &[
            // (address, refused by strict, refused by open)
            ("93.184.216.34", None, None),
            ("2606:2800:220:1::1", None, None),
            ("127.0.0.1", Some("loopback"), None),
            ("::1", Some("loopback"), None),
            ("10.1.2.3", Some("private"), None),
            ("172.16.0.1", Some("private"), None),
            ("192.168.1.1", Some("private"), None),
            ("100.64.0.1", Some("private"), None),
            ("fd00::1", Some("private"), None),
            ("169.254.169.254", Some("link-local"), Some("link-local")),
            ("fe80::1", Some("link-local"), Some("link-local")),
            (
                "::ffff:169.254.169.254",
                Some("link-local"),
                Some("link-local"),
            ),
            ("::ffff:10.0.0.1", Some("private"), None),
            ("64:ff9b::a9fe:a9fe", Some("link-local"), Some("link-local")),
            ("0.0.0.0", Some("unspecified"), Some("unspecified")),
            ("::", Some("unspecified"), Some("unspecified")),
            (
                "224.0.0.1",
                Some("broadcast, multicast or reserved"),
                Some("broadcast, multicast or reserved"),
            ),
            (
                "255.255.255.255",
                Some("broadcast, multicast or reserved"),
                Some("broadcast, multicast or reserved"),
            ),
            ("192.0.2.1", Some("documentation"), Some("documentation")),
        ];
        for (addr, by_strict, by_open) in table {
            let ip: IpAddr = addr.parse().expect("ip");
            assert_eq!(refused_range(&strict, ip), *by_strict, "{addr} strict");
            assert_eq!(refused_range(&open, ip), *by_open, "{addr} open");
        }
    }

    #[test]
    fn urls_are_checked_before_any_resolution() {
        let strict = policy(false, false);
        let dev = policy(true, false);
        assert!(check(&strict, "https://example.com/hook").is_ok());
        for url in [
            "http://example.com/hook",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "http://127.0.0.1:8080/",
        ] {
            assert!(
                matches!(check(&strict, url), Err(OutboundError::UrlRefused(_))),
                "{url}"
            );
        }
        for url in [
            "https://127.0.0.1/",
            "https://localhost/",
            "https://[::1]/",
            "https://10.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:a9fe:a9fe]/",
        ] {
            assert!(
                matches!(
                    check(&strict, url),
                    Err(OutboundError::AddressNotAllowed { .. })
                ),
                "{url}"
            );
        }
        assert!(check(&dev, "http://127.0.0.1:8080/").is_ok());
        assert!(check(&dev, "http://localhost:8080/").is_ok());
        assert!(
            matches!(
                check(&dev, "http://example.com/"),
                Err(OutboundError::UrlRefused(_))
            ),
            "plain http only to loopback"
        );
    }

    /// A plain HTTP server on loopback answering every connection with `response`.
    async fn serve_once(response: &'static str) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0_u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn names_resolving_to_refused_ranges_are_refused_at_connect_time() {
        // A public-looking name whose DNS answer is loopback or the metadata address (rebinding):
        // the URL check lets it through, the resolver refuses it before any connection.
        let server = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let fixed = BTreeMap::from([
            (
                "rebind.example".to_owned(),
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ),
            (
                "mixed.example".to_owned(),
                vec![
                    "93.184.216.34".parse().expect("ip"),
                    "169.254.169.254".parse().expect("ip"),
                ],
            ),
        ]);
        let strict =
            OutboundClient::with_fixed_hosts(policy(false, false), fixed.clone()).expect("client");
        for host in ["rebind.example", "mixed.example"] {
            let url = format!("https://{host}:{}/", server.port());
            assert!(strict.check_url(&Url::parse(&url).expect("url")).is_ok());
            let err = strict
                .send(strict.inner().get(&url))
                .await
                .expect_err("refused");
            assert!(
                matches!(&err, OutboundError::AddressNotAllowed { host: h, .. } if h == host),
                "{host}: {err:?}"
            );
            assert!(err.is_refusal());
        }
        // The same name is reachable when the operator allows loopback (plain http stays refused
        // for a name that is not a loopback name, so the check is on the address).
        let dev = OutboundClient::with_fixed_hosts(policy(true, false), fixed).expect("client");
        let err = dev
            .send(
                dev.inner()
                    .get(format!("https://rebind.example:{}/", server.port())),
            )
            .await
            .expect_err("no tls on the test server");
        assert!(matches!(err, OutboundError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn redirects_and_oversized_bodies_are_refused() {
        let client = OutboundClient::new(OutboundPolicy {
            max_response_bytes: 16,
            ..policy(true, false)
        })
        .expect("client");
        let cases = [
            (
                "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n",
                "127.0.0.1",
                Err(OutboundError::Redirect(302)),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123",
                "localhost",
                Err(OutboundError::TooLarge(16)),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                "127.0.0.1",
                Ok(b"ok".to_vec()),
            ),
        ];
        for (response, host, expected) in cases {
            let server = serve_once(response).await;
            let url = format!("http://{host}:{}/", server.port());
            let got = client.send(client.inner().get(url)).await;
            assert_eq!(got.map(|r| r.body), expected, "{response:?}");
        }
        assert!(OutboundError::Redirect(302).is_refusal());
        assert!(!OutboundError::TooLarge(16).is_refusal());
    }
}
