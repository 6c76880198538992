//! The MySQL / MariaDB wire protocol for Sluice (DESIGN.md §6 "MySQL /
//! MariaDB"), independent of the gateway: packet framing, the connection
//! phase as server and as client, the authentication plugins, upstream
//! login over TLS and statement classification.
//!
//! Spec: MySQL Internals, "Client/Server Protocol"
//! (<https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html>)
//! and the MariaDB Knowledge Base "Clients & Utilities / Server-Client
//! Software / Client Libraries / Client/Server Protocol".
#![forbid(unsafe_code)]

pub mod agent;
pub mod auth;
pub mod capability;
pub mod classify;
pub mod command;
pub mod gate;
pub mod handshake;
pub mod packet;
pub mod relay;
pub mod response;
pub mod resultset;
pub mod transport;
pub mod upstream;
pub mod wire;

pub use capability::Capabilities;
pub use packet::{Packet, PacketDecoder, PacketError, PacketStream};
pub use response::{EofPacket, ErrPacket, OkPacket};
