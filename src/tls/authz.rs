//! Which role may make which call: one table ([`POLICY`]) checked by a server layer on
//! every request before any handler runs, and the writer-id rule the LogStore checks per
//! append. A refusal is `PERMISSION_DENIED` with the reason `forbidden`, naming the caller's
//! roles and the call; nothing was done.

use std::task::{Context, Poll};

use super::identity::{Peer, Role};
use crate::grpc::Reason;

/// Call (gRPC path) → the roles that may make it. A call not listed (and not health or
/// reflection, open to every verified peer) is refused to everybody.
pub const POLICY: &[(&str, &[Role])] = &[
    ("/logplayer.v1.LogStore/Append", &[Role::Writer]),
    ("/logplayer.v1.LogStore/AppendStream", &[Role::Writer]),
    ("/logplayer.v1.LogStore/Read", &[Role::Player, Role::Admin]),
    (
        "/logplayer.v1.LogStore/Bounds",
        &[Role::Writer, Role::Player, Role::Replica, Role::Admin],
    ),
    ("/logplayer.v1.LogStore/Retain", &[Role::Player]),
    (
        "/logplayer.v1.LogStore/Members",
        &[Role::Player, Role::Replica, Role::Admin],
    ),
    ("/logplayer.v1.LogStore/AddMember", &[Role::Admin]),
    ("/logplayer.v1.LogStore/RemoveMember", &[Role::Admin]),
    ("/logplayer.v1.LogStore/Seed", &[Role::Admin]),
    ("/logplayer.v1.Shard/Deliver", &[Role::Player]),
    ("/logplayer.v1.Shard/Applied", &[Role::Player, Role::Admin]),
    ("/logplayer.v1.Shard/Stats", &[Role::Player, Role::Admin]),
    ("/logplayer.v1.Shard/Dump", &[Role::Admin]),
    ("/logplayer.v1.Replication/AppendEntries", &[Role::Replica]),
    ("/logplayer.v1.Replication/AppendStream", &[Role::Replica]),
    ("/logplayer.v1.Replication/Vote", &[Role::Replica]),
    ("/logplayer.v1.Replication/PreVote", &[Role::Replica]),
    (
        "/logplayer.v1.Replication/InstallSnapshot",
        &[Role::Replica],
    ),
    (
        "/logplayer.v1.Replication/InstallSnapshotStream",
        &[Role::Replica],
    ),
];

/// Services every verified peer may call.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Whether `peer` may call `path`; the refusal names what it lacks.
pub fn check(peer: &Peer, path: &str) -> Result<(), tonic::Status> {
    if OPEN_SERVICES.iter().any(|s| path.starts_with(s)) {
        return Ok(());
    }
    let Some((_, roles)) = POLICY.iter().find(|(p, _)| *p == path) else {
        return Err(Reason::Forbidden.status(format!("{path} is not a call anyone may make")));
    };
    if roles.iter().any(|r| peer.has(*r)) {
        return Ok(());
    }
    let needs = roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(Reason::Forbidden.status(format!(
        "{path} needs the role {needs}; the caller's certificate grants {}",
        peer.describe()
    )))
}

/// Whether the caller of a request (its TLS peer, when the server runs TLS) may append as
/// `writer_id`. Without TLS (`--insecure`) everybody may.
pub fn check_writer(peer: Option<&Peer>, writer_id: &str) -> Result<(), tonic::Status> {
    match peer {
        Some(p) if !p.may_write_as(writer_id) => Err(Reason::Forbidden.status(format!(
            "writer id {writer_id:?} is not one the caller's certificate names ({}); a \
                 writer appends only as the ids of its logplayer://writer/NAME names",
            p.describe()
        ))),
        _ => Ok(()),
    }
}

/// The TLS peer of a request, if the server runs TLS.
pub fn peer_of<T>(request: &tonic::Request<T>) -> Option<std::sync::Arc<Peer>> {
    request
        .extensions()
        .get::<super::server::Conn>()
        .map(|c| c.peer.clone())
}

