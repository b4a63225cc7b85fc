//! The cluster state the lab's daemons read: Nodes, Pods (with their interface annotations),
//! Services and EndpointSlices, written as one YAML file (or served by the API double).

use super::*;

impl Lab {
    /// A ClusterIP service `web` (10.96.0.10:80/TCP) and a NodePort service `web-np`
    /// (10.96.0.11:80, nodePort 30080) over every pod's port 8080, and a UDP service `echo-udp`
    /// (10.96.0.12:53/UDP) over every pod's UDP 8080.
    pub fn default_services(&self) -> Vec<LabService> {
        let all: Vec<usize> = (0..self.pods.len()).collect();
        vec![
            LabService {
                name: "web".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: "TCP",
                node_port: None,
                backends: all.clone(),
            },
            LabService {
                name: "web-np".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
                port: 80,
                protocol: "TCP",
                node_port: Some(30080),
                backends: all.clone(),
            },
            LabService {
                name: "echo-udp".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 12),
                port: 53,
                protocol: "UDP",
                node_port: None,
                backends: all,
            },
        ]
    }

    /// Writes the cluster-state file the daemons read (they reload it on change).
    pub fn write_state(&mut self) -> Result<()> {
        let mut y = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {}\nspec:\n  podCIDR: 10.244.{}.0/24\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {}}}\n",
                n.name,
                i + 1,
                n.ip
            );
            for a in &n.extra_addrs {
                let _ = writeln!(y, "  - {{type: ExternalIP, address: {a}}}");
            }
        }
        for (name, labels) in &self.namespaces {
            let doc = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}});
            let _ = write!(y, "---\n{doc}\n");
        }
        for (i, p) in self.pods.iter().enumerate() {
            if self.absent.contains(&i) {
                continue;
            }
            let mut ann =
                serde_json::json!({"xdpnet.io/interface": p.host_if, "xdpnet.io/mac": p.mac});
            if self.taps {
                ann["xdpnet.io/tap-netns"] = serde_json::json!(format!("/run/netns/{}", p.ns));
            }
            let ports: Vec<serde_json::Value> = p
                .ports
                .iter()
                .map(|pp| {
                    let mut v =
                        serde_json::json!({"containerPort": pp.port, "protocol": pp.protocol});
                    if let Some(n) = &pp.name {
                        v["name"] = serde_json::json!(n);
                    }
                    v
                })
                .collect();
            let doc = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels, "annotations": ann},
                "spec": {"nodeName": self.nodes[p.node].name,
                         "containers": [{"name": "serve", "ports": ports}]},
                "status": {"phase": "Running", "podIP": p.ip.to_string()}});
            let _ = write!(y, "---\n{doc}\n");
        }
        for s in &self.services {
            let ty = if s.node_port.is_some() {
                "NodePort"
            } else {
                "ClusterIP"
            };
            let np = s
                .node_port
                .map(|p| format!(", nodePort: {p}"))
                .unwrap_or_default();
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: lab\nspec:\n  type: {ty}\n  clusterIP: {}\n  ports:\n  - {{name: p, port: {}, targetPort: {POD_PORT}, protocol: {}{np}}}\n",
                s.name, s.cluster_ip, s.port, s.protocol
            );
            let _ = write!(
                y,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-1\n  namespace: lab\n  labels: {{kubernetes.io/service-name: {}}}\naddressType: IPv4\nports: [{{name: p, port: {POD_PORT}, protocol: {}}}]\nendpoints:\n",
                s.name, s.name, s.protocol
            );
            for &b in s.backends.iter().filter(|b| !self.absent.contains(b)) {
                let p = &self.pods[b];
                let _ = writeln!(
                    y,
                    "- {{addresses: [{}], conditions: {{ready: true}}, nodeName: {}}}",
                    p.ip, self.nodes[p.node].name
                );
            }
        }
        for svc in &self.file_services {
            let _ = write!(y, "---\n{svc}\n---\n{}\n", self.file_slice(svc));
        }
        for o in &self.file_objects {
            let _ = write!(y, "---\n{o}\n");
        }
        for doc in &self.extra_objects {
            let _ = write!(y, "---\n{}\n", doc.trim_end());
        }
        if let Some(api) = self.api.first() {
            let mut now = std::collections::BTreeSet::new();
            for doc in y.split("---\n").filter(|d| !d.trim().is_empty()) {
                let v: serde_json::Value = serde_saphyr::from_str(doc).context("lab object")?;
                let kind = v["kind"].as_str().unwrap_or_default().to_string();
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let key = match v["metadata"]["namespace"].as_str() {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.to_string(),
                };
                now.insert((kind, key));
                api.upsert(v);
            }
            for (kind, key) in self.api_objects.difference(&now) {
                api.delete(kind, key);
            }
            self.api_objects = now;
        }
        let path = self.state_path();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The API server double, when the lab has one.
    pub fn api(&self) -> Option<&xdpnet_control::api_double::ApiDouble> {
        self.api.first()
    }

    /// The cluster-state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }
}
