//! SPDK's own JSON-RPC client, `spdk-rpc` from PyPI, installed by `ci/install.sh` in the
//! repository's `.venv/` (or found through `$SPDK_CLIENT_BIN`), run against a test daemon.
//! Without it the tests print a loud SKIPPED; with `CI=true` they fail instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The directory holding `spdk-rpc` and the Python that has the `spdk` package.
pub fn client_bin() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("SPDK_CLIENT_BIN") {
        candidates.push(PathBuf::from(dir));
    }
    candidates.push(Path::new(ROOT).join(".venv/bin"));
    let found = candidates.into_iter().find(|dir| dir.join("spdk-rpc").is_file());
    if found.is_none() {
        let message = "SPDK's client (spdk-rpc) not found in .venv/bin or $SPDK_CLIENT_BIN; \
                       run ci/install.sh";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{message}");
        }
        eprintln!("\n*** SKIPPED: {message} ***\n");
    }
    found
}

pub struct Spdk {
    pub bin: PathBuf,
    pub socket: PathBuf,
}

impl Spdk {
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.env("PYTHONPATH", Path::new(ROOT).join("python"));
        command
    }

    /// `spdk-rpc -s SOCKET ARGS`, output captured.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command("spdk-rpc").arg("-s").arg(&self.socket).args(args).output().expect("spdk-rpc")
    }

    /// `spdk-rpc ARGS`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "spdk-rpc {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    /// `spdk-rpc ARGS`, which must fail; returns the request sent and the error received.
    pub fn fails(&self, args: &[&str]) -> (Value, Value) {
        let output = self.run(args);
        assert!(!output.status.success(), "spdk-rpc {args:?} should have failed");
        request_and_error(&String::from_utf8_lossy(&output.stdout))
    }

    /// `spdk-rpc --plugin bdev_thin_rpc ARGS`, which must succeed; returns stdout as JSON.
    pub fn thin(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.thin_text(args)).expect("JSON output")
    }

    /// The same, for commands that print a bare string (a UUID), trimmed.
    pub fn thin_text(&self, args: &[&str]) -> String {
        let mut all = vec!["--plugin", "bdev_thin_rpc"];
        all.extend_from_slice(args);
        self.ok(&all).trim().to_string()
    }
}

/// Splits `spdk-rpc`'s error report ("request:\n{…}\nGot JSON-RPC error response\nresponse:
/// \n{…}") into the request it sent and the error it got.
pub fn request_and_error(text: &str) -> (Value, Value) {
    let after = |marker: &str| -> Value {
        let start = text.find(marker).unwrap_or_else(|| panic!("{marker} in {text}"));
        let mut values =
            serde_json::Deserializer::from_str(&text[start + marker.len()..]).into_iter::<Value>();
        values.next().expect("a JSON value").expect("valid JSON")
    };
    (after("request:"), after("response:"))
}
