//! Real NBD clients against `thin_tgt`'s export over 127.0.0.1: `qemu-io` (patterns, FUA,
//! discard, write-zeroes), `qemu-img convert` and `compare`, `nbdinfo --list`, `fio
//! --ioengine=nbd` (verify and trim jobs), and durability across processes on a uring file bdev
//! (flush, then SIGTERM or SIGKILL, restart from the same config, read back).
//!
//! Each test starts its own daemon from a `-c` config on a free port and kills it on every exit
//! path (`Daemon`'s drop). Waits are for conditions, each with a bound. Without a client tool
//! the test prints a loud skip; with CI=true (`.ci/run` installs them) it fails.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(30);
/// Bound on one client command, in seconds (`timeout` kills it after that).
const TOOL_TIMEOUT_S: &str = "120";

/// True if every tool is on PATH; otherwise a loud skip, or a failure under CI=true.
fn have_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!("{test}: missing {missing:?} (ci/install.sh installs them)");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("\n*** SKIPPED {message} ***\n");
    false
}

/// A scratch directory, removed when dropped (declare it first: it then outlives the daemon).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(test: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("thin_tgt_nbd_{}_{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A config: `bdevs` (JSON method entries) plus the NBD server on `port` and `exports`.
fn write_config(dir: &Path, bdevs: &[String], port: u16, exports: &[String]) -> PathBuf {
    // Exports first: the port accepts only once they exist (as save_config orders them).
    let mut nbd = exports.to_vec();
    nbd.push(format!(
        r#"{{"method":"nbd_server_start","params":{{"listen_address":"127.0.0.1","port":{port}}}}}"#
    ));
    let text = format!(
        r#"{{"subsystems":[{{"subsystem":"bdev","config":[{}]}},
            {{"subsystem":"nbd","config":[{}]}}]}}"#,
        bdevs.join(","),
        nbd.join(",")
    );
    let path = dir.join("config.json");
    std::fs::write(&path, text).unwrap();
    path
}

fn malloc(name: &str, num_blocks: u64, block_size: u32) -> String {
    let params = serde_json::json!({
        "name": name, "num_blocks": num_blocks, "block_size": block_size
    });
    serde_json::json!({"method": "bdev_malloc_create", "params": params}).to_string()
}

fn export(bdev: &str, name: &str, read_only: bool) -> String {
    let params = serde_json::json!({
        "bdev_name": bdev, "export_name": name, "read_only": read_only
    });
    serde_json::json!({"method": "nbd_export_add", "params": params}).to_string()
}

/// A running `thin_tgt`. Dropping it kills the process (SIGKILL) if it still runs.
struct Daemon {
    pid: u32,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, config: &Path, port: u16) -> Daemon {
        Daemon::start_with(dir, config, port, &[])
    }

    /// [`Daemon::start`] with more `thin_tgt` arguments.
    fn start_with(dir: &Path, config: &Path, port: u16, args: &[&str]) -> Daemon {
        let started = Instant::now();
        loop {
            match Daemon::try_start(dir, config, port, args) {
                Ok(daemon) => return daemon,
                // After SIGKILL the kernel tears the dead daemon's io_uring down
                // asynchronously; its file (and exclusive lock) is released once the IO it
                // had in flight has drained. Waiting for that is the point of the lock.
                Err(log) if log.contains("in use by another process") => {
                    assert!(started.elapsed() < BOUND, "the base file stayed locked:\n{log}");
                }
                Err(log) => panic!("thin_tgt exited before listening:\n{log}"),
            }
        }
    }

    /// Starts the daemon and waits until it listens; Err(its log) if it exits first.
    fn try_start(dir: &Path, config: &Path, port: u16, args: &[&str]) -> Result<Daemon, String> {
        let log = dir.join("thin_tgt.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut child: Child = Command::new(env!("CARGO_BIN_EXE_thin_tgt"))
            .arg("-c")
            .arg(config)
            .arg("-r")
            .arg(dir.join("spdk.sock"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("thin_tgt starts");
        let pid = child.id();
        let (sender, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = sender.send(status);
            }
        });
        let mut daemon = Daemon { pid, exited, status: None, log };
        let start = Instant::now();
        let ready = |d: &Daemon| {
            d.log_text().contains("; ready") && TcpStream::connect(("127.0.0.1", port)).is_ok()
        };
        while !ready(&daemon) {
            if let Ok(status) = daemon.exited.try_recv() {
                daemon.status = Some(status);
                return Err(format!("exit {status}: {}", daemon.log_text()));
            }
            assert!(start.elapsed() < BOUND, "thin_tgt did not listen on {port}");
            std::thread::yield_now();
        }
        Ok(daemon)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(signal).arg(self.pid.to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {}", self.pid);
    }

    /// Waits (bounded) for the process to exit.
    fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = self.exited.recv_timeout(BOUND).expect("thin_tgt exits");
        self.status = Some(status);
        status
    }

    /// SIGTERM: drain and exit 0.
    fn terminate(mut self) {
        self.signal("-TERM");
        let status = self.wait();
        assert!(status.success(), "thin_tgt exit after SIGTERM: {status}\n{}", self.log_text());
    }

    /// SIGKILL: no chance to do anything.
    fn kill(mut self) {
        self.signal("-KILL");
        self.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() && self.exited.try_recv().is_err() {
            let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
            let _ = self.exited.recv_timeout(BOUND);
        }
    }
}

