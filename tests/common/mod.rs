//! Shared by the daemon tests: start the real `thin_tgt` on a private Unix socket in a scratch
//! directory, wait (bounded) until it answers, talk raw JSON-RPC to it, stop it with SIGTERM;
//! whatever happens, `Drop` kills the daemon and removes the directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod nvme;
pub mod nvme_proxy;
pub mod spdk;
pub mod writer;

/// Longest any wait in these tests may take before it is a failure.
pub const BOUND: Duration = Duration::from_secs(30);

/// Waits (bounded) for `condition`, checking every few milliseconds.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("thin_{tag}_{}_{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `thin_tgt`.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `thin_tgt -r <dir>/spdk.sock ARGS` and waits until it answers `spdk_get_version`.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        let daemon = Daemon::spawn(dir, args);
        let socket = daemon.socket.clone();
        let mut daemon = daemon;
        wait_until("thin_tgt to answer on its socket", || {
            if let Some(status) = daemon.try_exit() {
                panic!("thin_tgt exited early ({status}): {}", daemon.log_text());
            }
            let Ok(stream) = UnixStream::connect(&socket) else { return false };
            let mut client = Client::from_stream(stream);
            client.send(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":0}"#);
            client.read_reply().is_some()
        });
        daemon
    }

    /// Starts `thin_tgt` without waiting for it.
    pub fn spawn(dir: &Path, args: &[&str]) -> Daemon {
        let socket = dir.join("spdk.sock");
        let log = dir.join(format!("thin_tgt.{}.log", args.len()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_thin_tgt"))
            .arg("-r")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn thin_tgt");
        Daemon { child: Some(child), socket, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) for the daemon to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut status = None;
        wait_until("thin_tgt to exit", || {
            status = self.try_exit();
            status.is_some()
        });
        self.child = None;
        status.expect("exited")
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(killed.success());
        self.wait_exit()
    }

    pub fn connect(&self) -> Client {
        Client::from_stream(UnixStream::connect(&self.socket).expect("connect"))
    }

    /// One request on a fresh connection; returns the reply object.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let mut client = self.connect();
        let mut request = serde_json::json!({"jsonrpc": "2.0", "method": method, "id": 1});
        if !params.is_null() {
            request["params"] = params;
        }
        client.send(request.to_string().as_bytes());
        client.read_reply().expect("a reply")
    }

    /// The peak resident memory of the daemon, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw JSON-RPC connection: replies are compact JSON, one per line.
pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn from_stream(stream: UnixStream) -> Client {
        stream.set_read_timeout(Some(BOUND)).expect("timeout");
        Client { reader: BufReader::new(stream) }
    }

    pub fn stream(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    /// The next reply, or `None` at EOF (or a reset).
    pub fn read_reply(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a reply is one JSON line")),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// Asserts the server closed the connection (EOF or reset, no more bytes).
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => {
                assert!(rest.is_empty(), "expected EOF, got {}", String::from_utf8_lossy(&rest))
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "expected EOF: {e}"),
        }
    }
}

/// The error object of a reply, asserting it is one.
pub fn error_of(reply: &Value) -> (i64, String) {
    let error = reply.get("error").unwrap_or_else(|| panic!("expected an error: {reply}"));
    (error["code"].as_i64().expect("code"), error["message"].as_str().expect("message").to_string())
}
