//! A test double of the Kubernetes API server: enough of the list/watch protocol over plain
//! HTTP/1.1 for the watch source, with knobs for the failures a real one has.
//!
//! Serves `GET` lists (`{kind}List` with `metadata.resourceVersion`, `fieldSelector=
//! spec.nodeName=` honoured for pods) and watches (`watch=true`: chunked JSON lines of
//! ADDED/MODIFIED/DELETED after the requested resourceVersion, BOOKMARK lines while idle). The
//! knobs: [`ApiDouble::expire`] makes every older resourceVersion "too old" (a watch from one gets
//! an ERROR event with a 410 Status, as an API server whose etcd compacted does),
//! [`ApiDouble::drop_connections`] cuts every open watch, [`ApiDouble::set_delay`] slows every
//! response, [`ApiDouble::set_down`] refuses everything (503) — and [`ApiDouble::sneak_delete`]
//! removes an object without a watch event (what a client that missed events must find out by
//! relisting). It records the watch requests it saw. Not a Kubernetes implementation: no auth, no
//! validation, no pagination (one page), no namespaces in paths (cluster-wide lists only).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The collections served: URL path, list kind, object kind, apiVersion.
pub const COLLECTIONS: [(&str, &str, &str); 7] = [
    ("/api/v1/nodes", "Node", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/services", "Service", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    ("/api/v1/namespaces", "Namespace", "v1"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
    ),
    (
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
        "ClusterNetworkPolicy",
        "policy.networking.k8s.io/v1alpha2",
    ),
];

