//! The SVG chart of throughput against batch size.

use super::*;

/// Picks one series' value out of a throughput point.
pub(crate) type Pick = fn(&Throughput) -> Option<f64>;

/// The smallest 1, 2 or 5 times a power of ten that is at least `v`.
pub(crate) fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|c| *c >= v).unwrap_or(v)
}

/// Writes a line chart of throughput against batch size (log scale) as SVG. Hand-written: plotting
/// crates need a font stack (fontconfig) to lay out text, which the harness should not require.
pub(crate) fn write_plot(path: &str, title: &str, points: &[(usize, Throughput)]) -> Result<(), BoxError> {
    use std::fmt::Write as _;
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 80.0, 230.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let ymax = points
        .iter()
        .flat_map(|(_, t)| [t.database, t.relay.unwrap_or(0.0), t.broker.min(t.database * 2.0)])
        .fold(1.0f64, f64::max);
    let ymax = nice_ceiling(ymax * 1.05);
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (b, _)| {
        let x = (*b as f64).ln();
        (lo.min(x), hi.max(x))
    });
    let span = if xmax > xmin { xmax - xmin } else { 1.0 };
    let x = |b: usize| left + ((b as f64).ln() - xmin) / span * pw;
    let y = |v: f64| top + ph - v / ymax * ph;
    let mut svg = String::new();
    write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="24" font-size="14">{title}</text>
<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="black"/>
<text x="{xl}" y="{yl}" text-anchor="middle">batch size (messages per claim)</text>
"#,
        y0 = top + ph,
        x1 = left + pw,
        xl = left + pw / 2.0,
        yl = h - 10.0,
    )?;
    for tick in 0..=5 {
        let v = ymax / 5.0 * f64::from(tick);
        writeln!(
            svg,
            r##"<line x1="{left}" y1="{py}" x2="{x2}" y2="{py}" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="end">{label}k/s</text>"##,
            py = y(v),
            x2 = left + pw,
            tx = left - 6.0,
            ty = y(v) + 4.0,
            label = (v / 1000.0).round()
        )?;
    }
    for (batch, _) in points {
        writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{batch}</text>"#, x(*batch), top + ph + 18.0)?;
    }
    let series: [(&str, &str, Pick); 3] = [
        ("relay", "#d62728", |t| t.relay),
        ("raw database", "#1f77b4", |t| Some(t.database)),
        ("raw broker", "#2ca02c", |t| Some(t.broker)),
    ];
    for (n, (name, color, value)) in series.iter().enumerate() {
        let values: Vec<(usize, f64)> = points.iter().filter_map(|(b, t)| value(t).map(|v| (*b, v))).collect();
        let visible: Vec<(f64, f64)> = values.iter().map(|(b, v)| (x(*b), y(*v))).collect();
        let ly = top + 20.0 * n as f64;
        if values.iter().any(|(_, v)| *v > ymax) {
            let lowest = points.iter().filter_map(|(_, t)| value(t)).fold(f64::MAX, f64::min);
            if lowest < f64::MAX {
                writeln!(
                    svg,
                    r#"<text x="{}" y="{}">{name}: off scale (&gt;= {:.0}k/s)</text>"#,
                    left + pw + 15.0,
                    ly + 4.0,
                    lowest / 1000.0
                )?;
            }
            continue;
        }
        let path: Vec<String> = visible.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
        writeln!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "))?;
        for (px, py) in &visible {
            writeln!(svg, r#"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="{color}"/>"#)?;
        }
        writeln!(
            svg,
            r#"<line x1="{a}" y1="{ly}" x2="{b}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{c}" y="{t}">{name}</text>"#,
            a = left + pw + 15.0,
            b = left + pw + 35.0,
            c = left + pw + 40.0,
            t = ly + 4.0
        )?;
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)?;
    Ok(())
}
