//! One write of a batch of lines to the InfluxDB v2 write API (`POST /api/v2/write`), through
//! the `influxdb2` crate: it builds the request (org, bucket, `precision=ms`, `Authorization:
//! Token ...`) and checks the answer.
//!
//! Compression is ours. The crate gzips only the `DataPoint` stream path, streaming at the
//! highest level, which on this machine costs about 3 µs a line (no more than 320k lines/s
//! on a whole core, before any other work); its raw line-protocol call takes any body but sets
//! no header. So the body is gzipped here at the fastest level (about a tenth of the CPU,
//! 85% smaller on our lines), and the client is built with `Content-Encoding: gzip` as a
//! default header: it is used for nothing but these writes.
//!
//! The server's answer decides what the sink does next: any 2xx means the batch is stored; 400,
//! 413 and 422 mean it refused the data itself ([`WriteError::Refused`]: the sink splits the
//! batch to find the line); anything else, or no answer, means try again later
//! ([`WriteError::Unavailable`]).

use async_trait::async_trait;
use bytes::Bytes;
use influxdb2::api::write::TimestampPrecision;
use influxdb2::RequestError;
use std::io::Write;
use std::time::Duration;

/// Where and how to write. Debug hides the token.
#[derive(Clone)]
pub struct InfluxTarget {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// Organization.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token (empty: no `Authorization` header).
    pub token: String,
    /// Gzip the bodies.
    pub gzip: bool,
    /// How long one write may take before it counts as failed and is tried again.
    pub timeout: Duration,
}

impl std::fmt::Debug for InfluxTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxTarget")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &if self.token.is_empty() { "" } else { "***" })
            .field("gzip", &self.gzip)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What went wrong with one write.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The server refused the data itself (400, 413, 422): sending it again would not help.
    #[error("the server refused the data ({status}): {text}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's message.
        text: String,
    },
    /// No answer, or one that says try again (5xx, 429, 401 while a token is fixed, ...).
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
    /// The target itself is wrong (a URL that does not parse).
    #[error("{0}")]
    Config(String),
}

/// Writes a body of complete lines. The sink talks to this, so its batching, retrying and
/// splitting can be tested without a server.
#[async_trait]
pub trait WriteLines: Send + Sync + 'static {
    /// Write `lines` (complete lines, each ending in `\n`); Ok once the server stored them.
    async fn write(&self, lines: Bytes) -> Result<(), WriteError>;
}

/// The writer for a real server.
pub struct InfluxWriter {
    client: influxdb2::Client,
    org: String,
    bucket: String,
    gzip: bool,
}

impl InfluxWriter {
    /// A writer for `target`; fails only on a URL that is not http(s).
    pub fn new(target: &InfluxTarget) -> Result<InfluxWriter, WriteError> {
        // The crate panics on a bad URL: check first and say which setting is wrong.
        match url::Url::parse(&target.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) | Err(_) => {
                return Err(WriteError::Config(format!(
                    "sink_influx.url: \"{}\" is not an http(s) URL",
                    target.url
                )))
            }
        }
        let mut headers = reqwest011::header::HeaderMap::new();
        if target.gzip {
            headers.insert(
                reqwest011::header::CONTENT_ENCODING,
                reqwest011::header::HeaderValue::from_static("gzip"),
            );
        }
        let http = reqwest011::Client::builder()
            .default_headers(headers)
            .timeout(target.timeout)
            .connect_timeout(target.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true);
        let client = influxdb2::ClientBuilder::with_builder(
            http,
            target.url.clone(),
            target.org.clone(),
            target.token.clone(),
        )
        .build()
        .map_err(|e| WriteError::Config(format!("sink_influx: {e}")))?;
        Ok(InfluxWriter {
            client,
            org: target.org.clone(),
            bucket: target.bucket.clone(),
            gzip: target.gzip,
        })
    }
}

/// Gzip at the fastest level: line protocol repeats itself, so even that is 85% smaller.
pub fn gzip(lines: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(lines.len() / 6 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(lines);
    Bytes::from(enc.finish().unwrap_or_default())
}

impl InfluxWriter {
    /// Write a body that is already as the target wants it: gzipped when `gzip` is set. The
    /// benchmark's server ceiling posts pre-compressed batches through here.
    pub async fn write_compressed(&self, body: Bytes) -> Result<(), WriteError> {
        let result = self
            .client
            .write_line_protocol_with_precision(
                &self.org,
                &self.bucket,
                body,
                TimestampPrecision::Milliseconds,
            )
            .await;
        match result {
            Ok(()) => Ok(()),
            // The crate wants exactly 204; any 2xx means the server has the data.
            Err(RequestError::Http { status, .. }) if status.is_success() => Ok(()),
            Err(RequestError::Http { status, text }) => match status.as_u16() {
                400 | 413 | 422 => Err(WriteError::Refused {
                    status: status.as_u16(),
                    text,
                }),
                s => Err(WriteError::Unavailable(format!("HTTP {s}: {text}"))),
            },
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }
}

#[async_trait]
impl WriteLines for InfluxWriter {
    async fn write(&self, lines: Bytes) -> Result<(), WriteError> {
        let body = if self.gzip {
            // A few ms of CPU for a full batch: off the async workers.
            tokio::task::spawn_blocking(move || gzip(&lines))
                .await
                .map_err(|e| WriteError::Unavailable(format!("compression task: {e}")))?
        } else {
            lines
        };
        self.write_compressed(body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_reads_back() {
        let lines = b"depth,point=P value=1 1000\n".repeat(100);
        let z = gzip(&lines);
        assert!(z.len() < lines.len() / 5, "{} of {}", z.len(), lines.len());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&z[..]), &mut back).unwrap();
        assert_eq!(back, lines);
    }

    #[test]
    fn a_url_that_is_not_http_names_the_setting() {
        for url in ["", "127.0.0.1:8086", "ftp://x"] {
            let t = InfluxTarget {
                url: url.into(),
                org: "o".into(),
                bucket: "b".into(),
                token: String::new(),
                gzip: true,
                timeout: Duration::from_secs(1),
            };
            let Err(e) = InfluxWriter::new(&t) else {
                panic!("{url:?} was accepted")
            };
            assert!(e.to_string().contains("sink_influx.url"), "{e}");
        }
    }
}
