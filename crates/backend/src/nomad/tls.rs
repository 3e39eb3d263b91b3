//! `NOMAD_TLS_SERVER_NAME`: Nomad's certificates name `server.<region>.nomad`, not the host
//! a scheduler dials. The request goes to a URL whose host is that name, and a resolver
//! turns the name into the address's own host: the connection reaches the address while
//! rustls sends the name as SNI and checks the certificate against it, as Nomad's CLI does
//! with `tls.Config.ServerName`.

use std::net::SocketAddr;

/// The base URL with `name` for its host, and the resolver that sends `name` to the
/// address's host. An `http://` address is left as it is (no TLS, no name to check).
pub(crate) fn server_name(address: &str, name: &str) -> Result<(String, ServerName), String> {
    let mut url = reqwest::Url::parse(address)
        .map_err(|e| format!("NOMAD_ADDR `{address}` is not a URL: {e}"))?;
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string(),
        None => return Err(format!("NOMAD_ADDR `{address}` names no host")),
    };
    if url.scheme() != "https" {
        return Ok((address.to_owned(), ServerName::none()));
    }
    url.set_host(Some(name))
        .map_err(|e| format!("NOMAD_TLS_SERVER_NAME `{name}` is not a host name: {e}"))?;
    let base = url.as_str().trim_end_matches('/').to_owned();
    Ok((
        base,
        ServerName {
            name: Some(name.to_ascii_lowercase()),
            host,
        },
    ))
}

pub(crate) struct ServerName {
    name: Option<String>,
    host: String,
}

impl ServerName {
    fn none() -> ServerName {
        ServerName {
            name: None,
            host: String::new(),
        }
    }
}

impl reqwest::dns::Resolve for ServerName {
    fn resolve(&self, asked: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let target = match &self.name {
            Some(name) if asked.as_str().eq_ignore_ascii_case(name) => self.host.clone(),
            _ => asked.as_str().to_owned(),
        };
        Box::pin(async move {
            // The port is the URL's: the resolver's is ignored.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((target.as_str(), 0))
                .await?
                .collect();
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_server_and_the_resolver_keeps_the_address() {
        let (base, resolver) = server_name("https://10.0.0.5:4646", "server.global.nomad").unwrap();
        assert_eq!(base, "https://server.global.nomad:4646");
        assert_eq!(resolver.host, "10.0.0.5");
        let (base, resolver) = server_name("https://[::1]:4646/", "server.global.nomad").unwrap();
        assert_eq!(base, "https://server.global.nomad:4646");
        assert_eq!(resolver.host, "::1");
        let (base, resolver) = server_name("http://127.0.0.1:4646", "server.global.nomad").unwrap();
        assert_eq!(base, "http://127.0.0.1:4646");
        assert!(resolver.name.is_none());
    }

    #[test]
    fn a_bad_name_is_refused_naming_it() {
        let error = server_name("https://127.0.0.1:4646", "bad name/x")
            .err()
            .unwrap();
        assert!(
            error.contains("NOMAD_TLS_SERVER_NAME `bad name/x`"),
            "{error}"
        );
    }
}
