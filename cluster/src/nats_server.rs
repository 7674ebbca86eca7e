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
    /// Start a server with JetStream storing under `store`, on 127.0.0.1:`port` (0: a free
    /// one), and wait until it takes connections.
    pub fn start(store: &Path, port: u16) -> std::io::Result<NatsServer> {
        let bin = binary().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "nats-server not found (Debian: apt-get install nats-server)",
            )
        })?;
        let port = if port == 0 { free_port()? } else { port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::fs::create_dir_all(store)?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = NatsServer {
            child: Some(child),
            addr,
            store: store.to_path_buf(),
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        // 200 tries 50 ms apart: 10 s at least (a refused connection on loopback is at once).
        for _ in 0..200 {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                return Err(std::io::Error::other(format!(
                    "nats-server on {} exited at start: {status}",
                    self.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "nats-server on {} did not listen in 200 tries 50 ms apart",
            self.addr
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
