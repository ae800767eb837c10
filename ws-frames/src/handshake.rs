//! The opening handshake (RFC 6455 §4): the server's accept key, the permessage-deflate
//! negotiation (RFC 7692 §5), and a client that offers it.

use crate::reader::{End, FrameReader};
use crate::WireError;
use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The server's answer: compression without context takeover either way, so one compressed
/// message serves every client and no client holds a compressor's window per connection.
pub const DEFLATE_AGREED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The same, to an offer that named `server_max_window_bits=15`: a server accepts that
/// parameter by naming it in its answer (RFC 7692 §7.1.2.1).
pub const DEFLATE_AGREED_WINDOW_15: &str = "permessage-deflate; server_no_context_takeover; \
     client_no_context_takeover; server_max_window_bits=15";

/// What a client offers: a window of any size is fine both ways, and neither end keeps one.
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to a `Sec-WebSocket-Extensions` header, when one of its offers is
/// permessage-deflate in a form the wall can agree to (the first such offer is taken). An offer
/// that asks for a window under 15 bits is one the wall cannot honour (it compresses with the
/// full window), and one with a parameter it does not know is declined rather than guessed at;
/// the client then gets plain frames.
pub fn deflate_answer(header: Option<&str>) -> Option<&'static str> {
    let header = header?;
    header.split(',').find_map(|offer| {
        let answer = if offer.contains("server_max_window_bits") {
            DEFLATE_AGREED_WINDOW_15
        } else {
            DEFLATE_AGREED
        };
        deflate_acceptable(offer).then_some(answer)
    })
}

/// Whether one offer is permessage-deflate with parameters the wall can honour.
fn deflate_acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen = Vec::new();
    parts.all(|p| {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("server_max_window_bits", Some("15")) => true,
            // The client's own window: any is fine, since the wall inflates with 15 bits.
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => {
                v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
            }
            _ => false,
        }
    })
}

/// A client's connection: its reader (server frames, unmasked) and whether the server agreed
/// to compress. It never writes after the handshake; the bench's and tests' clients only read.
pub struct ClientConnection {
    pub reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    pub deflate: bool,
    /// The server's `Sec-WebSocket-Extensions` answer, as it came.
    pub extensions: Option<String>,
    /// Kept so the connection stays open both ways.
    pub writer: tokio::net::tcp::OwnedWriteHalf,
}

/// Open `ws://host:port/path` with `subprotocol` offered, and permessage-deflate when
/// `offer_deflate`; messages over `max_message` bytes are refused.
pub async fn connect(
    url: &str,
    subprotocol: Option<&str>,
    offer_deflate: bool,
    max_message: usize,
) -> Result<ClientConnection, WireError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| WireError::Handshake(format!("{url}: only ws:// URLs")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let key = base64::engine::general_purpose::STANDARD.encode(rand_key());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = subprotocol {
        request.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if offer_deflate {
        request.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"));
    }
    request.push_str("\r\n");
    write.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            return Err(WireError::Handshake(
                "the answer's head is over 16 KiB".into(),
            ));
        }
        let mut chunk = [0u8; 4096];
        let n = read.read(&mut chunk).await?;
        if n == 0 {
            return Err(WireError::Handshake("closed before answering".into()));
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&head[..end]).to_string();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(WireError::Handshake(format!("answered `{status}`")));
    }
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("sec-websocket-accept").as_deref() != Some(accept_key(&key).as_str()) {
        return Err(WireError::Handshake("a wrong Sec-WebSocket-Accept".into()));
    }
    let extensions = header("sec-websocket-extensions");
    let deflate = match &extensions {
        None => false,
        Some(e) if offer_deflate && e.trim_start().starts_with("permessage-deflate") => true,
        Some(e) => return Err(WireError::Handshake(format!("extensions not offered: {e}"))),
    };
    let reader =
        FrameReader::new(read, End::Client, max_message, deflate).with_buffered(&head[end..]);
    Ok(ClientConnection {
        reader,
        deflate,
        extensions,
        writer: write,
    })
}

/// Sixteen bytes for the key: it only has to differ between connections (it is no secret).
fn rand_key() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&n.to_le_bytes());
    k[8..].copy_from_slice(&t.to_le_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_of_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn which_offers_the_wall_agrees_to() {
        for yes in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            "Permessage-Deflate; client_no_context_takeover",
            DEFLATE_OFFER,
        ] {
            assert!(deflate_answer(Some(yes)).is_some(), "{yes}");
        }
        for no in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; shiny_new_parameter",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(deflate_answer(Some(no)), None, "{no}");
        }
        assert_eq!(deflate_answer(None), None);
        // The window is named in the answer only when the offer named it.
        assert_eq!(
            deflate_answer(Some("permessage-deflate; client_max_window_bits")),
            Some(DEFLATE_AGREED)
        );
        assert_eq!(
            deflate_answer(Some(
                "permessage-deflate; server_max_window_bits=10, \
                 permessage-deflate; server_max_window_bits=15"
            )),
            Some(DEFLATE_AGREED_WINDOW_15)
        );
    }
}
