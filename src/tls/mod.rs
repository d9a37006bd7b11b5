//! Mutual TLS for every gRPC connection: the security a process runs with (PEM files, or
//! plaintext only behind `--insecure`), loading those files into rustls configurations and
//! reading them again when they change, so a rotated certificate is used for new
//! connections without a restart while established ones go on.
//!
//! - [`identity`]: who a peer is — the roles and names its certificate carries.
//! - [`authz`]: which role may make which call, checked on every request.
//! - [`server`]: accepting TLS connections for tonic, the peer's identity on each.
//! - [`client`]: dialing TLS connections for tonic.
//! - [`issue`]: generating a CA and leaf certificates (`demo`, tests, the operator).
//!
//! Both sides verify the peer's chain against the CA file and ignore host names (as
//! CloudNativePG does): servers are dialed by IP on a laptop and by Service name in
//! Kubernetes, and what a peer may do comes from its role, not its address.

pub mod authz;
pub mod client;
pub mod identity;
pub mod issue;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

/// How often the PEM files are looked at again (on the next connection after that).
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Errors of the TLS layer.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration from {cert}, {key} and {ca}: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("issuing a certificate: {0}")]
    Issue(String),
    /// A certificate given as a CA cannot be one (why).
    #[error("not a usable CA: {0}")]
    NotACa(String),
    #[error(
        "{cert}: cannot {needed}: {reason}; its peers would refuse it (issue it with that name)"
    )]
    Unfit {
        cert: PathBuf,
        needed: identity::Fit,
        reason: String,
    },
}

/// The three PEM files of a TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA certificate(s) a peer's chain must lead to (several during a CA rotation).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// `DIR/NAME.crt`, `DIR/NAME.key` and `DIR/ca.crt` (the layout [`issue`] writes).
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join("ca.crt"),
        }
    }

    /// Flags that hand these files to a `logplayer` process.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--tls-ca".into(),
            self.ca.display().to_string(),
        ]
    }
}

/// The rustls configurations built from one reading of the files.
pub struct Loaded {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

struct State {
    loaded: Arc<Loaded>,
    /// The files' contents it was built from.
    contents: [Vec<u8>; 3],
    checked: Instant,
    /// What this process's certificate must name ([`Tls::require`]): a rotated certificate
    /// that does not is not used.
    needed: Option<identity::Fit>,
}

/// A TLS identity from files, read again when they change, or from PEM text held in
/// memory (cheap to share).
pub struct Tls {
    /// The files it reads again; `None` for PEM text given once ([`Tls::from_pem`]).
    files: Option<TlsFiles>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

impl Tls {
    /// Reads the files (a missing or malformed one is refused by name).
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let contents = [read(&files.cert)?, read(&files.key)?, read(&files.ca)?];
        Tls::built(&files, contents, Some(files.clone()))
    }

    /// An identity from PEM text (a certificate chain, its key, the CA certificates), as the
    /// operator reads it from a Secret; `what` names its source in errors. Not read again.
    pub fn from_pem(what: &str, cert: &str, key: &str, ca: &str) -> Result<Arc<Tls>, TlsError> {
        let named = TlsFiles {
            cert: PathBuf::from(format!("{what}: tls.crt")),
            key: PathBuf::from(format!("{what}: tls.key")),
            ca: PathBuf::from(format!("{what}: ca.crt")),
        };
        Tls::built(&named, [cert.into(), key.into(), ca.into()], None)
    }

    /// The identity `contents` make (`named` names them in errors); `files` are read again.
    fn built(
        named: &TlsFiles,
        contents: [Vec<u8>; 3],
        files: Option<TlsFiles>,
    ) -> Result<Arc<Tls>, TlsError> {
        let loaded = Arc::new(build(named, &contents)?);
        Ok(Arc::new(Tls {
            files,
            state: Mutex::new(State {
                loaded,
                contents,
                checked: Instant::now(),
                needed: None,
            }),
        }))
    }

    /// Checks that this identity's certificate names what this process is (a log replica,
    /// the shard with its id, a player): its peers refuse it otherwise. From then on a
    /// rotated certificate that does not is warned about and not used.
    pub fn require(&self, needed: identity::Fit) -> Result<(), TlsError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let cert = self.cert_name();
        fits(&cert, &state.contents[0], &needed)?;
        state.needed = Some(needed);
        Ok(())
    }

    /// The certificate file (or Secret) in messages.
    fn cert_name(&self) -> PathBuf {
        self.files
            .as_ref()
            .map_or_else(|| PathBuf::from("the certificate"), |f| f.cert.clone())
    }

    /// The files it reads (`None`: PEM text given once).
    pub fn files(&self) -> Option<&TlsFiles> {
        self.files.as_ref()
    }

    /// The configurations to use for a new connection: the files are read again at most
    /// every [`RELOAD_EVERY`]; changed files that do not make a valid configuration (a
    /// half-written rotation) are warned about and the last good one is kept.
    pub fn current(&self) -> Arc<Loaded> {
        // A panic while the lock was held cannot have left a half-made state: each field is
        // replaced whole.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(files) = &self.files else {
            return state.loaded.clone();
        };
        if state.checked.elapsed() < RELOAD_EVERY {
            return state.loaded.clone();
        }
        state.checked = Instant::now();
        let read_all = || -> Result<[Vec<u8>; 3], TlsError> {
            Ok([read(&files.cert)?, read(&files.key)?, read(&files.ca)?])
        };
        match read_all() {
            Ok(contents) if contents != state.contents => {
                match build(files, &contents).and_then(|loaded| match &state.needed {
                    Some(needed) => fits(&files.cert, &contents[0], needed).map(|()| loaded),
                    None => Ok(loaded),
                }) {
                    Ok(loaded) => {
                        tracing::info!(cert = %files.cert.display(), "TLS files changed: new connections use them");
                        state.loaded = Arc::new(loaded);
                        state.contents = contents;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "TLS files cannot be read; keeping the previous ones");
            }
        }
        state.loaded.clone()
    }
}

