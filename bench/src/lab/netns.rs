//! Namespaces and commands: running a command (in a namespace), closures in a namespace,
//! interface drop counters, finding and removing a prefix's namespaces, and the registry that
//! removes live labs on Ctrl-C.

use super::*;

/// Runs a command; an error carries its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    run_stdin(cmd, args, "")
}

/// Turns IPv6 off in namespace `ns` (no autoconfiguration or MLD frames: a benchmark's
/// interfaces then carry only its own traffic).
pub fn no_ipv6(ns: &str) -> Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
    .map(|_| ())
}

pub(super) fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(|_| ())
}

/// A permanent neighbour entry `addr` -> `mac` on `dev` in namespace `ns` (replacing any).
pub fn permanent_neighbour(ns: &str, dev: &str, addr: &str, mac: &str) -> Result<()> {
    ip(&[
        "-n",
        ns,
        "neigh",
        "replace",
        addr,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
}

/// A `pfifo` root queue on `dev` in namespace `ns` (replacing any): on a veth, what lets a
/// full peer ring hold the sender back instead of dropping (Linux 6.16 on).
pub fn fifo_queue(ns: &str, dev: &str) -> Result<()> {
    run(
        "tc",
        &["-n", ns, "qdisc", "replace", "dev", dev, "root", "pfifo"],
    )
    .map(|_| ())
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it makes stay in `ns`); an
/// empty `ns` is the namespace this process is in.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    if ns.is_empty() {
        // The namespace this process is in.
        return Ok(f());
    }
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {path}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// Runs a command with `input` on its stdin (closed after it); an error carries its stderr.
pub fn run_stdin(cmd: &str, args: &[&str], input: &str) -> Result<String> {
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd} (is it installed? make deps)"))?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(input.as_bytes())
            .with_context(|| format!("writing to {cmd}"))?;
    }
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Packets the interfaces of namespace `ns` dropped (receive + transmit, as `ip -s link`
/// shows them: a veth counts a frame its peer had no room for), and what their queueing
/// disciplines dropped (`tc -s qdisc`: a queue that overflowed).
pub fn link_drops(ns: &str) -> Result<u64> {
    Ok(link_drop_places(ns)?.values().sum())
}

/// [`link_drops`] by place: `NS/IF rx`, `NS/IF tx` and `NS/IF qdisc KIND`, nonzero ones only.
pub fn link_drop_places(ns: &str) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut m = std::collections::BTreeMap::new();
    let out = run("ip", &["-n", ns, "-s", "-j", "link", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -s -j link")?;
    for l in v.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or("?");
        for dir in ["rx", "tx"] {
            let n = l["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
            if n > 0 {
                *m.entry(format!("{ns}/{name} {dir}")).or_default() += n;
            }
        }
    }
    // Frames a queueing discipline dropped never reached the interface's counters.
    let out = run("tc", &["-n", ns, "-s", "-j", "qdisc", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("tc -s -j qdisc")?;
    for q in v.as_array().into_iter().flatten() {
        let n = q["drops"].as_u64().unwrap_or(0);
        if n > 0 {
            let dev = q["dev"].as_str().unwrap_or("?");
            let kind = q["kind"].as_str().unwrap_or("?");
            *m.entry(format!("{ns}/{dev} qdisc {kind}")).or_default() += n;
        }
    }
    Ok(m)
}

/// Namespaces whose names start with `prefix-`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// Ends every process in namespace `ns`: SIGTERM, then SIGKILL for what is left after 3 s.
pub(super) fn stop_processes(ns: &str) {
    for sig in [libc_sig::TERM, libc_sig::KILL] {
        let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
        let pids: Vec<i32> = pids.lines().filter_map(|p| p.trim().parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3)
            && !run("ip", &["netns", "pids", ns])
                .unwrap_or_default()
                .trim()
                .is_empty()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills every process in the lab's namespaces and deletes the namespaces.
pub fn teardown(prefix: &str) -> usize {
    let nss = namespaces(prefix);
    for ns in &nss {
        stop_processes(ns);
    }
    for ns in &nss {
        let _ = ip(&["netns", "del", ns]);
    }
    nss.len()
}

pub(super) mod libc_sig {
    pub use nix::sys::signal::Signal::{SIGKILL as KILL, SIGTERM as TERM};
}

/// Prefixes of the labs this process has up (for cleanup on a signal).
pub(super) static LIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records `prefix` as a lab of this process ([`cleanup_on_signal`] removes it).
pub fn register(prefix: &str) {
    if let Ok(mut l) = LIVE.lock() {
        l.push(prefix.to_string());
    }
}

/// Forgets `prefix` (its lab is gone).
pub fn unregister(prefix: &str) {
    if let Ok(mut l) = LIVE.lock() {
        l.retain(|p| p != prefix);
    }
}

/// On SIGINT, SIGTERM or SIGHUP, tears down every lab this process has up, then exits with
/// 128 + the signal. Call once, early (the demo, `lab up` and the tests do).
pub fn cleanup_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut r = Ok(());
    ONCE.call_once(
        || match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut sigs) => {
                std::thread::spawn(move || {
                    if let Some(sig) = sigs.forever().next() {
                        let live: Vec<String> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
                        for p in live {
                            eprintln!("signal {sig}: removing lab {p}");
                            teardown(&p);
                            let _ = std::fs::remove_dir_all(lab_dir(&p));
                        }
                        std::process::exit(128 + sig);
                    }
                });
            }
            Err(e) => r = Err(anyhow::anyhow!("installing signal handlers: {e}")),
        },
    );
    r
}

/// Turns TX checksum offload off on `ifname` in `ns`.
/// TX checksum offload (with segmentation offload) back on for `ifname` in `ns`, as a distro
/// leaves a veth: the kernel path's pods send partial checksums and whole TSO segments.
pub fn tx_on(ns: &str, ifname: &str) -> Result<()> {
    run(
        "ip",
        &[
            "netns", "exec", ns, "ethtool", "-K", ifname, "tx", "on", "sg", "on", "tso", "on",
            "gso", "on",
        ],
    )
    .map(|_| ())
}

/// TX checksum offload off for `ifname` in `ns` (complete checksums on every frame).
pub fn tx_off(ns: &str, ifname: &str) -> Result<()> {
    run(
        "ip",
        &["netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"],
    )
    .map(|_| ())
}
