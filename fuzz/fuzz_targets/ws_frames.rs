//! What a browser (or anyone) sends down the wall's websocket: the first byte picks the part
//! (even: the frames, read by the server's `FrameReader` with compression agreed and the
//! wall's 64 KiB limit, each compressed message then inflated under the same limit; odd: the
//! rest as a `Sec-WebSocket-Extensions` offer, `deflate_answer`). Every limit must hold, and
//! nothing may panic or allocate without bound.
#![no_main]

use floodcmd_ws_frames::deflate::inflate;
use floodcmd_ws_frames::handshake::deflate_answer;
use floodcmd_ws_frames::reader::End;
use floodcmd_ws_frames::{FrameReader, Incoming};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick % 2 == 1 {
        let _ = deflate_answer(Some(&String::from_utf8_lossy(rest)));
        return;
    }
    let mut reader = FrameReader::new(rest, End::Server, LIMIT, true);
    loop {
        // A byte slice is always ready: one poll finishes each read.
        let next = {
            let mut fut = pin!(reader.next());
            match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(r) => r,
                Poll::Pending => panic!("a read of a byte slice waited"),
            }
        };
        match next {
            Ok(Some(Incoming::Data {
                compressed,
                payload,
                ..
            })) => {
                assert!(payload.len() <= LIMIT);
                if compressed {
                    if let Ok(m) = inflate(&payload, LIMIT) {
                        assert!(m.len() <= LIMIT);
                    }
                }
            }
            Ok(Some(Incoming::Ping(p) | Incoming::Pong(p))) => assert!(p.len() <= 125),
            Ok(Some(Incoming::Close(_))) => {}
            Ok(None) | Err(_) => return,
        }
    }
});
