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
        let ports_dir = store.join("ports");
        std::fs::create_dir_all(&ports_dir).map_err(|e| named(&ports_dir, e))?;
        // Its log, quoted when it fails to start (a port taken, a store it cannot recover).
        let log_path = store.join("nats-server.log");
        let log = std::fs::File::create(&log_path).map_err(|e| named(&log_path, e))?;
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
            .stderr(log)
            .spawn()?;
        let mut server = NatsServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            store: store.to_path_buf(),
        };
        server.addr = server
            .wait_ready(&ports_dir)
            .map_err(|e| std::io::Error::other(format!("{e}{}", log_tail(&log_path))))?;
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
        let mut named_port = None;
        // 200 tries 50 ms apart: 10 s at least.
        for _ in 0..200 {
            named_port = ports_file_addr(ports_dir, &suffix)?;
            if let Some(addr) = named_port
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(addr);
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                return Err(std::io::Error::other(format!(
                    "nats-server (pid {pid}, port {}) exited at start: {status}",
                    port_name(self.addr.port())
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let why = match named_port {
            Some(addr) => format!("its ports file names {addr}, which took no connection"),
            None => format!("no ports file *{suffix} in {}", ports_dir.display()),
        };
        Err(std::io::Error::other(format!(
            "nats-server (pid {pid}, port {}) did not listen in 200 tries 50 ms apart: {why}",
            port_name(self.addr.port()),
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

/// `e` with the path it was about.
fn named(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The last lines of the server's log, to quote in an error ("" when it has none).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; the end of {}:\n  {tail}", path.display())
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
    for entry in std::fs::read_dir(dir).map_err(|e| named(dir, e))? {
        let path = entry.map_err(|e| named(dir, e))?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(suffix))
        {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| named(&path, e))?;
        let Ok(ports) = serde_json::from_slice::<Ports>(&bytes) else {
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
