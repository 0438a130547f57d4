//! `/etc/containerd/config.toml` in the schema of the containerd line (runtime-facts §3):
//! v2 for containerd 1.x, v3 for 2.x, or what `[containerd] config_version` asks for.
//!
//! Only the keys nodeforge has an opinion on are written; everything else keeps containerd's
//! compiled-in default, which `containerd config dump` shows. The file is built as a list of
//! sections and written as text rather than through `toml::to_string`, so sections come in the
//! order a reader expects and carry comments, like the examples in containerd's own docs.
//! The profile's `[containerd.config]` table is merged into those sections key by key; a key
//! nodeforge renders itself cannot be overridden there (the error names it), so the values
//! other files depend on (cgroup driver, sandbox image, CNI and registry paths) stay in one
//! place.

use anyhow::{Result, bail};

use super::{CERTS_D, Rendered, file, header, sandbox_image, toml_str};
use crate::compat;
use crate::profile::{CgroupDriver, ConfigVersion, Profile};

pub const PATH: &str = "etc/containerd/config.toml";
const V2_CRI: &str = "io.containerd.grpc.v1.cri";
const V3_IMAGES: &str = "io.containerd.cri.v1.images";
const V3_RUNTIME: &str = "io.containerd.cri.v1.runtime";
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// A value nodeforge writes itself.
#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    StrList(Vec<String>),
    /// A value from the profile's `[containerd.config]`, written as TOML prints it.
    User(toml::Value),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Str(s) => toml_str(s),
            Val::Int(n) => n.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::StrList(l) => format!("[{}]", l.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")),
            Val::User(v) => user_value(v),
        }
    }
}

/// A value from the profile's `[containerd.config]`, on one line whatever it holds: strings
/// through [`toml_str`] (which escapes line breaks), arrays and tables inline. `toml`'s own
/// printer writes a string holding a line break as a multi-line string, and nothing from a
/// profile may start a line in a generated file.
fn user_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => toml_str(s),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(user_value).collect::<Vec<_>>().join(", ")),
        toml::Value::Table(t) if t.is_empty() => "{}".to_owned(),
        toml::Value::Table(t) => {
            let pairs: Vec<String> = t.iter().map(|(k, v)| format!("{} = {}", toml_key(k), user_value(v))).collect();
            format!("{{ {} }}", pairs.join(", "))
        }
        other => other.to_string(),
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    val: Val,
    comment: Option<String>,
    managed: bool,
}

/// One `[table]` of the file; the root table has an empty path.
#[derive(Debug, Clone)]
struct Section {
    path: Vec<String>,
    comment: Option<String>,
    entries: Vec<Entry>,
}

impl Section {
    fn new(path: &[&str], comment: Option<&str>) -> Self {
        Self {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            comment: comment.map(str::to_owned),
            entries: vec![],
        }
    }

    fn set(mut self, key: &str, val: Val, comment: Option<&str>) -> Self {
        self.entries.push(Entry { key: key.to_owned(), val, comment: comment.map(str::to_owned), managed: true });
        self
    }
}

/// The registry table of the CRI plugin in a schema: where `config_path` (and the deprecated
/// `mirrors`) live.
fn registry_path(version: ConfigVersion) -> [&'static str; 3] {
    match version {
        ConfigVersion::V2 => ["plugins", V2_CRI, "registry"],
        ConfigVersion::V3 => ["plugins", V3_IMAGES, "registry"],
    }
}