/// Runs a client, bounded by `timeout`.
fn run(tool: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(TOOL_TIMEOUT_S)
        .arg(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// Runs a client and asserts it succeeded; returns its stdout.
fn run_ok(tool: &str, args: &[&str]) -> String {
    let output = run(tool, args);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{tool} {args:?}: {}\n{stdout}\n{stderr}", output.status);
    stdout
}

/// `qemu-io` on the export with `commands`; asserts every command succeeded.
fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.push("-c");
        args.push(command);
    }
    args.push(uri);
    let stdout = run_ok("qemu-io", &args);
    for bad in ["failed", "error", "Error"] {
        assert!(!stdout.contains(bad), "qemu-io {commands:?}:\n{stdout}");
    }
    stdout
}

#[test]
fn qemu_io_writes_reads_discards_and_zeroes() {
    if !have_tools("qemu_io", &["qemu-io"]) {
        return;
    }
    let dir = scratch_dir("qemu_io");
    let port = free_port();
    let config = write_config(
        &dir,
        &[malloc("Malloc0", 131072, 512)],
        port,
        &[export("Malloc0", "disk", false)],
    );
    let _daemon = Daemon::start(&dir, &config, port);
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "write -f -P 0xcd 1M 64k", // FUA
            "write -P 0x11 3584 1024", // unaligned to 4 KiB, aligned to 512
            "flush",
        ],
    );
    // A second process reads what the first wrote.
    qemu_io(&uri, &["read -P 0xab 0 3584", "read -P 0x11 3584 1024", "read -P 0xcd 1M 64k"]);
    qemu_io(
        &uri,
        &["discard 0 64k", "write -z 64k 64k", "read -P 0 64k 64k", "read -P 0xab 128k 64k"],
    );
    // A wrong pattern is noticed (the check above can fail).
    let output = run("qemu-io", &["-f", "raw", "-c", "read -P 0x77 1M 4k", &uri]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Pattern verification failed"), "{stdout}");
}

/// Deterministic bytes that do not compress to zero blocks.
fn image_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Leave some whole zero blocks so convert's zero detection is exercised too.
            if (i / 65536) % 5 == 3 { 0 } else { state as u8 }
        })
        .collect()
}

