//! The client side of the control protocol: `ringlb ctl`, `ringlb upgrade` and the
//! instance lock's `ping` all go through [`request`].

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::protocol::{encode, Line, LineReader, Reply, Request};

/// Longest reply accepted: a `status` of many listeners and backends is far below it.
const MAX_REPLY_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens at the path: no file, or a file nobody accepts on.
    #[error("no running instance: nothing answers on {path} ({source})")]
    NoInstance { path: PathBuf, source: io::Error },
    #[error("{path}: no reply within {timeout:?}")]
    NoReply { path: PathBuf, timeout: Duration },
    #[error("{path}: {message}")]
    Failed { path: PathBuf, message: String },
}

/// Sends one request and waits up to `timeout` for its reply.
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let failed = |message: String| ClientError::Failed {
        path: path.to_path_buf(),
        message,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NoInstance {
            path: path.to_path_buf(),
            source,
        },
        _ => failed(format!("cannot connect: {source}")),
    })?;
    let deadline = Instant::now() + timeout;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| failed(e.to_string()))?;
    let mut line = encode(request);
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| failed(format!("cannot send the request: {e}")))?;
    match LineReader::new(MAX_REPLY_LINE).read_line(&mut stream, deadline) {
        Line::Complete(reply) => {
            Reply::decode(&reply).map_err(|e| failed(format!("unreadable reply: {e}")))
        }
        Line::Timeout => Err(ClientError::NoReply {
            path: path.to_path_buf(),
            timeout,
        }),
        Line::Closed => Err(failed("closed without a reply".into())),
        Line::TooLong => Err(failed("reply too long".into())),
        Line::Failed => Err(failed("read failed".into())),
    }
}

/// The pid of the instance answering on `path`.
pub fn ping(path: &Path, timeout: Duration) -> Result<u32, ClientError> {
    match request(path, &Request::Ping, timeout)? {
        Reply::Ok(fields) => fields
            .get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| ClientError::Failed {
                path: path.to_path_buf(),
                message: "ping reply without a pid".into(),
            }),
        Reply::Refused(why) => Err(ClientError::Failed {
            path: path.to_path_buf(),
            message: format!("ping refused: {why}"),
        }),
    }
}
