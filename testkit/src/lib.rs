//! Test harness for real services: starts throwaway PostgreSQL and Redis
//! servers (ephemeral directory, free port, torn down on drop) so tests talk
//! to the real engines over real sockets. A test that needs a service and
//! cannot start it panics with a message saying what to install.

pub mod pg;
pub mod redis;
