//! The listening socket: built with socket2 so the backlog is ours to choose.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking listener with `SO_REUSEADDR` and the given backlog.
pub fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    if let Some(max) = somaxconn() {
        if backlog > max {
            tracing::warn!(
                backlog,
                somaxconn = max,
                "listen backlog exceeds net.core.somaxconn; the kernel caps it at {max}"
            );
        }
    }
    Ok(socket.into())
}

/// The kernel's cap on listen backlogs, where it can be read.
pub fn somaxconn() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}
