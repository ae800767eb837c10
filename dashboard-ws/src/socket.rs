//! A wall client's websocket after the HTTP upgrade: the opening handshake's answer, the
//! shared frames out ([`FrameSink`]) and the client's frames in ([`incoming`]).
//!
//! The wall writes its own frames (`floodcmd-ws-frames`) rather than through a websocket
//! library, because one delta goes to every client: framed and compressed once, each socket is
//! handed the same bytes, with no copy into a per-connection write buffer and no compressor
//! per connection. See `docs/WEBSOCKET.md` (compression).

use bytes::{Buf, Bytes};
use floodcmd_ws_frames::handshake::accept_key;
use floodcmd_ws_frames::reader::End;
use floodcmd_ws_frames::{FrameReader, Incoming, OutFrame, WireError};
use futures::{Sink, Stream};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;

/// The most a client may send in one message: it sends nothing the wall reads but a close.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Writes [`OutFrame`]s to a client's socket: each is the frame's shared bytes, written as
/// they are (compressed ones when the client agreed to permessage-deflate).
pub struct FrameSink<W> {
    io: W,
    pending: Bytes,
    deflate: bool,
}

impl<W> FrameSink<W> {
    pub fn new(io: W, deflate: bool) -> FrameSink<W> {
        FrameSink {
            io,
            pending: Bytes::new(),
            deflate,
        }
    }
}

impl<W: AsyncWrite + Unpin> FrameSink<W> {
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<OutFrame> for FrameSink<W> {
    type Error = std::io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_write_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, frame: OutFrame) -> Result<(), Self::Error> {
        let me = self.get_mut();
        me.pending = frame.wire(me.deflate);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let me = self.get_mut();
        ready!(me.poll_write_pending(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let me = self.get_mut();
        ready!(me.poll_write_pending(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

/// The client's messages, ending at a clean end of the connection or after the first error
/// (and `None` from then on, however often asked).
pub fn incoming<R>(
    reader: FrameReader<R>,
) -> Pin<Box<dyn Stream<Item = Result<Incoming, WireError>> + Send>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let messages = futures::stream::unfold(Some(reader), |r| async move {
        let mut r = r?;
        match r.next().await {
            Ok(Some(m)) => Some((Ok(m), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    Box::pin(futures::StreamExt::fuse(messages))
}

/// What is wrong with a request to open the websocket, named for the client.
pub fn check_upgrade(headers: &HeaderMap) -> Result<String, String> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") {
        return Err("`Upgrade: websocket` is missing".into());
    }
    if !has(header::CONNECTION, "upgrade") {
        return Err("`Connection: Upgrade` is missing".into());
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err("`Sec-WebSocket-Version: 13` is missing".into());
    }
    match headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    {
        Some(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
        _ => Err("`Sec-WebSocket-Key` is missing".into()),
    }
}

/// Answer the upgrade (101) and, once the connection is handed over, run `serve` on the
/// client's frames in and out. `protocol`: the subprotocol to name in the answer; `deflate`:
/// the `Sec-WebSocket-Extensions` answer when the client offered compression in a form the
/// wall agrees to ([`floodcmd_ws_frames::handshake::deflate_answer`]).
pub fn upgrade<F, Fut>(
    key: &str,
    on_upgrade: OnUpgrade,
    protocol: Option<&'static str>,
    deflate: Option<&'static str>,
    serve: F,
) -> Response
where
    F: FnOnce(
            FrameSink<tokio::io::WriteHalf<TokioIo<hyper::upgrade::Upgraded>>>,
            Pin<Box<dyn Stream<Item = Result<Incoming, WireError>> + Send>>,
        ) -> Fut
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                let on = deflate.is_some();
                let reader = FrameReader::new(read, End::Server, MAX_CLIENT_MESSAGE, on);
                serve(FrameSink::new(write, on), incoming(reader)).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut r = Response::default();
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key(key)).expect("base64 is a header value"),
    );
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    if let Some(answer) = deflate {
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(answer),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::SinkExt;

    #[test]
    fn what_an_upgrade_request_must_carry() {
        let mut h = HeaderMap::new();
        let need = [
            ("upgrade", "WebSocket", "Upgrade: websocket"),
            ("connection", "keep-alive, Upgrade", "Connection: Upgrade"),
            ("sec-websocket-version", "13", "Sec-WebSocket-Version: 13"),
            (
                "sec-websocket-key",
                "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Key",
            ),
        ];
        for (name, value, named) in need {
            let e = check_upgrade(&h).unwrap_err();
            assert!(e.contains(named), "{e} / {named}");
            h.insert(name, HeaderValue::from_static(value));
        }
        assert_eq!(check_upgrade(&h).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[tokio::test]
    async fn a_client_that_agreed_gets_the_message_compressed_one_that_did_not_plain() {
        let delta = OutFrame::text(r#"{"type":"delta","live":[]}"#.repeat(50));
        for deflate in [false, true] {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let mut sink = FrameSink::new(a, deflate);
            sink.send(delta.clone()).await.unwrap();
            drop(sink);
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .unwrap();
            assert_eq!(got[0] & 0x40 != 0, deflate, "RSV1 marks it compressed");
            // What a client reads back is the message.
            let mut r = FrameReader::new(&got[..], End::Client, 1 << 20, true);
            let Some(Incoming::Data {
                text: true,
                compressed,
                payload,
            }) = r.next().await.unwrap()
            else {
                panic!("a text message");
            };
            assert_eq!(compressed, deflate);
            let text = if compressed {
                floodcmd_ws_frames::deflate::inflate(&payload, 1 << 20).unwrap()
            } else {
                payload.to_vec()
            };
            assert_eq!(text, delta.payload());
            assert!(
                r.next().await.unwrap().is_none(),
                "one frame, nothing after"
            );
        }
    }
}
