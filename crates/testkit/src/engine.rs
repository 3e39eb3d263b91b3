//! A second Docker engine (dockerd in a container, over TCP, optionally with TLS and
//! certificates made here), for tests of several Docker hosts and of an engine restart.

#[allow(unused_imports)]
use super::*;

/// A second Docker engine of the test's own: its own `dockerd` with its own socket, data root,
/// exec root, containerd namespace and bridge interface (no NAT: its containers reach
/// nothing outside), and the images it is given copied from the main engine. It can be
/// restarted; it is stopped, and its folder and bridge removed, on drop.
///
/// Never `--bridge none`: a `dockerd` started so deletes the host's `docker0`, the main
/// engine's bridge.
pub struct SecondEngine {
    /// Its unix socket (plain, for the test's own `docker` commands).
    pub host: String,
    /// With [`SecondEngine::start_tls`]: its `tcp://127.0.0.1:PORT` endpoint, which takes
    /// only clients with a certificate of the test's CA, and the folder of the client's
    /// files (`ca.pem`, `cert.pem`, `key.pem`, the docker CLI's layout).
    pub tls: Option<(String, std::path::PathBuf)>,
    dir: tempfile::TempDir,
    bridge: String,
    child: std::process::Child,
}

impl SecondEngine {
    pub fn start(images: &[&str]) -> SecondEngine {
        SecondEngine::start_with(images, false)
    }

    /// A second engine that also listens on TCP with TLS, verifying its clients
    /// (`dockerd --tlsverify`), with certificates of a CA the test makes (openssl).
    pub fn start_tls(images: &[&str]) -> SecondEngine {
        SecondEngine::start_with(images, true)
    }

    fn start_with(images: &[&str], tls: bool) -> SecondEngine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let tls = tls.then(|| make_certificates(dir.path()));
        // A bridge of its own, on a 10.213.N.0/24 no interface uses yet.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let bridge = format!(
            "stv{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let addresses = std::process::Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .expect("these tests need iproute2 (`ip`)");
        let addresses = String::from_utf8_lossy(&addresses.stdout).into_owned();
        let subnet = (100..250)
            .find(|n| !addresses.contains(&format!("10.213.{n}.")))
            .expect("no free 10.213.N.0/24 for the second engine's bridge");
        let ip = |args: &[&str]| {
            let output = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("these tests need iproute2 (`ip`)");
            assert!(
                output.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &bridge])
            .output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        std::fs::write(dir.path().join("bridge"), &bridge).unwrap();
        let child = SecondEngine::spawn(dir.path());
        let engine = SecondEngine {
            host: format!("unix://{}/docker.sock", dir.path().display()),
            tls,
            dir,
            bridge,
            child,
        };
        engine.wait_ready();
        for image in images {
            let save = std::process::Command::new("docker")
                .args(["save", image])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("docker save");
            let load = std::process::Command::new("docker")
                .args(["-H", &engine.host, "load", "-q"])
                .stdin(save.stdout.unwrap())
                .output()
                .expect("docker load");
            assert!(
                load.status.success(),
                "cannot copy {image} to the second engine: {}",
                String::from_utf8_lossy(&load.stderr)
            );
        }
        engine
    }

    fn spawn(dir: &std::path::Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        // containerd namespaces are letters, digits and single separators.
        let namespace: String = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let namespace = format!("stevedoretest{}", namespace.to_lowercase());
        std::process::Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--host")
            .arg(format!("unix://{}/docker.sock", dir.display()))
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--bridge")
            .arg(std::fs::read_to_string(dir.join("bridge")).unwrap())
            .args(["--iptables=false", "--ip-masq=false"])
            .args(tls_args(dir))
            .args(["--containerd-namespace", &namespace])
            .args([
                "--containerd-plugins-namespace",
                &format!("{namespace}-plugins"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("these tests start a second Docker engine: dockerd must be installed")
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let info = std::process::Command::new("docker")
                .args([
                    "-H",
                    &self.host,
                    "version",
                    "--format",
                    "{{.Server.Version}}",
                ])
                .output()
                .unwrap();
            if info.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second engine did not start: {}",
                std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Stops the engine (SIGTERM: its containers are stopped, as on a host reboot or an
    /// engine upgrade), waits for it to exit, and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.child = SecondEngine::spawn(self.dir.path());
        self.wait_ready();
    }

    /// Stops the engine and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// The host goes away at once (a crashed machine): its `dockerd`, containerd and shims
    /// are killed.
    pub fn crash(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-9", "-f", &self.dir.path().display().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// `docker -H <this engine> ARGS`.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .output()
            .expect("docker")
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in
/// `dir/tls`; the TCP port the engine listens on with them goes to `dir/tls/port`. Returns
/// the engine's TLS endpoint and the folder of the client's files.
pub fn make_certificates(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    make_certificates_for(dir, "IP:127.0.0.1");
    let tls = dir.join("tls");
    let client = tls.join("client");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(tls.join("port"), port.to_string()).unwrap();
    (format!("tcp://127.0.0.1:{port}"), client)
}

/// A CA (`dir/tls/ca.pem`), a server certificate for `subject_alt_name` (`IP:127.0.0.1`,
/// `DNS:server.global.nomad`; `server-cert.pem`, `server-key.pem`) and a client
/// certificate (`dir/tls/client/{ca,cert,key}.pem`), made with openssl.
pub fn make_certificates_for(dir: &std::path::Path, subject_alt_name: &str) {
    let tls = dir.join("tls");
    let client = tls.join("client");
    std::fs::create_dir_all(&client).unwrap();
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .current_dir(&tls)
            .args(args)
            .output()
            .expect("the TLS tests need openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=stevedore test CA",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        tls.join("server.ext"),
        format!("subjectAltName = {subject_alt_name}\nextendedKeyUsage = serverAuth\n"),
    )
    .unwrap();
    std::fs::write(tls.join("client.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
    for (name, subject) in [
        ("server", "/CN=stevedore test server"),
        ("client", "/CN=stevedore"),
    ] {
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}-key.pem"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    subject,
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}-cert.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    std::fs::copy(tls.join("ca.pem"), client.join("ca.pem")).unwrap();
    std::fs::copy(tls.join("client-cert.pem"), client.join("cert.pem")).unwrap();
    std::fs::copy(tls.join("client-key.pem"), client.join("key.pem")).unwrap();
}

/// The `dockerd` arguments of an engine made with TLS (none otherwise).
pub(super) fn tls_args(dir: &std::path::Path) -> Vec<String> {
    let tls = dir.join("tls");
    let Ok(port) = std::fs::read_to_string(tls.join("port")) else {
        return Vec::new();
    };
    let file = |name: &str| tls.join(name).display().to_string();
    vec![
        "--tlsverify".to_owned(),
        "--tlscacert".to_owned(),
        file("ca.pem"),
        "--tlscert".to_owned(),
        file("server-cert.pem"),
        "--tlskey".to_owned(),
        file("server-key.pem"),
        "--host".to_owned(),
        format!("tcp://127.0.0.1:{port}"),
    ]
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if let Ok(listed) = std::process::Command::new("docker")
            .args(["-H", &self.host, "ps", "-aq"])
            .output()
        {
            for id in String::from_utf8_lossy(&listed.stdout).lines() {
                let _ = std::process::Command::new("docker")
                    .args(["-H", &self.host, "rm", "-f", id])
                    .output();
            }
        }
        self.stop();
        // Layers may be mounted under the data root while the engine stops: unmount them
        // before the folder goes.
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
