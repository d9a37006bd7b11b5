//! Generating certificates (rcgen; ECDSA P-256): a self-signed CA, and leaf certificates
//! it signs carrying `logplayer://ROLE/NAME` names ([`super::identity`]). `demo` and the
//! tests issue their own; the operator will issue a LogPlayer's from the CA in its Secret.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
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

/// Checks what neither rcgen nor a peer checks of a CA certificate: rcgen signs under any
/// certificate with any key, and webpki takes each certificate of the CA file as a trust
/// anchor by its name and key alone (not its constraints or validity). So a leaf given as
/// the CA, a key that is not the certificate's, or a CA past its end would be found only by
/// each process given a leaf it signed, or not at all.
fn check_ca(cert: &str, key: &KeyPair) -> Result<(), TlsError> {
    let bad = TlsError::NotACa;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes())
        .map_err(|e| bad(format!("it is not a PEM certificate ({e})")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("it is not an X.509 certificate ({e})")))?;
    match cert.basic_constraints() {
        Ok(Some(c)) if c.value.ca => {}
        Ok(_) => {
            return Err(bad(
                "its basic constraints do not say CA:TRUE (a leaf certificate?)".into(),
            ));
        }
        Err(e) => return Err(bad(format!("its basic constraints do not read ({e})"))),
    }
    match cert.key_usage() {
        Ok(Some(u)) if !u.value.key_cert_sign() => {
            return Err(bad("its key usage does not include keyCertSign".into()));
        }
        Ok(_) => {}
        Err(e) => return Err(bad(format!("its key usage does not read ({e})"))),
    }
    let validity = cert.validity();
    if !validity.is_valid() {
        return Err(bad(format!(
            "it is valid from {} to {}, not now",
            validity.not_before, validity.not_after
        )));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(bad("tls.key is not the key of this certificate".into()));
    }
    Ok(())
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

    /// The CA in `pem` (a certificate and its key), to sign more leaves. Refused, naming
    /// why, when it cannot be a CA its leaves verify against (its basic constraints, key
    /// usage, validity and key are checked).
    pub fn from_pem(pem: Pem) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(&pem.key).map_err(err)?;
        check_ca(&pem.cert, &key)?;
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

    /// A CA whose leaves no process would take is refused when it is read, naming why: a
    /// leaf given as the CA, a CA's certificate with another key, and a CA past its end.
    #[test]
    fn a_certificate_that_cannot_be_a_ca_is_refused_when_read() {
        let ca = Ca::new("test CA", DEMO_VALIDITY).unwrap();
        Ca::from_pem(ca.pem.clone()).unwrap();
        let leaf = ca
            .leaf("not a CA", &[], &["leaf.invalid"], DEMO_VALIDITY)
            .unwrap();
        let other = Ca::new("another CA", DEMO_VALIDITY).unwrap();
        let mismatched = Pem {
            cert: ca.pem.cert.clone(),
            key: other.pem.key.clone(),
        };
        // Valid from 5 minutes ago until now: past its end by the time it is read.
        let ended = Ca::new("ended CA", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        for (bad, says) in [
            (leaf, "CA:TRUE"),
            (mismatched, "tls.key is not the key"),
            (ended.pem, "not now"),
        ] {
            let e = Ca::from_pem(bad).err().unwrap().to_string();
            assert!(e.contains("not a usable CA") && e.contains(says), "{e}");
        }
    }

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
