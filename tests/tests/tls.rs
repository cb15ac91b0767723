//! TLS on the real gateway binary, with certificates made at test time: gRPC and HTTP are served
//! over TLS only (a plaintext client is refused), a renewed certificate is served to new
//! connections without a restart, and with `gateway.tls_client_ca` a client must present a
//! certificate of that CA (mTLS).
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rewardfleet_proto::v1::ListProfilesRequest;
use rewardfleet_proto::v1::reward_service_client::RewardServiceClient;
use rewardfleet_testkit::free_port;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::process::Process;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `localhost` signed by this CA: (certificate PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        self.leaf_named("localhost")
    }

    /// A certificate whose subject's common name and DNS name are `name`.
    fn leaf_named(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn client_config(
    ca: &str,
    identity: Option<&(String, String)>,
    alpn: &[u8],
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// A gRPC channel over TLS to `port`, trusting `ca`.
async fn tls_channel(
    port: u16,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca, identity, b"h2")));
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

/// `ListProfiles` over TLS trusting `ca`: whether it answered.
async fn grpc_ok(port: u16, ca: &str, identity: Option<&(String, String)>) -> bool {
    let Ok(channel) = tls_channel(port, ca, identity).await else {
        return false;
    };
    RewardServiceClient::new(channel)
        .list_profiles(ListProfilesRequest {})
        .await
        .is_ok()
}

/// `GET /health` over TLS (HTTP/1.1) trusting `ca`: the status line.
async fn https_health(port: u16, ca: &str) -> Option<String> {
    https_get(port, ca, None, "/health").await
}

/// `GET path` over TLS (HTTP/1.1) trusting `ca`, with a client certificate if any: the status
/// line.
async fn https_get(
    port: u16,
    ca: &str,
    identity: Option<&(String, String)>,
    path: &str,
) -> Option<String> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(ca, identity, b"http/1.1")));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tls, &mut text)
        .await
        .ok()?;
    text.lines().next().map(str::to_owned)
}

fn write_pair(dir: &Path, (cert, key): &(String, String)) {
    // The key first: a check between the two writes sees a pair that does not fit and keeps
    // the previous certificate until the next change.
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
}

fn gateway(dir: &Path, client_ca: bool) -> (Process, u16, u16) {
    gateway_with(dir, client_ca, "")
}

fn gateway_with(dir: &Path, client_ca: bool, extra: &str) -> (Process, u16, u16) {
    let (grpc, http) = (free_port().unwrap(), free_port().unwrap());
    let ca_key = if client_ca {
        "tls_client_ca = \"clients.pem\"\n"
    } else {
        ""
    };
    let text = config_text(None, extra).replace(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n{ca_key}"
        ),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (
        Process::start("gateway", &["gateway"], &path, "listening on"),
        grpc,
        http,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_and_a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA");
    write_pair(dir.path(), &first.leaf());
    let (_gw, grpc, http) = gateway(dir.path(), false);

    assert!(grpc_ok(grpc, &first.pem(), None).await, "gRPC over TLS");
    let status = https_health(http, &first.pem()).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"), "HTTP over TLS");

    // Plaintext is refused on both.
    let plain = rewardfleet_client::connect(&format!("http://127.0.0.1:{grpc}")).await;
    let answered = match plain {
        Err(_) => false,
        Ok(mut client) => client.list_profiles(ListProfilesRequest {}).await.is_ok(),
    };
    assert!(!answered, "a plaintext gRPC client was served");
    assert_ne!(
        http_status(&format!("127.0.0.1:{http}"), "/health"),
        Some(200),
        "a plaintext HTTP client was served"
    );

    // A renewed certificate (another CA here, to tell them apart) serves new connections.
    let second = Ca::new("second CA");
    write_pair(dir.path(), &second.leaf());
    let started = Instant::now();
    while !grpc_ok(grpc, &second.pem(), None).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the renewed certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !grpc_ok(grpc, &first.pem(), None).await,
        "the old certificate is still served"
    );
    assert_eq!(
        https_health(http, &second.pem()).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_its_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ca::new("server CA");
    write_pair(dir.path(), &server.leaf());
    let clients = Ca::new("client CA");
    std::fs::write(dir.path().join("clients.pem"), clients.pem()).unwrap();
    let (_gw, grpc, _http) = gateway(dir.path(), true);

    assert!(
        !grpc_ok(grpc, &server.pem(), None).await,
        "served without a client certificate"
    );
    let stranger = Ca::new("another CA").leaf();
    assert!(
        !grpc_ok(grpc, &server.pem(), Some(&stranger)).await,
        "served a client certificate of another CA"
    );
    assert!(
        grpc_ok(grpc, &server.pem(), Some(&clients.leaf())).await,
        "a client certificate of the client CA was refused"
    );
}

/// A tenant named by its client certificate (`tls_subject`): with no bearer token, a client whose
/// verified certificate carries the name is that tenant (its profiles only); a certificate of
/// the same CA naming no tenant is `UNAUTHENTICATED` unless it sends a tenant's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_tenant() {
    use rewardfleet_proto::v1::ScoreBatchRequest;
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let server = Ca::new("server CA");
    write_pair(dir.path(), &server.leaf());
    let clients = Ca::new("client CA");
    std::fs::write(dir.path().join("clients.pem"), clients.pem()).unwrap();
    std::fs::write(dir.path().join("dave.token"), "dave-token-0123456789").unwrap();
    let tenants = "[[tenant]]\nname = \"carol\"\ntls_subject = \"trainer-carol\"\nprofiles = [\"e2e\"]\n\n\
                   [[tenant]]\nname = \"dave\"\ntoken_file = \"dave.token\"\nprofiles = [\"ranked\"]\n";
    let (_gw, grpc, http) = gateway_with(dir.path(), true, tenants);
    let carol = clients.leaf_named("trainer-carol");
    let stranger = clients.leaf_named("someone-else");

    let batch = |profile: &str| ScoreBatchRequest {
        profile: profile.into(),
        candidates: vec![candidate(0)],
    };
    let mut as_carol = RewardServiceClient::new(
        tls_channel(grpc, &server.pem(), Some(&carol))
            .await
            .unwrap(),
    );
    let rewards = as_carol
        .score_batch(batch("e2e"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rewards.rewards.len(), 1);
    let denied = as_carol.score_batch(batch("ranked")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("carol"), "{}", denied.message());

    let mut as_stranger = RewardServiceClient::new(
        tls_channel(grpc, &server.pem(), Some(&stranger))
            .await
            .unwrap(),
    );
    let refused = as_stranger.score_batch(batch("e2e")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // A token names its tenant whatever the certificate.
    let mut request = tonic::Request::new(batch("ranked"));
    request.metadata_mut().insert(
        "authorization",
        "Bearer dave-token-0123456789".parse().unwrap(),
    );
    assert!(as_stranger.score_batch(request).await.is_ok());

    // The same over HTTP.
    assert_eq!(
        https_get(http, &server.pem(), Some(&carol), "/profiles")
            .await
            .as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        https_get(http, &server.pem(), Some(&stranger), "/profiles")
            .await
            .as_deref(),
        Some("HTTP/1.1 401 Unauthorized")
    );
}

#[test]
fn check_names_a_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(None, "").replace(
        "[gateway]\n",
        "[gateway]\ntls_cert = \"missing.pem\"\ntls_client_ca = \"nope.pem\"\n",
    );
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let mut said = String::from_utf8_lossy(&output.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&output.stderr));
    for key in [
        "gateway.tls_key",
        "gateway.tls_cert: cannot read",
        "gateway.tls_client_ca: cannot read",
    ] {
        assert!(said.contains(key), "{key} not named in:\n{said}");
    }
}

