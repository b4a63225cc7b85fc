//! The Kubernetes source: kube-rs watchers on Nodes, Pods, Services, EndpointSlices,
//! Namespaces, NetworkPolicies and ClusterNetworkPolicies (when their CRD is installed),
//! feeding the same [`Event`]s as the file source.
//!
//! Runs a small tokio runtime on its own thread; the daemon's control thread takes events from
//! a channel ([`Source::next`]). Each watcher lists then watches; kube-runtime's watcher
//! re-lists after `410 Gone` (expired resourceVersion) and re-watches after a dropped
//! connection, with exponential backoff on errors. A (re)list is delivered as one
//! [`Event::Replace`] of that kind when it completes, so the table never sees a half list and
//! objects deleted while we were away disappear. Objects are stripped of what the table does
//! not need (managed fields, annotations other than `xdpnet.io/*`, container specs but their
//! ports, statuses
//! other than addresses/IPs/phase) before they are stored.
//!
//! Degraded ([`Source::degraded`]) until every kind has been listed once, and while the last
//! attempt of any watcher failed; the daemon keeps forwarding with its last table meanwhile.

use crate::policy::ClusterNetworkPolicy;
use crate::state::{Event, Kind, Object, Source, SourceError};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KINDS: usize = Kind::ALL.len();

/// Health and counters of the watchers.
#[derive(Debug)]
pub struct KubeHealth {
    /// Per kind (index of [`Kind::ALL`]): listed at least once.
    pub synced: [AtomicBool; KINDS],
    /// Per kind: the last attempt failed.
    pub failing: [AtomicBool; KINDS],
    /// Per kind: when the last error happened (ms since the source started).
    pub last_error_ms: [AtomicU64; KINDS],
    /// Per kind: errors seen.
    pub errors: [AtomicU64; KINDS],
    /// Per kind: (re)lists started.
    pub lists: [AtomicU64; KINDS],
    /// Per kind: the API server does not serve it (an optional CRD not installed).
    pub absent: [AtomicBool; KINDS],
    /// The last error, for logs.
    pub last_error: Mutex<String>,
    /// When the source started.
    pub started: std::time::Instant,
}

impl Default for KubeHealth {
    fn default() -> Self {
        Self {
            synced: Default::default(),
            failing: Default::default(),
            last_error_ms: Default::default(),
            errors: Default::default(),
            lists: Default::default(),
            absent: Default::default(),
            last_error: Mutex::new(String::new()),
            started: std::time::Instant::now(),
        }
    }
}

/// A watcher whose last error is older than this (and every retry since has stayed quiet) is
/// healthy again: longer than the longest retry delay, so a watcher still failing keeps
/// erroring within it. (A re-established watch on an idle collection delivers no event that
/// could say so sooner.)
pub const RECOVERED_AFTER: Duration = Duration::from_secs(7);

impl KubeHealth {
    /// True while some kind was never listed or failed recently.
    pub fn degraded(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.synced
            .iter()
            .zip(&self.absent)
            .any(|(s, a)| !s.load(Ordering::Relaxed) && !a.load(Ordering::Relaxed))
            || self.failing.iter().zip(&self.last_error_ms).any(|(f, t)| {
                f.load(Ordering::Relaxed)
                    && now.saturating_sub(t.load(Ordering::Relaxed))
                        < RECOVERED_AFTER.as_millis() as u64
            })
    }
}

fn idx(k: Kind) -> usize {
    Kind::ALL.iter().position(|&x| x == k).unwrap_or(0)
}

/// The Kubernetes source.
#[derive(Debug)]
pub struct KubeSource {
    rx: Receiver<Event>,
    health: Arc<KubeHealth>,
    server: String,
    _thread: std::thread::JoinHandle<()>,
}

fn strip_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("xdpnet.io/"));
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// What the table and network policy need of a Node: labels, pod CIDRs, addresses.
pub fn strip_node(mut n: Node) -> Node {
    strip_meta(&mut n.metadata);
    n.spec = n.spec.map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..Default::default()
    });
    n.status = n.status.map(|s| NodeStatus {
        addresses: s.addresses,
        ..Default::default()
    });
    n
}

/// What the table and network policy need of a Pod: its node, host-network flag, IPs and
/// phase, its labels, and its containers' ports (named ports).
pub fn strip_pod(mut p: Pod) -> Pod {
    strip_meta(&mut p.metadata);
    p.spec = p.spec.map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|c| k8s_openapi::api::core::v1::Container {
                name: c.name,
                ports: c.ports,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    p.status = p.status.map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..Default::default()
    });
    p
}

