//! Boots Debian's Linux kernel in a QEMU TCG guest, so tests can drive the real Linux NVMe/TCP
//! host (`nvme-tcp`, nvme-cli, ext4, fstrim) against `thin_tgt`, and the real Linux target
//! (`nvmet-tcp` on a `null_blk` device with discard) against our initiator.
//!
//! The kernel and the tools come from `ci/install_guest.sh` (into the ignored `.cache/guest/`);
//! `ci/guest_initramfs.sh` builds the base initramfs once per test process. Each guest appends
//! its own small cpio (the test's `/test.sh`, `/env.sh`, extra files) to it, boots under
//! `timeout` with `-accel tcg -smp 2` and QEMU's user network with `restrict=on`: the guest
//! reaches a host port P on 127.0.0.1 as `10.0.2.100:P` (a `guestfwd` running socat per
//! connection), and the host reaches a guest port through a `hostfwd` on 127.0.0.1 whose port
//! the harness picks. Nothing else leaves the guest.
//!
//! The serial console is both ways: the guest prints marker lines (`@@ NAME key=value...`,
//! `ci/guest/lib.sh`), which a reader thread collects, and the host writes command lines that
//! the guest's `serve` runs. Tests judge by markers, never by QEMU's exit status (a guest panic
//! also ends QEMU with 0). Every wait is bounded; dropping a `Guest` kills its QEMU's process
//! group (QEMU and its socat children), and keeps the console log if the test failed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest one wait for a marker may take (a boot takes 3-5 s under TCG).
pub const MARKER_BOUND: Duration = Duration::from_secs(90);
/// QEMU's own bound (`timeout`), for a guest whose test forgets to end it.
const QEMU_TIMEOUT_S: u32 = 300;
/// Attempts to boot when a picked hostfwd port was taken by someone else meanwhile.
const PORT_ATTEMPTS: u32 = 5;
/// How many console lines a failure message shows.
const TAIL_LINES: usize = 80;
/// The address a guest dials to reach a host port (`guestfwd`).
pub const HOST_ADDRESS: &str = "10.0.2.100";

/// The kernel and the base initramfs, found or built once per test process.
pub struct Kit {
    kernel: PathBuf,
    base_initramfs: Vec<u8>,
}

static KIT: OnceLock<Result<Kit, String>> = OnceLock::new();

