//! Who listens on a TCP port: `/proc/net/tcp` and `/proc/net/tcp6` name the
//! sockets in LISTEN state (`0A`) with their inode, and `/proc/*/fd` links
//! (`socket:[INODE]`) name the process holding one. Checked before a native
//! service is launched (a port collision is refused, not a start that another
//! process's health answer makes look successful) and by `nanny new`.

use std::path::Path;

use crate::manifest::{HealthEndpoint, Manifest};

/// The ports a native service will listen on, as far as its manifest says:
/// `port`, the host side of `ports`, and the health endpoint's port when its
/// host is this machine. Sorted, without duplicates.
pub fn of_manifest(m: &Manifest) -> Vec<u16> {
    let mut ports: Vec<u16> = m.port.into_iter().chain(m.ports.iter().filter_map(|p| host_port(p))).collect();
    ports.extend(health_port(m));
    ports.retain(|p| *p != 0);
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The port of the health endpoint, when its host is this machine.
pub fn health_port(m: &Manifest) -> Option<u16> {
    match &m.health_endpoint {
        Some(HealthEndpoint::Tcp { host, port }) => local(host).then_some(*port),
        Some(HealthEndpoint::Http(url)) => reqwest::Url::parse(url)
            .ok()
            .filter(|u| u.host_str().is_some_and(local))
            .and_then(|u| u.port_or_known_default()),
        None => None,
    }
}

/// The host port of a Compose-style mapping: `8090`, `8090:80`,
/// `127.0.0.1:8090:80`, with an optional `/tcp`; `None` for a range or a
/// UDP port.
fn host_port(mapping: &str) -> Option<u16> {
    let (mapping, proto) = mapping.split_once('/').unwrap_or((mapping, "tcp"));
    let parts: Vec<&str> = mapping.rsplitn(3, ':').collect();
    let host = match parts.len() {
        1 => parts[0],
        _ => parts[1],
    };
    (proto == "tcp").then(|| host.parse().ok()).flatten()
}

fn local(host: &str) -> bool {
    matches!(host.trim_matches(['[', ']']), "127.0.0.1" | "localhost" | "0.0.0.0" | "::1" | "::")
}

/// What listens on a port: the socket's inode and, when this user can see
/// it, the process holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub inode: u64,
    pub pid: Option<u32>,
}

/// Whether something listens on TCP `port` (any address, IPv4 or IPv6), and who.
pub fn listener(port: u16) -> Option<Listener> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|text| listening_inode(&text, port))?;
    Some(Listener { inode, pid: holder(Path::new("/proc"), inode) })
}

/// The inode of the first socket of a `/proc/net/tcp*` table that listens
/// on `port` (`0`: the kernel did not say).
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit_once(':')?.1;
        let listens = *fields.get(3)? == "0A" && u16::from_str_radix(local_port, 16).ok()? == port;
        listens.then(|| fields.get(9)?.parse().ok()).flatten()
    })
}

/// The process that holds socket `inode`, among those whose descriptors
/// this user may read.
fn holder(proc: &Path, inode: u64) -> Option<u32> {
    if inode == 0 {
        return None;
    }
    let target = format!("socket:[{inode}]");
    std::fs::read_dir(proc).ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        std::fs::read_dir(proc.join(pid.to_string()).join("fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_of_compose_style_mappings() {
        assert_eq!(host_port("8090"), Some(8090));
        assert_eq!(host_port("8090:80"), Some(8090));
        assert_eq!(host_port("127.0.0.1:8091:80/tcp"), Some(8091));
        assert_eq!(host_port("8092:80/udp"), None);
        assert_eq!(host_port("8000-8010:8000-8010"), None);
    }

    #[test]
    fn a_listening_socket_is_found_with_its_process() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let found = listener(port).expect("the socket listens");
        assert_eq!(found.pid, Some(std::process::id()));
        drop(socket);
        assert_eq!(listener(port), None);
    }

    #[test]
    fn only_listen_state_counts() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                     0: 0100007F:1F9A 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n\
                     1: 0100007F:1F9B 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1\n";
        assert_eq!(listening_inode(table, 0x1F9A), Some(4242));
        assert_eq!(listening_inode(table, 0x1F9B), None, "an established connection is not a listener");
    }
}
