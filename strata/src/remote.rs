//! `strata remote`: a client of the REST API in ch-remote's spirit. Each command is one HTTP
//! request on the API socket; a JSON answer is printed as it came, an error's messages go to
//! standard error and the exit status is 1.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The usage text of `strata remote`.
pub const REMOTE_USAGE: &str = "usage: strata remote --api-socket PATH COMMAND
commands: ping | create FILE | boot | info | counters | pause | resume | shutdown | reboot
          | power-button | delete | shutdown-vmm | snapshot file:///DIR
          | restore source_url=file:///DIR[,resume=on][,memory=uffd][,overlay_dir=DIR]
                    [,net_mac=MAC][,net_tap=NAME][,vsock_cid=N][,vsock_socket=PATH]
FILE is a VM configuration: JSON (Cloud Hypervisor's VmConfig for what Strata has), or TOML
when its name ends in .toml.";

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Bad arguments.
    #[error("{0}\n{REMOTE_USAGE}")]
    Usage(String),
    /// The config file could not be read.
    #[error(transparent)]
    Config(#[from] vmm::config::ConfigError),
    /// The socket could not be used.
    #[error("unable to talk to the API on {path}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The answer is not HTTP.
    #[error("malformed answer from the API: {0}")]
    Answer(String),
}

/// An HTTP answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends one request and reads the answer.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Answer, RemoteError> {
    let io_err = |source| RemoteError::Socket {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io_err)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n"
    );
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).map_err(io_err)?;
    read_answer(&mut stream).map_err(|e| match e {
        ReadError::Io(e) => io_err(e),
        ReadError::Malformed(m) => RemoteError::Answer(m),
    })
}

enum ReadError {
    Io(io::Error),
    Malformed(String),
}

/// Reads one response (skipping interim 1xx ones), framed by Content-Length or the end of
/// the stream.
fn read_answer<R: Read>(stream: &mut R) -> Result<Answer, ReadError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).map_err(ReadError::Io)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(answer) = parse_answer(&mut buf, n == 0)? {
            return Ok(answer);
        }
        if n == 0 {
            return Err(ReadError::Malformed(
                "the connection closed mid-answer".into(),
            ));
        }
    }
}

fn parse_answer(buf: &mut Vec<u8>, eof: bool) -> Result<Option<Answer>, ReadError> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ReadError::Malformed(e.to_string())),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            buf.drain(..head_len);
            continue;
        }
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        let body = match length {
            Some(len) if buf.len() >= head_len + len => buf[head_len..head_len + len].to_vec(),
            Some(_) => return Ok(None),
            None if status == 204 || eof => buf[head_len..].to_vec(),
            None => return Ok(None),
        };
        return Ok(Some(Answer { status, body }));
    }
}

/// The request a command makes: method, path, body.
fn command_request(
    command: &str,
    rest: &[String],
) -> Result<(&'static str, String, Option<Vec<u8>>), RemoteError> {
    let endpoint = |method, name: &str| Ok((method, format!("/api/v1/{name}"), None));
    let none_expected = || {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(RemoteError::Usage(format!("{command} takes no argument")))
        }
    };
    match command {
        "create" => {
            let [file] = rest else {
                return Err(RemoteError::Usage("create takes one FILE".into()));
            };
            Ok((
                "PUT",
                "/api/v1/vm.create".into(),
                Some(config_body(Path::new(file))?),
            ))
        }
        "ping" => none_expected().and_then(|()| endpoint("GET", "vmm.ping")),
        "shutdown-vmm" => none_expected().and_then(|()| endpoint("PUT", "vmm.shutdown")),
        "info" | "counters" => {
            none_expected().and_then(|()| endpoint("GET", &format!("vm.{command}")))
        }
        "snapshot" => {
            let [url] = rest else {
                return Err(RemoteError::Usage(
                    "snapshot takes one URL (file:///dir)".into(),
                ));
            };
            let body = serde_json::json!({ "destination_url": url });
            Ok((
                "PUT",
                "/api/v1/vm.snapshot".into(),
                Some(body.to_string().into_bytes()),
            ))
        }
        "restore" => {
            let [spec] = rest else {
                return Err(RemoteError::Usage(
                    "restore takes source_url=file:///dir[,resume=on][,memory=uffd][,overlay_dir=DIR]"
                        .into(),
                ));
            };
            let config = crate::cli::parse_restore(spec)?;
            let body =
                serde_json::to_vec(&config).map_err(|e| RemoteError::Answer(e.to_string()))?;
            Ok(("PUT", "/api/v1/vm.restore".into(), Some(body)))
        }
        "boot" | "pause" | "resume" | "shutdown" | "reboot" | "power-button" | "delete" => {
            none_expected().and_then(|()| endpoint("PUT", &format!("vm.{command}")))
        }
        other => Err(RemoteError::Usage(format!("unknown command '{other}'"))),
    }
}

