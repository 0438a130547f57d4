//! Hostile profiles, as a pull request in CI could write them: every free-text field is
//! given a line break and a directive, and must be refused by `check`, `render` and `build`
//! (exit 3, the field named) or, where the field is legitimately free text, come out escaped
//! so that no generated file gains a line or a key. Seed fields follow the same rules as
//! the flags that set them, and Go durations the rules of Go's `time.ParseDuration`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;

use common::{nodeforge, s, text};

const INJECT: &str = "\n[Service]\nExecStartPre=/bin/touch /tmp/pwned\n#";
const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A TOML basic string holding `v`.
fn q(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A profile using every free-text field; `set(field)` gives each field's TOML value.
fn profile(set: &dyn Fn(&str) -> Option<String>) -> String {
    let v = |field: &str, default: &str| set(field).unwrap_or_else(|| q(default));
    format!(
        "name = {name}\ndescription = {description}\n\
         [kubernetes]\nversion = {k8s}\n\
         [containerd]\nversion = {ctr}\n\
         [containerd.bundle]\nsha256 = \"{ZERO}\"\nurl = {bundle_url}\n\
         [containerd.config]\noom_score = -999\n\
         [node]\nsandbox_image = {sandbox}\nruntime_request_timeout = {timeout}\n\
         [[registry.mirror]]\nhost = {host}\nendpoints = [{endpoint}]\ncapabilities = [{capability}]\nserver = {server}\n\
         [[image]]\nref = {image_ref}\nsource = {image_source}\nsha256 = \"{ZERO}\"\n\
         [seed]\nhostname = {hostname}\ninstance_id = {instance_id}\nssh_authorized_keys = [{ssh_key}]\n",
        name = v("name", "node-a"),
        description = v("description", "a node"),
        k8s = v("kubernetes.version", "1.30.2"),
        ctr = v("containerd.version", "1.7.27"),
        bundle_url =
            v("containerd.bundle.url", "https://example.test/cri-containerd-cni-{version}-linux-{arch}.tar.gz"),
        sandbox = v("node.sandbox_image", "registry.k8s.io/pause:3.9"),
        timeout = v("node.runtime_request_timeout", "2m"),
        host = v("registry.mirror.host", "docker.io"),
        endpoint = v("registry.mirror.endpoints", "https://mirror.example.test"),
        capability = v("registry.mirror.capabilities", "pull"),
        server = v("registry.mirror.server", "https://registry-1.docker.io"),
        image_ref = v("image.ref", "docker.io/library/busybox:1.36"),
        image_source = v("image.source", "https://images.example.test/busybox.tar"),
        hostname = v("seed.hostname", "node-a"),
        instance_id = v("seed.instance_id", "i-1"),
        ssh_key = v("seed.ssh_authorized_keys", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA me@host"),
    )
}

/// Every free-text field with a hostile value: (field, value, what the refusal must name).
fn hostile_values() -> Vec<(&'static str, String, &'static str)> {
    let inject = |base: &str| q(&format!("{base}{INJECT}"));
    vec![
        ("name", inject("x"), "name"),
        ("name", q(&"a".repeat(20_000)), "name"),
        ("description", inject("a node"), "description"),
        ("description", q(&"d".repeat(300)), "description"),
        ("kubernetes.version", inject("1.30.2"), "version"),
        ("containerd.version", inject("1.7.27"), "version"),
        ("containerd.bundle.url", inject("https://example.test/a.tar.gz"), "containerd.bundle.url"),
        ("node.sandbox_image", inject("registry.k8s.io/pause:3.9"), "image reference"),
        ("node.runtime_request_timeout", inject("2m"), "duration"),
        ("registry.mirror.host", inject("docker.io"), "host"),
        ("registry.mirror.endpoints", inject("https://m.example.test"), "endpoint"),
        ("registry.mirror.capabilities", inject("pull"), "capability"),
        ("registry.mirror.server", inject("https://registry-1.docker.io"), "server"),
        ("image.ref", inject("docker.io/library/busybox:1.36"), "image reference"),
        ("image.source", inject("images/busybox.tar"), "image[0].source"),
        ("seed.hostname", inject("node-a"), "seed.hostname"),
        ("seed.hostname", q("../../etc/x"), "seed.hostname"),
        ("seed.hostname", q("a\nb: c"), "seed.hostname"),
        ("seed.hostname", q("UPPER_case with space"), "seed.hostname"),
        ("seed.instance_id", inject("i-1"), "seed.instance_id"),
        ("seed.instance_id", q("../../../../etc/x\ny: z"), "seed.instance_id"),
        ("seed.instance_id", q(""), "seed.instance_id"),
        ("seed.instance_id", q(".."), "seed.instance_id"),
        ("seed.ssh_authorized_keys", q("ssh-ed25519 AAAA me@host\nssh-rsa BBBB attacker"), "seed.ssh_authorized_keys"),
    ]
}

#[test]
fn every_free_text_field_with_a_line_break_is_refused_by_check_render_and_build() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let good = tmp.path().join("good.toml");
    fs::write(&good, profile(&|_| None)).unwrap();
    let o = nodeforge(&["check", "--profile", s(&good)], &cache);
    assert!(o.status.success(), "the base profile must pass: {}", text(&o));

    // Every field is tried and every failure listed, so one run shows each hole.
    let mut failures = Vec::new();
    for (i, (field, value, named)) in hostile_values().into_iter().enumerate() {
        let path = tmp.path().join(format!("hostile-{i}.toml"));
        fs::write(&path, profile(&|f| (f == field).then(|| value.clone()))).unwrap();
        let what = format!("{field} = {}", &value[..value.len().min(80)]);
        let o = nodeforge(&["check", "--profile", s(&path)], &cache);
        let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        if o.status.code() != Some(3) {
            failures.push(format!("check accepted {what}"));
        } else if !said.contains(named) {
            failures.push(format!("check's refusal of {what} does not name `{named}`: {said}"));
        } else if said.len() > 4096 {
            failures.push(format!("the refusal of {what} echoes the whole value: {} bytes", said.len()));
        }
        let out = tmp.path().join(format!("render-{i}"));
        let o = nodeforge(&["render", "--profile", s(&path), "--out", s(&out)], &cache);
        if o.status.code() != Some(3) || out.exists() {
            failures.push(format!("render accepted {what} ({:?})", o.status.code()));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));

    // The case end to end through `build`: refused before anything is fetched or written.
    let path = tmp.path().join("name.toml");
    fs::write(&path, profile(&|f| (f == "name").then(|| q(&format!("x{INJECT}"))))).unwrap();
    let out = tmp.path().join("build");
    let o = nodeforge(&["build", "--profile", s(&path), "--out", s(&out)], &cache);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(!out.exists());
}

#[test]
fn go_durations_follow_go_and_the_kubelet() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = |value: &str| {
        let path = tmp.path().join("d.toml");
        fs::write(&path, profile(&|f| (f == "node.runtime_request_timeout").then(|| q(value)))).unwrap();
        nodeforge(&["check", "--profile", s(&path)], &cache)
    };
    let mut failures = Vec::new();
    for good in ["2m", "1h30m", "1.5h", "90s", "15m0.5s", "+4m", "12µs"] {
        let o = run(good);
        if !o.status.success() {
            failures.push(format!("{good} refused: {}", String::from_utf8_lossy(&o.stderr)));
        }
    }
    for (bad, why) in [
        ("99999999999999999999999h", "out of range"),
        ("2562048h", "out of range"),
        ("9223372036854775808ns", "out of range"),
        ("1d", "unit"),
        ("15 minutes", "not a Go duration"),
        ("-1m", "positive"),
        ("0", "positive"),
        ("", "empty"),
    ] {
        let o = run(bad);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.code() != Some(3) {
            failures.push(format!("{bad} accepted"));
        } else if !err.contains(why) {
            failures.push(format!("{bad}: expected `{why}` in {err}"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// The longest legal description (quotes, comment and specifier characters, non-ASCII), a
/// punctuation-heavy instance-id and a long hostname: accepted, rendered, and read back
/// unchanged wherever they are recorded (manifest.json, the seed's meta-data).
#[test]
fn a_maximal_legal_profile_renders_and_records_its_text_unchanged() {
    let description: String = "\"\"\" ''' # %n $X \\ `a` {{b}} : - [c] µ € ".chars().cycle().take(256).collect();
    let hostname = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
    assert_eq!(hostname.len(), 253);
    let instance_id: String = ('!'..='~').filter(|&c| c != '/').cycle().take(128).collect();
    let text_of = profile(&|f| match f {
        "description" => Some(q(&description)),
        "seed.hostname" => Some(q(&hostname)),
        "seed.instance_id" => Some(q(&instance_id)),
        "image.source" => Some(q("images/busybox.tar")),
        _ => None,
    });
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p.toml");
    fs::write(&path, &text_of).unwrap();
    let loaded = nodeforge::profile::LoadedProfile::load(&path).unwrap();
    assert_eq!(loaded.profile.description, description);

    let rendered = nodeforge::render::render(&loaded).unwrap();
    for r in &rendered {
        if let nodeforge::render::Rendered::File(f) = r {
            let body = String::from_utf8(f.bytes.clone()).unwrap();
            assert!(!body.contains("ExecStartPre=/bin/touch"), "{}", f.path);
            if f.path.ends_with(".toml") {
                toml::from_str::<toml::Table>(&body).unwrap_or_else(|e| panic!("{}: {e}", f.path));
            }
        }
    }

    let seed = nodeforge::seed::seed_files(&loaded).unwrap();
    let meta: serde_json::Value = serde_saphyr::from_str(&seed.meta_data).unwrap();
    assert_eq!(meta["instance-id"], instance_id.as_str());
    assert_eq!(meta["local-hostname"], hostname.as_str());

    let manifest = nodeforge::manifest::Manifest::new(&loaded, vec![], &nodeforge::overlay::Overlay::new(), vec![], 0);
    let json: serde_json::Value = serde_json::from_slice(&manifest.to_json().unwrap()).unwrap();
    assert_eq!(json["profile"]["profile"]["description"], description.as_str());
}
