//! A minimal beanstalkd client: the text protocol's `use`, `watch`,
//! `ignore`, `put`, `reserve` and `delete` over one tokio TCP stream. No
//! maintained async beanstalkd crate exists, and the protocol is a few
//! lines of text per command (beanstalkd's doc/protocol.txt).

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line accepted (job bodies are read by length, not here).
const LINE_BYTES_MAX: usize = 1 << 10;
/// Largest job body accepted: beanstalkd's default `-z` limit.
const BODY_BYTES_MAX: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum BeanstalkError {
    #[error("beanstalkd connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("beanstalkd answered {0:?}")]
    Unexpected(String),
}

pub struct Beanstalk {
    stream: BufReader<TcpStream>,
    line: String,
}

impl Beanstalk {
    pub async fn connect(address: &str) -> Result<Beanstalk, BeanstalkError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Beanstalk {
            stream: BufReader::new(stream),
            line: String::new(),
        })
    }

    async fn command(&mut self, command: &[u8]) -> Result<&str, BeanstalkError> {
        self.stream.get_mut().write_all(command).await?;
        self.read_line().await
    }

    async fn read_line(&mut self) -> Result<&str, BeanstalkError> {
        self.line.clear();
        let read = (&mut self.stream)
            .take(LINE_BYTES_MAX as u64)
            .read_line(&mut self.line)
            .await?;
        if read == 0 || !self.line.ends_with("\r\n") {
            return Err(BeanstalkError::Unexpected(self.line.clone()));
        }
        Ok(self.line.trim_end())
    }

    /// Producers put into this tube.
    pub async fn use_tube(&mut self, tube: &str) -> Result<(), BeanstalkError> {
        let line = self.command(format!("use {tube}\r\n").as_bytes()).await?;
        expect_prefix(line, "USING")
    }

    /// Workers reserve from these tubes (and no longer from `default`
    /// unless it is among them).
    pub async fn watch_only(&mut self, tubes: &[String]) -> Result<(), BeanstalkError> {
        for tube in tubes {
            let line = self.command(format!("watch {tube}\r\n").as_bytes()).await?;
            expect_prefix(line, "WATCHING")?;
        }
        if !tubes.iter().any(|t| t == "default") {
            let line = self.command(b"ignore default\r\n").await?;
            expect_prefix(line, "WATCHING")?;
        }
        Ok(())
    }

    /// Puts a job; `priority` is beanstalkd's: lower is more urgent.
    pub async fn put(&mut self, priority: u32, body: &[u8]) -> Result<u64, BeanstalkError> {
        let mut command = format!("put {priority} 0 600 {}\r\n", body.len()).into_bytes();
        command.extend_from_slice(body);
        command.extend_from_slice(b"\r\n");
        let line = self.command(&command).await?;
        match line.strip_prefix("INSERTED ").map(str::parse::<u64>) {
            Some(Ok(id)) => Ok(id),
            _ => Err(BeanstalkError::Unexpected(line.to_string())),
        }
    }

    /// Reserves a job, waiting at most `timeout_s`; `None` on timeout.
    pub async fn reserve(
        &mut self,
        timeout_s: u32,
    ) -> Result<Option<(u64, Vec<u8>)>, BeanstalkError> {
        let line = self
            .command(format!("reserve-with-timeout {timeout_s}\r\n").as_bytes())
            .await?;
        if line == "TIMED_OUT" || line == "DEADLINE_SOON" {
            return Ok(None);
        }
        let mut parts = line.strip_prefix("RESERVED ").unwrap_or("").split(' ');
        let (Some(Ok(id)), Some(Ok(bytes))) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<usize>),
        ) else {
            return Err(BeanstalkError::Unexpected(line.to_string()));
        };
        if bytes > BODY_BYTES_MAX {
            return Err(BeanstalkError::Unexpected(format!(
                "a body of {bytes} bytes"
            )));
        }
        let mut body = vec![0; bytes + 2];
        self.stream.read_exact(&mut body).await?;
        body.truncate(bytes);
        Ok(Some((id, body)))
    }

    pub async fn delete(&mut self, id: u64) -> Result<(), BeanstalkError> {
        let line = self.command(format!("delete {id}\r\n").as_bytes()).await?;
        expect_prefix(line, "DELETED")
    }
}

fn expect_prefix(line: &str, prefix: &str) -> Result<(), BeanstalkError> {
    if line.starts_with(prefix) {
        Ok(())
    } else {
        Err(BeanstalkError::Unexpected(line.to_string()))
    }
}

/// Maps a Lanes priority (i32, higher first) to beanstalkd's (u32, lower
/// first), preserving order: i32::MAX → 0, i32::MIN → u32::MAX.
pub fn beanstalk_priority(priority: i32) -> u32 {
    (i32::MAX as i64 - priority as i64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_mapping_reverses_order_and_covers_the_range() {
        assert_eq!(beanstalk_priority(i32::MAX), 0);
        assert_eq!(beanstalk_priority(i32::MIN), u32::MAX);
        assert!(beanstalk_priority(5) < beanstalk_priority(0));
        assert!(beanstalk_priority(0) < beanstalk_priority(-1));
    }
}