/// A nats-server with JetStream serving TLS only, with `cert.pem` / `key.pem` of `dir`.
struct TlsNats {
    child: std::process::Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl TlsNats {
    async fn start(dir: &Path) -> Self {
        let port = free_port().unwrap();
        let store = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .arg("--tls")
            .arg("--tlscert")
            .arg(dir.join("cert.pem"))
            .arg("--tlskey")
            .arg(dir.join("key.pem"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            port,
            _store: store,
        }
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_talks_to_a_tls_only_nats_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("nats CA");
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    write_pair(dir.path(), &(cert.pem(), key.serialize_pem()));
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let nats = TlsNats::start(dir.path()).await;
    let grpc = free_port().unwrap();
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let write_config = |name: &str, nats_keys: &str| {
        let text = config_text(Some(&url), "")
            .replace(
                "[gateway]\nlisten = \"127.0.0.1:0\"\n",
                &format!("[gateway]\nlisten = \"127.0.0.1:{grpc}\"\n"),
            )
            .replace(
                &format!("url = \"{url}\"\n"),
                &format!("url = \"{url}\"\n{nats_keys}"),
            );
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };

    // Without the CA the server's certificate is not trusted: the gateway does not start.
    let untrusting = write_config("untrusting.toml", "tls_required = true\n");
    let mut refused = std::process::Command::new(binary())
        .args(["gateway", "--config"])
        .arg(&untrusting)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("refused.log")).unwrap())
        .spawn()
        .unwrap();
    let status = support::process::wait_exit(&mut refused, Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "a gateway that cannot trust NATS started"
    );
    let said = std::fs::read_to_string(dir.path().join("refused.log"))
        .unwrap()
        .to_lowercase();
    assert!(
        said.contains("certificate") || said.contains("tls"),
        "the refusal does not say why:\n{said}"
    );

    let config = write_config("fleet.toml", "tls_required = true\ntls_ca = \"ca.pem\"\n");
    let _gateway = Process::start("gateway", &["gateway"], &config, "listening on");
    let _worker = Process::start("worker", &["worker"], &config, "pulling");
    let mut client = rewardfleet_client::connect(&format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let candidates: Vec<_> = (0..24).map(candidate).collect();
    let rewards = rewardfleet_client::score_batch(&mut client, "e2e", candidates)
        .await
        .unwrap();
    for (i, r) in rewards.iter().enumerate() {
        assert_eq!(r.value, expected(i), "{r:?}");
    }
}

#[tokio::test]
async fn a_judge_trusts_its_ca_file_and_a_bad_one_is_named() {
    use rewardfleet_core::config::JudgeConfig;
    use rewardfleet_judge::{JudgeCache, JudgeSet};
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, Ca::new("judge CA").pem()).unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let judge = |ca: &Path| JudgeConfig {
        name: "j".into(),
        base_url: "https://judge.internal/v1".into(),
        model: "m".into(),
        ca_file: Some(ca.to_owned()),
        ..Default::default()
    };
    assert!(JudgeSet::new(&[judge(&good)], Default::default(), JudgeCache::None).is_ok());
    for file in [bad, dir.path().join("missing.pem")] {
        let Err(e) = JudgeSet::new(&[judge(&file)], Default::default(), JudgeCache::None) else {
            panic!("{} was accepted", file.display());
        };
        assert!(e.to_string().contains("ca_file"), "{e}");
    }
}
