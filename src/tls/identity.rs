//! Who a peer is: the roles and names its certificate carries, as subject alternative
//! names of the form `logplayer://ROLE/NAME` (a URI SAN; a certificate may carry several).
//!
//! | role | may |
//! |---|---|
//! | `writer` | append, with the writer ids its certificate names (`NAME`, or a prefix `NAME*`) |
//! | `player` | read the log, retain, deliver to shards and ask them where they are |
//! | `replica` | speak Raft to the other log replicas |
//! | `admin` | dump, check, status and the membership commands |
//! | `shard` | serve as the shard `NAME` (it calls nothing) |
//!
//! A certificate with no such name, or only a `shard` name, may call nothing but health
//! and reflection.
//!
//! Clients check servers too ([`Expected`]): a log replica must present a `replica` name
//! and the shard a player delivers to a `shard` name with that shard's id, so another
//! certificate from the same CA (a writer's) cannot pose as either.

use std::collections::BTreeSet;
use std::fmt;

/// A role a certificate grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Writer,
    Player,
    Replica,
    Admin,
    /// Serves a shard (`NAME` is its id); grants no call.
    Shard,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Writer,
        Role::Player,
        Role::Replica,
        Role::Admin,
        Role::Shard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Player => "player",
            Role::Replica => "replica",
            Role::Admin => "admin",
            Role::Shard => "shard",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The URI that grants this role to `name`.
    pub fn uri(self, name: &str) -> String {
        format!("{SCHEME}{}/{name}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The URI scheme of a role name.
pub const SCHEME: &str = "logplayer://";

/// A verified peer: what its certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Every `(role, name)` its certificate carries.
    pub grants: Vec<(Role, String)>,
    /// The certificate's subject (for messages).
    pub subject: String,
}

impl Peer {
    /// The peer a certificate (DER) names. A certificate that does not parse names nobody
    /// (it was verified against the CA already, so this does not happen with ours).
    pub fn from_der(der: &[u8]) -> Peer {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return Peer::default();
        };
        let mut grants = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && let Some(g) = parse_uri(uri)
                {
                    grants.push(g);
                }
            }
        }
        Peer {
            grants,
            subject: cert.subject().to_string(),
        }
    }

    /// What a certificate (DER) may authenticate as `(server, client)` by its extended key
    /// usage; `None` without one (any purpose) or when it does not parse.
    pub fn purposes_of(der: &[u8]) -> Option<(bool, bool)> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let eku = cert.extended_key_usage().ok()??;
        let e = eku.value;
        Some((e.any || e.server_auth, e.any || e.client_auth))
    }

    /// The peer a certificate chain names: its leaf's names (nobody for no chain).
    pub fn of_chain(chain: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Peer {
        chain
            .and_then(|c| c.first())
            .map(|c| Peer::from_der(c))
            .unwrap_or_default()
    }

    pub fn roles(&self) -> BTreeSet<Role> {
        self.grants.iter().map(|(r, _)| *r).collect()
    }

    pub fn has(&self, role: Role) -> bool {
        self.grants.iter().any(|(r, _)| *r == role)
    }

    /// Whether this peer may append as `writer_id`: one of its `writer` names is that id,
    /// or ends in `*` and is a prefix of it. An append without a writer id names nobody
    /// and needs only the role.
    pub fn may_write_as(&self, writer_id: &str) -> bool {
        writer_id.is_empty()
            || self.grants.iter().any(|(r, name)| {
                *r == Role::Writer
                    && match name.strip_suffix('*') {
                        Some(prefix) => writer_id.starts_with(prefix),
                        None => name == writer_id,
                    }
            })
    }

    /// The peer in messages: its names, or its subject when it has none.
    pub fn describe(&self) -> String {
        if self.grants.is_empty() {
            return format!("{:?} (no logplayer:// role)", self.subject);
        }
        self.grants
            .iter()
            .map(|(r, n)| r.uri(n))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Whom a client expects behind an address it dials: the server's certificate must carry
/// this name, checked after the handshake, before any call is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// A replica of the log (a `replica` name).
    Log,
    /// The shard with this id (`shard/ID`).
    Shard(String),
    /// Some shard (a tool given an address and no id).
    AnyShard,
}

impl Expected {
    /// Whether `peer` (the server's certificate) is what was expected; the refusal names
    /// both.
    pub fn check(&self, peer: &Peer) -> Result<(), String> {
        let ok = match self {
            Expected::Log => peer.has(Role::Replica),
            Expected::Shard(id) => peer
                .grants
                .iter()
                .any(|(r, n)| *r == Role::Shard && n == id),
            Expected::AnyShard => peer.has(Role::Shard),
        };
        if ok {
            return Ok(());
        }
        Err(format!(
            "the certificate grants {}, not {self}",
            peer.describe()
        ))
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Log => write!(f, "{SCHEME}replica/* (a log replica)"),
            Expected::Shard(id) => write!(f, "{} (shard {id})", Role::Shard.uri(id)),
            Expected::AnyShard => write!(f, "{SCHEME}shard/* (a shard)"),
        }
    }
}

