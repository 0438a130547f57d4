//! Reading systemd's own view of the guest through `systemctl`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::exec::{CmdOutput, Runner};

/// One systemctl call should answer in well under this; the bus may be slow while booting.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn systemctl(runner: &dyn Runner, args: &[&str]) -> Result<CmdOutput> {
    let out =
        runner.run("systemctl", args, CALL_TIMEOUT).with_context(|| format!("running systemctl {}", args.join(" ")))?;
    if out.timed_out {
        bail!("systemctl {} did not answer within {:?}", args.join(" "), CALL_TIMEOUT);
    }
    Ok(out)
}

/// `systemctl --failed --plain --no-legend`: the failed units' names.
pub fn failed_units(runner: &dyn Runner) -> Result<Vec<String>> {
    let out = systemctl(runner, &["--failed", "--plain", "--no-legend", "--no-pager"])?;
    Ok(parse_failed_units(&out.stdout))
}

pub fn parse_failed_units(text: &str) -> Vec<String> {
    text.lines()
        // Without --plain (or on older systemd) lines start with a status bullet.
        .map(|l| l.trim_start_matches(|c: char| c.is_whitespace() || c == '●' || c == '*'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `systemctl show UNIT -p A -p B ...` as a map. Unknown units still answer (LoadState=not-found).
pub fn show(runner: &dyn Runner, unit: &str, props: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut args = vec!["show", unit, "--no-pager"];
    for p in props {
        args.push("-p");
        args.push(p);
    }
    let out = systemctl(runner, &args)?;
    if out.code != Some(0) {
        bail!("systemctl show {unit} failed ({:?}): {}", out.code, out.stderr.trim());
    }
    Ok(parse_show(&out.stdout))
}

pub fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// When each of `units` started and became active, in seconds of the guest's monotonic clock
/// (time since the kernel started), from one `systemctl show`: where a boot's time went.
/// Units that never started are left out, as is a unit systemd does not know.
pub fn timeline(runner: &dyn Runner, units: &[&str]) -> Result<BTreeMap<String, Timing>> {
    let mut args = vec!["show", "--no-pager", "-p", "Id", "-p", "InactiveExitTimestampMonotonic"];
    args.extend(["-p", "ActiveEnterTimestampMonotonic"]);
    args.extend(units);
    let out = systemctl(runner, &args)?;
    if out.code != Some(0) {
        bail!("systemctl show {} failed ({:?}): {}", units.join(" "), out.code, out.stderr.trim());
    }
    Ok(parse_timeline(&out.stdout))
}

/// A unit's start (left inactive) and its arrival (entered active), in seconds since boot.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Timing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_s: Option<f64>,
}

pub fn parse_timeline(text: &str) -> BTreeMap<String, Timing> {
    let secs =
        |v: Option<&String>| v.and_then(|v| v.parse::<u64>().ok()).filter(|us| *us > 0).map(|us| us as f64 / 1e6);
    text.split("\n\n")
        .map(parse_show)
        .filter_map(|p| {
            let t = Timing {
                started_s: secs(p.get("InactiveExitTimestampMonotonic")),
                active_s: secs(p.get("ActiveEnterTimestampMonotonic")),
            };
            let id = p.get("Id")?.clone();
            (t.started_s.is_some() || t.active_s.is_some()).then_some((id, t))
        })
        .collect()
}

/// `systemctl is-active UNIT`: `active`, `activating`, `failed`, `inactive`, ...
pub fn is_active(runner: &dyn Runner, unit: &str) -> Result<String> {
    Ok(systemctl(runner, &["is-active", unit])?.answer().to_owned())
}

/// Splits a `systemctl show` list value into words. systemd quotes list items that contain
/// spaces shell-style (`Environment="A=x y" B=z`); single quotes and backslash escapes are
/// honoured too, and an unquoted value simply splits on whitespace.
pub fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_units_plain_and_bulleted() {
        let text = "cloud-config.service loaded failed failed Apply the settings\n\
                    ● containerd.service loaded failed failed containerd container runtime\n\n";
        assert_eq!(parse_failed_units(text), ["cloud-config.service", "containerd.service"]);
        assert!(parse_failed_units("").is_empty());
    }

    #[test]
    fn words_quoted_like_systemctl_show() {
        let env = r#""KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d" B=1 'C=x y' D=a\ b"#;
        assert_eq!(
            split_words(env),
            [
                "KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d",
                "B=1",
                "C=x y",
                "D=a b"
            ]
        );
        assert_eq!(split_words("  "), Vec::<String>::new());
        assert_eq!(split_words(r#""""#), [""]);
    }

    #[test]
    fn timeline_from_show_blocks() {
        // As systemctl prints it: properties in its own order, a blank line between units.
        let text = "InactiveExitTimestampMonotonic=15501234\nActiveEnterTimestampMonotonic=29800000\nId=cloud-init-local.service\n\n\
                    InactiveExitTimestampMonotonic=0\nActiveEnterTimestampMonotonic=0\nId=cloud-final.service\n\n\
                    InactiveExitTimestampMonotonic=0\nActiveEnterTimestampMonotonic=55250000\nId=basic.target\n";
        let t = parse_timeline(text);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t["cloud-init-local.service"], Timing { started_s: Some(15.501234), active_s: Some(29.8) });
        assert_eq!(t["basic.target"], Timing { started_s: None, active_s: Some(55.25) });
        assert_eq!(
            serde_json::to_value(t["basic.target"]).unwrap(),
            serde_json::json!({"active_s": 55.25}),
            "never-set times are left out"
        );
    }

    #[test]
    fn show_parses_values_with_equals() {
        let m = parse_show("LoadState=loaded\nEnvironment=A=1 B=2\nDropInPaths=\n");
        assert_eq!(m["Environment"], "A=1 B=2");
        assert_eq!(m["DropInPaths"], "");
    }
}