/// A Service without managed fields and foreign annotations.
pub fn strip_service(mut s: Service) -> Service {
    strip_meta(&mut s.metadata);
    s
}

/// An EndpointSlice without managed fields, annotations and topology hints.
pub fn strip_slice(mut s: EndpointSlice) -> EndpointSlice {
    strip_meta(&mut s.metadata);
    for e in &mut s.endpoints {
        e.hints = None;
        e.deprecated_topology = None;
        e.target_ref = None;
    }
    s
}

/// A NetworkPolicy without managed fields and foreign annotations.
pub fn strip_network_policy(mut n: NetworkPolicy) -> NetworkPolicy {
    strip_meta(&mut n.metadata);
    n
}

/// A Namespace's name and labels.
pub fn strip_namespace(mut n: Namespace) -> Namespace {
    strip_meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
    n
}

/// Retry delays of a failing watcher: 200 ms doubling to at most 5 s, each +-25 % so nodes
/// do not retry in step; back to 200 ms after a success. A pod network must be back within
/// seconds of its API server (kube-runtime's default waits up to 30 s).
#[derive(Debug)]
pub struct RetryBackoff {
    next: Duration,
    rng: u64,
}

impl RetryBackoff {
    /// Fresh.
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Self {
            next: Self::MIN,
            rng: seed | 1,
        }
    }
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // 75 % .. 125 % of the base.
        let f = 0.75 + (self.rng % 1000) as f64 / 2000.0;
        Some(base.mul_f64(f))
    }
}

impl kube::runtime::utils::Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

async fn watch_kind<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: Sender<Event>,
    health: Arc<KubeHealth>,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let i = idx(kind);
    let started = health.started;
    let mut stream = watcher(api, cfg).backoff(RetryBackoff::new()).boxed();
    let mut listing: Vec<Object> = Vec::new();
    while let Some(ev) = stream.next().await {
        let out = match ev {
            Ok(watcher::Event::Apply(o)) => Some(Event::Upsert(wrap(o))),
            Ok(watcher::Event::Delete(o)) => {
                let o = wrap(o);
                o.key().map(|k| Event::Delete(kind, k))
            }
            Ok(watcher::Event::Init) => {
                health.lists[i].fetch_add(1, Ordering::Relaxed);
                listing.clear();
                None
            }
            Ok(watcher::Event::InitApply(o)) => {
                listing.push(wrap(o));
                None
            }
            Ok(watcher::Event::InitDone) => {
                health.synced[i].store(true, Ordering::Relaxed);
                Some(Event::Replace(kind, std::mem::take(&mut listing)))
            }
            Err(e) => {
                health.errors[i].fetch_add(1, Ordering::Relaxed);
                health.failing[i].store(true, Ordering::Relaxed);
                health.last_error_ms[i]
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                if let Ok(mut l) = health.last_error.lock() {
                    *l = format!("{}: {e}", kind.name());
                }
                continue;
            }
        };
        health.failing[i].store(false, Ordering::Relaxed);
        if let Some(ev) = out {
            if tx.send(ev).is_err() {
                return;
            }
        }
    }
}

/// [`watch_kind`] for a kind an optional CRD serves: while the API server answers 404 for
/// it (the CRD is not installed) the kind is absent — said once in the log, reported in
/// [`KubeHealth::absent`], checked again every 30 s — and the watch starts once it is there.
async fn watch_optional<K>(
    api: Api<K>,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: Sender<Event>,
    health: Arc<KubeHealth>,
    node: String,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let i = idx(kind);
    loop {
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if !health.absent[i].swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "xdpnetd[{node}]: the API server does not serve {} ({}/{}): not watched (install its CRD to use it; checked again every 30 s)",
                        K::kind(&Default::default()),
                        K::group(&Default::default()),
                        K::version(&Default::default()),
                    );
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            _ => break,
        }
    }
    if health.absent[i].swap(false, Ordering::Relaxed) {
        eprintln!(
            "xdpnetd[{node}]: {} is served now: watching it",
            K::kind(&Default::default())
        );
    }
    watch_kind(api, watcher::Config::default(), kind, wrap, tx, health).await;
}

