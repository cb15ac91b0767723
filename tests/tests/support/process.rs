//! The fleet's real processes: `rewardfleet gateway` and `rewardfleet worker` started from the
//! built binary, killed with SIGKILL or stopped with SIGTERM.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `rewardfleet` subcommand.
pub struct Process {
    child: Child,
    pub name: String,
}

impl Process {
    /// Starts `rewardfleet <args>` and waits until it printed a line containing `ready`.
    pub fn start(name: &str, args: &[&str], config: &Path, ready: &str) -> Self {
        let mut child = Command::new(super::binary())
            .args(args)
            .arg("--config")
            .arg(config)
            // RF_TEST_LOG (a tracing filter) shows more of the processes' logs.
            .env(
                "RUST_LOG",
                std::env::var("RF_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(&ready) {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{name} did not become ready"));
        Self {
            child,
            name: name.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, without waiting.
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit (at most `limit`).
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal_term();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{} did not exit within {limit:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rewardfleet score --gateway http://127.0.0.1:<port> input -o output`, with a window of
/// 2048 and batches of 128, started in the background.
pub fn spawn_score(port: u16, input: &Path, output: &Path) -> Child {
    Command::new(super::binary())
        .args([
            "score",
            "--window",
            "2048",
            "--batch-size",
            "128",
            "--gateway",
        ])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(input)
        .arg("-o")
        .arg(output)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit, at most `limit`.
pub async fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "the process did not exit within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