/// The guest kit, or `None` after a loud skip message when a prerequisite is missing; with
/// `CI=true` (where `ci/install.sh` has installed everything) a missing prerequisite panics.
pub fn kit(test: &str) -> Option<&'static Kit> {
    match KIT.get_or_init(find_kit) {
        Ok(kit) => Some(kit),
        Err(missing) => {
            let message = format!("{test}: {missing} (ci/install.sh installs it)");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
            eprintln!("\n*** SKIPPED {message} ***\n");
            None
        }
    }
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn find_kit() -> Result<Kit, String> {
    for tool in ["qemu-system-x86_64", "socat", "timeout", "cpio", "depmod", "nvme", "mke2fs"] {
        if !on_path(tool) {
            return Err(format!("{tool} is not on PATH"));
        }
    }
    let boot = repository().join(".cache/guest/kernel/boot");
    let kernel = std::fs::read_dir(&boot)
        .ok()
        .and_then(|entries| {
            entries.filter_map(Result::ok).map(|entry| entry.path()).find(|path| {
                path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
        })
        .ok_or_else(|| format!("no guest kernel in {}", boot.display()))?;
    let output =
        std::env::temp_dir().join(format!("thin_guest_initramfs_{}.gz", std::process::id()));
    let built = Command::new("bash")
        .arg(repository().join("ci/guest_initramfs.sh"))
        .arg(&output)
        .output()
        .map_err(|e| format!("cannot run ci/guest_initramfs.sh: {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "ci/guest_initramfs.sh failed: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    let base_initramfs = std::fs::read(&output).map_err(|e| format!("initramfs: {e}"))?;
    let _ = std::fs::remove_file(&output);
    Ok(Kit { kernel, base_initramfs })
}

/// What to boot.
pub struct GuestSpec {
    /// Names the guest in logs and its scratch directory; also seeds its host NQN.
    pub name: String,
    /// The body of `/test.sh`, run by `/init` under `set -e` after the network is up, with the
    /// helpers of `ci/guest/lib.sh` in scope.
    pub script: String,
    /// Shell variables set in `/env.sh` before the script runs.
    pub env: Vec<(String, String)>,
    /// Extra files for the overlay: absolute guest path and contents.
    pub files: Vec<(String, Vec<u8>)>,
    /// Host ports on 127.0.0.1 the guest reaches as `10.0.2.100:<same port>`.
    pub host_ports: Vec<u16>,
    /// Guest TCP ports the host reaches on 127.0.0.1 (see `Guest::forwarded_port`).
    pub guest_ports: Vec<u16>,
    /// Kernel command line parameters added to the harness's own.
    pub kernel_args: Vec<String>,
}

impl GuestSpec {
    pub fn new(name: &str, script: &str) -> GuestSpec {
        GuestSpec {
            name: name.to_string(),
            script: script.to_string(),
            env: Vec::new(),
            files: Vec::new(),
            host_ports: Vec::new(),
            guest_ports: Vec::new(),
            kernel_args: Vec::new(),
        }
    }

    pub fn env(mut self, name: &str, value: impl ToString) -> GuestSpec {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn host_port(mut self, port: u16) -> GuestSpec {
        self.host_ports.push(port);
        self
    }

    pub fn guest_port(mut self, port: u16) -> GuestSpec {
        self.guest_ports.push(port);
        self
    }

    /// The QEMU `-uuid` (the guest's DMI UUID, from which nvme-cli makes its host NQN): a
    /// function of the name, so a test's host NQN is the same at every run.
    pub fn uuid(&self) -> String {
        // FNV-1a, twice with different offsets: 128 stable bits, no dependency.
        let hash = |offset: u64| {
            self.name.bytes().fold(offset, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
        };
        let (high, low) = (hash(0xcbf29ce484222325), hash(0x84222325cbf29ce4));
        let version_4 = (high & !0xf000) | 0x4000;
        let variant = (low & !(0xc << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            version_4 >> 32,
            (version_4 >> 16) & 0xffff,
            version_4 & 0xffff,
            variant >> 48,
            variant & 0xffff_ffff_ffff
        )
    }

    /// The host NQN nvme-cli uses in this guest.
    pub fn host_nqn(&self) -> String {
        format!("nqn.2014-08.org.nvmexpress:uuid:{}", self.uuid())
    }
}

/// One marker line: `@@ NAME key=value ...`.
#[derive(Clone, Debug)]
pub struct Marker {
    pub name: String,
    pub fields: BTreeMap<String, String>,
    pub line: String,
}

impl Marker {
    fn parse(line: &str) -> Option<Marker> {
        let (_, rest) = line.split_once("@@ ")?;
        let mut words = rest.split_whitespace();
        let name = words.next()?.to_string();
        let fields = words
            .filter_map(|word| word.split_once('='))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Some(Marker { name, fields, line: line.to_string() })
    }

    pub fn field(&self, key: &str) -> &str {
        self.fields.get(key).unwrap_or_else(|| panic!("marker without {key}: {}", self.line))
    }

    pub fn number(&self, key: &str) -> u64 {
        let value = self.field(key);
        value.parse().unwrap_or_else(|_| panic!("{key}={value} is not a number: {}", self.line))
    }
}

/// The console as read so far.
#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

struct ConsoleShared {
    state: Mutex<Console>,
    changed: Condvar,
}

impl ConsoleShared {
    /// The console; a test that panicked while holding it left nothing half-written.
    fn lock(&self) -> std::sync::MutexGuard<'_, Console> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running guest. Dropping it kills QEMU.
pub struct Guest {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    console: Arc<ConsoleShared>,
    /// The index of the next console line `wait_for` looks at.
    cursor: usize,
    commands_sent: u64,
    forwarded: Vec<(u16, u16)>,
    scratch: PathBuf,
    started: Instant,
}

impl Guest {
    /// Boots the guest and waits (bounded) for its `READY` marker.
    pub fn boot(kit: &Kit, spec: &GuestSpec) -> Guest {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let scratch = std::env::temp_dir().join(format!(
            "thin_guest_{}_{}_{n}",
            spec.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("guest scratch dir");
        let initramfs = scratch.join("initramfs");
        std::fs::write(&initramfs, initramfs_with_overlay(&kit.base_initramfs, spec))
            .expect("write initramfs");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let forwarded: Vec<(u16, u16)> =
                spec.guest_ports.iter().map(|&port| (port, free_port())).collect();
            let mut guest = Guest::spawn(kit, spec, &scratch, &initramfs, forwarded);
            match guest.wait_ready() {
                Ok(()) => return guest,
                Err(stderr)
                    if stderr.contains("host forwarding rule") && attempt < PORT_ATTEMPTS =>
                {
                    eprintln!("{}: a forwarded port was taken, retrying: {stderr}", spec.name);
                    guest.kill();
                }
                Err(stderr) => {
                    panic!("guest {} did not boot: {stderr}\n{}", spec.name, guest.tail())
                }
            }
        }
    }

    fn spawn(
        kit: &Kit,
        spec: &GuestSpec,
        scratch: &Path,
        initramfs: &Path,
        forwarded: Vec<(u16, u16)>,
    ) -> Guest {
        let mut nic = String::from("user,restrict=on,model=virtio-net-pci");
        for (guest_port, host_port) in &forwarded {
            nic += &format!(",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}");
        }
        for port in &spec.host_ports {
            nic += &format!(
                ",guestfwd=tcp:{HOST_ADDRESS}:{port}-cmd:socat STDIO TCP4:127.0.0.1:{port}"
            );
        }
        let mut append =
            String::from("console=ttyS0 panic=-1 quiet loglevel=3 nvme_core.admin_timeout=5");
        for arg in &spec.kernel_args {
            append += " ";
            append += arg;
        }
        let stderr = std::fs::File::create(scratch.join("qemu.stderr")).expect("qemu stderr");
        // `timeout` makes itself a process group leader, so killing the group ends QEMU and
        // the socat processes of its guestfwd too.
        let mut child = Command::new("timeout")
            .args(["--kill-after=5", &QEMU_TIMEOUT_S.to_string(), "qemu-system-x86_64"])
            .args(["-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "2"])
            .args(["-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none"])
            .arg("-kernel")
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", &append, "-serial", "stdio", "-uuid", &spec.uuid(), "-nic", &nic])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn timeout qemu-system-x86_64");
        let console = Arc::new(ConsoleShared {
            state: Mutex::new(Console::default()),
            changed: Condvar::new(),
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let log = std::fs::File::create(scratch.join("console.log")).expect("console log");
        let reader_console = Arc::clone(&console);
        std::thread::spawn(move || read_console(stdout, log, &reader_console));
        Guest {
            name: spec.name.clone(),
            stdin: child.stdin.take(),
            child: Some(child),
            console,
            cursor: 0,
            commands_sent: 0,
            forwarded,
            scratch: scratch.to_path_buf(),
            started: Instant::now(),
        }
    }

    /// Waits for `READY`; on an early exit, QEMU's stderr.
    fn wait_ready(&mut self) -> Result<(), String> {
        match self.next_marker(&["READY"]) {
            Some(_) => Ok(()),
            None => {
                Err(std::fs::read_to_string(self.scratch.join("qemu.stderr")).unwrap_or_default())
            }
        }
    }

    /// The host port on 127.0.0.1 that reaches `guest_port` in the guest.
    pub fn forwarded_port(&self, guest_port: u16) -> u16 {
        self.forwarded
            .iter()
            .find(|(guest, _)| *guest == guest_port)
            .map(|(_, host)| *host)
            .unwrap_or_else(|| panic!("guest port {guest_port} is not forwarded"))
    }

    /// The next marker called `name` after the ones already consumed. A `FAIL` or `EXIT`
    /// marker, or the console closing, first is a test failure (with the console's tail).
    pub fn wait_for(&mut self, name: &str) -> Marker {
        match self.next_marker(&[name]) {
            Some(marker) if marker.name == name => marker,
            Some(marker) => panic!(
                "guest {} ended while the test waited for {name}: {}\n{}",
                self.name,
                marker.line,
                self.tail()
            ),
            None => panic!(
                "guest {}: console closed while waiting for {name}\n{}",
                self.name,
                self.tail()
            ),
        }
    }

    /// The next marker among `names`, `FAIL` and `EXIT`; `None` if the console closes first.
    fn next_marker(&mut self, names: &[&str]) -> Option<Marker> {
        let deadline = Instant::now() + MARKER_BOUND;
        let mut console = self.console.lock();
        loop {
            while self.cursor < console.lines.len() {
                let line = &console.lines[self.cursor];
                self.cursor += 1;
                if let Some(marker) = Marker::parse(line)
                    && (names.contains(&marker.name.as_str())
                        || marker.name == "FAIL"
                        || marker.name == "EXIT")
                {
                    return Some(marker);
                }
            }
            if console.closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                let tail = tail_of(&console.lines);
                drop(console);
                panic!("guest {}: no {names:?} marker within {MARKER_BOUND:?}\n{tail}", self.name);
            }
            console = self
                .console
                .changed
                .wait_timeout(console, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Writes one line to the guest's console (read by `host_wait` or `serve` in the guest).
    pub fn send(&mut self, line: &str) {
        assert!(!line.contains('\n'), "one line at a time");
        let stdin = self.stdin.as_mut().expect("guest console open");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write to the guest console");
        stdin.flush().expect("flush the guest console");
    }

    /// Runs `command` (one shell line) in a guest that is in `serve`; returns its exit status.
    pub fn run(&mut self, command: &str) -> u64 {
        self.send(command);
        self.commands_sent += 1;
        let marker = self.wait_for("RAN");
        assert_eq!(
            marker.number("n"),
            self.commands_sent,
            "guest {}: commands out of step",
            self.name
        );
        marker.number("rc")
    }

    /// Runs `command` in a serving guest and fails the test unless it exits 0.
    pub fn run_ok(&mut self, command: &str) {
        let rc = self.run(command);
        if rc != 0 {
            self.fail(&format!("`{command}` exited {rc}"));
        }
    }

    /// Runs `command` in a serving guest and returns the first marker called `name` it printed;
    /// fails the test if the command ends first or fails.
    pub fn query(&mut self, command: &str, name: &str) -> Marker {
        self.send(command);
        self.commands_sent += 1;
        let marker = self.wait_for_either(name, "RAN");
        if marker.name == "RAN" {
            self.fail(&format!("`{command}` exited {} without {name}", marker.field("rc")));
        }
        let ran = self.wait_for("RAN");
        if ran.number("rc") != 0 {
            self.fail(&format!("`{command}` exited {}", ran.field("rc")));
        }
        marker
    }

    /// Fails the test with `what`, the guest kernel's recent log and the console's tail.
    pub fn fail(&mut self, what: &str) -> ! {
        let asked =
            self.stdin.as_mut().is_some_and(|stdin| stdin.write_all(b"dmesg | tail -40\n").is_ok());
        if asked {
            self.commands_sent += 1;
            let _ = self.next_marker(&["RAN"]);
        }
        panic!("guest {}: {what}\n{}", self.name, self.tail());
    }

    fn wait_for_either(&mut self, first: &str, second: &str) -> Marker {
        match self.next_marker(&[first, second]) {
            Some(marker) if marker.name == first || marker.name == second => marker,
            Some(marker) => panic!(
                "guest {} ended while the test waited for {first}: {}\n{}",
                self.name,
                marker.line,
                self.tail()
            ),
            None => panic!("guest {}: console closed\n{}", self.name, self.tail()),
        }
    }

    /// Ends a serving guest (`quit`), then waits for its script's `EXIT` marker and for QEMU to
    /// exit; asserts the script exited 0. Returns the time from launch to exit.
    pub fn finish(mut self) -> Duration {
        if self.stdin.is_some() {
            // A guest no longer serving ignores it; one that exited has closed the pipe.
            let _ = self.stdin.as_mut().map(|s| s.write_all(b"quit\n"));
        }
        let exit = match self.next_marker(&[]) {
            Some(marker) => marker,
            None => panic!("guest {}: console closed without EXIT\n{}", self.name, self.tail()),
        };
        assert!(
            exit.name == "EXIT" && exit.field("rc") == "0",
            "guest {} failed: {}\n{}",
            self.name,
            exit.line,
            self.tail()
        );
        self.wait_console_closed();
        let elapsed = self.started.elapsed();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        elapsed
    }

    fn wait_console_closed(&self) {
        let deadline = Instant::now() + MARKER_BOUND;
        let mut console = self.console.lock();
        while !console.closed {
            let now = Instant::now();
            if now >= deadline {
                drop(console);
                panic!("guest {}: QEMU did not exit after EXIT", self.name);
            }
            console = self
                .console
                .changed
                .wait_timeout(console, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Kills QEMU now (a guest that vanishes mid-transfer), waiting for it to be gone.
    pub fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ =
                Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of the console and where the whole log is kept.
    pub fn tail(&self) -> String {
        let console = self.console.lock();
        format!(
            "--- console of guest {} (full log: {}) ---\n{}",
            self.name,
            self.scratch.join("console.log").display(),
            tail_of(&console.lines)
        )
    }

    pub fn console_text(&self) -> String {
        self.console.lock().lines.join("\n")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("guest {}: console log kept in {}", self.name, self.scratch.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.scratch);
        }
    }
}

fn tail_of(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The console reader: one line at a time into `console` and the log file, until EOF.
fn read_console(stdout: impl std::io::Read, mut log: std::fs::File, console: &ConsoleShared) {
    let mut reader = BufReader::new(stdout);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        let n = reader.read_until(b'\n', &mut bytes).unwrap_or(0);
        if n > 0 {
            let _ = log.write_all(&bytes);
            let line = String::from_utf8_lossy(&bytes).trim_end_matches(['\r', '\n']).to_string();
            console.lock().lines.push(line);
        } else {
            console.lock().closed = true;
        }
        console.changed.notify_all();
        if n == 0 {
            return;
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The base initramfs, zero-padded to 4 bytes (the kernel looks for a following uncompressed
/// cpio only at aligned offsets), then the spec's files as an uncompressed newc cpio.
fn initramfs_with_overlay(base: &[u8], spec: &GuestSpec) -> Vec<u8> {
    let mut image = base.to_vec();
    image.resize(base.len().next_multiple_of(4), 0);
    let env: String = spec
        .env
        .iter()
        .map(|(name, value)| format!("{name}='{}'\n", value.replace('\'', r"'\''")))
        .collect();
    let mut files: Vec<(&str, &[u8])> =
        vec![("test.sh", spec.script.as_bytes()), ("env.sh", env.as_bytes())];
    for (path, contents) in &spec.files {
        files.push((path.trim_start_matches('/'), contents));
    }
    for (index, (path, contents)) in files.iter().enumerate() {
        let inode = u32::try_from(index + 1).expect("a few files");
        push_cpio_entry(&mut image, inode, path, 0o100755, contents);
    }
    push_cpio_entry(&mut image, 0, "TRAILER!!!", 0, &[]);
    image
}

/// One newc cpio entry (header, name, data, each padded to 4 bytes).
fn push_cpio_entry(image: &mut Vec<u8>, inode: u32, path: &str, mode: u32, contents: &[u8]) {
    let name_size = u32::try_from(path.len() + 1).expect("short path");
    let file_size = u32::try_from(contents.len()).expect("overlay file under 4 GiB");
    let start = image.len();
    // Fields: magic, inode, mode, uid, gid, nlink, mtime, file size, device major and minor,
    // rdev major and minor, name size, checksum (unused in newc).
    let fields = [inode, mode, 0, 0, 1, 0, file_size, 0, 0, 0, 0, name_size, 0];
    let header: String =
        std::iter::once("070701".to_string()).chain(fields.map(|f| format!("{f:08x}"))).collect();
    image.extend_from_slice(header.as_bytes());
    image.extend_from_slice(path.as_bytes());
    image.push(0);
    image.resize(start + (image.len() - start).next_multiple_of(4), 0);
    image.extend_from_slice(contents);
    image.resize(start + (image.len() - start).next_multiple_of(4), 0);
}