impl KubeSource {
    /// Connects (in-cluster config or kubeconfig, or `server` when given) and starts the
    /// watchers. Fails only when no client configuration exists at all; an unreachable API
    /// server is a degraded source that keeps retrying.
    pub fn start(node_name: &str, server: Option<String>) -> Result<Self, SourceError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ctx, crx) = std::sync::mpsc::channel::<Result<String, SourceError>>();
        let health = Arc::new(KubeHealth::default());
        let h = health.clone();
        let node = node_name.to_string();
        let thread = std::thread::Builder::new()
            .name("xdpnet-kube".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ctx.send(Err(SourceError::Api(format!("tokio runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let config = match server {
                        Some(url) => match url.parse() {
                            Ok(u) => Ok(kube::Config::new(u)),
                            Err(e) => {
                                let _ = ctx.send(Err(SourceError::Api(format!(
                                    "server URL {url:?}: {e}"
                                ))));
                                return;
                            }
                        },
                        None => kube::Config::infer().await.map_err(|e| e.to_string()),
                    };
                    // The watchers retry with their own backoff and count every failure (a
                    // metric and a log line); the client's silent retries of 503s would hide a
                    // sick API server for minutes.
                    let client = config.and_then(|mut c| {
                        c.default_retry = false;
                        Client::try_from(c).map_err(|e| e.to_string())
                    });
                    let client = match client {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ctx
                                .send(Err(SourceError::Api(format!("client configuration: {e}"))));
                            return;
                        }
                    };
                    let _ = ctx.send(Ok(client.default_namespace().to_string()));
                    // Every pod, not only this node's: network policy peers are pods
                    // anywhere (their labels, addresses and named ports).
                    let all = watcher::Config::default;
                    tokio::join!(
                        watch_kind(
                            Api::<Node>::all(client.clone()),
                            all(),
                            Kind::Node,
                            |o| Object::Node(strip_node(o)),
                            tx.clone(),
                            h.clone()
                        ),
                        watch_kind(
                            Api::<Pod>::all(client.clone()),
                            all(),
                            Kind::Pod,
                            |o| Object::Pod(strip_pod(o)),
                            tx.clone(),
                            h.clone()
                        ),
                        watch_kind(
                            Api::<Service>::all(client.clone()),
                            all(),
                            Kind::Service,
                            |o| Object::Service(strip_service(o)),
                            tx.clone(),
                            h.clone()
                        ),
                        watch_kind(
                            Api::<EndpointSlice>::all(client.clone()),
                            all(),
                            Kind::EndpointSlice,
                            |o| Object::EndpointSlice(strip_slice(o)),
                            tx.clone(),
                            h.clone()
                        ),
                        watch_kind(
                            Api::<Namespace>::all(client.clone()),
                            all(),
                            Kind::Namespace,
                            |o| Object::Namespace(strip_namespace(o)),
                            tx.clone(),
                            h.clone()
                        ),
                        watch_kind(
                            Api::<NetworkPolicy>::all(client.clone()),
                            all(),
                            Kind::NetworkPolicy,
                            |o| Object::NetworkPolicy(strip_network_policy(o)),
                            tx.clone(),
                            h.clone()
                        ),
                        watch_optional(
                            Api::<ClusterNetworkPolicy>::all(client),
                            Kind::ClusterNetworkPolicy,
                            |mut o: ClusterNetworkPolicy| {
                                strip_meta(&mut o.metadata);
                                Object::ClusterNetworkPolicy(o)
                            },
                            tx,
                            h,
                            node.clone(),
                        ),
                    );
                });
            })
            .map_err(|e| SourceError::Api(format!("thread: {e}")))?;
        let server = match crx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => "Kubernetes API".to_string(),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(SourceError::Api("client did not start".into())),
        };
        Ok(Self {
            rx,
            health,
            server,
            _thread: thread,
        })
    }

    /// Watcher health and counters.
    pub fn health(&self) -> &Arc<KubeHealth> {
        &self.health
    }
}

impl Source for KubeSource {
    fn next(&mut self, timeout: Duration) -> Result<Vec<Event>, SourceError> {
        let mut out = Vec::new();
        match self.rx.recv_timeout(timeout) {
            Ok(e) => out.push(e),
            Err(RecvTimeoutError::Timeout) => return Ok(out),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(SourceError::Api("the watchers stopped".into()));
            }
        }
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        self.server.clone()
    }

    fn degraded(&self) -> bool {
        self.health.degraded()
    }

    fn absent_kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .iter()
            .zip(&self.health.absent)
            .filter(|(_, a)| a.load(Ordering::Relaxed))
            .map(|(k, _)| *k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_five_seconds_with_jitter_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = RetryBackoff::new();
        let d: Vec<Duration> = (0..10).map(|_| b.next().expect("endless")).collect();
        assert!(
            d[0] >= Duration::from_millis(150) && d[0] <= Duration::from_millis(250),
            "{d:?}"
        );
        assert!(d.iter().all(|x| *x <= Duration::from_millis(6250)), "{d:?}");
        assert!(d[9] >= Duration::from_millis(3750), "{d:?}");
        b.reset();
        assert!(b.next().expect("endless") <= Duration::from_millis(250));
    }
}