/// The sections nodeforge manages, in file order.
fn managed_sections(p: &Profile) -> Vec<Section> {
    let v = &p.containerd.version;
    let schema = p.containerd.effective_config_version();
    let systemd = p.node.cgroup_driver == CgroupDriver::Systemd;
    let sandbox = Val::Str(sandbox_image(p).to_string());
    let required: Vec<String> = compat::containerd_cri_plugin_ids(v).iter().map(|s| (*s).to_owned()).collect();
    let required_comment = "Without this a CRI section that fails to load leaves containerd running without CRI,\n\
         and the kubelet sees only a missing socket; with it containerd refuses to start.";
    let cgroup_comment =
        format!("Must agree with the kubelet's cgroup driver (node.cgroup_driver = \"{}\").", p.node.cgroup_driver);
    let conf_comment = "Only the first conflist (by name) is used: 10-containerd-net.conflist.";
    let mut out = Vec::new();
    match schema {
        ConfigVersion::V2 => {
            out.push(
                Section::new(&[], None)
                    .set(
                        "version",
                        Val::Int(2),
                        Some(
                            "Schema v2: containerd 1.x reads fully qualified plugin IDs only with it (v1 would\n\
                             silently ignore every section below).",
                        ),
                    )
                    .set("required_plugins", Val::StrList(required), Some(required_comment)),
            );
            let cri = |rest: &[&'static str]| -> Vec<&'static str> {
                let mut path = vec!["plugins", V2_CRI];
                path.extend_from_slice(rest);
                path
            };
            out.push(Section::new(&cri(&[]), None).set("sandbox_image", sandbox, None));
            out.push(Section::new(&cri(&["containerd"]), None).set(
                "default_runtime_name",
                Val::Str("runc".into()),
                None,
            ));
            out.push(Section::new(&cri(&["containerd", "runtimes", "runc"]), None).set(
                "runtime_type",
                Val::Str("io.containerd.runc.v2".into()),
                None,
            ));
            out.push(Section::new(&cri(&["containerd", "runtimes", "runc", "options"]), None).set(
                "SystemdCgroup",
                Val::Bool(systemd),
                Some(&cgroup_comment),
            ));
            out.push(
                Section::new(&cri(&["cni"]), None)
                    .set("bin_dir", Val::Str(CNI_BIN_DIR.into()), None)
                    .set("conf_dir", Val::Str(CNI_CONF_DIR.into()), None)
                    .set("max_conf_num", Val::Int(1), Some(conf_comment)),
            );
        }
        ConfigVersion::V3 => {
            out.push(
                Section::new(&[], None)
                    .set(
                        "version",
                        Val::Int(3),
                        Some(
                            "Schema v3 (containerd 2.x): CRI is split into the images and runtime plugins below;\n\
                             io.containerd.grpc.v1.cri keeps only the streaming server.",
                        ),
                    )
                    .set("required_plugins", Val::StrList(required), Some(required_comment)),
            );
            out.push(Section::new(&["plugins", V3_IMAGES], None).set(
                "snapshotter",
                Val::Str("overlayfs".into()),
                None,
            ));
            out.push(
                Section::new(
                    &["plugins", V3_IMAGES, "pinned_images"],
                    Some("The sandbox (pause) image, pinned so image garbage collection never removes it."),
                )
                .set("sandbox", sandbox, None),
            );
            if compat::registry_config_path(v) {
                out.push(registry_section(schema));
            }
            let runtime = |rest: &[&'static str]| -> Vec<&'static str> {
                let mut path = vec!["plugins", V3_RUNTIME];
                path.extend_from_slice(rest);
                path
            };
            out.push(Section::new(&runtime(&["containerd"]), None).set(
                "default_runtime_name",
                Val::Str("runc".into()),
                None,
            ));
            out.push(Section::new(&runtime(&["containerd", "runtimes", "runc"]), None).set(
                "runtime_type",
                Val::Str("io.containerd.runc.v2".into()),
                None,
            ));
            out.push(Section::new(&runtime(&["containerd", "runtimes", "runc", "options"]), None).set(
                "SystemdCgroup",
                Val::Bool(systemd),
                Some(&cgroup_comment),
            ));
            let cni = Section::new(&runtime(&["cni"]), None);
            let cni = if compat::cni_bin_dirs_list(v) {
                cni.set(
                    "bin_dirs",
                    Val::StrList(vec![CNI_BIN_DIR.into()]),
                    Some("2.1+: a list; `bin_dir` is deprecated."),
                )
            } else {
                cni.set("bin_dir", Val::Str(CNI_BIN_DIR.into()), None)
            };
            out.push(cni.set("conf_dir", Val::Str(CNI_CONF_DIR.into()), None).set(
                "max_conf_num",
                Val::Int(1),
                Some(conf_comment),
            ));
        }
    }
    if schema == ConfigVersion::V2 && compat::registry_config_path(v) {
        out.push(registry_section(schema));
    }
    out
}

/// Always written (containerd ≥ 1.5), even without mirrors, so hosts.toml files added later
/// take effect without touching config.toml (containerd re-reads them on every pull).
fn registry_section(schema: ConfigVersion) -> Section {
    Section::new(&registry_path(schema), None).set("config_path", Val::Str(CERTS_D.into()), None)
}

/// The user's `[containerd.config]` as (table path, key, value) leaves, in table order.
fn leaves(table: &toml::Table, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String, toml::Value)>) {
    for (k, v) in table {
        match v {
            toml::Value::Table(t) => {
                path.push(k.clone());
                leaves(t, path, out);
                path.pop();
            }
            other => out.push((path.clone(), k.clone(), other.clone())),
        }
    }
}

fn dotted(path: &[String], key: Option<&str>) -> String {
    path.iter().map(String::as_str).chain(key).map(toml_key).collect::<Vec<_>>().join(".")
}

/// If the profile's raw containerd settings set the CRI registry's `mirrors` (or `configs.*.tls`)
/// while nodeforge renders `config_path`, the error containerd's CRI plugin would fail with
/// (runtime-facts §3.3); `None` when there is no such conflict.
pub fn registry_conflict(p: &Profile) -> Option<String> {
    let user = p.containerd.config.as_ref()?;
    if !compat::registry_config_path(&p.containerd.version) {
        return None;
    }
    let reg = registry_path(p.containerd.effective_config_version());
    let mut all = Vec::new();
    leaves(user, &mut Vec::new(), &mut all);
    for (path, key, _) in &all {
        let full: Vec<&str> = path.iter().map(String::as_str).chain([key.as_str()]).collect();
        if full.len() > 3 && full[..3] == reg {
            if full[3] == "mirrors" {
                return Some(format!(
                    "[containerd.config] sets {}: `mirrors` cannot be set when `config_path` is provided",
                    dotted(&full[..4].iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), None)
                ));
            }
            if full[3] == "configs" && full.len() > 5 && full[5] == "tls" {
                return Some(format!(
                    "[containerd.config] sets {}: `configs.tls` cannot be set when `config_path` is provided",
                    dotted(&full[..6].iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), None)
                ));
            }
        }
    }
    None
}