/// A config file as the body of `vm.create`: JSON is sent as written (the server names any
/// field it does not know); TOML is read into the schema and sent as JSON.
fn config_body(file: &Path) -> Result<Vec<u8>, RemoteError> {
    if file.extension().is_some_and(|e| e == "toml") {
        let config = vmm::config::VmConfig::from_file(file)?;
        return serde_json::to_vec(&config).map_err(|e| RemoteError::Answer(e.to_string()));
    }
    std::fs::read(file).map_err(|source| {
        RemoteError::Config(vmm::config::ConfigError::ReadFile {
            path: file.to_owned(),
            source,
        })
    })
}

/// Runs `strata remote ARGS`.
pub fn main(args: &[String]) -> Result<ExitCode, RemoteError> {
    let mut socket = None;
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--api-socket" => socket = it.next().cloned(),
            a if a.starts_with("--api-socket=") => {
                socket = Some(a["--api-socket=".len()..].to_string())
            }
            _ => words.push(arg.clone()),
        }
    }
    let socket =
        socket.ok_or_else(|| RemoteError::Usage("--api-socket PATH is required".into()))?;
    let Some((command, rest)) = words.split_first() else {
        return Err(RemoteError::Usage("no command given".into()));
    };
    let (method, path, body) = command_request(command, rest)?;
    let answer = request(Path::new(&socket), method, &path, body.as_deref())?;
    let text = String::from_utf8_lossy(&answer.body);
    if (200..300).contains(&answer.status) {
        if !text.is_empty() {
            println!("{text}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let messages: Vec<String> =
        serde_json::from_str(&text).unwrap_or_else(|_| vec![text.to_string()]);
    eprintln!(
        "strata remote: {command}: HTTP {}: {}",
        answer.status,
        messages.join(": ")
    );
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_answer_skips_continue_and_reads_body() {
        let mut buf =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec();

        let answer = parse_answer(&mut buf, false).ok().flatten();

        assert_eq!(
            answer,
            Some(Answer {
                status: 200,
                body: b"{}".to_vec()
            })
        );
    }

    #[test]
    fn test_parse_answer_waits_for_the_whole_body() {
        let mut buf = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}".to_vec();

        assert!(matches!(parse_answer(&mut buf, false), Ok(None)));
    }

    #[test]
    fn test_command_request_paths() {
        let (m, p, b) = command_request("pause", &[]).expect("pause");
        assert_eq!((m, p.as_str(), b), ("PUT", "/api/v1/vm.pause", None));
        let (m, p, _) = command_request("counters", &[]).expect("counters");
        assert_eq!((m, p.as_str()), ("GET", "/api/v1/vm.counters"));
        assert!(command_request("create", &[]).is_err());
        assert!(command_request("boot", &["x".into()]).is_err());
        assert!(command_request("fly", &[]).is_err());
        let (m, p, b) = command_request("snapshot", &["file:///s".into()]).expect("snapshot");
        assert_eq!((m, p.as_str()), ("PUT", "/api/v1/vm.snapshot"));
        assert_eq!(
            b.as_deref(),
            Some(&br#"{"destination_url":"file:///s"}"#[..])
        );
        let (_, p, b) =
            command_request("restore", &["file:///s,resume=on".into()]).expect("restore");
        assert_eq!(p, "/api/v1/vm.restore");
        let body: serde_json::Value = serde_json::from_slice(&b.expect("body")).expect("json");
        assert_eq!(body["source_url"], "file:///s");
        assert_eq!(body["resume"], true);
        assert!(command_request("restore", &["file:///s,bogus=1".into()]).is_err());
    }
}
