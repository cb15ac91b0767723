//! Test support: a real `nats-server` with JetStream on free ports, in its own temporary store.
//!
//! End-to-end tests never use a shared server: each starts its own with [`NatsServer::start`],
//! kills and restarts it at will ([`NatsServer::kill`], [`NatsServer::restart`]), and the server
//! stops when the handle is dropped.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let mut nats = rewardfleet_testkit::NatsServer::start().await?;
//! let url = nats.url(); // nats://127.0.0.1:<port>
//! nats.kill().await?; // SIGKILL, like a crash
//! nats.restart().await?; // same port, same store: JetStream state survives
//! # Ok(()) }
//! ```
//!
//! The binary is found through `REWARDFLEET_NATS_SERVER` (a path), then `PATH`, then the usual
//! Debian locations. The README's set-up installs it (`apt-get install nats-server`).

mod models;

pub use models::{models_script, python, test_models};

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Environment variable naming the `nats-server` binary to use instead of searching for it.
pub const NATS_SERVER_ENV: &str = "REWARDFLEET_NATS_SERVER";

/// How long a server may take to accept connections and report JetStream healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Fresh ports tried when the probed port was taken before the server could bind it.
const START_ATTEMPTS: usize = 5;

/// A port on 127.0.0.1 that was free a moment ago (the OS picked it; nothing holds it now).
///
/// Another process may take it before you bind it: bind promptly, and retry on "address in use"
/// (as [`NatsServer::start`] does).
///
/// # Errors
/// If no socket can be bound on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A running `nats-server -js` owned by one test; stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    monitor_port: u16,
    token: Option<String>,
    /// JetStream store; lives as long as the handle, across restarts.
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port (and a free monitoring port), in a new
    /// temporary store directory, and waits until it accepts connections and JetStream is
    /// healthy.
    ///
    /// # Errors
    /// If `nats-server` is not installed (the message says how to install it), or it does not
    /// come up within 20 s (the message carries the end of its log).
    pub async fn start() -> io::Result<Self> {
        Self::start_inner(None).await
    }

    /// As [`NatsServer::start`], with client authentication by `token` required.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start_with_token(token: &str) -> io::Result<Self> {
        Self::start_inner(Some(token.to_owned())).await
    }

    async fn start_inner(token: Option<String>) -> io::Result<Self> {
        let mut server = Self {
            binary: find_binary()?,
            port: 0,
            monitor_port: 0,
            token,
            store: tempfile::Builder::new().prefix("rf-nats-").tempdir()?,
            child: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port()?;
            server.monitor_port = free_port()?;
            match server.spawn_and_wait().await {
                // Another process took a probed port before the server bound it: new ports.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < START_ATTEMPTS => {}
                Err(e) => return Err(e),
                Ok(()) => return Ok(server),
            }
        }
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring URL (`/varz`, `/jsz`, `/healthz`), `http://127.0.0.1:<port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// The server's process id while it runs (for reading its memory from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the server process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills the server with SIGKILL, like a crash, and waits until it is gone. Does nothing if
    /// it is not running.
    ///
    /// # Errors
    /// If the signal cannot be sent or the process cannot be reaped.
    pub async fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            // `start_kill` sends SIGKILL on Unix; it fails only if the process is already reaped.
            if child.try_wait()?.is_none() {
                child.start_kill()?;
            }
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same ports with the same store (killing it first if it
    /// runs), and waits until it is ready. Clients reconnect by themselves.
    ///
    /// # Errors
    /// If the server does not come back within 20 s; a port taken by another process meanwhile
    /// is retried for a few seconds and then reported as [`io::ErrorKind::AddrInUse`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn_and_wait().await {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.store.path().join("nats-server.log")
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(token) = &self.token {
            command.args(["--auth", token]);
        }
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", self.binary.display()),
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                let log = self.log_tail();
                let kind = if log.contains("address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("nats-server exited ({status}) before it was ready; its log:\n{log}"),
                ));
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill().await?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nats-server was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ready: the client port greets with `INFO` and `/healthz` answers 200 (JetStream is up).
    fn is_ready(&self) -> bool {
        let greets = probe(self.port, None).is_some_and(|text| text.starts_with("INFO "));
        greets
            && probe(self.monitor_port, Some("GET /healthz HTTP/1.0\r\n\r\n")).is_some_and(|text| {
                text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")
            })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SIGKILL; `kill_on_drop` would do it too, this makes it immediate and explicit.
            let _ = child.start_kill();
        }
    }
}

/// Connects to 127.0.0.1:`port`, optionally sends `request`, returns what came back first.
fn probe(port: u16, request: Option<&str>) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    if let Some(request) = request {
        stream.write_all(request.as_bytes()).ok()?;
    }
    let mut buf = [0_u8; 64];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn find_binary() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{NATS_SERVER_ENV}={} is not a file", path.display()),
            ))
        };
    }
    let from_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "nats-server not found (searched PATH, /usr/sbin, /usr/bin, /usr/local/bin): \
                     run the set-up in README.md (it installs the `nats-server` package), \
                     or set {NATS_SERVER_ENV} to the binary"
                ),
            )
        })
}
