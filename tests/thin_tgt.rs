//! The `thin_tgt` daemon as a user starts it: it loads a config, says it is ready, and stops
//! cleanly on SIGTERM and SIGINT; a bad or missing config stops it with one line, no panic.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(30);

/// A running daemon, killed on every exit path of the test.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(dir: &Path, config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_thin_tgt"))
            .arg("-m")
            .arg("0x1")
            .arg("-r")
            .arg(dir.join("spdk.sock"))
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("thin_tgt starts");
        let stderr = child.stderr.take().expect("piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines }
    }

    /// Waits (bounded) for a stderr line containing `text`.
    fn wait_for_line(&self, text: &str) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with '{text}' from thin_tgt: {e}"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits (bounded) for the daemon to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "thin_tgt did not exit");
            std::thread::yield_now();
        }
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("thin_tgt_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, name: &str, entries: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(r#"{{"subsystems":[{{"subsystem":"bdev","config":[{entries}]}}]}}"#),
    )
    .unwrap();
    path
}

const MALLOC: &str = r#"{"method":"bdev_malloc_create",
    "params":{"name":"Malloc0","num_blocks":1024,"block_size":4096}}"#;

#[test]
fn sigterm_and_sigint_stop_the_daemon_cleanly() {
    for signal in ["TERM", "INT"] {
        let dir = scratch_dir(signal);
        let mut daemon = Daemon::start(&dir, &config(&dir, "malloc.json", MALLOC));
        daemon.wait_for_line("ready");
        daemon.signal(signal);
        daemon.wait_for_line("stopped");
        let status = daemon.wait_exit();
        assert!(status.success(), "SIG{signal}: exit {status}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_configs_stop_the_start_with_one_line() {
    let dir = scratch_dir("bad");
    let cases = [
        (dir.join("missing.json"), "missing.json"),
        (
            config(
                &dir,
                "bad.json",
                r#"{"method":"bdev_malloc_create","params":{"num_blocks":-1}}"#,
            ),
            "bdev_malloc_create: num_blocks",
        ),
        (
            config(
                &dir,
                "nofile.json",
                r#"{"method":"bdev_uring_create",
                    "params":{"name":"U0","filename":"/nonexistent/disk.img"}}"#,
            ),
            "bdev_uring_create: filename",
        ),
    ];
    for (path, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_thin_tgt"))
            .arg("-c")
            .arg(&path)
            .arg("-r")
            .arg(dir.join("spdk.sock"))
            .output()
            .expect("thin_tgt runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{expected}: should fail");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "'{expected}' in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
