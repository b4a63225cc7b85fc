//! Every manifest in deploy/ parses into the k8s-openapi types, and says what the daemon needs:
//! RBAC exactly list/watch on exactly what the Kubernetes source watches, a config the daemon
//! accepts, a DaemonSet whose probes hit the daemon's endpoints.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use std::collections::BTreeSet;
use xdpnet_control::api_double::COLLECTIONS;
use xdpnet_control::config::{FileConfig, SourceKind};

#[derive(Default)]
struct Manifests {
    ns: Vec<Namespace>,
    sa: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    cms: Vec<ConfigMap>,
    ds: Vec<DaemonSet>,
}

fn load() -> Manifests {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/xdpnet.yaml");
    let text = std::fs::read_to_string(path).expect("deploy/xdpnet.yaml");
    let mut m = Manifests::default();
    let mut input = text.as_bytes();
    for (i, doc) in serde_saphyr::read::<_, serde_json::Value>(&mut input).enumerate() {
        let v = doc.expect("YAML");
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().expect("kind").to_string();
        let ctx = format!("document {} ({kind})", i + 1);
        match kind.as_str() {
            "Namespace" => m.ns.push(serde_json::from_value(v).expect(&ctx)),
            "ServiceAccount" => m.sa.push(serde_json::from_value(v).expect(&ctx)),
            "ClusterRole" => m.roles.push(serde_json::from_value(v).expect(&ctx)),
            "ClusterRoleBinding" => m.bindings.push(serde_json::from_value(v).expect(&ctx)),
            "ConfigMap" => m.cms.push(serde_json::from_value(v).expect(&ctx)),
            "DaemonSet" => m.ds.push(serde_json::from_value(v).expect(&ctx)),
            other => panic!("{ctx}: unexpected kind {other}"),
        }
    }
    m
}

#[test]
fn rbac_is_list_and_watch_on_exactly_what_is_watched() {
    let m = load();
    assert_eq!(m.roles.len(), 1);
    let mut granted = BTreeSet::new();
    for r in m.roles[0].rules.as_ref().expect("rules") {
        assert_eq!(r.verbs, vec!["list", "watch"], "{r:?}");
        for g in r.api_groups.as_ref().expect("groups") {
            for res in r.resources.as_ref().expect("resources") {
                granted.insert(format!("{g}/{res}"));
            }
        }
    }
    let watched: BTreeSet<String> = COLLECTIONS
        .iter()
        .map(|(path, _, _)| {
            let res = path.rsplit('/').next().unwrap_or_default();
            let group = if path.starts_with("/apis/") {
                path.split('/').nth(2).unwrap_or_default()
            } else {
                ""
            };
            format!("{group}/{res}")
        })
        .collect();
    assert_eq!(granted, watched);
    let b = &m.bindings[0];
    assert_eq!(
        b.role_ref.name,
        m.roles[0].metadata.name.clone().expect("name")
    );
    let subj = &b.subjects.as_ref().expect("subjects")[0];
    assert_eq!(Some(subj.name.clone()), m.sa[0].metadata.name);
    assert_eq!(subj.namespace, m.sa[0].metadata.namespace);
    assert_eq!(m.ns[0].metadata.name, m.sa[0].metadata.namespace);
}

#[test]
fn config_is_accepted_by_the_daemon_and_the_conflist_names_the_plugin() {
    let m = load();
    let data = m.cms[0].data.as_ref().expect("data");
    let c = FileConfig::parse(&data["config.yaml"]).expect("config.yaml parses");
    assert_eq!(c.source, Some(SourceKind::Kubernetes));
    assert!(c.metrics_address.is_some() && c.cluster_cidr.is_some());
    let conf: serde_json::Value =
        serde_json::from_str(&data["10-xdpnet.conflist"]).expect("conflist is JSON");
    assert_eq!(conf["plugins"][0]["type"], "xdpnet");
    assert!(conf["cniVersion"].is_string());
}

#[test]
fn daemonset_runs_privileged_everywhere_with_probes_on_the_daemon() {
    let m = load();
    let ds = &m.ds[0];
    let spec = ds.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name, m.sa[0].metadata.name);
    let tol = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tol.iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let env = c.env.as_ref().expect("env");
    assert!(env.iter().any(|e| {
        e.name == "NODE_NAME"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
                == Some("spec.nodeName")
    }));
    let data = m.cms[0].data.as_ref().expect("data");
    let cfg = FileConfig::parse(&data["config.yaml"]).expect("config");
    let port: i32 = cfg
        .metrics_address
        .expect("metrics")
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port");
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let g = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(g.path.as_deref(), Some(path));
        assert_eq!(
            g.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port)
        );
    }
    // Every mount has its volume; the init container installs the plugin and its conflist.
    let vols: BTreeSet<String> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    for ct in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for vm in ct.volume_mounts.iter().flatten() {
            assert!(
                vols.contains(&vm.name),
                "{} mounts unknown volume {}",
                ct.name,
                vm.name
            );
        }
    }
    let init = &pod.init_containers.as_ref().expect("init")[0];
    let script = init.args.as_ref().expect("args").join(" ");
    assert!(script.contains("/host/opt/cni/bin/xdpnet") && script.contains("10-xdpnet.conflist"));
    assert!(
        c.command
            .as_ref()
            .expect("command")
            .iter()
            .any(|a| a == "--config")
    );
}
