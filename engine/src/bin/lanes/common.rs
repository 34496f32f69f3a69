//! What every client command shares: the connection options, the parsers
//! of flag values, and the exit codes (docs/OPERATIONS.md, "Exit codes").

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use lanes::client::{Client, ClientError, ConnectOptions};
use lanes::model::{Pair, Priority};
use lanes::tls::ClientTls;

/// The engine refused the request (its code and message are printed).
pub const EXIT_REFUSED: u8 = 1;
/// A usage error (clap's own code too), or the engine could not be reached
/// or the connection broke.
pub const EXIT_USAGE_OR_CONNECTION: u8 = 2;

/// The options of every command that talks to the engine. `global`: they
/// may come after the subcommand (`lanes job show 3 --json`).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOptions {
    /// The engine's protocol address, HOST:PORT.
    #[arg(
        long,
        env = "LANES_SERVER",
        default_value = "127.0.0.1:7070",
        global = true
    )]
    pub server: String,
    /// The token to present; its role decides what is allowed. Empty for an
    /// engine that runs without tokens.
    #[arg(
        long,
        env = "LANES_TOKEN",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub token: String,
    /// Speak TLS, trusting the CA certificates of this PEM file (and no
    /// others). Without it: plain TCP.
    #[arg(long, env = "LANES_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// The name the engine's certificate must carry. Default: the host of
    /// --server.
    #[arg(
        long,
        env = "LANES_TLS_SERVER_NAME",
        value_name = "NAME",
        global = true
    )]
    pub tls_server_name: Option<String>,
    /// Print one JSON document on stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientOptions {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let options = connect_options(
            &self.server,
            self.tls_ca.as_deref(),
            self.tls_server_name.as_deref(),
        )?;
        match Client::connect_with(
            self.server.as_str(),
            &options,
            self.token.as_bytes(),
            "lanes-cli",
        )
        .await
        {
            Ok(client) => Ok(client),
            // Kept as it is: `exit_code_of` looks for the refusal.
            Err(error @ ClientError::Server(_)) => {
                Err(anyhow::Error::new(error).context(format!("connecting to {}", self.server)))
            }
            // Flat: the I/O error's text already holds its source.
            Err(error) => Err(anyhow::anyhow!("connecting to {}: {error}", self.server)),
        }
    }
}

/// Plain TCP, or TLS trusting the CA file `tls_ca` for `tls_server_name`
/// (default: the host of `server`).
pub fn connect_options(
    server: &str,
    tls_ca: Option<&Path>,
    tls_server_name: Option<&str>,
) -> anyhow::Result<ConnectOptions> {
    let Some(ca) = tls_ca else {
        if tls_server_name.is_some() {
            bail!("--tls-server-name needs --tls-ca: the CA to trust for TLS");
        }
        return Ok(ConnectOptions::default());
    };
    let host = server
        .rsplit_once(':')
        .map_or(server, |(host, _port)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tls = ClientTls::from_ca_file(ca, tls_server_name.unwrap_or(host))
        .map_err(|error| anyhow::anyhow!("--tls-ca: {error}"))?;
    Ok(ConnectOptions { tls: Some(tls) })
}

/// Runs a client command on a runtime of its own.
pub fn block_on(
    command: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(command)
}

/// 1 when the engine refused (an `Error` answer, including a token it does
/// not accept), 2 for everything else: usage, connection, files.
pub fn exit_code_of(error: &anyhow::Error) -> ExitCode {
    let refused = error.chain().any(|cause| {
        cause
            .downcast_ref::<ClientError>()
            .is_some_and(|error| error.code().is_some())
    });
    ExitCode::from(if refused {
        EXIT_REFUSED
    } else {
        EXIT_USAGE_OR_CONNECTION
    })
}

/// A priority: an integer with an optional sign, in the 32-bit range.
pub fn parse_priority(text: &str) -> Result<i32, String> {
    Priority::from_str(text)
        .map(|priority| priority.0)
        .map_err(|error| error.to_string())
}

/// `key=value`; the value may be empty and may hold `=`.
pub fn parse_pair(text: &str) -> Result<Pair, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

/// A duration such as `250ms`, `30s`, `5m`, `1h`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?}: {error} (examples: 250ms, 30s, 5m, 1h)"))
}

/// A duration as the engine counts it, in whole milliseconds.
pub fn milliseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
