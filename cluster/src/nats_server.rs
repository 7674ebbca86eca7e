//! A `nats-server` with JetStream, started for a test or a local run (Debian's package:
//! `apt-get install nats-server`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `nats-server -js` on a loopback port, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    store: PathBuf,
}

/// Where the server binary is: on the PATH, else Debian's `/usr/sbin`.
pub fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nats-server"))
            .find(|f| f.is_file())
    });
    on_path.or_else(|| {
        let f = PathBuf::from("/usr/sbin/nats-server");
        f.is_file().then_some(f)
    })
}

/// A free port on 127.0.0.1 (bound and let go).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    /// Start a server with JetStream storing under `store`, on 127.0.0.1:`port` (0: one the
    /// server picks), and wait until it takes connections.
    ///
    /// The address is the one the server itself reports in its ports file (written once it
    /// listens), never a port picked here and let go: two servers started at once could be
    /// handed the same free port, and a connection to the other one taken for this one's.
    pub fn start(store: &Path, port: u16) -> std::io::Result<NatsServer> {
        let bin = binary().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "nats-server not found (Debian: apt-get install nats-server)",
            )
        })?;
        std::fs::create_dir_all(store)?;
        let ports_dir = store.join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let port_arg = if port == 0 {
            "-1".to_string()
        } else {
            port.to_string()
        };
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = NatsServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            store: store.to_path_buf(),
        };
        server.addr = server.wait_ready(&ports_dir)?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Wait for this process's ports file (`<executable>_<pid>.ports`, JSON
    /// `{"nats":["nats://127.0.0.1:PORT"]}`), then for a connection to the port it names.
    fn wait_ready(&mut self, ports_dir: &Path) -> std::io::Result<SocketAddr> {
        let pid = match &self.child {
            Some(child) => child.id(),
            None => return Err(std::io::Error::other("nats-server was not started")),
        };
        let suffix = format!("_{pid}.ports");
        // 200 tries 50 ms apart: 10 s at least.
        for _ in 0..200 {
            if let Some(addr) = ports_file_addr(ports_dir, &suffix)?
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(addr);
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                return Err(std::io::Error::other(format!(
                    "nats-server (port {}) exited at start: {status}",
                    port_name(self.addr.port())
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "nats-server (pid {pid}, port {}) did not listen in 200 tries 50 ms apart \
             (no ports file {} in {})",
            port_name(self.addr.port()),
            suffix,
            ports_dir.display()
        )))
    }

    /// Kill the server (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and store (after [`NatsServer::kill`]).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let mut again = NatsServer::start(&self.store, self.addr.port())?;
        self.child = again.child.take();
        Ok(())
    }
}

fn port_name(port: u16) -> String {
    match port {
        0 => "picked by the server".to_string(),
        p => p.to_string(),
    }
}

/// The client address in the ports file ending in `suffix` under `dir`, once the file is
/// whole (the server writes it after it listens; a partial read is tried again).
fn ports_file_addr(dir: &Path, suffix: &str) -> std::io::Result<Option<SocketAddr>> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(suffix))
        {
            continue;
        }
        let Ok(ports) = serde_json::from_slice::<Ports>(&std::fs::read(&path)?) else {
            return Ok(None);
        };
        let addr = ports
            .nats
            .iter()
            .filter_map(|u| u.strip_prefix("nats://"))
            .find_map(|a| a.parse::<SocketAddr>().ok());
        return match addr {
            Some(a) => Ok(Some(a)),
            None => Err(std::io::Error::other(format!(
                "{}: no nats://ADDRESS:PORT in {:?}",
                path.display(),
                ports.nats
            ))),
        };
    }
    Ok(None)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