/// Whether the leaf of the PEM chain `pem` (from `cert`) names what is `needed`.
fn fits(cert: &Path, pem: &[u8], needed: &identity::Fit) -> Result<(), TlsError> {
    let chain = certs(cert, pem)?;
    let unfit = |reason| TlsError::Unfit {
        cert: cert.to_owned(),
        needed: needed.clone(),
        reason,
    };
    needed
        .check(&identity::Peer::of_chain(Some(&chain)))
        .map_err(unfit)?;
    // A certificate made for one purpose where this process needs both (a replica serves
    // and dials) loads, and then every peer refuses the handshake with the reason on its
    // side only.
    let (server, client) = needed.purposes();
    let allowed = chain.first().and_then(|c| identity::Peer::purposes_of(c));
    if let Some((can_serve, can_dial)) = allowed {
        let missing = [
            (
                server && !can_serve,
                "server authentication (TLS Web Server Authentication)",
            ),
            (
                client && !can_dial,
                "client authentication (TLS Web Client Authentication)",
            ),
        ];
        if let Some((_, what)) = missing.iter().find(|(m, _)| *m) {
            return Err(unfit(format!(
                "its extended key usage does not allow {what}, which this process needs"
            )));
        }
    }
    Ok(())
}

/// Builds both configurations from the files' contents.
fn build(files: &TlsFiles, contents: &[Vec<u8>; 3]) -> Result<Loaded, TlsError> {
    let [cert, key, ca] = contents;
    let chain = certs(&files.cert, cert)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
        path: files.key.clone(),
        reason: if key.windows(9).any(|w| w == b"ENCRYPTED") {
            "the private key is encrypted; give it unencrypted (PEM, PKCS#8, PKCS#1 or SEC1)"
                .to_owned()
        } else {
            format!("no private key: {e}")
        },
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs(&files.ca, ca)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: files.ca.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let config_err = |e: &dyn std::fmt::Display| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        ca: files.ca.clone(),
        reason: e.to_string(),
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| config_err(&e))?;
    let verifier_for_self = verifier.clone();
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => config_err(
                &"the key is not the key of the first certificate in the certificate file (is it \
                  this certificate's key? the chain file must list its own certificate first, \
                  then any intermediates)",
            ),
            e => config_err(&e),
        })?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let ca_only = CaOnly(
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| config_err(&e))?,
    );
    own_chain_verifies(&ca_only, verifier_for_self.as_ref(), &chain).map_err(|reason| {
        TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: files.ca.clone(),
            reason,
        }
    })?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ca_only))
        .with_client_auth_cert(chain, key)
        .map_err(|e| config_err(&e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// Whether a failed handshake is the peer speaking plaintext (its first bytes are not a
/// TLS record): a process run with `--insecure` on the other side.
pub(crate) fn is_plaintext_peer(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        })
}

/// Whether this process's own chain verifies against its own CA file, as its peers will
/// check it: a certificate that expired or is not yet valid, or a CA file that did not
/// issue it (a leaf given as the CA, another CA), would otherwise start and then fail every
/// handshake with a message on the peer's side only. A certificate is accepted if it
/// verifies as a server's or as a client's (one made for a single purpose is fine).
fn own_chain_verifies(
    as_server: &CaOnly,
    as_client: &dyn rustls::server::danger::ClientCertVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("the certificate file holds no certificate".into());
    };
    let now = UnixTime::now();
    let name = ServerName::try_from("logplayer").map_err(|e| e.to_string())?;
    let server = as_server.verify_server_cert(leaf, intermediates, &name, &[], now);
    let client = as_client.verify_client_cert(leaf, intermediates, now);
    let purpose = |e: &rustls::Error| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            )
        )
    };
    match (server, client) {
        (Ok(_), _) | (_, Ok(_)) => Ok(()),
        // Made for one purpose: the other check's complaint is the one that matters.
        (Err(s), Err(c)) => Err(match if purpose(&s) { c } else { s } {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "this process's certificate was not issued by a CA in the CA file (is --tls-ca \
                 the CA that issued it? a leaf certificate given as the CA does not count)"
                    .to_owned()
            }
            rustls::Error::InvalidCertificate(e) => {
                format!("this process's certificate does not verify against the CA file: {e}")
            }
            e => format!("this process's certificate does not verify against the CA file: {e}"),
        }),
    }
}

/// Verifies a server's chain against the CA, signatures and validity included, and ignores
/// the host name it was dialed by (see the module doc).
#[derive(Debug)]
struct CaOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last, after the chain, validity and revocation.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What a process's connections run over.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS with these files; roles checked on every call.
    Tls(Arc<Tls>),
    /// Plaintext, nobody authenticated (`--insecure`).
    Insecure,
}

static PROCESS: OnceLock<Security> = OnceLock::new();

/// Sets this process's security, once (the command line does, from its flags): every
/// server it starts from then on accepts only TLS with a certificate from the CA and
/// checks roles, and every client connection it opens presents its certificate. `false` if
/// it was already set. A process that never sets it (a library user, a test) runs
/// plaintext.
pub fn install(security: Security) -> bool {
    PROCESS.set(security).is_ok()
}

/// This process's TLS identity, if it runs TLS.
pub fn process() -> Option<&'static Arc<Tls>> {
    match PROCESS.get() {
        Some(Security::Tls(t)) => Some(t),
        _ => None,
    }
}
