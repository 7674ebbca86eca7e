//! The report's charts, drawn with plotters as SVG.

use crate::figures::Figures;
use plotters::prelude::*;

pub struct Chart {
    /// File name without extension.
    pub name: &'static str,
    pub title: &'static str,
    pub svg: String,
}

const W: u32 = 900;
const H: u32 = 380;
const DELIVERED: RGBColor = RGBColor(46, 139, 87);
const BOUNCED: RGBColor = RGBColor(200, 55, 55);
const DEFERRED: RGBColor = RGBColor(230, 160, 40);
const EXPIRED: RGBColor = RGBColor(120, 80, 160);
const SERIES: [RGBColor; 3] = [
    RGBColor(52, 101, 164),
    RGBColor(46, 139, 87),
    RGBColor(230, 160, 40),
];

type Drawn = Result<(), Box<dyn std::error::Error>>;

fn svg(draw: impl FnOnce(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Drawn) -> String {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        if let Err(e) = draw(root.clone()) {
            let _ = root.draw(&Text::new(
                format!("chart not drawn: {e}"),
                (20, 20),
                ("sans-serif", 14).into_font(),
            ));
        }
        let _ = root.present();
    }
    out
}

fn line_chart(points: &[(f64, f64)], caption: &str, y_desc: &str, color: RGBColor) -> String {
    svg(|root| {
        let x_max = points.last().map_or(1.0, |p| p.0).max(1.0);
        let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
        let mut c = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        c.configure_mesh()
            .x_desc("seconds since the start of the run")
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        c.draw_series(AreaSeries::new(
            points.iter().copied(),
            0.0,
            color.mix(0.25),
        ))?;
        c.draw_series(LineSeries::new(
            points.iter().copied(),
            color.stroke_width(2),
        ))?;
        Ok(())
    })
}

/// Horizontal bars; each row is a label and stacked (value, color) segments.
fn hbars(
    rows: &[(String, Vec<(f64, RGBColor)>)],
    caption: &str,
    x_desc: &str,
    legend: &[(&str, RGBColor)],
) -> String {
    svg(|root| {
        let n = rows.len().max(1) as u32;
        let widest = rows
            .iter()
            .map(|r| r.1.iter().map(|s| s.0).sum::<f64>())
            .fold(0.0, f64::max)
            .max(1e-9);
        // Room on the right for the legend.
        let x_max = widest * if legend.is_empty() { 1.05 } else { 1.3 };
        let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let mut c = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(190)
            .build_cartesian_2d(0.0..x_max, (0..n).into_segmented())?;
        c.configure_mesh()
            .x_desc(x_desc)
            .y_labels(n as usize)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (_, segs)) in rows.iter().enumerate() {
            let mut x0 = 0.0;
            for &(v, color) in segs {
                let mut bar = Rectangle::new(
                    [
                        (x0, SegmentValue::Exact(i as u32)),
                        (x0 + v, SegmentValue::Exact(i as u32 + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                c.draw_series(std::iter::once(bar))?;
                x0 += v;
            }
        }
        for (name, color) in legend {
            let color = *color;
            c.draw_series(std::iter::empty::<Rectangle<(f64, SegmentValue<u32>)>>())?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        if !legend.is_empty() {
            c.configure_series_labels()
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        Ok(())
    })
}

/// Vertical bars with a label under each.
fn vbars(bars: &[(String, f64)], caption: &str, y_desc: &str, color: RGBColor) -> String {
    svg(|root| {
        let n = bars.len().max(1) as u32;
        let y_max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.1;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut c = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..y_max)?;
        c.configure_mesh()
            .y_desc(y_desc)
            .x_labels(n as usize)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        c.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i as u32), 0.0),
                    (SegmentValue::Exact(i as u32 + 1), b.1),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 6, 6);
            bar
        }))?;
        Ok(())
    })
}

/// Several named series over days, each its own color, with a legend.
fn day_lines(
    series: &[(String, Vec<(f64, f64)>)],
    caption: &str,
    y_desc: &str,
    y_max: f64,
) -> String {
    svg(|root| {
        let x_max = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        let mut c = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        c.configure_mesh()
            .x_desc("day of the run")
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            c.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        Ok(())
    })
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(52, 101, 164),
    RGBColor(46, 139, 87),
    RGBColor(230, 160, 40),
    RGBColor(200, 55, 55),
    RGBColor(120, 80, 160),
    RGBColor(90, 90, 90),
];

fn fmt_seconds(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.0}h", s / 3600.0)
    } else {
        format!("{:.1}d", s / 86400.0)
    }
}