/// Merge the profile's `[containerd.config]` into the managed sections.
fn merge_user(p: &Profile, sections: &mut Vec<Section>) -> Result<()> {
    let Some(user) = &p.containerd.config else { return Ok(()) };
    if let Some(conflict) = registry_conflict(p) {
        bail!(
            "profile `{}`: {conflict}; nodeforge renders config_path = \"{CERTS_D}\", so write mirrors as \
             [[registry.mirror]] (rendered as certs.d/<host>/hosts.toml) instead",
            p.name
        );
    }
    let mut all = Vec::new();
    leaves(user, &mut Vec::new(), &mut all);
    for (path, key, value) in all {
        let name = dotted(&path, Some(&key));
        // A leaf where nodeforge writes a table would replace the whole table.
        let mut full = path.clone();
        full.push(key.clone());
        if sections.iter().any(|s| s.path.starts_with(&full)) {
            bail!(
                "profile `{}`: [containerd.config] sets `{name}` to a value, but nodeforge renders `[{name}]` as a table; \
                 set keys inside it instead",
                p.name
            );
        }
        let section = match sections.iter_mut().find(|s| s.path == path) {
            Some(s) => s,
            None => {
                sections.push(Section { path: path.clone(), comment: None, entries: vec![] });
                sections.last_mut().expect("just pushed")
            }
        };
        if section.entries.iter().any(|e| e.managed && e.key == key) {
            bail!(
                "profile `{}`: [containerd.config] sets `{name}`, which nodeforge renders from the profile; \
                 remove it there (cgroup driver, sandbox image, CNI and registry settings have their own profile keys)",
                p.name
            );
        }
        section.entries.push(Entry { key, val: Val::User(value), comment: None, managed: false });
    }
    Ok(())
}

