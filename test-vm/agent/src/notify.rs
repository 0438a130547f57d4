//! Telling systemd the agent's unit is ready (the `sd_notify` protocol: one `READY=1`
//! datagram to the socket named by `$NOTIFY_SOCKET`).
//!
//! The agent's unit is `Type=notify` and wanted by multi-user.target, so the target, and with
//! it cloud-init's final stage (`After=multi-user.target` in the Debian and Ubuntu units),
//! waits for this message. On a node whose image carries the runtime the agent sends it only
//! after the pod stage: the seed's `kubeadm join` then never restarts the kubelet while the
//! probe pod runs (a running kubelet kills sandboxes it did not create). Where the runtime
//! arrives with cloud-init, the agent is ready at once, or the boot would wait for a
//! containerd that only cloud-init's final stage installs.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `READY=1` to the socket in `notify_socket` (the value of `$NOTIFY_SOCKET`): a path,
/// or `@name` for an abstract socket. `None` (not started by systemd) is not an error.
pub fn ready(notify_socket: Option<&str>) -> io::Result<bool> {
    let Some(target) = notify_socket.filter(|s| !s.is_empty()) else { return Ok(false) };
    let sock = UnixDatagram::unbound()?;
    let sent = match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(b"READY=1\n", &addr)?
        }
        None => sock.send_to(b"READY=1\n", target)?,
    };
    Ok(sent > 0)
}

/// Sends `READY=1` once, however often it is asked to; a failure to send is remembered and
/// reported with the stage that asked.
#[derive(Debug)]
pub struct Readiness {
    socket: Option<String>,
    sent: bool,
}

impl Readiness {
    /// From the process environment (`$NOTIFY_SOCKET`, unset outside systemd).
    pub fn from_env() -> Self {
        Readiness { socket: std::env::var("NOTIFY_SOCKET").ok(), sent: false }
    }

    /// No systemd to tell (tests).
    pub fn none() -> Self {
        Readiness { socket: None, sent: false }
    }

    /// A given socket, as `$NOTIFY_SOCKET` would name it (tests).
    pub fn to_socket(socket: String) -> Self {
        Readiness { socket: Some(socket), sent: false }
    }

    /// Tell systemd, unless already told. Errors say why systemd was not told.
    pub fn ready(&mut self) -> io::Result<()> {
        if self.sent {
            return Ok(());
        }
        self.sent = true;
        ready(self.socket.as_deref()).map(|_| ())
    }

    pub fn sent(&self) -> bool {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_a_path_socket_and_once_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut r = Readiness::to_socket(path.to_string_lossy().into_owned());
        r.ready().unwrap();
        r.ready().unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        assert!(server.recv(&mut buf).is_err(), "a second READY was sent");
        assert!(r.sent());
    }

    #[test]
    fn abstract_sockets_and_no_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("nodeforge-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(ready(Some(&format!("@{name}"))).unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        assert!(!ready(None).unwrap());
        assert!(!ready(Some("")).unwrap());
        assert!(ready(Some("/nonexistent/notify")).is_err());
    }
}
