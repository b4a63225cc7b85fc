//! Traffic: the servers in the pods (echo, WHOAMI, HTTP), TCP and UDP exchanges with every
//! byte checked, ping, UDP blasts and sinks, HTTP GET.

use super::*;

impl Lab {
    /// Starts the pod servers: in every pod, the ports it declares (TCP and UDP on
    /// [`POD_PORT`] for the default pods).
    pub fn serve_all(&mut self) -> Result<()> {
        for i in 0..self.pods.len() {
            self.serve_pod(i)?;
        }
        Ok(())
    }

    /// Starts a server in namespace `ns` answering as `name` on `port` (TCP and UDP).
    pub fn serve(&mut self, ns: &str, name: &str, port: u16) -> Result<()> {
        self.servers.push(Server::start(ns, name, port)?);
        Ok(())
    }

    /// Starts an HTTP server in `ns` answering `name` to every request on `port`.
    pub fn serve_http(&mut self, ns: &str, name: &str, port: u16) -> Result<()> {
        self.servers.push(Server::start_http(ns, name, port)?);
        Ok(())
    }
}

/// A pod's server: TCP (first line = its name, then echoes until EOF; a connection whose first
/// bytes are `WHOAMI\n` gets the client address it saw as a second line) and UDP (answers every datagram
/// with its name, a space, and the datagram; `WHOAMI` gets `name WHOAMI client-address`).
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts serving in `ns` on `port`, TCP and UDP.
    pub fn start(ns: &str, name: &str, port: u16) -> Result<Server> {
        Self::start_on(ns, name, port, true, true)
    }

    /// Starts serving in `ns` on `port` over TCP, UDP or both.
    pub fn start_on(ns: &str, name: &str, port: u16, on_tcp: bool, on_udp: bool) -> Result<Server> {
        let (tcp, udp) = in_ns(
            ns,
            move || -> std::io::Result<(Option<TcpListener>, Option<UdpSocket>)> {
                Ok((
                    on_tcp
                        .then(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
                        .transpose()?,
                    on_udp
                        .then(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
                        .transpose()?,
                ))
            },
        )?
        .with_context(|| format!("binding port {port} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if let Some(tcp) = tcp {
            tcp.set_nonblocking(true)?;
            threads.push(Self::tcp_loop(tcp, stop.clone(), name.to_string()));
        }
        if let Some(udp) = udp {
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            threads.push(Self::udp_loop(udp, stop.clone(), name.to_string()));
        }
        Ok(Server { stop, threads })
    }

    fn tcp_loop(tcp: TcpListener, st: Arc<AtomicBool>, n: String) -> JoinHandle<()> {
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, peer)) => {
                        let n = n.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                            if c.write_all(format!("{n}\n").as_bytes()).is_err() {
                                return;
                            }
                            let mut buf = vec![0u8; 65536];
                            let mut first = true;
                            while let Ok(k) = c.read(&mut buf) {
                                if first && buf[..k] == *WHOAMI {
                                    let _ = c.write_all(format!("{peer}\n").as_bytes());
                                    break;
                                }
                                first = false;
                                if k == 0 || c.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    }

    fn udp_loop(udp: UdpSocket, st: Arc<AtomicBool>, n: String) -> JoinHandle<()> {
        // Answers leave from the address the datagram was sent to (IP_PKTINFO), as DNS
        // servers do: a socket on 0.0.0.0 would otherwise answer from the route's preferred
        // source (for pods: the host port's gateway address).
        let _ =
            nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::Ipv4PacketInfo, &true);
        std::thread::spawn(move || {
            use nix::sys::socket::{self as so, ControlMessage, ControlMessageOwned, MsgFlags};
            use std::io::{IoSlice, IoSliceMut};
            use std::os::fd::AsRawFd;
            let mut buf = vec![0u8; 65536];
            let fd = udp.as_raw_fd();
            while !st.load(Ordering::Relaxed) {
                let mut space = nix::cmsg_space!(nix::libc::in_pktinfo);
                let (k, from, to) = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let Ok(m) = so::recvmsg::<so::SockaddrIn>(
                        fd,
                        &mut iov,
                        Some(&mut space),
                        MsgFlags::empty(),
                    ) else {
                        continue;
                    };
                    let to = m.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::Ipv4PacketInfo(i) => Some(i.ipi_addr),
                            _ => None,
                        })
                    });
                    (m.bytes, m.address, to)
                };
                let Some(from) = from else { continue };
                let mut out = format!("{n} ").into_bytes();
                out.extend_from_slice(&buf[..k]);
                if buf[..k] == WHOAMI[..6] {
                    out.extend_from_slice(format!(" {}", SocketAddrV4::from(from)).as_bytes());
                }
                let info = to.map(|a| nix::libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: a,
                    ipi_addr: a,
                });
                let cm: Vec<ControlMessage<'_>> =
                    info.iter().map(ControlMessage::Ipv4PacketInfo).collect();
                let _ = so::sendmsg(
                    fd,
                    &[IoSlice::new(&out)],
                    &cm,
                    MsgFlags::empty(),
                    Some(&from),
                );
            }
        })
    }

    /// Starts an HTTP server in `ns` on `port`: every request gets `200 OK` with `name` as
    /// the body (agnhost's `/hostName`).
    pub fn start_http(ns: &str, name: &str, port: u16) -> Result<Server> {
        let tcp = in_ns(ns, move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("binding port {port} in {ns}"))?;
        tcp.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (st, n) = (stop.clone(), name.to_string());
        let t = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 4096];
                        let mut req = Vec::new();
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf) {
                                Ok(k) if k > 0 => req.extend_from_slice(&buf[..k]),
                                _ => break,
                            }
                        }
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{n}",
                            n.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Server {
            stop,
            threads: vec![t],
        })
    }

    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a client sends a lab server to learn the address the server saw it come from.
