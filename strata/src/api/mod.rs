//! The REST API: Cloud Hypervisor's v1 API (docs/openapi.yaml) over HTTP/1.1 on a Unix socket,
//! served by one thread (`api`) with its own epoll (`server.rs`). Requests become
//! [`vmm::control::actions::VmmAction`]s for the VMM's control loop (`routes.rs`); HTTP stays
//! here (`http.rs`), the library never sees it.

pub mod http;
pub mod routes;
pub mod server;

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm::control::actions::Requester;
use vmm_sys_util::eventfd::EventFd;

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process serves on the socket path.
    #[error("API socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The path could not be examined, a stale socket removed, or the socket bound.
    #[error("unable to {op} API socket {path}")]
    Socket {
        /// What was done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The server could not be set up or its thread started.
    #[error("unable to start the API server")]
    Start(#[source] io::Error),
}

fn socket_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ApiError + 'a {
    move |source| ApiError::Socket {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A bound API socket, not yet served.
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Binds `path`. A path that exists is refused unless it is a stale socket (one nobody
/// accepts connections on), which is replaced.
pub fn bind(path: &Path) -> Result<BoundSocket, ApiError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(ApiError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(socket_err("remove stale", path))?;
            }
            Err(e) => return Err(socket_err("probe", path)(e)),
        },
        Ok(_) => return Err(ApiError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err("examine", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(socket_err("bind", path))?;
    listener
        .set_nonblocking(true)
        .map_err(socket_err("configure", path))?;
    Ok(BoundSocket {
        listener,
        path: path.to_owned(),
    })
}

/// The running API server.
pub struct ApiServer {
    thread: JoinHandle<()>,
    stop: Arc<EventFd>,
    path: PathBuf,
}

impl BoundSocket {
    /// Closes the socket unserved and removes its path.
    pub fn discard(self) {
        drop(self.listener);
        let _ = std::fs::remove_file(&self.path);
    }

    /// Starts the `api` thread, sending requests through `requester`.
    pub fn serve(self, requester: Requester) -> Result<ApiServer, ApiError> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(ApiError::Start)?);
        let server = server::Server::new(self.listener, requester, Arc::clone(&stop))
            .map_err(ApiError::Start)?;
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || server.run())
            .map_err(ApiError::Start)?;
        Ok(ApiServer {
            thread,
            stop,
            path: self.path,
        })
    }
}

impl ApiServer {
    /// Stops the server after it has written the answers the control loop gave, and removes
    /// the socket.
    pub fn stop(self) {
        let _ = self.stop.write(1);
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}
