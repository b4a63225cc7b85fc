//! The Kubernetes watch source against a test double of the API server (`api_double`):
//! real kube-rs watchers over HTTP, real JSON objects, and the failures a real API server has.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use xdpnet_control::api_double::ApiDouble;
use xdpnet_control::kube_source::KubeSource;
use xdpnet_control::state::{ClusterState, Dirty, Event, Kind, Source};

fn node(name: &str, ip: &str, cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"x": "y"}, "annotations": {"node.alpha.kubernetes.io/ttl": "0", "xdpnet.io/keep": "1"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1"}]},
        "spec": {"podCIDR": cidr, "taints": [{"key": "k", "effect": "NoSchedule"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b",
            "kernelVersion": "6", "osImage": "x", "containerRuntimeVersion": "c", "kubeletVersion": "v", "kubeProxyVersion": "v",
            "operatingSystem": "linux", "architecture": "amd64"}}})
}

fn pod(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "args": ["sleep", "1d"]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "demo"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn slice(name: &str, svc: &str, ips: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "demo", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true},
            "hints": {"forZones": [{"name": "z"}]}})).collect::<Vec<_>>()})
}

fn world() -> ApiDouble {
    let api = ApiDouble::start().expect("bind");
    api.upsert(node("node-1", "198.18.0.11", "10.244.1.0/24"));
    api.upsert(node("node-2", "198.18.0.12", "10.244.2.0/24"));
    api.upsert(pod("a", "node-1", "10.244.1.10"));
    api.upsert(pod("b", "node-2", "10.244.2.10"));
    api.upsert(service("web", "10.96.0.10"));
    api.upsert(slice("web-1", "web", &["10.244.1.10", "10.244.2.10"]));
    api.upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}));
    api
}

/// Feeds the source's events into a state until `done` holds or `secs` pass.
fn pump(
    src: &mut KubeSource,
    st: &mut ClusterState,
    secs: u64,
    done: impl Fn(&ClusterState, &KubeSource) -> bool,
) -> Vec<Event> {
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < Duration::from_secs(secs) {
        for e in src.next(Duration::from_millis(50)).expect("source") {
            st.apply(e.clone(), &mut Dirty::default());
            seen.push(e);
        }
        if done(st, src) {
            return seen;
        }
    }
    panic!(
        "condition not reached in {secs} s; state {:?}; last error {:?}",
        st.counts(),
        src.health().last_error.lock().map(|e| e.clone())
    );
}

fn backends(st: &ClusterState) -> Vec<String> {
    st.slices
        .get("demo/web-1")
        .map(|s| {
            s.endpoints
                .iter()
                .flat_map(|e| e.addresses.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn lists_then_watches_every_pod_and_strips_objects() {
    let api = world();
    let mut src = KubeSource::start("node-1", Some(api.url())).expect("client");
    let mut st = ClusterState::default();
    pump(&mut src, &mut st, 15, |st, src| {
        !src.degraded() && st.counts() == [2, 2, 1, 1]
    });
    // Every pod, this node's and the others' (network policy peers are anywhere; the table
    // takes only this node's).
    assert!(st.pods.contains_key("demo/a") && st.pods.contains_key("demo/b"));
    assert_eq!(st.namespaces.len(), 1);
    // Stripped: managed fields, foreign annotations, node labels and conditions, pod containers,
    // slice hints.
    let n = &st.nodes["node-1"];
    assert!(n.metadata.managed_fields.is_none());
    assert_eq!(n.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
    assert!(
        n.status
            .as_ref()
            .is_some_and(|s| s.conditions.is_none() && s.node_info.is_none())
    );
    assert!(
        n.spec
            .as_ref()
            .is_some_and(|s| s.taints.is_none() && s.pod_cidr.is_some())
    );
    let p = &st.pods["demo/a"];
    assert!(p.spec.as_ref().is_some_and(|s| s.containers.is_empty()));
    assert_eq!(
        p.metadata.labels.as_ref().map(|l| l["app"].as_str()),
        Some("web")
    );
    assert!(
        st.slices["demo/web-1"]
            .endpoints
            .iter()
            .all(|e| e.hints.is_none())
    );

    // Watch: a change and a delete arrive as events.
    api.upsert(slice("web-1", "web", &["10.244.1.10"]));
    let evs = pump(&mut src, &mut st, 10, |st, _| {
        backends(st) == ["10.244.1.10"]
    });
    assert!(evs.iter().any(|e| matches!(e, Event::Upsert(_))));
    api.delete("Service", "demo/web");
    let evs = pump(&mut src, &mut st, 10, |st, _| st.services.is_empty());
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Delete(Kind::Service, k) if k == "demo/web"))
    );
    // Pods of other nodes arrive too (policy peers), with their labels and named ports.
    let mut c = pod("c", "node-2", "10.244.2.11");
    c["spec"]["containers"][0]["ports"] =
        json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}]);
    api.upsert(c);
    api.upsert(pod("d", "node-1", "10.244.1.11"));
    pump(&mut src, &mut st, 10, |st, _| {
        st.pods.contains_key("demo/d") && st.pods.contains_key("demo/c")
    });
    let c = &st.pods["demo/c"];
    let ports = c
        .spec
        .as_ref()
        .map(|s| &s.containers)
        .cloned()
        .unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0].ports.as_ref().map(|p| p[0].name.clone()),
        Some(Some("http".into()))
    );
    assert!(
        ports[0].image.is_none(),
        "only the ports of a container are kept"
    );
}

