//! The handshake: `Hello` (client), `HelloOk` (server) and the [`Role`] a
//! token grants. It owns their layout, which stays the same in every
//! protocol version so that any client can learn which versions a server
//! speaks; it does not check tokens (the server does).

use super::error::DecodeError;
use super::reader::Reader;
use super::wire::Wire;
use super::writer::Writer;

/// The first frame a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The one version the client speaks.
    pub protocol_version: u16,
    /// Opaque credentials; the server maps them to a [`Role`].
    pub token: Vec<u8>,
    /// Shown in logs and operator tools; not an identity.
    pub client_name: String,
}

/// The server accepted the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloOk {
    /// The client's version, which the server speaks.
    pub protocol_version: u16,
    /// The server's software version, for logs.
    pub server_version: String,
    /// What the token allows.
    pub role: Role,
}

/// What a connection may ask for (docs/PROTOCOL.md, "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Register, take work, heartbeat, complete.
    Agent,
    /// Submit and manage runs and jobs, read state, watch.
    Submitter,
    /// Everything, including queue configuration and tag rules.
    Admin,
}

impl Wire for Hello {
    const ENCODED_LENGTH_MIN: usize = 2 + 4 + 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        let Hello {
            protocol_version,
            token,
            client_name,
        } = self;
        writer.u16(*protocol_version);
        writer.bytes(token);
        writer.string(client_name);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(Hello {
            protocol_version: reader.u16("Hello.protocol_version")?,
            token: reader.bytes("Hello.token")?,
            client_name: reader.string("Hello.client_name")?,
        })
    }
}

impl Wire for HelloOk {
    const ENCODED_LENGTH_MIN: usize = 2 + 4 + Role::ENCODED_LENGTH_MIN;

    fn encode(&self, writer: &mut Writer<'_>) {
        let HelloOk {
            protocol_version,
            server_version,
            role,
        } = self;
        writer.u16(*protocol_version);
        writer.string(server_version);
        writer.write(role);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(HelloOk {
            protocol_version: reader.u16("HelloOk.protocol_version")?,
            server_version: reader.string("HelloOk.server_version")?,
            role: reader.read("HelloOk.role")?,
        })
    }
}

impl Wire for Role {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u8(match self {
            Role::Agent => 1,
            Role::Submitter => 2,
            Role::Admin => 3,
        });
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match reader.tag(field, &["Agent", "Submitter", "Admin"])? {
            1 => Ok(Role::Agent),
            2 => Ok(Role::Submitter),
            3 => Ok(Role::Admin),
            tag => Err(DecodeError::BadTag { field, tag }),
        }
    }
}