pub fn all(f: &Figures) -> Vec<Chart> {
    let mut charts = Vec::new();
    charts.push(Chart {
        name: "throughput",
        title: "Throughput",
        svg: line_chart(
            &f.throughput,
            &format!(
                "Messages delivered per second ({}-second buckets)",
                f.bucket_s
            ),
            "messages/s",
            SERIES[0],
        ),
    });
    charts.push(Chart {
        name: "queue_depth",
        title: "Queue depth",
        svg: line_chart(
            &f.queue_depth,
            "Messages queued (injected, not yet delivered, bounced or expired)",
            "messages",
            SERIES[2],
        ),
    });
    let outcome_rows: Vec<(String, Vec<(f64, RGBColor)>)> = f
        .domains
        .iter()
        .filter(|d| d.injected > 0)
        .map(|d| {
            let n = d.injected as f64;
            (
                d.domain.clone(),
                vec![
                    (100.0 * d.delivered as f64 / n, DELIVERED),
                    (
                        100.0 * (d.bounced_hard + d.bounced_soft) as f64 / n,
                        BOUNCED,
                    ),
                    (100.0 * d.deferred as f64 / n, DEFERRED),
                    (100.0 * d.expired as f64 / n, EXPIRED),
                ],
            )
        })
        .collect();
    charts.push(Chart {
        name: "outcomes_by_domain",
        title: "Outcomes per domain",
        svg: hbars(
            &outcome_rows,
            "Final outcome of each message, per recipient domain",
            "% of the domain's messages",
            &[
                ("delivered", DELIVERED),
                ("bounced", BOUNCED),
                ("still deferred", DEFERRED),
                ("expired", EXPIRED),
            ],
        ),
    });
    let mut by_reason: std::collections::BTreeMap<String, u64> = Default::default();
    for (_, reason, n) in &f.reasons {
        *by_reason.entry(reason.clone()).or_default() += n;
    }
    let mut reasons: Vec<(String, u64)> = by_reason.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let reason_rows: Vec<(String, Vec<(f64, RGBColor)>)> = reasons
        .iter()
        .take(15)
        .map(|(r, n)| (r.clone(), vec![(*n as f64, BOUNCED)]))
        .collect();
    charts.push(Chart {
        name: "bounce_reasons",
        title: "Bounce reasons",
        svg: hbars(
            &reason_rows,
            "Why messages failed for good",
            "messages",
            &[],
        ),
    });
    let ttd: Vec<(String, f64)> = f
        .ttd_histogram
        .iter()
        .map(|&(lo, hi, n)| (format!("{}-{}", fmt_seconds(lo), fmt_seconds(hi)), n as f64))
        .collect();
    charts.push(Chart {
        name: "time_to_deliver",
        title: "Time to deliver",
        svg: vbars(
            &ttd,
            "Time from injection to delivery (delivered messages)",
            "messages",
            SERIES[0],
        ),
    });
    let auth_rows: Vec<(String, Vec<(f64, RGBColor)>)> = f
        .auth
        .iter()
        .flat_map(|a| {
            let n = a.messages.max(1) as f64;
            [
                (format!("{} SPF", a.domain), a.spf_pass, SERIES[0]),
                (format!("{} DKIM", a.domain), a.dkim_pass, SERIES[1]),
                (format!("{} DMARC", a.domain), a.dmarc_pass, SERIES[2]),
            ]
            .into_iter()
            .map(move |(l, p, c)| (l, vec![(100.0 * p as f64 / n, c)]))
        })
        .collect();
    charts.push(Chart {
        name: "auth_by_domain",
        title: "SPF, DKIM and DMARC",
        svg: hbars(
            &auth_rows,
            "Receivers' verdicts: % pass, per recipient domain",
            "% of messages received",
            &[
                ("SPF", SERIES[0]),
                ("DKIM", SERIES[1]),
                ("DMARC", SERIES[2]),
            ],
        ),
    });
    let d = &f.deliverability;
    if d.present() {
        let mut placement: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (p, day, inbox, spam) in &d.placement {
            let share = 100.0 * *inbox as f64 / (*inbox + *spam).max(1) as f64;
            match placement.last_mut() {
                Some(last) if last.0 == *p => last.1.push((*day as f64, share)),
                _ => placement.push((p.clone(), vec![(*day as f64, share)])),
            }
        }
        charts.push(Chart {
            name: "inbox_placement",
            title: "Inbox placement",
            svg: day_lines(
                &placement,
                "Inbox placement per provider, by day",
                "% of delivered copies in the inbox",
                105.0,
            ),
        });
        let mut reputation: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (p, subject, day, score, _) in &d.reputation {
            let name = format!("{p} {subject}");
            match reputation.last_mut() {
                Some(last) if last.0 == name => last.1.push((*day as f64, *score as f64)),
                _ => reputation.push((name, vec![(*day as f64, *score as f64)])),
            }
        }
        charts.push(Chart {
            name: "reputation",
            title: "Reputation",
            svg: day_lines(
                &reputation,
                "The providers' reputation of the sender (0-100), after each day",
                "score",
                105.0,
            ),
        });
    }
    charts
}
