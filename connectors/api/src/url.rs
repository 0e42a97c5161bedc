//! Server URLs mean the server they name.
//!
//! mysql_async's `prefer_socket`, on by default, makes a client that reached
//! `127.0.0.1` over TCP ask the server for `@@socket` and reconnect through that path
//! on the local machine. Through an SSH tunnel or a local proxy (ProxySQL, HAProxy, a
//! port forward) that path belongs to whatever server runs on this host, or none: rowlog
//! would read or write another server than the one configured. So every URL rowlog
//! connects with says `prefer_socket=false` unless the operator set `prefer_socket`
//! or `socket` in it.

use std::borrow::Cow;

/// `url` with `prefer_socket=false` added, unless it already names `prefer_socket` or
/// `socket`.
pub fn tcp_as_given(url: &str) -> Cow<'_, str> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    let set = query
        .split('&')
        .filter_map(|kv| kv.split('=').next())
        .any(|k| k == "prefer_socket" || k == "socket");
    if set {
        Cow::Borrowed(url)
    } else if url.contains('?') {
        Cow::Owned(format!("{url}&prefer_socket=false"))
    } else {
        Cow::Owned(format!("{url}?prefer_socket=false"))
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_as_given;

    #[test]
    fn a_url_keeps_to_tcp_unless_it_says_otherwise() {
        assert_eq!(
            tcp_as_given("mysql://u:p@127.0.0.1:3307/"),
            "mysql://u:p@127.0.0.1:3307/?prefer_socket=false"
        );
        assert_eq!(
            tcp_as_given("mysql://h/db?ssl-mode=required"),
            "mysql://h/db?ssl-mode=required&prefer_socket=false"
        );
        assert_eq!(
            tcp_as_given("mysql://h/?prefer_socket=true"),
            "mysql://h/?prefer_socket=true"
        );
        assert_eq!(
            tcp_as_given("mysql://h/?socket=/run/mysqld/mysqld.sock"),
            "mysql://h/?socket=/run/mysqld/mysqld.sock"
        );
    }
}
