//! The chart (SVG bar charts) from a compare result.

use super::*;

/// Bar charts from a compare result (the JSON [`run`] writes): most delivered per scenario
/// and variant, p99 latency at the fixed rate, and the scale runs' most delivered by service
/// count. `xdpnet-bench compare --plot` redraws a saved result with it.
pub fn svg(result: &Value) -> String {
    let ceiling_pps = result["loadgen_ceiling"]["rx_pps"].as_f64().unwrap_or(0.0);
    // (variant, scenario, most delivered per second, p99 µs at the fixed rate)
    type CellRow = (Variant, Scenario, f64, Option<f64>);
    type Pick<'a> = &'a dyn Fn(&Value) -> Option<(f64, Option<f64>)>;
    // Every result whose variant and scenario are known, as a row `pick` makes of it.
    let rows = |pick: Pick| -> Vec<CellRow> {
        result["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let v = Variant::ALL
                    .into_iter()
                    .find(|v| r["variant"].as_str() == Some(v.name()))?;
                let sc = Scenario::ALL
                    .into_iter()
                    .find(|s| r["scenario"].as_str() == Some(s.name()))?;
                let (a, b) = pick(r)?;
                Some((v, sc, a, b))
            })
            .collect()
    };
    let cells = rows(&|r| {
        Some((
            json_rate(&r["saturation"]),
            r["latency"]["latency"]["p99_ns"].as_f64().map(|x| x / 1e3),
        ))
    });
    // Second row: the overload sweep (delivered at the largest multiple offered, over the
    // most delivered) and the latency curve's top point (p99 at the highest fraction).
    let second = |key: &str, pick: &dyn Fn(&Value) -> Option<f64>| {
        rows(&|r| Some((pick(r[key].as_array()?.last()?)?, None)))
    };
    let overload = second("overload", &|o| o["of_most_delivered"].as_f64());
    let curve_top = second("latency_curve", &|p| {
        p["run"]["latency"]["p99_ns"].as_f64().map(|x| x / 1e3)
    });
    let top_fraction = result["options"]["latency_points"]
        .as_array()
        .and_then(|a| a.iter().filter_map(Value::as_f64).reduce(f64::max));
    const W: f64 = 1240.0;
    let rows = if overload.is_empty() && curve_top.is_empty() {
        1.0
    } else {
        2.0
    };
    let height: f64 = 60.0 + 360.0 * rows;
    let colors = [
        (Variant::Kernel, "#9e9e9e"),
        (Variant::IoOnly, "#64b5f6"),
        (Variant::Full, "#1565c0"),
        (Variant::Tap, "#2e7d32"),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    // Panels: (title, x0, values per scenario and variant).
    let panel = |s: &mut String,
                 x0: f64,
                 y0: f64,
                 title: &str,
                 groups: &[(String, Vec<(Variant, f64)>)],
                 unit: &str,
                 line: Option<(f64, &str)>| {
        let (w, h, top) = (330.0, 280.0, 60.0 + y0);
        let max = groups
            .iter()
            .flat_map(|g| g.1.iter().map(|x| x.1))
            .chain(line.map(|l| l.0))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"14\" font-weight=\"bold\">{title}</text>",
            x0,
            30.0 + y0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            top + h,
            x0 + w,
            top + h
        );
        for k in 0..=4 {
            let v = max * k as f64 / 4.0;
            let y = top + h - h * k as f64 / 4.0;
            let label = if max > 20.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            };
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{label}</text><line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>",
                x0 - 4.0,
                y + 4.0,
                x0 + w
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"#555\">{unit}</text>",
            x0,
            top - 8.0
        );
        if let Some((v, label)) = line {
            let y = top + h - h * v / max;
            let _ = writeln!(
                s,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#c62828\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{:.1}\" fill=\"#c62828\" text-anchor=\"end\">{label}</text>",
                x0 + w,
                x0 + w,
                y - 3.0
            );
        }
        let gw = w / groups.len().max(1) as f64;
        for (gi, (name, vals)) in groups.iter().enumerate() {
            let bw = (gw - 16.0) / 3.0;
            for (vi, (v, val)) in vals.iter().enumerate() {
                let color = colors.iter().find(|c| c.0 == *v).map_or("#000", |c| c.1);
                let bh = h * val / max;
                let x = x0 + gi as f64 * gw + 8.0 + vi as f64 * bw;
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{} {name}: {val:.3}</title></rect>",
                    top + h - bh,
                    bw - 2.0,
                    v.name()
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
                x0 + gi as f64 * gw + gw / 2.0,
                top + h + 16.0
            );
        }
    };
    let short = |sc: Scenario| match sc {
        Scenario::SameNode => "same node",
        Scenario::CrossNode => "cross node",
        Scenario::ClusterIp => "ClusterIP",
        Scenario::NodePort => "NodePort",
        Scenario::ClusterIpTcp => "TCP hs",
    };
    let groups = |cells: &[CellRow],
                  f: &dyn Fn(&CellRow) -> Option<f64>|
     -> Vec<(String, Vec<(Variant, f64)>)> {
        Scenario::ALL
            .iter()
            .map(|&sc| {
                (
                    short(sc).to_string(),
                    Variant::ALL
                        .iter()
                        .filter_map(|&v| {
                            cells
                                .iter()
                                .find(|c| c.0 == v && c.1 == sc)
                                .and_then(f)
                                .map(|x| (v, x))
                        })
                        .collect(),
                )
            })
            .filter(|g: &(String, Vec<(Variant, f64)>)| !g.1.is_empty())
            .collect()
    };
    let rate = groups(&cells, &|c| Some(c.2 / 1e6));
    panel(
        &mut s,
        60.0,
        0.0,
        "Most delivered (TCP hs: M handshakes/s)",
        &rate,
        "Mpps",
        Some((ceiling_pps / 1e6, "loadgen ceiling")),
    );
    let lat = groups(&cells, &|c| c.3);
    panel(
        &mut s,
        480.0,
        0.0,
        "p99 latency at half the kernel rate",
        &lat,
        "us",
        None,
    );
    let mut sg: Vec<(String, Vec<(Variant, f64)>)> = Vec::new();
    for p in result["scale"].as_array().into_iter().flatten() {
        let Some(v) = Variant::ALL
            .into_iter()
            .find(|v| p["variant"].as_str() == Some(v.name()))
        else {
            continue;
        };
        let name = p["services"].to_string();
        let x = json_rate(&p["saturation"]) / 1e6;
        match sg.iter_mut().find(|g| g.0 == name) {
            Some(g) => g.1.push((v, x)),
            None => sg.push((name, vec![(v, x)])),
        }
    }
    if !sg.is_empty() {
        panel(
            &mut s,
            890.0,
            0.0,
            "ClusterIP, most delivered, by services",
            &sg,
            "Mpps",
            None,
        );
    }
    if !overload.is_empty() {
        let g = groups(&overload, &|c| Some(c.2));
        panel(
            &mut s,
            60.0,
            360.0,
            "Overload: delivered at the largest multiple / most",
            &g,
            "ratio",
            Some((0.9, "target 0.9")),
        );
    }
    if !curve_top.is_empty() {
        let g = groups(&curve_top, &|c| Some(c.2));
        let title = format!(
            "p99 latency at {:.0} % of the kernel rate",
            top_fraction.unwrap_or(0.0) * 100.0
        );
        panel(&mut s, 480.0, 360.0, &title, &g, "us", None);
    }
    for (i, (v, c)) in colors.iter().enumerate() {
        let x = 60.0 + i as f64 * 110.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            height - 40.0,
            x + 16.0,
            height - 30.0,
            v.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart has one bar per (variant, scenario) and per scale point, each as tall as its
    /// value against the panel's largest, handshakes counted as completed per second.
    #[test]
    fn chart_from_a_result() {
        let r = json!({
            "loadgen_ceiling": {"rx_pps": 800_000.0},
            "results": [
                {"variant": "kernel", "scenario": "pod-pod-cross-node",
                 "saturation": {"rx_pps": 100_000.0}, "latency": {"latency": {"p99_ns": 50_000}}},
                {"variant": "full", "scenario": "pod-pod-cross-node",
                 "saturation": {"rx_pps": 200_000.0}, "latency": {"latency": {"p99_ns": 100_000}}},
                {"variant": "full", "scenario": "pod-clusterip-tcp-handshake",
                 "saturation": {"rx_pps": 90_000.0, "handshakes": {"per_second": 30_000.0}},
                 "latency": null},
                {"variant": "nonsense", "scenario": "pod-clusterip", "saturation": {}},
            ],
            "scale": [
                {"variant": "full", "services": 100, "saturation": {"rx_pps": 150_000.0}},
                {"variant": "full", "services": 10000, "saturation": {"rx_pps": 150_000.0}},
            ],
        });
        let s = svg(&r);
        let titles: Vec<&str> = s
            .split("<title>")
            .skip(1)
            .map(|t| t.split("</title>").next().unwrap_or(""))
            .collect();
        assert_eq!(
            titles,
            vec![
                "kernel cross node: 0.100",
                "full cross node: 0.200",
                "full TCP hs: 0.030",
                "kernel cross node: 50.000",
                "full cross node: 100.000",
                "full 100: 0.150",
                "full 10000: 0.150",
            ]
        );
        // Heights: the ceiling (0.8) sets the first panel's scale (x 1.1), 280 px tall.
        let h = |v: f64| format!("height=\"{:.1}\"", 280.0 * v / (0.8 * 1.1));
        assert!(s.contains(&h(0.2)) && s.contains(&h(0.1)), "{s}");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }

    /// With an overload sweep and a latency curve the chart gets a second row: delivered at
    /// the largest multiple over the most delivered, and p99 at the curve's top fraction.
    #[test]
    fn chart_has_a_second_row_for_overload_and_the_latency_curve() {
        let r = json!({
            "options": {"latency_points": [0.1, 0.5, 0.9]},
            "loadgen_ceiling": {"rx_pps": 800_000.0},
            "results": [
                {"variant": "full", "scenario": "pod-pod-cross-node",
                 "saturation": {"rx_pps": 200_000.0}, "latency": {"latency": {"p99_ns": 100_000}},
                 "overload": [{"multiple": 2.0, "of_most_delivered": 0.95},
                              {"multiple": 10.0, "of_most_delivered": 0.4}],
                 "latency_curve": [
                     {"fraction_of_kernel": 0.1, "run": {"latency": {"p99_ns": 20_000}}},
                     {"fraction_of_kernel": 0.9, "run": {"latency": {"p99_ns": 300_000}}}]},
            ],
            "scale": [],
        });
        let s = svg(&r);
        let titles: Vec<&str> = s
            .split("<title>")
            .skip(1)
            .map(|t| t.split("</title>").next().unwrap_or(""))
            .collect();
        assert_eq!(
            titles,
            vec![
                "full cross node: 0.200",
                "full cross node: 100.000",
                "full cross node: 0.400",
                "full cross node: 300.000",
            ]
        );
        assert!(s.contains("p99 latency at 90 % of the kernel rate"), "{s}");
        assert!(s.contains("height=\"780\""), "{s}");
    }
}
