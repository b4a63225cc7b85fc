//! Captures: tcpdump in a namespace, and the pcap files it writes read back into frames.

use super::*;

/// A packet capture (tcpdump) on an interface of a lab namespace.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    file: PathBuf,
    /// tcpdump's stderr after "listening on" (its closing statistics).
    tail: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` into `file`.
    pub fn start(ns: &str, ifname: &str, file: &Path) -> Result<Capture> {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", ifname, "-n", "-U", "-s", "0", "-B", "65536",
                "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (make deps installs it)")?;
        let mut c = Capture {
            child,
            file: file.to_path_buf(),
            tail: None,
        };
        // tcpdump says "listening on" once the capture is live.
        let mut err = c.child.stderr.take().context("tcpdump stderr")?;
        let mut seen = Vec::new();
        let t = Instant::now();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("tcpdump did not start: {}", String::from_utf8_lossy(&seen));
            }
            let k = err.read(&mut b)?;
            if k == 0 {
                bail!("tcpdump exited: {}", String::from_utf8_lossy(&seen));
            }
            seen.extend_from_slice(&b[..k]);
        }
        c.tail = Some(std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
            sink
        }));
        Ok(c)
    }

    /// Stops the capture and returns the frames (whole Ethernet frames).
    pub fn stop(self) -> Result<Vec<Vec<u8>>> {
        Ok(self.stop_counted()?.0)
    }

    /// [`Self::stop`], and the frames the capture itself lost (tcpdump's "packets dropped by
    /// kernel": its buffer was full), so a test can count what crossed without counting
    /// the capture's own losses against the dataplane.
    pub fn stop_counted(mut self) -> Result<(Vec<Vec<u8>>, u64)> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let tail = self
            .tail
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let dropped = String::from_utf8_lossy(&tail)
            .lines()
            .find_map(|l| {
                l.strip_suffix(" packets dropped by kernel")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let data = std::fs::read(&self.file)?;
        Ok((parse_pcap(&data)?, dropped))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames of a classic pcap file (either byte order).
pub fn parse_pcap(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    if data.len() < 24 {
        bail!("pcap too short");
    }
    let magic = u32::from_le_bytes(data[0..4].try_into()?);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => bail!("not a pcap file"),
    };
    let rd = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().unwrap_or([0; 4]);
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = rd(&data[off + 8..off + 12]) as usize;
        off += 16;
        if off + incl > data.len() {
            break;
        }
        out.push(data[off..off + incl].to_vec());
        off += incl;
    }
    Ok(out)
}