#[derive(Debug, Default)]
struct World {
    rv: u64,
    /// (kind, key) -> object JSON (with metadata.resourceVersion)
    objects: BTreeMap<(String, String), Value>,
    /// (rv, kind, type, object)
    log: Vec<(u64, String, &'static str, Value)>,
    expired_below: u64,
    drop_epoch: u64,
    delay: Duration,
    down: bool,
    watches: Vec<(String, u64)>,
    bookmarks_sent: u64,
}

/// The test double. Dropping it stops the server.
#[derive(Debug)]
pub struct ApiDouble {
    addr: SocketAddr,
    world: Arc<(Mutex<World>, Condvar)>,
    stop: Arc<AtomicBool>,
}

fn obj_key(o: &Value) -> Option<(String, String)> {
    let kind = o["kind"].as_str()?.to_string();
    let name = o["metadata"]["name"].as_str()?;
    let key = match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    Some((kind, key))
}

impl ApiDouble {
    /// Serves on `listener` (bind it where the client can reach it, e.g. inside a lab
    /// namespace) with no objects.
    pub fn serve(listener: TcpListener) -> std::io::Result<Self> {
        let world = Arc::new((
            Mutex::new(World {
                rv: 100,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        Self::accept(listener, world)
    }

    /// Serves on 127.0.0.1 on a free port.
    pub fn start() -> std::io::Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0")?)
    }

    /// Another server on `listener` sharing this one's objects and knobs.
    pub fn mirror(&self, listener: TcpListener) -> std::io::Result<ApiDouble> {
        Self::accept(listener, self.world.clone())
    }

    fn accept(listener: TcpListener, world: Arc<(Mutex<World>, Condvar)>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (w, st) = (world.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (w, st) = (w.clone(), st.clone());
                        std::thread::spawn(move || {
                            let _ = handle(c, &w, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { addr, world, stop })
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn change(&self, ty: &'static str, mut o: Value) {
        let (m, cv) = &*self.world;
        let mut w = m.lock().unwrap_or_else(|e| e.into_inner());
        w.rv += 1;
        let rv = w.rv;
        o["metadata"]["resourceVersion"] = json!(rv.to_string());
        if let Some(k) = obj_key(&o) {
            if ty == "DELETED" {
                w.objects.remove(&k);
            } else {
                w.objects.insert(k.clone(), o.clone());
            }
            w.log.push((rv, k.0, ty, o));
        }
        cv.notify_all();
    }

    /// Adds or replaces an object (ADDED or MODIFIED to watchers).
    pub fn upsert(&self, o: Value) {
        let exists = obj_key(&o).is_some_and(|k| {
            self.world
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .objects
                .contains_key(&k)
        });
        self.change(if exists { "MODIFIED" } else { "ADDED" }, o);
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, kind: &str, key: &str) {
        let o = self
            .world
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .objects
            .get(&(kind.to_string(), key.to_string()))
            .cloned();
        if let Some(o) = o {
            self.change("DELETED", o);
        }
    }

    /// Deletes an object without telling watchers (only a relist shows it).
    pub fn sneak_delete(&self, kind: &str, key: &str) {
        let mut w = self.world.0.lock().unwrap_or_else(|e| e.into_inner());
        w.rv += 1;
        w.objects.remove(&(kind.to_string(), key.to_string()));
    }

    /// Makes every resourceVersion up to now too old (410 Gone) and cuts open watches.
    pub fn expire(&self) {
        let (m, cv) = &*self.world;
        let mut w = m.lock().unwrap_or_else(|e| e.into_inner());
        w.rv += 1;
        w.expired_below = w.rv;
        w.log.clear();
        w.drop_epoch += 1;
        cv.notify_all();
    }

    /// Cuts every open watch connection.
    pub fn drop_connections(&self) {
        let (m, cv) = &*self.world;
        m.lock().unwrap_or_else(|e| e.into_inner()).drop_epoch += 1;
        cv.notify_all();
    }

    /// Delays every response by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.world.0.lock().unwrap_or_else(|e| e.into_inner()).delay = d;
    }

    /// While down, every request gets 503 and open watches are cut.
    pub fn set_down(&self, down: bool) {
        let (m, cv) = &*self.world;
        let mut w = m.lock().unwrap_or_else(|e| e.into_inner());
        w.down = down;
        w.drop_epoch += 1;
        cv.notify_all();
    }

    /// Watch requests seen: (path, resourceVersion).
    pub fn watches(&self) -> Vec<(String, u64)> {
        self.world
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watches
            .clone()
    }

    /// Bookmarks sent so far.
    pub fn bookmarks_sent(&self) -> u64 {
        self.world
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bookmarks_sent
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.world.0.lock().unwrap_or_else(|e| e.into_inner()).rv
    }
}

impl Drop for ApiDouble {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.world.1.notify_all();
    }
}

fn query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%3D", "=")
                    .replace("%3d", "=")
                    .replace("%2F", "/"),
            )
        })
        .collect()
}

fn matches(o: &Value, q: &BTreeMap<String, String>) -> bool {
    match q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
    {
        Some(n) => o["spec"]["nodeName"].as_str() == Some(n),
        None => true,
    }
}

fn handle(
    c: TcpStream,
    world: &Arc<(Mutex<World>, Condvar)>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut h = String::new();
    while r.read_line(&mut h)? > 2 {
        h.clear();
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, q) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let q = query(q);
    let (delay, down) = {
        let w = world.0.lock().unwrap_or_else(|e| e.into_inner());
        (w.delay, w.down)
    };
    std::thread::sleep(delay);
    let mut c = c;
    if down {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"unavailable","code":503}"#;
        write!(
            c,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let Some(&(_, kind, api)) = COLLECTIONS.iter().find(|(p, _, _)| *p == path) else {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#;
        write!(
            c,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    };
    if q.get("watch").map(String::as_str) != Some("true")
        && q.get("watch").map(String::as_str) != Some("1")
    {
        let w = world.0.lock().unwrap_or_else(|e| e.into_inner());
        let items: Vec<Value> = w
            .objects
            .iter()
            .filter(|((k, _), o)| k == kind && matches(o, &q))
            .map(|(_, o)| o.clone())
            .collect();
        let body = json!({"kind": format!("{kind}List"), "apiVersion": api,
            "metadata": {"resourceVersion": w.rv.to_string()}, "items": items})
        .to_string();
        drop(w);
        write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    // A watch.
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = |c: &mut TcpStream, v: &Value| -> std::io::Result<()> {
        let s = format!("{v}\n");
        write!(c, "{:x}\r\n{s}\r\n", s.len())?;
        c.flush()
    };
    let (m, cv) = &**world;
    let mut w = m.lock().unwrap_or_else(|e| e.into_inner());
    w.watches.push((path.to_string(), from));
    if from < w.expired_below {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}});
        drop(w);
        chunk(&mut c, &gone)?;
        write!(c, "0\r\n\r\n")?;
        return Ok(());
    }
    let epoch = w.drop_epoch;
    let start = Instant::now();
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    loop {
        let pending: Vec<(u64, Value)> = w
            .log
            .iter()
            .filter(|(rv, k, _, o)| *rv > sent && k == kind && matches(o, &q))
            .map(|(rv, _, ty, o)| (*rv, json!({"type": ty, "object": o})))
            .collect();
        let rv_now = w.rv;
        drop(w);
        for (rv, ev) in pending {
            chunk(&mut c, &ev)?;
            sent = rv;
        }
        if bookmarks && last_bookmark.elapsed() > Duration::from_millis(200) {
            let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api,
                "metadata": {"resourceVersion": rv_now.to_string()}}});
            chunk(&mut c, &bm)?;
            sent = sent.max(rv_now);
            last_bookmark = Instant::now();
            m.lock().unwrap_or_else(|e| e.into_inner()).bookmarks_sent += 1;
        }
        w = m.lock().unwrap_or_else(|e| e.into_inner());
        if w.drop_epoch != epoch || stop.load(Ordering::Relaxed) {
            // Cut without the terminating chunk: a dropped connection.
            return Ok(());
        }
        if start.elapsed() > timeout {
            drop(w);
            write!(c, "0\r\n\r\n")?;
            return Ok(());
        }
        w = cv
            .wait_timeout(w, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}
