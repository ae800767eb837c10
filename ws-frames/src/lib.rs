//! The command wall's websocket wire (RFC 6455), written for fan-out: one delta goes to a
//! thousand clients, so it is framed once, and compressed once, and every client's socket is
//! handed the same bytes.
//!
//! A general websocket library frames and compresses per connection: each client's copy of a
//! message is copied again into that connection's write buffer, and permessage-deflate
//! (RFC 7692) keeps a compression context per connection, so the same delta is compressed a
//! thousand times. This crate negotiates permessage-deflate **without context takeover** in
//! either direction, so each message is compressed on its own and one compressed frame is
//! right for every client that accepted the extension ([`OutFrame`]).
//!
//! - [`frame`]: [`OutFrame`], a message framed once (plain, and deflated on first need).
//! - [`reader`]: [`FrameReader`], frames off a socket into messages, both ends (the server
//!   reads masked frames, a client unmasked ones); the checks a server needs against what an
//!   untrusted peer sends.
//! - [`deflate`]: the per-message compression and its bounded inflate.
//! - [`handshake`]: the accept key, the extension negotiation, and a small client (the bench's
//!   and the tests').

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod reader;

pub use frame::OutFrame;
pub use reader::{FrameReader, Incoming};

/// What is wrong with what came off the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("websocket i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol (close code 1002).
    #[error("websocket protocol: {0}")]
    Protocol(&'static str),
    /// A message over the limit (close code 1009).
    #[error("websocket message over {limit} bytes")]
    TooLarge { limit: usize },
    /// A compressed message that does not inflate (close code 1007).
    #[error("websocket message does not inflate: {0}")]
    Inflate(String),
    /// The server's answer to the opening handshake was not a websocket upgrade.
    #[error("websocket handshake: {0}")]
    Handshake(String),
}

impl WireError {
    /// The close code to send the peer, when there is one to send.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            WireError::Io(_) | WireError::Handshake(_) => None,
            WireError::Protocol(_) => Some(1002),
            WireError::TooLarge { .. } => Some(1009),
            WireError::Inflate(_) => Some(1007),
        }
    }
}

/// Opcodes (RFC 6455 §5.2).
pub(crate) mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}