#[test]
fn qemu_img_convert_copies_in_and_out() {
    if !have_tools("qemu_img", &["qemu-img"]) {
        return;
    }
    let dir = scratch_dir("qemu_img");
    let port = free_port();
    let size = 8usize << 20;
    let config = write_config(
        &dir,
        &[malloc("Malloc0", (size / 4096) as u64, 4096)],
        port,
        &[export("Malloc0", "disk", false)],
    );
    let _daemon = Daemon::start(&dir, &config, port);
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    let source = dir.join("source.raw");
    std::fs::File::create(&source).unwrap().write_all(&image_bytes(size, 42)).unwrap();
    let copy = dir.join("copy.raw");
    let (source, copy) = (source.to_str().unwrap(), copy.to_str().unwrap());
    run_ok("qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", source, &uri]);
    run_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", source, &uri]);
    run_ok("qemu-img", &["convert", "-f", "raw", "-O", "raw", &uri, copy]);
    run_ok("qemu-img", &["compare", "-f", "raw", "-F", "raw", source, copy]);
    assert!(std::fs::read(source).unwrap() == std::fs::read(copy).unwrap(), "bytes match");
    // compare notices a difference (the checks above can fail).
    qemu_io(&uri, &["write -P 0x5c 4M 4k"]);
    let output = run("qemu-img", &["compare", "-f", "raw", "-F", "raw", source, &uri]);
    assert_eq!(output.status.code(), Some(1), "images differ");
}

#[test]
fn nbdinfo_lists_the_exports() {
    if !have_tools("nbdinfo", &["nbdinfo"]) {
        return;
    }
    let dir = scratch_dir("nbdinfo");
    let port = free_port();
    let config = write_config(
        &dir,
        &[malloc("Malloc0", 2048, 512), malloc("Malloc1", 256, 4096)],
        port,
        &[export("Malloc0", "disk", false), export("Malloc1", "images", true)],
    );
    let _daemon = Daemon::start(&dir, &config, port);
    let stdout = run_ok("nbdinfo", &["--list", &format!("nbd://127.0.0.1:{port}")]);
    assert!(stdout.contains("export=\"disk\""), "{stdout}");
    assert!(stdout.contains("export=\"images\""), "{stdout}");
    let stdout = run_ok("nbdinfo", &["--json", &format!("nbd://127.0.0.1:{port}/images")]);
    let info: serde_json::Value = serde_json::from_str(&stdout).expect("nbdinfo --json");
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 1 << 20);
    assert_eq!(export["is_read_only"], true);
    assert_eq!(export["block_size_minimum"], 4096);
    assert_eq!(export["can_trim"], true);
    assert_eq!(export["can_zero"], true);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_fua"], true);
}

/// A TCP connection to the NBD port that reads the server's greeting (so it is accepted and
/// negotiating) and then says nothing.
fn silent_nbd_client(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut greeting = [0u8; 18];
    std::io::Read::read_exact(&mut stream, &mut greeting).expect("the greeting");
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    stream
}

