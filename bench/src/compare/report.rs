//! The report: ratios to the kernel path, the summary and scale tables.

use super::*;

pub(super) fn find(cells: &[Cell], v: Variant, s: Scenario) -> Option<&Cell> {
    cells.iter().find(|c| c.variant == v && c.scenario == s)
}

pub(super) fn ratios(cells: &[Cell]) -> Value {
    let mut out = serde_json::Map::new();
    for s in Scenario::ALL {
        let get = |v| find(cells, v, s).map(|c| c.saturation.rate());
        let (k, io, f, tap) = (
            get(Variant::Kernel),
            get(Variant::IoOnly),
            get(Variant::Full),
            get(Variant::Tap),
        );
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        out.insert(
            s.name().into(),
            json!({"full_over_io_only": div(f, io), "full_over_kernel": div(f, k),
                   "tap_over_kernel": div(tap, k), "tap_over_full": div(tap, f)}),
        );
    }
    Value::Object(out)
}

pub(super) fn summary_table(cells: &[Cell], opts: &Options) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | kernel Mpps | io-only Mpps | full Mpps | tap Mpps | full / io-only | full / kernel | tap / kernel | core {} busy (k / io / full / tap) | p99 us at half kernel rate (k / io / full / tap) |",
        opts.dp_core
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for s in Scenario::ALL {
        let get = |v| find(cells, v, s);
        if Variant::ALL.iter().all(|&v| get(v).is_none()) {
            continue;
        }
        let rate = |v| get(v).map(|c| mpps(&c.saturation));
        let f3 = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3}"));
        let f2 = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let cpu = |v| {
            get(v).map_or("-".into(), |c| {
                format!("{:.0}%", c.saturation.cpu_dp * 100.0)
            })
        };
        let p99 = |v| {
            get(v)
                .and_then(|c| c.latency.as_ref())
                .map_or("-".into(), |l| {
                    format!("{:.1}", us(l.outcome.report.latency.p99))
                })
        };
        let (k, io, f, tap) = (
            rate(Variant::Kernel),
            rate(Variant::IoOnly),
            rate(Variant::Full),
            rate(Variant::Tap),
        );
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} / {} / {} / {} |",
            s.name(),
            f3(k),
            f3(io),
            f3(f),
            f3(tap),
            f2(div(f, io)),
            f2(div(f, k)),
            f2(div(tap, k)),
            cpu(Variant::Kernel),
            cpu(Variant::IoOnly),
            cpu(Variant::Full),
            cpu(Variant::Tap),
            p99(Variant::Kernel),
            p99(Variant::IoOnly),
            p99(Variant::Full),
            p99(Variant::Tap),
        );
    }
    t
}

pub(super) fn scale_table(points: &[ScalePoint]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| variant | services | delivered Mpps | vs first scale point | first packet p50 us | first packet p99 us | first packets delivered |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for p in points {
        let base = points
            .iter()
            .find(|q| q.variant == p.variant)
            .map_or(1.0, |q| mpps(&q.saturation));
        let r = &p.first_packet.outcome.report;
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} | {:.3} | {:.1} | {:.1} | {} / {} |",
            p.variant.name(),
            p.services,
            mpps(&p.saturation),
            mpps(&p.saturation) / base.max(1e-9),
            us(r.latency.p50),
            us(r.latency.p99),
            r.received,
            r.sent
        );
    }
    t
}

/// Delivered per second in a run's JSON: completed handshakes for `tcp-handshake`, else
/// packets at the sink.
pub(super) fn json_rate(run: &Value) -> f64 {
    match run["handshakes"]["per_second"].as_f64() {
        Some(h) => h,
        None => run["rx_pps"].as_f64().unwrap_or(0.0),
    }
}

