//! Names and one-line text that end up in generated files, checked by one set of rules
//! whether they come from a flag (`--node`, `--instance-id`, `--ssh-authorized-key`) or from
//! a profile (`name`, `seed.hostname`, `seed.instance_id`, `seed.ssh_authorized_keys`,
//! `description`).
//!
//! The rule behind every check here: nothing a user writes may start a new line or a new key
//! in any file nodeforge generates (a systemd unit, TOML, YAML, sysctl.d, modules-load.d).
//! Names are identifiers, so they are refused unless they are one; prose (`description`) is
//! one line of bounded length, and only written where its format escapes it.

/// The longest `description` accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// The longest SSH public key line accepted (a 16384-bit RSA key is about 2.8 KiB).
const MAX_SSH_KEY_BYTES: usize = 16 * 1024;

/// An RFC 1123 subdomain: what a Node's name must be.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A node name (`--node`, the profile's `name` and `seed.hostname`): the Node name and the
/// machine's hostname.
pub fn parse_node_name(s: &str) -> Result<String, String> {
    if is_dns_name(s) {
        Ok(s.to_owned())
    } else {
        Err("a node name must be a lowercase RFC 1123 name: letters, digits, '-' and '.', at most 253 \
             characters, each dot-separated part 1–63 long and not starting or ending with '-'"
            .into())
    }
}

/// An instance-id (`--instance-id`, `seed.instance_id`): printable ASCII without spaces or
/// `/`, and not `.` or `..` (cloud-init names a directory after it).
pub fn parse_instance_id(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 128 && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
    {
        Ok(s.to_owned())
    } else {
        Err("expected 1–128 printable ASCII characters without spaces or '/', and not `.` or `..` \
             (cloud-init names a directory after it)"
            .into())
    }
}

/// An SSH public key (`--ssh-authorized-key`, `seed.ssh_authorized_keys`): one line of an
/// authorized_keys file.
pub fn parse_ssh_key(s: &str) -> Result<String, String> {
    let kinds = ["ssh-", "ecdsa-sha2-", "sk-"];
    let key = s.trim();
    if key.len() <= MAX_SSH_KEY_BYTES
        && check_one_line(key).is_ok()
        && kinds.iter().any(|k| key.starts_with(k))
        && key.split_whitespace().count() >= 2
    {
        Ok(key.to_owned())
    } else {
        Err("expected one public key line such as `ssh-ed25519 AAAA… user@host`".into())
    }
}

/// Prose such as `description`: one line of at most `max` characters.
pub fn parse_one_line(s: &str, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n > max {
        return Err(format!("{n} characters is too long: at most {max}"));
    }
    check_one_line(s)
}

/// No control character (C0, DEL, C1 including NEL), no Unicode line or paragraph separator
/// (YAML readers break lines at those), and no bidirectional override that would make the
/// text read differently from what it is.
fn check_one_line(s: &str) -> Result<(), String> {
    match s.chars().find(|&c| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }) {
        Some(c) => Err(format!("it must be one line of text, without control characters (found {c:?})")),
        None => Ok(()),
    }
}

/// `s` fit for an error message: escaped like a Rust string literal (so a newline shows as
/// `\n`), and cut to a readable length.
pub fn shown(s: &str) -> String {
    const MAX: usize = 60;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(parse_node_name("worker-3.lab").is_ok());
        for bad in ["", "Upper", "a_b", "-a", "a-", "a..b", "../../etc/x", "a\nb: c", "UPPER_case with space"] {
            assert!(parse_node_name(bad).is_err(), "{bad}");
        }
        assert!(parse_node_name(&"a".repeat(254)).is_err());
    }

    #[test]
    fn instance_ids() {
        for good in ["i-1", "worker-7-r2", "nodeforge-0123456789abcdef", "a.b"] {
            assert!(parse_instance_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "../../../../etc/x\ny: z", "x\ty", "é"] {
            assert!(parse_instance_id(bad).is_err(), "{bad:?}");
        }
        assert!(parse_instance_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn ssh_keys() {
        assert_eq!(parse_ssh_key("ssh-ed25519 AAAA me@h\n").unwrap(), "ssh-ed25519 AAAA me@h");
        for bad in ["ssh-ed25519", "rsa AAAA", "ssh-ed25519 AAAA\nssh-rsa BBBB evil", "ssh-ed25519 AAAA a\rb"] {
            assert!(parse_ssh_key(bad).is_err(), "{bad:?}");
        }
        assert!(parse_ssh_key(&format!("ssh-rsa {}", "A".repeat(MAX_SSH_KEY_BYTES))).is_err());
    }

    #[test]
    fn one_line_text() {
        assert!(parse_one_line("containerd 1.7 \"quoted\" # not a comment % $x \\ `µ`", 256).is_ok());
        for bad in ["a\nb", "a\rb", "a\u{85}b", "a\u{2028}b", "a\u{202e}b", "a\0b"] {
            assert!(parse_one_line(bad, 256).is_err(), "{bad:?}");
        }
        assert!(parse_one_line(&"é".repeat(256), 256).is_ok());
        assert!(parse_one_line(&"é".repeat(257), 256).is_err());
    }

    #[test]
    fn shown_escapes_and_cuts() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"x".repeat(100)), format!("{}…", "x".repeat(60)));
    }
}