/// The server layer applying [`check`] to every request that came over TLS (a plaintext
/// server, `--insecure`, has no peers to check and lets every call through).
#[derive(Clone, Copy, Default)]
pub struct AuthzLayer;

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz { inner }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Authz<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, futures::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let refused = match req.extensions().get::<super::server::Conn>() {
            Some(conn) => check(&conn.peer, req.uri().path()).err().inspect(|_| {
                tracing::warn!(
                    call = req.uri().path(),
                    peer = %conn.peer.describe(),
                    remote = ?conn.remote,
                    "refused a call the caller's certificate does not allow"
                );
            }),
            // A process that runs TLS serves nothing but TLS connections; a request without
            // a verified peer there is refused rather than trusted.
            None if super::process().is_some() => Some(Reason::Forbidden.status(
                "this server accepts only mutual-TLS connections with a verified certificate",
            )),
            None => None,
        };
        match refused {
            None => futures::future::Either::Left(self.inner.call(req)),
            Some(status) => {
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::peer_with as peer;

    #[test]
    fn each_role_makes_only_its_calls() {
        let writer = peer(&["logplayer://writer/w"]);
        let player = peer(&["logplayer://player/p"]);
        let none = peer(&[]);
        assert!(check(&writer, "/logplayer.v1.LogStore/Append").is_ok());
        assert!(check(&writer, "/logplayer.v1.LogStore/Retain").is_err());
        assert!(check(&writer, "/logplayer.v1.Shard/Deliver").is_err());
        assert!(check(&player, "/logplayer.v1.Shard/Deliver").is_ok());
        assert!(check(&player, "/logplayer.v1.LogStore/Append").is_err());
        assert!(check(&player, "/logplayer.v1.Shard/Dump").is_err());
        assert!(check(&none, "/grpc.health.v1.Health/Check").is_ok());
        assert!(check(&none, "/logplayer.v1.LogStore/Bounds").is_err());
        let e = check(&writer, "/logplayer.v1.LogStore/Retain").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("player") && e.message().contains("writer/w"));
        assert!(check(&player, "/logplayer.v1.Shard/Unknown").is_err());
        // Only a replica takes part in the log's Raft group: anybody else could vote, or
        // overwrite a follower's log with AppendEntries.
        let replica = peer(&["logplayer://replica/2"]);
        let admin = peer(&["logplayer://admin/a"]);
        for call in [
            "AppendEntries",
            "AppendStream",
            "Vote",
            "PreVote",
            "InstallSnapshot",
            "InstallSnapshotStream",
        ] {
            let path = format!("/logplayer.v1.Replication/{call}");
            assert!(check(&replica, &path).is_ok(), "{path}");
            for other in [&writer, &player, &admin, &none] {
                assert!(
                    check(other, &path).is_err(),
                    "{path} as {}",
                    other.describe()
                );
            }
        }
    }

    /// The whole table, written out once more as the contract (the README's "Security"
    /// section): a right added to or taken from any role, or a check that lets a call
    /// through, fails here. `w p r a` = writer, player, replica, admin; `-` = nobody else.
    #[test]
    fn the_role_table_is_exactly_the_contract() {
        let contract = [
            ("LogStore/Append", "w---"),
            ("LogStore/AppendStream", "w---"),
            ("LogStore/Read", "-p-a"),
            ("LogStore/Bounds", "wpra"),
            ("LogStore/Retain", "-p--"),
            ("LogStore/Members", "-pra"),
            ("LogStore/AddMember", "---a"),
            ("LogStore/RemoveMember", "---a"),
            ("LogStore/Seed", "---a"),
            ("Shard/Deliver", "-p--"),
            ("Shard/Applied", "-p-a"),
            ("Shard/Stats", "-p-a"),
            ("Shard/Dump", "---a"),
            ("Replication/AppendEntries", "--r-"),
            ("Replication/AppendStream", "--r-"),
            ("Replication/Vote", "--r-"),
            ("Replication/PreVote", "--r-"),
            ("Replication/InstallSnapshot", "--r-"),
            ("Replication/InstallSnapshotStream", "--r-"),
        ];
        assert_eq!(
            contract.len(),
            POLICY.len(),
            "a call was added: add it here"
        );
        let peers = [
            ('w', peer(&["logplayer://writer/*"])),
            ('p', peer(&["logplayer://player/p"])),
            ('r', peer(&["logplayer://replica/2"])),
            ('a', peer(&["logplayer://admin/a"])),
            // A shard server's name says what it is, not what it may call.
            ('s', peer(&["logplayer://shard/s0"])),
        ];
        let none = peer(&[]);
        for (call, roles) in contract {
            let path = format!("/logplayer.v1.{call}");
            for (letter, who) in &peers {
                assert_eq!(
                    check(who, &path).is_ok(),
                    roles.contains(*letter),
                    "{path} as {}",
                    who.describe()
                );
            }
            assert!(check(&none, &path).is_err(), "{path} without a role");
        }
    }

    #[test]
    fn every_call_of_our_services_is_in_the_policy() {
        let proto = include_str!("../../proto/logplayer.proto");
        let mut service = "";
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or("");
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let call = rest.split('(').next().unwrap_or("").trim();
                let path = format!("/logplayer.v1.{service}/{call}");
                assert!(
                    POLICY.iter().any(|(p, _)| *p == path),
                    "{path} is not in tls::authz::POLICY"
                );
            }
        }
    }
}
