#!/usr/bin/env python3
"""The containerd test's helpers: an OCI image built from Debian's busybox-static, and a CRI
v1 client (PyPI container-runtime-interface-api) that makes the calls the kubelet makes.

  cri.py image OUT.tar NAME            write an OCI archive of busybox (for `ctr images import`)
  cri.py SOCK runp NAME UID            RunPodSandbox + CreateContainer + StartContainer
  cri.py SOCK exec CONTAINER_ID CMD..  ExecSync; prints {"exit": n, "stdout": ..., "stderr": ...}
  cri.py SOCK stopp POD_ID             StopPodSandbox + RemovePodSandbox
  cri.py SOCK pods                     ListPodSandbox

Every command prints one JSON object on stdout.
"""

import hashlib
import io
import json
import os
import sys
import tarfile
import time

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "sleep", "nc", "ip", "cat", "echo", "ping", "hostname", "wget", "true"]


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def image(out, name):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for d in ["bin", "tmp", "proc", "sys", "dev", "etc"]:
            i = tarfile.TarInfo(d)
            i.type, i.mode = tarfile.DIRTYPE, 0o755
            t.addfile(i)
        with open(BUSYBOX, "rb") as f:
            data = f.read()
        i = tarfile.TarInfo("bin/busybox")
        i.size, i.mode = len(data), 0o755
        t.addfile(i, io.BytesIO(data))
        for a in APPLETS:
            i = tarfile.TarInfo(f"bin/{a}")
            i.type, i.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(i)
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "1000000"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(out, "w") as tar:
        lb = blob(tar, layer)
        cb = blob(tar, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cb},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **lb}],
        }
        mb = blob(tar, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", **mb,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
            }],
        }
        for path, data in [("index.json", json.dumps(index).encode()),
                           ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')]:
            i = tarfile.TarInfo(path)
            i.size = len(data)
            tar.addfile(i, io.BytesIO(data))
    return {"image": name, "archive": out}


def stubs(sock):
    import grpc
    from cri_api.v1 import api_pb2, api_pb2_grpc
    ch = grpc.insecure_channel(f"unix://{sock}")
    return api_pb2, api_pb2_grpc.RuntimeServiceStub(ch)


def pod_config(pb, name, uid, logdir):
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="cri-test", uid=uid, attempt=0),
        hostname=name,
        log_directory=logdir,
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))),
    )


def runp(sock, name, uid, image_name):
    pb, rt = stubs(sock)
    logdir = os.path.join(os.path.dirname(sock), "logs", name)
    os.makedirs(logdir, exist_ok=True)
    cfg = pod_config(pb, name, uid, logdir)
    t = time.monotonic()
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    took = time.monotonic() - t
    st = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True), timeout=30)
    ip = st.status.network.ip
    info = json.loads(st.info.get("info", "{}"))
    netns = info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
    netns = next((n.get("path") for n in netns if n.get("type") == "network"), None)
    c = rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod,
        config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main", attempt=0),
            image=pb.ImageSpec(image=image_name),
            command=["/bin/sleep", "1000000"],
            log_path="main.log",
            linux=pb.LinuxContainerConfig(),
        ),
        sandbox_config=cfg), timeout=60).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=c), timeout=60)
    return {"pod": pod, "container": c, "ip": ip, "netns": netns, "run_seconds": took}


def exec_sync(sock, cid, cmd):
    pb, rt = stubs(sock)
    r = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=20), timeout=30)
    return {"exit": r.exit_code, "stdout": r.stdout.decode(errors="replace"),
            "stderr": r.stderr.decode(errors="replace")}


def stopp(sock, pod):
    pb, rt = stubs(sock)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    return {"removed": pod}


def pods(sock):
    pb, rt = stubs(sock)
    r = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30)
    return {"pods": [p.id for p in r.items]}


def main(argv):
    try:
        if argv[1] == "image":
            out = image(argv[2], argv[3])
        else:
            sock, cmd = argv[1], argv[2]
            if cmd == "runp":
                out = runp(sock, argv[3], argv[4], argv[5])
            elif cmd == "exec":
                out = exec_sync(sock, argv[3], argv[4:])
            elif cmd == "stopp":
                out = stopp(sock, argv[3])
            elif cmd == "pods":
                out = pods(sock)
            else:
                raise SystemExit(f"unknown command {cmd}")
    except Exception as e:  # one JSON error object for the test to show
        details = getattr(e, "details", lambda: str(e))()
        print(json.dumps({"error": f"{type(e).__name__}: {details}"}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
