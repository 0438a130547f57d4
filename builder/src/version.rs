//! Release versions as containerd and Kubernetes spell them (`1.7.13`, `v1.30.2`, `2.0.0-rc.1`).
//!
//! Only ordering and the major/minor/patch triple matter to nodeforge: every rule in
//! runtime-facts is "from X.Y.Z on", so a pre-release sorts before its release and is
//! otherwise treated like it.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Text after `-`, e.g. `rc.1`; `None` for a release.
    pub pre: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a version: expected MAJOR.MINOR.PATCH such as 1.7.13 ({why})")]
pub struct VersionError {
    input: String,
    why: &'static str,
}

impl Version {
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Self { major, minor, patch, pre: None }
    }

    /// `(major, minor)`, the granularity most compatibility rules use.
    pub fn minor_line(&self) -> (u64, u64) {
        (self.major, self.minor)
    }

    /// True when this version is at least `major.minor.patch` (pre-releases of that
    /// version count as below it).
    pub fn at_least(&self, major: u64, minor: u64, patch: u64) -> bool {
        *self >= Version::new(major, minor, patch)
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| VersionError { input: input.to_owned(), why };
        let s = input.strip_prefix('v').unwrap_or(input);
        let (core, pre) = match s.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre.to_owned())),
            Some(_) => return Err(err("empty pre-release after `-`")),
            None => (s, None),
        };
        if let Some(pre) = &pre
            && !pre.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        {
            return Err(err("pre-release may hold only letters, digits and dots"));
        }
        let mut parts = core.split('.');
        let mut next = |what| -> Result<u64, VersionError> {
            let p = parts.next().ok_or_else(|| err(what))?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || (p.len() > 1 && p.starts_with('0')) {
                return Err(err("each part must be a number without leading zeros"));
            }
            p.parse().map_err(|_| err("number too large"))
        };
        let major = next("missing major")?;
        let minor = next("missing minor")?;
        let patch = next("missing patch")?;
        if parts.next().is_some() {
            return Err(err("more than three numbers"));
        }
        Ok(Self { major, minor, patch, pre })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch)).then_with(|| {
            match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(b),
            }
        })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

crate::serde_via_str!(Version);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let v: Version = "v1.7.13".parse().unwrap();
        assert_eq!(v, Version::new(1, 7, 13));
        assert_eq!(v.to_string(), "1.7.13");
        let rc: Version = "2.0.0-rc.1".parse().unwrap();
        assert!(rc < Version::new(2, 0, 0));
        assert!(rc > Version::new(1, 7, 99));
        assert!(Version::new(1, 6, 32).at_least(1, 6, 32));
        assert!(!Version::new(1, 6, 31).at_least(1, 6, 32));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["1.7", "1.7.x", "1.07.1", "1.2.3.4", "", "1.2.3-", "1.2.3-a b"] {
            assert!(bad.parse::<Version>().is_err(), "{bad} parsed");
        }
    }
}