/// Asserts the server closed `stream` (EOF or a reset, within the read timeout).
fn expect_closed(stream: &mut TcpStream, what: &str) {
    let mut byte = [0u8; 1];
    match std::io::Read::read(stream, &mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("{what}: the server sent more"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

/// As many silent clients as the server's cap (64) do not shut out a real one: `nbdinfo` and
/// `qemu-io` are served at once, the first closing the silent client that waited longest,
/// which reads EOF; evictions are logged. (Before: refused for as long as the silent ones stayed.)
#[test]
fn silent_clients_at_the_cap_make_room_for_real_ones() {
    if !have_tools("nbd_cap", &["nbdinfo", "qemu-io"]) {
        return;
    }
    let dir = scratch_dir("nbd_cap");
    let port = free_port();
    let config = write_config(
        &dir,
        &[malloc("Malloc0", 2048, 512)],
        port,
        &[export("Malloc0", "disk", false)],
    );
    let daemon = Daemon::start(&dir, &config, port);
    let mut silent: Vec<TcpStream> =
        (0..bdev_thin::limits::NBD_CONNECTIONS_MAX).map(|_| silent_nbd_client(port)).collect();
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    let stdout = run_ok("nbdinfo", &["--size", &uri]);
    assert_eq!(stdout.trim(), "1048576");
    qemu_io(&uri, &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"]);
    expect_closed(&mut silent[0], "the silent client that waited longest");
    assert!(daemon.log_text().contains("closing the one waiting longest"), "{}", daemon.log_text());
    daemon.terminate();
}

/// A client that does not finish its negotiation in time is closed (the timeout is a flag, tiny
/// here; the test watches the socket, not the clock): one that sends nothing, one that sends
/// its flags and no option. A real client is served before and after.
#[test]
fn a_negotiation_that_does_not_finish_in_time_is_closed() {
    if !have_tools("nbd_handshake", &["nbdinfo"]) {
        return;
    }
    let dir = scratch_dir("nbd_handshake");
    let port = free_port();
    let config = write_config(
        &dir,
        &[malloc("Malloc0", 2048, 512)],
        port,
        &[export("Malloc0", "disk", false)],
    );
    let daemon = Daemon::start_with(&dir, &config, port, &["--handshake-timeout-ms", "100"]);
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    assert_eq!(run_ok("nbdinfo", &["--size", &uri]).trim(), "1048576");
    let mut silent = silent_nbd_client(port);
    let mut flags_only = silent_nbd_client(port);
    flags_only.write_all(&3u32.to_be_bytes()).unwrap();
    expect_closed(&mut silent, "a client that sent nothing");
    expect_closed(&mut flags_only, "a client that sent only its flags");
    assert_eq!(run_ok("nbdinfo", &["--size", &uri]).trim(), "1048576");
    let log = daemon.log_text();
    assert!(log.contains("did not finish its handshake within 100 ms"), "{log}");
    daemon.terminate();
}

#[test]
fn flushed_writes_survive_sigterm_and_sigkill() {
    if !have_tools("durability", &["qemu-io"]) {
        return;
    }
    let dir = scratch_dir("durability");
    let file = dir.join("disk.img");
    std::fs::File::create(&file).unwrap().set_len(16 << 20).unwrap();
    let uring = format!(
        r#"{{"method":"bdev_uring_create","params":{{"name":"Uring0","filename":"{}"}}}}"#,
        file.display()
    );
    let port = free_port();
    let config = write_config(&dir, &[uring], port, &[export("Uring0", "disk", false)]);
    let uri = format!("nbd://127.0.0.1:{port}/disk");

    let daemon = Daemon::start(&dir, &config, port);
    qemu_io(&uri, &["write -P 0x5a 0 4M", "write -f -P 0x3c 4M 64k", "flush"]);
    daemon.terminate();

    let daemon = Daemon::start(&dir, &config, port);
    qemu_io(&uri, &["read -P 0x5a 0 4M", "read -P 0x3c 4M 64k"]);
    qemu_io(&uri, &["write -P 0x6b 8M 4M", "write -z 1M 64k", "flush"]);
    daemon.kill();

    let daemon = Daemon::start(&dir, &config, port);
    qemu_io(
        &uri,
        &[
            "read -P 0x5a 0 1M",
            "read -P 0 1M 64k",
            "read -P 0x5a 1088k 2944k",
            "read -P 0x6b 8M 4M",
        ],
    );
    daemon.terminate();
}

/// fio's JSON report (the nbd engine prints a line before it).
fn fio_report(stdout: &str) -> serde_json::Value {
    let start = stdout.find('{').unwrap_or(0);
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("fio json: {e}\n{stdout}"))
}

#[test]
fn fio_nbd_verify_and_trim_jobs() {
    if !have_tools("fio", &["fio"]) {
        return;
    }
    let dir = scratch_dir("fio");
    let port = free_port();
    let config = write_config(
        &dir,
        &[malloc("Malloc0", 16384, 4096)],
        port,
        &[export("Malloc0", "disk", false)],
    );
    let _daemon = Daemon::start(&dir, &config, port);
    let uri = format!("--uri=nbd://127.0.0.1:{port}/disk");
    let common = ["--ioengine=nbd", &uri, "--size=16m", "--runtime=30", "--output-format=json"];
    let verify = [
        "--name=verify",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0", // no state file in the working tree
    ];
    let stdout = run_ok("fio", &[&common[..], &verify[..]].concat());
    let report = fio_report(&stdout);
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{stdout}");
    assert_eq!(job["write"]["io_bytes"], 16 << 20);
    assert_eq!(job["read"]["io_bytes"], 16 << 20, "every block verified");

    let trim = ["--name=trim", "--rw=randtrim", "--bs=64k", "--iodepth=8"];
    let stdout = run_ok("fio", &[&common[..], &trim[..]].concat());
    let report = fio_report(&stdout);
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{stdout}");
    assert_eq!(job["trim"]["io_bytes"], 16 << 20);
    // malloc zeroes what is trimmed: nothing of the verify job's data is left.
    qemu_io(&format!("nbd://127.0.0.1:{port}/disk"), &["read -P 0 0 16M"]);
}

/// One JSON-RPC call to the daemon's socket; the `result`.
fn rpc_call(socket: &Path, method: &str) -> serde_json::Value {
    rpc_reply(socket, method, serde_json::Value::Null)["result"].clone()
}

/// One JSON-RPC request with `params` on a fresh connection; the whole reply object.
fn rpc_reply(socket: &Path, method: &str, params: serde_json::Value) -> serde_json::Value {
    use std::io::Read;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("the RPC socket");
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut request = serde_json::json!({"jsonrpc": "2.0", "method": method, "id": 1});
    if !params.is_null() {
        request["params"] = params;
    }
    stream.write_all(request.to_string().as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).expect("a reply");
        assert!(read > 0, "the daemon closed the socket");
        bytes.extend_from_slice(&chunk[..read]);
        if let Ok(reply) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            return reply;
        }
    }
}

/// fio's trim job on a thin volume, `bs` = the pool's data block size, aligned: every block
/// the verify job provisioned comes back to the pool, each one passed down to the file (a hole
/// punched), and the pool checks clean after shutdown.
#[test]
fn fio_trim_on_a_thin_volume_returns_the_space() {
    if !have_tools("fio (thin)", &["fio"]) {
        return;
    }
    let dir = scratch_dir("fio_thin");
    let image = dir.join("pool.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let port = free_port();
    let bdevs = [
        serde_json::json!({"method": "bdev_uring_create",
            "params": {"name": "Uring0", "filename": image.display().to_string()}})
        .to_string(),
        serde_json::json!({"method": "bdev_thin_pool_create",
            "params": {"bdev_name": "Uring0", "pool_name": "pool0", "data_block_size": 65536}})
        .to_string(),
        serde_json::json!({"method": "bdev_thin_create",
            "params": {"pool_name": "pool0", "volume_name": "vol0", "size_in_mib": 16}})
        .to_string(),
    ];
    let config = write_config(&dir, &bdevs, port, &[export("pool0/vol0", "vol0", false)]);
    let daemon = Daemon::start(&dir, &config, port);
    let uri = format!("--uri=nbd://127.0.0.1:{port}/vol0");
    let common = ["--ioengine=nbd", &uri, "--size=16m", "--runtime=60", "--output-format=json"];
    let verify = [
        "--name=verify",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
    ];
    let report = fio_report(&run_ok("fio", &[&common[..], &verify[..]].concat()));
    assert_eq!(report["jobs"][0]["error"], 0);
    let socket = dir.join("spdk.sock");
    let before = rpc_call(&socket, "bdev_thin_get_pools");
    assert_eq!(before[0]["used_data_blocks"], 256, "16 MiB of 64 KiB blocks: {before}");
    let trim = ["--name=trim", "--rw=trim", "--bs=64k", "--iodepth=8"];
    let report = fio_report(&run_ok("fio", &[&common[..], &trim[..]].concat()));
    assert_eq!(report["jobs"][0]["error"], 0);
    assert_eq!(report["jobs"][0]["trim"]["io_bytes"], 16 << 20);
    let after = rpc_call(&socket, "bdev_thin_get_pools");
    assert_eq!(after[0]["used_data_blocks"], 0, "every block returned: {after}");
    assert_eq!(after[0]["held_data_blocks"], 0, "no hold left: {after}");
    let passdowns = after[0]["passdowns_completed"].as_u64().unwrap_or(0);
    assert!(passdowns > 0 && after[0]["passdowns_failed"] == 0, "passed down: {after}");
    daemon.terminate();
    let check = Command::new(env!("CARGO_BIN_EXE_thinctl")).arg("check").arg(&image).output();
    let check = check.unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}

/// Asserts `reply` is the error -22 and its message names `parameter`.
fn refused_naming(reply: &serde_json::Value, parameter: &str) {
    assert_eq!(reply["error"]["code"], -22, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("{parameter}: ")), "{message}");
}

/// Sizes and block sizes no export can serve are refused at create with -22 naming the limit
/// (before: a 2^63-block null bdev advertised an unaligned NBD size, a 2 GiB-block one a 2 GiB
/// NBD block size it then failed to read, and 2^44 MiB volumes were "at least 1" MiB). The
/// largest accepted ones are served: `nbdinfo` sees an aligned size and the block size, and
/// `qemu-io` reads their last block.
#[test]
fn sizes_and_block_sizes_no_export_can_serve_are_refused_at_create() {
    if !have_tools("nbd_geometry", &["nbdinfo", "qemu-io"]) {
        return;
    }
    let dir = scratch_dir("nbd_geometry");
    let port = free_port();
    let config = write_config(&dir, &[malloc("Malloc0", 16384, 4096)], port, &[]);
    let daemon = Daemon::start(&dir, &config, port);
    let socket = dir.join("spdk.sock");
    let null = |name: &str, num_blocks: u64, block_size: u64| {
        let params = serde_json::json!({
            "name": name, "num_blocks": num_blocks, "block_size": block_size
        });
        rpc_reply(&socket, "bdev_null_create", params)
    };
    refused_naming(&null("Huge", 1 << 63, 512), "num_blocks");
    refused_naming(&null("Wide", 1, 1 << 31), "block_size");
    refused_naming(&null("Odd", 8, 1536), "block_size");
    let malloc = serde_json::json!({"name": "M", "num_blocks": 8, "block_size": 131072});
    refused_naming(&rpc_reply(&socket, "bdev_malloc_create", malloc), "block_size");
    let file = dir.join("uring.img");
    std::fs::File::create(&file).unwrap().set_len(1 << 20).unwrap();
    let uring = serde_json::json!({
        "name": "U", "filename": file.to_str().unwrap(), "block_size": 131072
    });
    refused_naming(&rpc_reply(&socket, "bdev_uring_create", uring), "block_size");
    let largest_blocks = bdev_thin::limits::BDEV_SIZE_BYTES_MAX / 512;
    refused_naming(&null("Over", largest_blocks + 1, 512), "num_blocks");
    assert_eq!(null("Largest", largest_blocks, 512)["result"], "Largest");
    assert_eq!(null("Widest", 16, 65536)["result"], "Widest");
    refused_naming(
        &rpc_reply(
            &socket,
            "bdev_null_resize",
            serde_json::json!({"name": "Widest", "new_size": 1u64 << 44}),
        ),
        "new_size",
    );
    let pool = serde_json::json!({"bdev_name": "Malloc0", "pool_name": "pool0"});
    assert!(rpc_reply(&socket, "bdev_thin_pool_create", pool)["result"].is_string());
    let volume =
        serde_json::json!({"pool_name": "pool0", "volume_name": "v", "size_in_mib": 1u64 << 44});
    refused_naming(&rpc_reply(&socket, "bdev_thin_create", volume), "size_in_mib");

    for (bdev, size, block) in
        [("Largest", largest_blocks * 512, 512u64), ("Widest", 16 * 65536, 65536)]
    {
        let params = serde_json::json!({"bdev_name": bdev});
        assert_eq!(rpc_reply(&socket, "nbd_export_add", params)["result"], bdev);
        let uri = format!("nbd://127.0.0.1:{port}/{bdev}");
        let info: serde_json::Value =
            serde_json::from_str(&run_ok("nbdinfo", &["--json", &uri])).expect("nbdinfo --json");
        let export = &info["exports"][0];
        assert_eq!(export["export-size"], size, "{info}");
        assert_eq!(size % block, 0);
        assert_eq!(export["block_size_minimum"], block, "{info}");
        let last = format!("read {} {block}", size - block);
        qemu_io(&uri, &[&last]);
    }
    daemon.terminate();
}