#[test]
fn bookmarks_move_the_resume_point() {
    let api = world();
    let mut src = KubeSource::start("node-1", Some(api.url())).expect("client");
    let mut st = ClusterState::default();
    pump(&mut src, &mut st, 15, |_, src| !src.degraded());
    // Unrelated churn raises the resourceVersion; bookmarks carry it to the idle watches.
    for i in 0..5 {
        api.upsert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{i}")}}));
    }
    let rv = api.resource_version();
    let t = Instant::now();
    while api.bookmarks_sent() < 10 && t.elapsed() < Duration::from_secs(5) {
        let _ = src.next(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    api.drop_connections();
    // Re-watches resume from the bookmarked version, not from the first list's.
    let t = Instant::now();
    loop {
        let _ = src.next(Duration::from_millis(50));
        let w = api.watches();
        if w.iter()
            .any(|(p, from)| p == "/api/v1/nodes" && *from >= rv)
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no re-watch from the bookmark: {w:?}"
        );
    }
    assert!(
        !src.degraded()
            || src
                .health()
                .errors
                .iter()
                .all(|e| e.load(std::sync::atomic::Ordering::Relaxed) < 5)
    );
}

#[test]
fn gone_410_relists_and_finds_what_was_missed() {
    let api = world();
    let mut src = KubeSource::start("node-1", Some(api.url())).expect("client");
    let mut st = ClusterState::default();
    pump(&mut src, &mut st, 15, |st, src| {
        !src.degraded() && st.services.len() == 1
    });
    let lists_before: u64 = src
        .health()
        .lists
        .iter()
        .map(|l| l.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    // Objects change with no event the client can see, then its resourceVersion expires.
    api.sneak_delete("Service", "demo/web");
    api.sneak_delete("EndpointSlice", "demo/web-1");
    api.expire();
    let evs = pump(&mut src, &mut st, 20, |st, _| {
        st.services.is_empty() && st.slices.is_empty()
    });
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::Replace(Kind::Service, v) if v.is_empty()))
    );
    let lists_after: u64 = src
        .health()
        .lists
        .iter()
        .map(|l| l.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(lists_after > lists_before, "no relist after 410");
    // The nodes survived the relist.
    assert_eq!(st.nodes.len(), 2);
}

#[test]
fn dropped_connections_and_slow_responses_lose_nothing() {
    let api = world();
    api.set_delay(Duration::from_millis(300));
    let mut src = KubeSource::start("node-1", Some(api.url())).expect("client");
    let mut st = ClusterState::default();
    pump(&mut src, &mut st, 20, |_, src| !src.degraded());
    for i in 0..5 {
        api.drop_connections();
        api.upsert(slice(
            "web-1",
            "web",
            &["10.244.1.10", &format!("10.244.2.{}", 20 + i)],
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    pump(&mut src, &mut st, 20, |st, _| {
        backends(st) == ["10.244.1.10", "10.244.2.24"]
    });
}

#[test]
fn an_unreachable_api_is_degraded_until_it_answers() {
    let api = world();
    api.set_down(true);
    let mut src = KubeSource::start("node-1", Some(api.url())).expect("client");
    let t = Instant::now();
    let mut got = Vec::new();
    let errors = |src: &KubeSource| {
        src.health()
            .errors
            .iter()
            .map(|e| e.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    };
    // kube's client retries 503s with backoff before the watcher sees an error.
    while t.elapsed() < Duration::from_secs(2)
        || (errors(&src) == 0 && t.elapsed() < Duration::from_secs(20))
    {
        got.extend(src.next(Duration::from_millis(50)).expect("source"));
        assert!(src.degraded());
    }
    assert!(got.is_empty(), "events from a down API: {got:?}");
    assert!(errors(&src) > 0, "no error counted for a down API");
    api.set_down(false);
    let mut st = ClusterState::default();
    pump(&mut src, &mut st, 30, |st, src| {
        !src.degraded() && st.nodes.len() == 2
    });
}