pub(super) const WHOAMI: &[u8; 7] = b"WHOAMI\n";

/// From `ns`: asks the TCP server at `to` who it is and where it saw this connection come
/// from: (server name, client address as the server saw it).
pub fn tcp_whoami(ns: &str, to: SocketAddrV4) -> Result<(String, SocketAddrV4)> {
    in_ns(ns, move || -> Result<(String, SocketAddrV4)> {
        let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .with_context(|| format!("connect to {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = std::io::BufReader::new(s.try_clone()?);
        let mut name = String::new();
        std::io::BufRead::read_line(&mut r, &mut name)?;
        (&s).write_all(WHOAMI)?;
        let mut seen = String::new();
        std::io::BufRead::read_line(&mut r, &mut seen)?;
        let seen = seen
            .trim()
            .parse()
            .with_context(|| format!("{to}: no client address in {seen:?}"))?;
        Ok((name.trim().to_string(), seen))
    })?
}

/// From `ns`: asks the UDP server at `to` who it is and where the datagram came from (the
/// answer must come from `to`).
pub fn udp_whoami(ns: &str, to: SocketAddrV4) -> Result<(String, SocketAddrV4)> {
    in_ns(ns, move || -> Result<(String, SocketAddrV4)> {
        let text = udp_ask(to, &WHOAMI[..6])?;
        let mut w = text.split(' ');
        let (name, seen) = (w.next().unwrap_or(""), w.nth(1).unwrap_or(""));
        let seen = seen
            .parse()
            .with_context(|| format!("{to}: no client address in {text:?}"))?;
        Ok((name.to_string(), seen))
    })?
}

/// Result of one TCP exchange with a lab server.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The server's name (who answered).
    pub server: String,
    /// The address connected to, as the client saw it.
    pub peer: SocketAddr,
    /// Bytes sent and verified echoed back.
    pub bytes: usize,
    /// Wall time of the transfer.
    pub elapsed: Duration,
}

/// Deterministic payload: byte i of stream `seed`.
pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// From namespace `ns`: connects to `to`, reads the server's name, sends `bytes` bytes of a
/// pattern while reading them back, and checks every byte. Fails on any mismatch or timeout.
pub fn tcp_exchange(ns: &str, to: SocketAddrV4, bytes: usize) -> Result<Exchange> {
    in_ns(ns, move || -> Result<Exchange> {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .with_context(|| format!("connect to {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let peer = s.peer_addr()?;
        let mut name = Vec::new();
        let mut b = [0u8; 1];
        loop {
            s.read_exact(&mut b)
                .with_context(|| format!("reading the server name from {to}"))?;
            if b[0] == b'\n' {
                break;
            }
            name.push(b[0]);
            if name.len() > 64 {
                bail!("{to}: no name line");
            }
        }
        let data = pattern(t.elapsed().as_nanos() as u64 ^ bytes as u64, bytes);
        let mut w = s.try_clone()?;
        let tx = data.clone();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            for c in tx.chunks(16 * 1024) {
                w.write_all(c)?;
            }
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut got = Vec::with_capacity(bytes);
        s.read_to_end(&mut got)
            .with_context(|| format!("reading the echo from {to}"))?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .with_context(|| format!("sending to {to}"))?;
        if got.len() != data.len() {
            bail!("{to}: echoed {} of {} bytes", got.len(), data.len());
        }
        if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
            bail!("{to}: echoed byte {i} differs");
        }
        Ok(Exchange {
            server: String::from_utf8_lossy(&name).into_owned(),
            peer,
            bytes,
            elapsed: t.elapsed(),
        })
    })?
}

/// From namespace `ns`: sends `n` datagrams to `to` and returns the names of the answerers
/// (the reply's source must be `to`; every payload is checked).
pub fn udp_exchange(ns: &str, to: SocketAddrV4, n: usize) -> Result<Vec<String>> {
    in_ns(ns, move || -> Result<Vec<String>> {
        let mut names = Vec::new();
        for i in 0..n {
            let msg = format!("xdpnet-udp-{i}");
            let text = udp_ask(to, msg.as_bytes()).with_context(|| format!("datagram {i}"))?;
            let (name, echo) = text.split_once(' ').unwrap_or(("", ""));
            if echo != msg {
                bail!("UDP echo {echo:?} != {msg:?}");
            }
            names.push(name.to_string());
        }
        Ok(names)
    })?
}

/// Sends `msg` from a fresh socket (in the calling thread's namespace) and returns the one
/// answer, which must come from `to`.
pub(super) fn udp_ask(to: SocketAddrV4, msg: &[u8]) -> Result<String> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(msg, to)?;
    let mut buf = [0u8; 256];
    let (k, from) = s
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {to}"))?;
    if from != SocketAddr::V4(to) {
        bail!("UDP answer from {from}, expected {to}");
    }
    Ok(String::from_utf8_lossy(&buf[..k]).into_owned())
}

/// `ping -c count` from `ns`.
pub fn ping(ns: &str, to: Ipv4Addr, count: u32) -> Result<()> {
    ping_with(ns, to, count, &[])
}

/// Two pings from `ns` carrying `size` bytes of payload that must not be fragmented on the
/// way (`-M do`): a packet of `size + 28` bytes crosses whole or not at all.
pub fn ping_whole(ns: &str, to: Ipv4Addr, size: u32) -> Result<()> {
    ping_with(ns, to, 2, &["-M", "do", "-s", &size.to_string()])
        .with_context(|| format!("{size}-byte unfragmented ping from {ns} to {to}"))
}

fn ping_with(ns: &str, to: Ipv4Addr, count: u32, extra: &[&str]) -> Result<()> {
    let count = count.to_string();
    let to = to.to_string();
    let mut args = vec![
        "netns", "exec", ns, "ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "2",
    ];
    args.extend_from_slice(extra);
    args.push(&to);
    run("ip", &args).map(|_| ())
}

/// A UDP sink in a lab namespace: counts datagrams and bytes.
#[derive(Debug)]
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

impl UdpSink {
    /// Starts counting what arrives on `port` in `ns`.
    pub fn start(ns: &str, port: u16) -> Result<UdpSink> {
        let s = in_ns(ns, move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("binding UDP {port} in {ns}"))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok(k) = s.recv(&mut buf) {
                    n += 1;
                    bytes += k as u64;
                }
            }
            (n, bytes)
        });
        Ok(UdpSink {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns (datagrams, bytes).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or((0, 0))
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From `ns`, sends `payload`-byte datagrams to `to` as fast as one socket can for `secs`;
/// returns how many were sent.
pub fn udp_blast(ns: &str, to: SocketAddrV4, payload: usize, secs: f64) -> Result<u64> {
    in_ns(ns, move || -> Result<u64> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(to)?;
        let buf = vec![0x5au8; payload];
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            for _ in 0..64 {
                if s.send(&buf).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    })?
}

/// `GET path` from namespace `ns` to `addr`: (status code, body).
pub fn http_get(ns: &str, addr: SocketAddrV4, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    in_ns(ns, move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })?
}