/// A TOML key: bare when it can be, quoted otherwise.
fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_owned()
    } else {
        toml_str(k)
    }
}

fn comment_lines(out: &mut String, indent: &str, comment: &str) {
    for line in comment.lines() {
        out.push_str(&format!("{indent}# {line}\n"));
    }
}

pub fn render(p: &Profile) -> Result<Vec<Rendered>> {
    let v = &p.containerd.version;
    // containerd 1.4 has only the deprecated `registry.mirrors` table. nodeforge does not
    // render it: it cannot express `capabilities` or a `server` other than the registry, and
    // writing certs.d files that 1.4 silently ignores would be worse. A demanding user wants
    // the mismatch reported at build time, not discovered when pulls bypass the mirror.
    if !compat::registry_config_path(v) && !p.registry.mirrors.is_empty() {
        bail!(
            "profile `{}`: registry mirrors are rendered as config_path + certs.d/<host>/hosts.toml, \
             which containerd {v} does not read (added in 1.5); remove [[registry.mirror]] or use \
             containerd 1.5 or newer",
            p.name
        );
    }
    let mut sections = managed_sections(p);
    merge_user(p, &mut sections)?;

    let mut t = header("#", p);
    for s in &sections {
        if s.path.is_empty() && s.entries.is_empty() {
            continue;
        }
        t.push('\n');
        if let Some(c) = &s.comment {
            comment_lines(&mut t, "", c);
        }
        let indent = if s.path.is_empty() {
            ""
        } else {
            t.push_str(&format!("[{}]\n", dotted(&s.path, None)));
            "  "
        };
        for (i, e) in s.entries.iter().enumerate() {
            if let Some(c) = &e.comment {
                // Root-level entries are separated by a blank line, as they each explain themselves.
                if s.path.is_empty() && i > 0 {
                    t.push('\n');
                }
                comment_lines(&mut t, indent, c);
            }
            t.push_str(&format!("{indent}{} = {}\n", toml_key(&e.key), e.val.text()));
        }
    }
    Ok(vec![file(PATH, 0o644, t, "containerd-config")])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    fn parsed(p: &Profile) -> toml::Table {
        let out = render(p).unwrap();
        toml::from_str(text(&out, PATH)).unwrap()
    }

    fn cri(t: &toml::Table) -> &toml::Table {
        t["plugins"]["io.containerd.grpc.v1.cri"].as_table().unwrap()
    }

    #[test]
    fn v2_schema_with_required_cri() {
        let t = parsed(&profile("1.30.2", "1.6.20", ""));
        assert_eq!(t["version"].as_integer(), Some(2));
        assert_eq!(t["required_plugins"].as_array().unwrap()[0].as_str(), Some("io.containerd.grpc.v1.cri"));
        let c = cri(&t);
        assert_eq!(c["containerd"]["default_runtime_name"].as_str(), Some("runc"));
        assert_eq!(c["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(c["cni"]["max_conf_num"].as_integer(), Some(1));
        assert_eq!(c["registry"]["config_path"].as_str(), Some("/etc/containerd/certs.d"));
        assert!(c["registry"].get("mirrors").is_none());
    }

    #[test]
    fn v3_schema_for_2x() {
        let t = parsed(&profile("1.35.1", "2.0.7", "[node]\ncgroup_driver = \"cgroupfs\"\n"));
        assert_eq!(t["version"].as_integer(), Some(3));
        let req: Vec<&str> = t["required_plugins"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(req, ["io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"]);
        let images = &t["plugins"]["io.containerd.cri.v1.images"];
        assert_eq!(images["snapshotter"].as_str(), Some("overlayfs"));
        assert_eq!(images["pinned_images"]["sandbox"].as_str(), Some("registry.k8s.io/pause:3.10.1"));
        assert_eq!(images["registry"]["config_path"].as_str(), Some("/etc/containerd/certs.d"));
        let rt = &t["plugins"]["io.containerd.cri.v1.runtime"];
        assert_eq!(rt["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(), Some(false));
        assert_eq!(rt["cni"]["bin_dir"].as_str(), Some("/opt/cni/bin"));
        assert!(rt["cni"].get("bin_dirs").is_none());
        assert!(t["plugins"].get("io.containerd.grpc.v1.cri").is_none());
        // 2.1 switched to the list.
        let t = parsed(&profile("1.35.1", "2.1.6", ""));
        let cni = &t["plugins"]["io.containerd.cri.v1.runtime"]["cni"];
        assert_eq!(cni["bin_dirs"].as_array().unwrap()[0].as_str(), Some("/opt/cni/bin"));
        assert!(cni.get("bin_dir").is_none());
    }

    #[test]
    fn config_version_override() {
        // v2 on 2.x: the old layout, but the 2.x plugin IDs are still the ones required.
        let mut p = profile("1.35.1", "2.2.1", "");
        p.containerd.config_version = Some(ConfigVersion::V2);
        let t = parsed(&p);
        assert_eq!(t["version"].as_integer(), Some(2));
        assert!(cri(&t).contains_key("sandbox_image"));
        assert_eq!(t["required_plugins"].as_array().unwrap().len(), 3);
        let mut p = profile("1.33.8", "1.7.27", "");
        p.containerd.config_version = Some(ConfigVersion::V3);
        let t = parsed(&p);
        assert_eq!(t["version"].as_integer(), Some(3));
    }

    #[test]
    fn raw_settings_are_merged_but_cannot_override() {
        let extra = "[containerd.config]\noom_score = -999\n\
                     [containerd.config.plugins.\"io.containerd.grpc.v1.cri\"]\nenable_cdi = true\n\
                     [containerd.config.plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nBinaryName = \"/usr/local/sbin/runc\"\n\
                     [containerd.config.grpc]\nmax_recv_message_size = 16777216\n";
        let t = parsed(&profile("1.30.2", "1.7.27", extra));
        assert_eq!(t["oom_score"].as_integer(), Some(-999));
        assert_eq!(cri(&t)["enable_cdi"].as_bool(), Some(true));
        let opts = &cri(&t)["containerd"]["runtimes"]["runc"]["options"];
        assert_eq!(opts["BinaryName"].as_str(), Some("/usr/local/sbin/runc"));
        assert_eq!(opts["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(t["grpc"]["max_recv_message_size"].as_integer(), Some(16777216));

        let over = "[containerd.config.plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"x/pause:1\"\n";
        let err = render(&profile("1.30.2", "1.7.27", over)).unwrap_err().to_string();
        assert!(err.contains("plugins.\"io.containerd.grpc.v1.cri\".sandbox_image"), "{err}");
        let err = render(&profile("1.30.2", "1.7.27", "[containerd.config]\nversion = 3\n")).unwrap_err().to_string();
        assert!(err.contains("`version`"), "{err}");
        let err = render(&profile("1.30.2", "1.7.27", "[containerd.config]\nplugins = 1\n")).unwrap_err().to_string();
        assert!(err.contains("as a table"), "{err}");
    }

    #[test]
    fn raw_settings_never_start_a_line() {
        let evil = "x\\n[plugins.evil]\\nkey = 1\\r\\n\\u0085\\u2028\\\"\\\"\\\"";
        let extra = format!(
            "[containerd.config]\nroot = \"{evil}\"\nlist = [\"{evil}\", {{ a = \"{evil}\" }}, {{}}]\n\
             \"k\\n[plugins.k]\" = \"v\"\n[containerd.config.t]\ninline = {{ \"{evil}\" = [1.5, true] }}\n"
        );
        let p = profile("1.30.2", "1.7.27", &extra);
        let out = render(&p).unwrap();
        let Rendered::File(f) = &out[0] else { panic!("a file") };
        let text = std::str::from_utf8(&f.bytes).unwrap();
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("[plugins.evil]") || l.starts_with("[plugins.k]")),
            "{text}"
        );
        let t: toml::Table = toml::from_str(text).unwrap();
        let want = "x\n[plugins.evil]\nkey = 1\r\n\u{85}\u{2028}\"\"\"";
        assert_eq!(t["root"].as_str(), Some(want));
        assert_eq!(t["list"][0].as_str(), Some(want));
        assert_eq!(t["list"][1]["a"].as_str(), Some(want));
        assert_eq!(t["k\n[plugins.k]"].as_str(), Some("v"));
        assert_eq!(t["t"]["inline"][want][0].as_float(), Some(1.5));
        assert!(t["list"][2].as_table().unwrap().is_empty());
        let user_lines = text.lines().filter(|l| l.contains("plugins.evil") || l.contains("plugins.k]")).count();
        assert_eq!(user_lines, 4, "one line per user key: {text}");
    }

    #[test]
    fn user_mirrors_next_to_config_path_are_refused() {
        let m = "[containerd.config.plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m.example\"]\n";
        let p = profile("1.30.2", "1.7.27", m);
        let why = registry_conflict(&p).unwrap();
        assert!(why.contains("`mirrors` cannot be set when `config_path` is provided"), "{why}");
        assert!(render(&p).is_err());
        // containerd 1.4 has no config_path, so its mirrors table is the user's business.
        assert!(registry_conflict(&profile("1.14.10", "1.4.4", m)).is_none());
        let v3 = "[containerd.config.plugins.\"io.containerd.cri.v1.images\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m.example\"]\n";
        assert!(registry_conflict(&profile("1.35.1", "2.2.1", v3)).is_some());
    }

    #[test]
    fn pause_image_defaults_to_kubeadms() {
        let t = parsed(&profile("1.30.2", "1.6.20", ""));
        assert_eq!(cri(&t)["sandbox_image"].as_str(), Some("registry.k8s.io/pause:3.9"));
        let t = parsed(&profile("1.30.2", "1.6.20", "[node]\nsandbox_image = \"pause:3.9\"\n"));
        assert_eq!(cri(&t)["sandbox_image"].as_str(), Some("docker.io/library/pause:3.9"));
    }

    #[test]
    fn systemd_cgroup_follows_the_profile() {
        for (driver, want) in [("systemd", true), ("cgroupfs", false)] {
            let t = parsed(&profile("1.30.2", "1.7.27", &format!("[node]\ncgroup_driver = \"{driver}\"\n")));
            let opts = &cri(&t)["containerd"]["runtimes"]["runc"]["options"];
            assert_eq!(opts["SystemdCgroup"].as_bool(), Some(want), "{driver}");
        }
    }

    #[test]
    fn containerd_1_4_gets_no_config_path_and_refuses_mirrors() {
        let t = parsed(&profile("1.14.10", "1.4.4", ""));
        assert!(cri(&t).get("registry").is_none());
        let m = "[[registry.mirror]]\nhost = \"docker.io\"\nendpoints = [\"https://m.example\"]\n";
        let err = render(&profile("1.14.10", "1.4.4", m)).unwrap_err().to_string();
        assert!(err.contains("1.5") && err.contains("[[registry.mirror]]"), "{err}");
        assert!(render(&profile("1.20.0", "1.5.0", m)).is_ok());
    }
}
