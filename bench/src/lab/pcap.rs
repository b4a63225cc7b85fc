//! Captures: tcpdump in a namespace, and the pcap files it writes read back into frames.

use super::*;

/// A packet capture (tcpdump) on an interface of a lab namespace.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` into `file`.
    pub fn start(ns: &str, ifname: &str, file: &Path) -> Result<Capture> {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", ifname, "-n", "-U", "-s", "0", "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (make deps installs it)")?;
        let mut c = Capture {
            child,
            file: file.to_path_buf(),
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
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        Ok(c)
    }

    /// Stops the capture and returns the frames (whole Ethernet frames).
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let data = std::fs::read(&self.file)?;
        parse_pcap(&data)
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