/// What this process's own certificate must name (checked at start and on every rotation,
/// see `Tls::require`): a server must be what its clients expect, a client must hold the
/// role its calls need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// Serve as this (a single-node LogStore, the shard with its id).
    Serve(Expected),
    /// A replica of a replicated log: serve as the log, and dial the other replicas.
    Replica,
    /// Call with this role (a player).
    Act(Role),
    /// Append as writer ids starting with this prefix (`load`'s `load-RUN-N`).
    WriteAs(String),
}

impl Fit {
    /// Whether the certificate must allow server and client authentication: a server is
    /// dialed, a client (a player, a writer) dials, a replica does both.
    pub fn purposes(&self) -> (bool, bool) {
        match self {
            Fit::Serve(_) => (true, false),
            Fit::Replica => (true, true),
            Fit::Act(_) | Fit::WriteAs(_) => (false, true),
        }
    }

    pub fn check(&self, me: &Peer) -> Result<(), String> {
        match self {
            Fit::Serve(expected) => expected.check(me),
            Fit::Replica => Expected::Log.check(me),
            Fit::Act(role) if me.has(*role) => Ok(()),
            Fit::Act(role) => Err(format!(
                "the certificate grants {}, no {role} name",
                me.describe()
            )),
            Fit::WriteAs(prefix) if me.may_write_as(prefix) => Ok(()),
            Fit::WriteAs(_) => Err(format!(
                "the certificate grants {}, no writer name covering them",
                me.describe()
            )),
        }
    }
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fit::Serve(expected) => write!(f, "serve as {expected}"),
            Fit::Replica => write!(f, "serve and dial as {}", Expected::Log),
            Fit::Act(role) => write!(f, "act as a {role} ({})", role.uri("NAME")),
            Fit::WriteAs(prefix) => write!(
                f,
                "append as writer ids {prefix}... ({})",
                Role::Writer.uri(&format!("{prefix}*"))
            ),
        }
    }
}

/// A peer whose certificate carries `uris` (for tests of the rules).
#[cfg(test)]
pub(crate) fn peer_with(uris: &[&str]) -> Peer {
    Peer {
        grants: uris.iter().filter_map(|u| parse_uri(u)).collect(),
        subject: "test".into(),
    }
}

/// `logplayer://ROLE/NAME` → `(role, NAME)`; anything else (another scheme, an unknown
/// role) grants nothing.
pub fn parse_uri(uri: &str) -> Option<(Role, String)> {
    let rest = uri.strip_prefix(SCHEME)?;
    let (role, name) = rest.split_once('/').unwrap_or((rest, ""));
    Some((Role::parse(role)?, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use peer_with as peer;

    #[test]
    fn role_names_parse_from_uris() {
        assert_eq!(
            parse_uri("logplayer://writer/tm-1"),
            Some((Role::Writer, "tm-1".into()))
        );
        assert_eq!(
            parse_uri("logplayer://admin"),
            Some((Role::Admin, "".into()))
        );
        assert_eq!(parse_uri("logplayer://root/x"), None);
        assert_eq!(parse_uri("spiffe://writer/x"), None);
    }

    #[test]
    fn a_writer_uses_only_the_ids_its_certificate_names() {
        let p = peer(&["logplayer://writer/tm-1", "logplayer://writer/load-*"]);
        assert!(p.may_write_as("tm-1"));
        assert!(!p.may_write_as("tm-10"));
        assert!(!p.may_write_as("tm-2"));
        assert!(p.may_write_as("load-abc-0"));
        assert!(p.may_write_as(""), "no writer id: nobody to impersonate");
        let admin = peer(&["logplayer://admin/a"]);
        assert!(!admin.may_write_as("a"));
    }

    #[test]
    fn a_client_accepts_only_the_server_it_expects() {
        let replica = peer(&["logplayer://replica/demo-logstore"]);
        let shard = peer(&["logplayer://shard/s1"]);
        let writer = peer(&["logplayer://writer/*", "logplayer://admin/a"]);
        let nobody = peer(&[]);
        assert!(Expected::Log.check(&replica).is_ok());
        assert!(Expected::Shard("s1".into()).check(&shard).is_ok());
        assert!(Expected::AnyShard.check(&shard).is_ok());
        for p in [&shard, &writer, &nobody] {
            assert!(Expected::Log.check(p).is_err(), "{}", p.describe());
        }
        for p in [&replica, &writer, &nobody] {
            assert!(Expected::AnyShard.check(p).is_err(), "{}", p.describe());
        }
        let e = Expected::Shard("s2".into()).check(&shard).unwrap_err();
        assert!(
            e.contains("logplayer://shard/s1") && e.contains("shard s2"),
            "{e}"
        );
        // A shard name grants no call.
        assert!(crate::tls::authz::check(&shard, "/logplayer.v1.Shard/Dump").is_err());
    }
}
