//! A minimal Redis client: RESP2 commands over one tokio TCP stream, one
//! command at a time. Enough for `ZADD`, `BZPOPMIN`, `INCR` and `DEL`; the
//! `redis` crate would bring a dozen more crates to compile on a 2-core
//! machine for these four commands.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line accepted.
const LINE_BYTES_MAX: u64 = 1 << 10;
/// Largest bulk string accepted (a job body).
const BULK_BYTES_MAX: usize = 1 << 20;
/// Most elements in one array reply (BZPOPMIN answers 3).
const ARRAY_LENGTH_MAX: usize = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis answered an error: {0}")]
    Server(String),
    #[error("redis sent a malformed reply: {0:?}")]
    Malformed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

pub struct Redis {
    stream: BufReader<TcpStream>,
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(arguments: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", arguments.len()).into_bytes();
    for argument in arguments {
        out.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
        out.extend_from_slice(argument);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Redis {
    pub async fn connect(address: &str) -> Result<Redis, RespError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Redis {
            stream: BufReader::new(stream),
        })
    }

    pub async fn command(&mut self, arguments: &[&[u8]]) -> Result<Reply, RespError> {
        self.stream.get_mut().write_all(&encode(arguments)).await?;
        self.read_reply(0).await
    }

    async fn read_line(&mut self) -> Result<String, RespError> {
        let mut line = String::new();
        (&mut self.stream)
            .take(LINE_BYTES_MAX)
            .read_line(&mut line)
            .await?;
        if !line.ends_with("\r\n") {
            return Err(RespError::Malformed(line));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    async fn read_reply(&mut self, depth: u32) -> Result<Reply, RespError> {
        if depth > 2 {
            return Err(RespError::Malformed("nested too deep".into()));
        }
        let line = self.read_line().await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| RespError::Malformed(line.clone()))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Err(RespError::Server(rest.to_string())),
            ":" => Ok(Reply::Integer(number()?)),
            "$" => {
                let length = number()?;
                if length < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let length = length as usize;
                if length > BULK_BYTES_MAX {
                    return Err(RespError::Malformed(line));
                }
                let mut bytes = vec![0; length + 2];
                self.stream.read_exact(&mut bytes).await?;
                bytes.truncate(length);
                Ok(Reply::Bulk(Some(bytes)))
            }
            "*" => {
                let length = number()?;
                if length < 0 {
                    return Ok(Reply::Array(None));
                }
                let length = length as usize;
                if length > ARRAY_LENGTH_MAX {
                    return Err(RespError::Malformed(line));
                }
                let mut items = Vec::with_capacity(length);
                for _ in 0..length {
                    items.push(Box::pin(self.read_reply(depth + 1)).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(RespError::Malformed(line)),
        }
    }
}

/// A ZSET score: higher priorities first (lower score), then earlier
/// sequence. Exact in an f64 while `sequence` < 2^40 and the priority lies
/// within ±4096 of 0, which the generator's workloads keep to.
pub fn score(priority: i32, sequence: u64) -> f64 {
    let level = (4_096 - i64::from(priority.clamp(-4_095, 4_095))) as f64;
    level * (1u64 << 40) as f64 + (sequence & ((1 << 40) - 1)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"INCR", b"k"]),
            b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n".to_vec()
        );
    }

    #[test]
    fn scores_order_priority_then_sequence() {
        assert!(score(5, 1_000) < score(0, 1));
        assert!(score(0, 1) < score(0, 2));
        assert!(score(0, 2) < score(-1, 0));
        assert_eq!(score(0, (1 << 40) - 1) + 1.0, score(-1, 0));
    }
}
