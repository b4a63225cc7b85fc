//! The endpoint's socket: root-only, one thread per connection, the pod's netns passed as a
//! descriptor with the request.

use super::*;

/// The endpoint's socket server; stops accepting when dropped.
#[derive(Debug)]
pub struct CniServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves `svc` on a root-only unix socket at `path`, one thread per request.
pub fn serve(path: &Path, svc: Arc<CniService>) -> std::io::Result<CniServer> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let inflight = Arc::new(AtomicUsize::new(0));
    let thread = std::thread::Builder::new()
        .name("xdpnet-cni".into())
        .spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut c) = c else { continue };
                if inflight.fetch_add(1, Ordering::Relaxed) >= MAX_INFLIGHT {
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    let e = json!({"error": {"code": code::TRY_AGAIN_LATER,
                        "msg": "xdpnetd is busy", "details": format!("{MAX_INFLIGHT} requests in flight")}});
                    let _ = c.write_all(e.to_string().as_bytes());
                    continue;
                }
                let (svc, inflight) = (svc.clone(), inflight.clone());
                let spawned = std::thread::Builder::new()
                    .name("xdpnet-cni-req".into())
                    .spawn(move || {
                        serve_one(&svc, &mut c);
                        inflight.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    eprintln!("xdpnetd: cannot start a CNI request thread");
                }
            }
        })?;
    Ok(CniServer {
        path: path.to_path_buf(),
        stop,
        thread: Some(thread),
    })
}

fn serve_one(svc: &CniService, c: &mut UnixStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
    // The first bytes may carry the pod's netns descriptor.
    let mut first = vec![0u8; 64 * 1024];
    let (mut buf, fd) = match xdpnet_dataplane::sys::fd::recv_with_fd(c, &mut first) {
        Ok((n, fd)) => {
            first.truncate(n);
            (first, fd.map(std::fs::File::from))
        }
        Err(e) => {
            let answer = svc.error(err(code::IO, "reading the request", e));
            let _ = c.write_all(answer.to_string().as_bytes());
            return;
        }
    };
    let answer = match (&*c).take(1 << 20).read_to_end(&mut buf) {
        Ok(_) => match serde_json::from_slice::<Value>(&buf) {
            Ok(v) => svc.handle(&v, fd),
            Err(e) => svc.error(err(code::DECODE, "request is not JSON", e)),
        },
        Err(e) => svc.error(err(code::IO, "reading the request", e)),
    };
    let _ = c.write_all(answer.to_string().as_bytes());
}
