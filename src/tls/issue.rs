//! Generating certificates (rcgen; ECDSA P-256): a self-signed CA, and leaf certificates
//! it signs carrying `logplayer://ROLE/NAME` names ([`super::identity`]). `demo` and the
//! tests issue their own; the operator will issue a LogPlayer's from the CA in its Secret.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::identity::Role;
use super::{TlsError, TlsFiles};

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Issue(e.to_string())
}

/// A certificate and its key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A certificate authority that signs leaf certificates.
pub struct Ca {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little in the past: a peer whose clock is a few minutes behind still accepts it.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid_for;
}

impl Ca {
    /// A new self-signed CA named `name`, valid for `valid_for`.
    pub fn new(name: &str, valid_for: Duration) -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, valid_for);
        let cert = params.self_signed(&key).map_err(err)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `pem` (a certificate and its key), to sign more leaves.
    pub fn from_pem(pem: Pem) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(&pem.key).map_err(err)?;
        let issuer = Issuer::from_ca_cert_pem(&pem.cert, key).map_err(err)?;
        Ok(Ca { pem, issuer })
    }

    /// A leaf certificate for `common_name` granting `grants` (role, name), valid as both a
    /// server and a client certificate, with `hosts` (DNS names or IP addresses) as names.
    pub fn leaf(
        &self,
        common_name: &str,
        grants: &[(Role, &str)],
        hosts: &[&str],
        valid_for: Duration,
    ) -> Result<Pem, TlsError> {
        let both = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.leaf_for(common_name, grants, hosts, valid_for, &both)
    }

    /// [`Ca::leaf`] valid only for `purposes` (a certificate a stricter CA issues).
    pub fn leaf_for(
        &self,
        common_name: &str,
        grants: &[(Role, &str)],
        hosts: &[&str],
        valid_for: Duration,
        purposes: &[ExtendedKeyUsagePurpose],
    ) -> Result<Pem, TlsError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .map_err(err)?;
        for (role, name) in grants {
            let uri = role.uri(name).try_into().map_err(err)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = purposes.to_vec();
        validity(&mut params, valid_for);
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Writes `DIR/ca.crt` (the certificate only).
    pub fn write_ca(&self, dir: &Path) -> Result<(), TlsError> {
        write(&dir.join("ca.crt"), &self.pem.cert)
    }

    /// Issues a leaf (see [`Ca::leaf`]) and writes it as `DIR/NAME.crt` and `DIR/NAME.key`
    /// (the key readable by its owner only), next to `DIR/ca.crt`.
    pub fn write_leaf(
        &self,
        dir: &Path,
        name: &str,
        grants: &[(Role, &str)],
        valid_for: Duration,
    ) -> Result<TlsFiles, TlsError> {
        let pem = self.leaf(name, grants, &["localhost", "127.0.0.1"], valid_for)?;
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let files = TlsFiles::in_dir(dir, name);
        write(&files.cert, &pem.cert)?;
        write_private(&files.key, &pem.key)?;
        self.write_ca(dir)?;
        Ok(files)
    }
}

/// Writes a file whole: to a temporary name, then renamed (a reader never sees half).
fn write(path: &Path, text: &str) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// How long the certificates `demo` and the tests issue are valid.
pub const DEMO_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The certificates of a system on one machine (`demo`, `bench`, tests), in `dir`: one CA,
/// and a leaf per component: `logstore` (replica), `player`, `client` (writer of any
/// `load-` id, and admin: the load driver and the checker), and one per shard, issued when
/// it is first asked for ([`LocalCerts::shard`]).
pub fn issue_local(dir: &Path) -> Result<LocalCerts, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca = Ca::new("logplayer local CA", DEMO_VALIDITY)?;
    let v = DEMO_VALIDITY;
    Ok(LocalCerts {
        logstore: ca.write_leaf(dir, "logstore", &[(Role::Replica, "logstore")], v)?,
        player: ca.write_leaf(dir, "player", &[(Role::Player, "player")], v)?,
        client: ca.write_leaf(
            dir,
            "client",
            &[(Role::Writer, "load-*"), (Role::Admin, "client")],
            v,
        )?,
        ca,
        dir: dir.to_owned(),
        issuing: std::sync::Mutex::new(()),
    })
}

/// What [`issue_local`] wrote.
pub struct LocalCerts {
    pub ca: Ca,
    pub logstore: TlsFiles,
    pub player: TlsFiles,
    pub client: TlsFiles,
    dir: std::path::PathBuf,
    /// One leaf written at a time (a shard's files are written once, by whoever asks first).
    issuing: std::sync::Mutex<()>,
}

impl LocalCerts {
    /// The certificate of the shard `id` (`logplayer://shard/ID`, serving only), issued on
    /// first use as `shard-ID`.
    pub fn shard(&self, id: &str) -> Result<TlsFiles, TlsError> {
        let _one = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        let file: String = id
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
                _ => '_',
            })
            .collect();
        let name = format!("shard-{file}");
        let files = TlsFiles::in_dir(&self.dir, &name);
        if files.cert.exists() && files.key.exists() {
            return Ok(files);
        }
        self.ca
            .write_leaf(&self.dir, &name, &[(Role::Shard, id)], DEMO_VALIDITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Expected;
    use crate::tls::Tls;
    use crate::tls::identity::Fit;

    /// A certificate made for one purpose where the process needs another is refused at
    /// start, naming the purpose (a replica with a server-only certificate started, and
    /// every peer then refused its handshakes with the reason on their side only).
    #[test]
    fn a_certificate_without_the_purpose_a_process_needs_is_refused_naming_it() {
        let ca = Ca::new("test CA", DEMO_VALIDITY).unwrap();
        let replica = [(Role::Replica, "log")];
        let identity = |purposes: &[ExtendedKeyUsagePurpose]| {
            let leaf = ca
                .leaf_for("r", &replica, &["127.0.0.1"], DEMO_VALIDITY, purposes)
                .unwrap();
            Tls::from_pem("test", &leaf.cert, &leaf.key, &ca.pem.cert).unwrap()
        };
        let server_only = identity(&[ExtendedKeyUsagePurpose::ServerAuth]);
        let e = server_only.require(Fit::Replica).unwrap_err().to_string();
        assert!(e.contains("does not allow client authentication"), "{e}");
        // Enough for a single-node LogStore, which dials nobody.
        server_only.require(Fit::Serve(Expected::Log)).unwrap();
        let client_only = identity(&[ExtendedKeyUsagePurpose::ClientAuth]);
        let e = client_only
            .require(Fit::Serve(Expected::Log))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not allow server authentication"), "{e}");
        identity(&[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ])
        .require(Fit::Replica)
        .unwrap();
    }
}
