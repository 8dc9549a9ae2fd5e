//! `thin_tgt`: the daemon, SPDK's `spdk_tgt` for bdev_thin. Starts the reactors, loads the JSON
//! config, serves JSON-RPC on a Unix socket (`-r`) until SIGINT/SIGTERM, then stops accepting,
//! answers what is in flight, stops after in-flight IO drains, and exits 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bdev_thin::admission::ConnectionTimeouts;
use bdev_thin::runtime::{CoreMask, Runtime, RuntimeOptions};
use bdev_thin::target::Target;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "thin_tgt",
    about = "bdev_thin target daemon (spdk_tgt-compatible)",
    disable_version_flag = true
)]
struct Args {
    /// Core mask (`0x3`, `[0,1]`).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    core_mask: String,
    /// JSON-RPC socket path.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/spdk.sock")]
    rpc_socket: String,
    /// JSON config to load at start (SPDK's format).
    #[arg(short = 'c', long = "config", visible_alias = "json")]
    config: Option<std::path::PathBuf>,
    /// Keep reactors polling when idle.
    #[arg(long)]
    no_park: bool,
    /// Close a connection (RPC, NBD or NVMe/TCP) that has not finished its handshake (an RPC
    /// connection's first request, NBD negotiation, NVMe/TCP ICReq) this many milliseconds
    /// after accept.
    #[arg(long, default_value_t = bdev_thin::limits::CONNECTION_HANDSHAKE_TIMEOUT_MS)]
    handshake_timeout_ms: u64,
    /// Close an RPC connection idle (nothing running, nothing to send) this many milliseconds.
    #[arg(long, default_value_t = bdev_thin::limits::RPC_IDLE_TIMEOUT_MS)]
    idle_timeout_ms: u64,
    /// Print the version and exit.
    #[arg(long)]
    version: bool,
}

fn main() {
    bdev_thin::set_build_commit(env!("BDEV_THIN_COMMIT"));
    let args = Args::parse();
    if args.version {
        let version = bdev_thin::rpc::methods::version_json();
        println!("{}", version["version"].as_str().unwrap_or(bdev_thin::VERSION));
        return;
    }
    if let Err(e) = run(&args) {
        // A config error may quote names: one line, escaped.
        bdev_thin::names::log_line(format_args!("thin_tgt: {e:#}"));
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let mask = CoreMask::parse(&args.core_mask).map_err(anyhow::Error::msg)?;
    let runtime =
        Runtime::start(RuntimeOptions { mask, park: !args.no_park, ..Default::default() })
            .context("starting reactors")?;
    let timeouts = ConnectionTimeouts {
        handshake_ms: args.handshake_timeout_ms,
        idle_ms: args.idle_timeout_ms,
    };
    let target = Target::with_connection_timeouts(runtime.handle(), timeouts);
    if let Some(config) = &args.config {
        bdev_thin::config::load(&target, config)?;
    }
    let server = bdev_thin::rpc::server::listen(&target, std::path::Path::new(&args.rpc_socket))
        .context("starting the JSON-RPC server")?;
    target.set_initialized();
    eprintln!(
        "thin_tgt: reactors on cores {:?}; JSON-RPC on {}; ready",
        runtime.handle().cores(),
        server.path().display()
    );
    if let Some(signal) = signals.forever().next() {
        eprintln!("thin_tgt: signal {signal}: stopping");
        stop.store(true, Ordering::SeqCst);
    }
    runtime.stop();
    eprintln!("thin_tgt: stopped");
    Ok(())
}
