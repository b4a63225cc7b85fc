//! The daemons: one xdpnetd per node, started, stopped, waited for; their status and logs.

use super::*;

impl Lab {
    /// Replaces the extra arguments every daemon gets (from the next start on).
    pub fn set_daemon_args(&mut self, args: Vec<String>) {
        self.daemon_args = args;
    }

    /// The process id of node `n`'s daemon (`ip netns exec` execs it: the same process).
    pub fn daemon_pid(&self, n: usize) -> Option<u32> {
        self.daemons.get(n)?.as_ref().map(Child::id)
    }

    /// Whether node `n`'s daemon is running (started by this lab and not stopped).
    pub fn daemon_running(&self, n: usize) -> bool {
        self.daemons.get(n).is_some_and(Option::is_some)
    }

    /// The CNI socket of node `n`'s daemon (what a conflist's `socket` names).
    pub fn cni_socket(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{}-cni.sock", self.nodes[n].name))
    }

    /// The lab's directory (logs, state, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts (or restarts) node `n`'s daemon.
    pub fn start_daemon(&mut self, n: usize) -> Result<()> {
        let node = self.nodes[n].clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let xdpnetd = self.bin_dir.join("xdpnetd");
        let state = self.state_path();
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            node.ns.clone(),
            xdpnetd.to_string_lossy().into_owned(),
            "--node-name".into(),
            node.name.clone(),
            if self.api.is_empty() {
                "--state"
            } else {
                "--api-server"
            }
            .into(),
            if self.api.is_empty() {
                state.to_string_lossy().into_owned()
            } else {
                "http://127.0.0.1:6443".into()
            },
            "--uplink".into(),
            "eth0".into(),
            "--cores".into(),
            (0..self.workers)
                .map(|k| ((node.core + k) % ncpu).to_string())
                .collect::<Vec<_>>()
                .join(","),
            "--status-file".into(),
            node.status.to_string_lossy().into_owned(),
            "--frames".into(),
            self.frames.to_string(),
            "--max-pods".into(),
            self.max_pods.to_string(),
            "--pod-interface".into(),
            if self.taps { "tap" } else { "veth" }.into(),
            "--inspect-socket".into(),
            self.dir
                .join(format!("{}.sock", node.name))
                .to_string_lossy()
                .into_owned(),
            "--metrics-addr".into(),
            "127.0.0.1:9460".into(),
            "--state-dir".into(),
            self.dir
                .join(format!("{}-state", node.name))
                .to_string_lossy()
                .into_owned(),
            "--cni-socket".into(),
            self.cni_socket(n).to_string_lossy().into_owned(),
        ];
        args.extend(self.daemon_args.iter().cloned());
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting xdpnetd")?;
        if self.daemons.len() <= n {
            self.daemons.resize_with(n + 1, || None);
        }
        self.daemons[n] = Some(child);
        Ok(())
    }

    /// Sends `sig` to node `n`'s daemon and waits for it to exit.
    pub fn stop_daemon(&mut self, n: usize, sig: nix::sys::signal::Signal) -> Result<()> {
        if let Some(mut c) = self.daemons.get_mut(n).and_then(Option::take) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let t = Instant::now();
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    bail!("xdpnetd of {} did not exit on {sig:?}", self.nodes[n].name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Node `n`'s daemon status (None when it has not written one).
    pub fn status(&self, n: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.nodes[n].status).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The tail of node `n`'s log.
    pub fn log_tail(&self, n: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[n].log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    pub(super) fn ready(&self, n: usize) -> bool {
        let pods = self
            .pods
            .iter()
            .enumerate()
            .filter(|(i, p)| p.node == n && !self.absent.contains(i))
            .count() as u64;
        self.status(n).is_some_and(|s| {
            // At least the lab's pods (pods wired through the CNI plugin come on top).
            s["local_endpoints"].as_u64().is_some_and(|e| e >= pods)
                && s["remote_nodes"].as_array().map(Vec::len) == Some(self.nodes.len() - 1)
        })
    }

    /// Waits until every daemon reports its pods and peers.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let t = Instant::now();
        for n in 0..self.nodes.len() {
            while !self.ready(n) {
                if t.elapsed() > timeout {
                    bail!(
                        "{} not ready after {timeout:?}; log:\n{}",
                        self.nodes[n].name,
                        self.log_tail(n, 30)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Waits until node `n`'s daemon publishes a table generation above `after`.
    pub fn wait_generation(&self, n: usize, after: u64, timeout: Duration) -> Result<u64> {
        let t = Instant::now();
        loop {
            let g = self
                .status(n)
                .and_then(|s| s["generation"].as_u64())
                .unwrap_or(0);
            if g > after {
                return Ok(g);
            }
            if t.elapsed() > timeout {
                bail!("{}: no table after generation {after}", self.nodes[n].name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
