//! The CNI front end: every bad input gets the spec's error code, results come in the version
//! asked, requests reach the daemon (a fake xdpnetd on a unix socket, named as such).

use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;
use xdpnet_cni::{Command, Env, code, run};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_UID=u1;FOO=bar",
        ),
    ]
}

fn conf(version: &str, socket: &str) -> Vec<u8> {
    json!({"cniVersion": version, "name": "xdpnet", "type": "xdpnet", "socket": socket, "mtu": 1450})
        .to_string()
        .into_bytes()
}

fn code_of(out: &(Option<Value>, i32)) -> u64 {
    assert_eq!(out.1, 1, "{out:?}");
    out.0
        .as_ref()
        .and_then(|v| v["code"].as_u64())
        .expect("error code")
}

#[test]
fn version_answers_with_every_supported_version() {
    let (v, rc) = run(
        env(&[("CNI_COMMAND", "VERSION")]),
        b"",
        Duration::from_secs(1),
    );
    assert_eq!(rc, 0);
    let v = v.expect("json");
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let (v, _) = run(
        env(&[("CNI_COMMAND", "VERSION")]),
        br#"{"cniVersion":"0.4.0"}"#,
        Duration::from_secs(1),
    );
    assert_eq!(v.expect("json")["cniVersion"], "0.4.0");
}

/// Environment, stdin, expected error code.
type Case = (Vec<(&'static str, &'static str)>, Vec<u8>, u32);

#[test]
fn bad_input_gets_the_right_error_code() {
    let sock = "/nonexistent/xdpnet.sock";
    let t = Duration::from_millis(200);
    let good = conf("1.0.0", sock);
    let mut cases: Vec<Case> = vec![
        (vec![], good.clone(), code::INVALID_ENV),
        (
            vec![("CNI_COMMAND", "FROB")],
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            vec![("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")],
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            vec![
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
            ],
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0/1"),
            ],
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a b"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ],
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "averyveryverylongname"),
            ],
            good.clone(),
            code::INVALID_ENV,
        ),
    ];
    let mut unknown_arg = add_env();
    unknown_arg[4] = ("CNI_ARGS", "K8S_POD_NAME=a;FOO=bar");
    cases.push((unknown_arg, good.clone(), code::INVALID_ENV));
    let mut malformed_arg = add_env();
    malformed_arg[4] = ("CNI_ARGS", "K8S_POD_NAME");
    cases.push((malformed_arg, good.clone(), code::INVALID_ENV));
    for (stdin, want) in [
        (b"not json".to_vec(), code::DECODE),
        (b"".to_vec(), code::DECODE),
        (b"[1,2]".to_vec(), code::INVALID_CONFIG),
        (
            br#"{"name":"x","type":"xdpnet"}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (
            br#"{"cniVersion":"0.2.0","name":"x","type":"xdpnet"}"#.to_vec(),
            code::INCOMPATIBLE_VERSION,
        ),
        (
            br#"{"cniVersion":"2.0.0","name":"x","type":"xdpnet"}"#.to_vec(),
            code::INCOMPATIBLE_VERSION,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"","type":"xdpnet"}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"x","type":"bridge"}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"x","type":"xdpnet","socket":"relative"}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (
            br#"{"cniVersion":"1.0.0","name":"x","type":"xdpnet","mtu":65536}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (good.clone(), code::TRY_AGAIN_LATER),
    ] {
        cases.push((add_env(), stdin, want));
    }
    cases.push((vec![("CNI_COMMAND", "STATUS")], good, code::NOT_AVAILABLE));
    for (e, stdin, want) in cases {
        let out = run(env(&e), &stdin, t);
        assert_eq!(
            code_of(&out),
            want as u64,
            "env {e:?} stdin {:?}: {out:?}",
            String::from_utf8_lossy(&stdin)
        );
        let v = out.0.expect("json");
        assert!(v["msg"].is_string() && v["cniVersion"].is_string(), "{v}");
    }
}