/// The TCP rows: Gbit/s and retransmits per variant, and full over kernel.
pub(super) fn tcp_table(runs: &[TcpRun]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| TCP (iperf3) | streams | kernel Gbit/s | full Gbit/s | tap Gbit/s | full / kernel | tap / kernel | retransmits % (k / full / tap) |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut rows: Vec<(TcpPath, u32)> = Vec::new();
    for r in runs {
        if !rows.contains(&(r.path, r.streams)) {
            rows.push((r.path, r.streams));
        }
    }
    for (path, streams) in rows {
        let get = |v: Variant| {
            runs.iter()
                .find(|r| r.variant == v && r.path == path && r.streams == streams)
        };
        let g = |v| get(v).map_or("-".into(), |r| format!("{:.2}", r.bits_per_second / 1e9));
        let rt = |v| {
            get(v).map_or("-".into(), |r| {
                format!("{:.3}", r.retransmit_ratio() * 100.0)
            })
        };
        let ratio = |v| match (get(v), get(Variant::Kernel)) {
            (Some(f), Some(k)) if k.bits_per_second > 0.0 => {
                format!("{:.2}x", f.bits_per_second / k.bits_per_second)
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} |",
            path.name(),
            streams,
            g(Variant::Kernel),
            g(Variant::Full),
            g(Variant::Tap),
            ratio(Variant::Full),
            ratio(Variant::Tap),
            rt(Variant::Kernel),
            rt(Variant::Full),
            rt(Variant::Tap)
        );
    }
    t
}

/// The distinct values of `x`, ascending.
fn sorted(x: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = x.collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// The latency curve: per scenario and variant, p50 / p99 / p99.9 (us) and loss at each
/// fraction of the kernel path's most delivered rate.
pub(super) fn curve_table(cells: &[Cell]) -> String {
    let fracs = sorted(
        cells
            .iter()
            .flat_map(|c| c.curve.iter().map(|(f, _, _)| *f)),
    );
    let mut t = String::new();
    let head: Vec<String> = fracs
        .iter()
        .map(|f| format!("at {:.0} %: p50 / p99 / p99.9 us (lost)", f * 100.0))
        .collect();
    let _ = writeln!(t, "| scenario | variant | {} |", head.join(" | "));
    let _ = writeln!(t, "| --- | --- |{}", " --- |".repeat(fracs.len()));
    for c in cells.iter().filter(|c| !c.curve.is_empty()) {
        let cols: Vec<String> = fracs
            .iter()
            .map(|f| {
                c.curve
                    .iter()
                    .find(|(g, _, _)| g == f)
                    .map_or("-".into(), |(_, r, m)| {
                        let l = m.outcome.report.latency;
                        format!(
                            "{:.1} / {:.1} / {:.1} ({} of {:.0} k)",
                            us(l.p50),
                            us(l.p99),
                            us(l.p999),
                            m.lost(),
                            r * m.outcome.report.seconds / 1e3
                        )
                    })
            })
            .collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} |",
            c.scenario.name(),
            c.variant.name(),
            cols.join(" | ")
        );
    }
    t
}

/// The overload sweep: per scenario and variant, what was offered at each multiple of the
/// most delivered rate and what got through, as a ratio to the most delivered.
pub(super) fn overload_table(cells: &[Cell]) -> String {
    let ks = sorted(
        cells
            .iter()
            .flat_map(|c| c.overload.iter().map(|(k, _)| *k)),
    );
    let mut t = String::new();
    let head: Vec<String> = ks
        .iter()
        .map(|k| format!("{k}x: offered -> delivered Mpps (of most)"))
        .collect();
    let _ = writeln!(
        t,
        "| scenario | variant | most delivered Mpps | {} |",
        head.join(" | ")
    );
    let _ = writeln!(t, "| --- | --- | ---: |{}", " --- |".repeat(ks.len()));
    for c in cells.iter().filter(|c| !c.overload.is_empty()) {
        let best = c.saturation.rate();
        let cols: Vec<String> = ks
            .iter()
            .map(|k| {
                c.overload
                    .iter()
                    .find(|(j, _)| j == k)
                    .map_or("-".into(), |(_, m)| {
                        format!(
                            "{:.3} -> {:.3} ({:.2}x)",
                            m.outcome.report.tx_pps() / 1e6,
                            m.rate() / 1e6,
                            m.rate() / best.max(1e-9)
                        )
                    })
            })
            .collect();
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} | {} |",
            c.scenario.name(),
            c.variant.name(),
            best / 1e6,
            cols.join(" | ")
        );
    }
    t
}
