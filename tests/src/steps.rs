//! The comparison programs' output and its comparison.
//!
//! `stack-seq` and `syscall-seq` print one line per call (`name ret errno`, with notes of what
//! came back), grouped into steps: a header line `step: NAME` names the Linux behaviour the
//! lines after it check. Two runs of the same program (on the kernel and under the shim) must
//! print the same lines; [`compare`] says which step differs first, with what each side said,
//! then lists every differing line.

/// What starts a step's header line; the rest of the line is the step's name.
pub const STEP_PREFIX: &str = "step: ";

/// The name given to lines printed before the first step header.
pub const BEFORE_FIRST_STEP: &str = "(before the first step)";

/// One step of a run's output: its name and the lines printed under its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<'a> {
    pub name: &'a str,
    pub lines: Vec<&'a str>,
}

/// Splits a run's output into its steps, in order. Lines before the first header form a step
/// named [`BEFORE_FIRST_STEP`] (left out when there are none).
pub fn steps(out: &str) -> Vec<Step<'_>> {
    let mut v: Vec<Step<'_>> = Vec::new();
    for line in out.lines() {
        if let Some(name) = line.strip_prefix(STEP_PREFIX) {
            v.push(Step {
                name,
                lines: Vec::new(),
            });
        } else {
            match v.last_mut() {
                Some(s) => s.lines.push(line),
                None => v.push(Step {
                    name: BEFORE_FIRST_STEP,
                    lines: vec![line],
                }),
            }
        }
    }
    v
}

/// The number of lines that are not step headers (the calls and their notes).
pub fn call_lines(out: &str) -> usize {
    out.lines().filter(|l| !l.starts_with(STEP_PREFIX)).count()
}

/// Compares two runs of a comparison program: `None` if they printed the same, otherwise a
/// report that starts with the first step that differs —
/// `step NAME: kernel said "X", shim said "Y"` (with `want`/`got` as the two labels), that
/// step's lines from both sides — then every differing line of the whole output by number.
pub fn compare(want: &str, got: &str, want_label: &str, got_label: &str) -> Option<String> {
    if want == got {
        return None;
    }
    let (ws, gs) = (steps(want), steps(got));
    let mut report = String::new();
    let missing = "<nothing: its output ended>";
    for i in 0..ws.len().max(gs.len()) {
        let (w, g) = (ws.get(i), gs.get(i));
        if w == g {
            continue;
        }
        let name = w.or(g).map_or(BEFORE_FIRST_STEP, |s| s.name);
        let (said_w, said_g) = match (w, g) {
            (Some(w), Some(g)) if w.name != g.name => (
                format!("{STEP_PREFIX}{}", w.name),
                format!("{STEP_PREFIX}{}", g.name),
            ),
            (Some(w), Some(g)) => {
                let k = (0..w.lines.len().max(g.lines.len()))
                    .find(|&k| w.lines.get(k) != g.lines.get(k))
                    .unwrap_or(0);
                let at = |s: &Step<'_>| {
                    s.lines
                        .get(k)
                        .map_or(format!("{missing:?}"), |l| format!("{l:?}"))
                };
                (at(w), at(g))
            }
            (Some(w), None) => (
                format!("{:?}", w.lines.first().copied().unwrap_or("")),
                missing.to_string(),
            ),
            (None, Some(g)) => (
                missing.to_string(),
                format!("{:?}", g.lines.first().copied().unwrap_or("")),
            ),
            (None, None) => unreachable!(),
        };
        report.push_str(&format!(
            "step {name:?}: {want_label} said {said_w}, {got_label} said {said_g}\n"
        ));
        for (label, s) in [(want_label, w), (got_label, g)] {
            report.push_str(&format!("--- {label}, step {name:?} ---\n"));
            match s {
                Some(s) => {
                    for l in &s.lines {
                        report.push_str(&format!("{l}\n"));
                    }
                }
                None => report.push_str(&format!("{missing}\n")),
            }
        }
        break;
    }
    let (wl, gl): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut diffs = Vec::new();
    for i in 0..wl.len().max(gl.len()) {
        let (a, b) = (wl.get(i).copied(), gl.get(i).copied());
        if a != b {
            diffs.push(format!(
                "line {}: {want_label} {:?} / {got_label} {:?}",
                i + 1,
                a.unwrap_or("<none>"),
                b.unwrap_or("<none>")
            ));
        }
    }
    if diffs.is_empty() {
        // Same lines, different line ends (a missing last newline).
        diffs.push("the lines are the same; the outputs differ in line ends".to_string());
    }
    report.push_str(&format!(
        "--- {} differing lines ---\n{}",
        diffs.len(),
        diffs.join("\n")
    ));
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "ready\nstep: a\nx 0 7777\nstep: b\ny 1 7777\n  -> v=1\ndone\n";

    #[test]
    fn same_output_is_no_difference() {
        assert_eq!(compare(K, K, "kernel", "shim"), None);
        assert_eq!(call_lines(K), 5);
        let s = steps(K);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, BEFORE_FIRST_STEP);
        assert_eq!(s[2].lines, vec!["y 1 7777", "  -> v=1", "done"]);
    }

    #[test]
    fn a_difference_names_its_step() {
        let s = K.replace("v=1", "v=2");
        let r = compare(K, &s, "kernel", "shim").unwrap();
        assert!(
            r.starts_with("step \"b\": kernel said \"  -> v=1\", shim said \"  -> v=2\"\n"),
            "{r}"
        );
        assert!(
            r.contains("line 6: kernel \"  -> v=1\" / shim \"  -> v=2\""),
            "{r}"
        );
    }

    #[test]
    fn a_shorter_output_names_the_step_it_stopped_in() {
        let s = "ready\nstep: a\nx 0 7777\nstep: b\n";
        let r = compare(K, s, "kernel", "shim").unwrap();
        assert!(
            r.starts_with(
                "step \"b\": kernel said \"y 1 7777\", shim said \"<nothing: its output ended>\""
            ),
            "{r}"
        );
    }
}