/// A fake xdpnetd: answers each connection with `answer(request)`; records the requests.
fn fake_daemon(answer: fn(&Value) -> Value) -> (tempdir::Dir, std::sync::mpsc::Receiver<Value>) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("cni.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut s = String::new();
            if c.read_to_string(&mut s).is_err() {
                continue;
            }
            let req: Value = serde_json::from_str(&s).unwrap_or_default();
            let _ = c.write_all(answer(&req).to_string().as_bytes());
            let _ = tx.send(req);
        }
    });
    (dir, rx)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "xdpnet-cni-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("tmp");
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn ok_add(_: &Value) -> Value {
    json!({"result": {"interface": "eth0", "mac": "02:00:0a:f4:01:0a", "sandbox": "/var/run/netns/x",
        "address": "10.244.1.10/24", "gateway": "10.244.1.1", "mtu": 1450}})
}

#[test]
fn add_results_come_in_the_version_asked_and_carry_the_pod_identity() {
    let (dir, reqs) = fake_daemon(ok_add);
    let sock = dir.0.join("cni.sock");
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let (out, rc) = run(
            env(&add_env()),
            &conf(v, &sock.to_string_lossy()),
            Duration::from_secs(2),
        );
        assert_eq!(rc, 0, "{out:?}");
        let r = out.expect("result");
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["interfaces"][0]["sandbox"], "/var/run/netns/x");
        assert_eq!(r["ips"][0]["address"], "10.244.1.10/24");
        assert_eq!(r["ips"][0]["gateway"], "10.244.1.1");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            v.starts_with("0."),
            "{v}: {r}"
        );
        assert_eq!(
            r["interfaces"][0].get("mtu").is_some(),
            v == "1.1.0",
            "{v}: {r}"
        );
        let req = reqs.recv_timeout(Duration::from_secs(2)).expect("request");
        assert_eq!(req["command"], "ADD");
        assert_eq!(req["containerId"], "abc123");
        assert_eq!(req["args"]["K8S_POD_NAME"], "web-0");
        assert_eq!(req["args"]["K8S_POD_UID"], "u1");
        assert_eq!(req["config"]["mtu"], 1450);
    }
}

#[test]
fn daemon_errors_and_empty_successes_pass_through() {
    let (dir, _r) = fake_daemon(|req| {
        if req["command"] == "CHECK" {
            json!({"error": {"code": 3, "msg": "unknown container", "details": "abc123"}})
        } else {
            json!({"result": null})
        }
    });
    let sock = dir.0.join("cni.sock").to_string_lossy().into_owned();
    let mut e = add_env();
    e[0] = ("CNI_COMMAND", "CHECK");
    let out = run(env(&e), &conf("1.0.0", &sock), Duration::from_secs(2));
    assert_eq!(code_of(&out), code::UNKNOWN_CONTAINER as u64);
    for cmd in ["DEL", "GC", "STATUS"] {
        let mut e = add_env();
        e[0] = ("CNI_COMMAND", cmd);
        let (out, rc) = run(env(&e), &conf("1.1.0", &sock), Duration::from_secs(2));
        assert_eq!((out, rc), (None, 0), "{cmd}");
    }
}

#[test]
fn a_daemon_that_hangs_is_try_again_later_within_the_timeout() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("cni.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let _keep = std::thread::spawn(move || {
        let held: Vec<_> = l.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let t = std::time::Instant::now();
    let out = run(
        env(&add_env()),
        &conf("1.0.0", &path.to_string_lossy()),
        Duration::from_millis(300),
    );
    assert_eq!(code_of(&out), code::TRY_AGAIN_LATER as u64);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn the_binary_prints_an_error_object_and_exits_1() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xdpnet"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["code"], code::INVALID_ENV);
}

#[test]
fn env_parsing_keeps_the_pod_identity() {
    let e = Env::from(env(&add_env())).expect("valid");
    assert_eq!(e.command, Command::Add);
    assert_eq!(e.args["K8S_POD_NAMESPACE"], "demo");
}

proptest! {
    #[test]
    fn no_input_panics(cmd in "[A-Z]{0,8}", id in ".{0,20}", ifname in ".{0,20}", args in ".{0,40}", stdin in proptest::collection::vec(any::<u8>(), 0..200)) {
        let e = vec![("CNI_COMMAND", cmd.as_str()), ("CNI_CONTAINERID", id.as_str()), ("CNI_NETNS", "/x"), ("CNI_IFNAME", ifname.as_str()), ("CNI_ARGS", args.as_str())];
        let (out, rc) = run(env(&e), &stdin, Duration::from_millis(50));
        prop_assert!(rc == 0 || out.as_ref().is_some_and(|v| v["code"].is_u64()));
    }
}
