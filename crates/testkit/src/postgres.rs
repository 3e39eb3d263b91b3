//! A throwaway PostgreSQL server (Debian's package) on 127.0.0.1 for one test: started,
//! restarted, queried with psql, removed. The store's contract suite, the chaos tests and
//! the warehouse of the end-to-end tests all use this one.

#[allow(unused_imports)]
use super::*;

/// A real PostgreSQL server (Debian's package) in a temporary folder. It listens on
/// 127.0.0.1, and with [`Postgres::start`] also on the Docker bridge's gateway address, so
/// containers reach it at [`Postgres::container_host`]. Stopped on drop.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    /// As root, the server runs as the postgres user (it refuses to run as root).
    as_postgres: bool,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// A server containers can reach too (as a warehouse, or a store for a scheduler in a
    /// container).
    pub fn start() -> Postgres {
        Postgres::start_on(true)
    }

    /// A server on 127.0.0.1 alone; needs no Docker engine.
    pub fn start_local() -> Postgres {
        Postgres::start_on(false)
    }

    fn start_on(for_containers: bool) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("these tests need PostgreSQL (scripts/setup.sh installs Debian's postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").is_file())
            .max()
            .expect("no PostgreSQL server binaries under /usr/lib/postgresql");
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            // The server refuses to run as root: the folder belongs to the postgres user.
            let chown = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Postgres {
            port,
            bin,
            as_postgres,
            dir,
        };
        let data = server.dir.path().join("data");
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let mut listen = "127.0.0.1".to_owned();
        if for_containers {
            let gateway = docker_gateway();
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .unwrap();
            use std::io::Write;
            writeln!(hba, "host all all {gateway}/16 trust").unwrap();
            // The bridges of the tests' second engines (`SecondEngine`: 10.213.N.0/24).
            writeln!(hba, "host all all 10.213.0.0/16 trust").unwrap();
            listen.push(',');
            listen.push_str(&gateway);
        }
        let options = format!(
            "-p {port} -k {} -c listen_addresses={listen} -c fsync=off",
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log");
        server.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        server
    }

    /// The URL a store opens it with.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> std::process::Command {
        if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(program));
            command
        } else {
            std::process::Command::new(self.bin.join(program))
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .expect("run a PostgreSQL program");
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Restarts the server (a fast shutdown, as a package upgrade or a failover would):
    /// every open connection is cut.
    pub fn restart(&self) {
        let data = self.dir.path().join("data");
        // With its log in a file: a server writing to pg_ctl's output would keep the pipe
        // open, and this call would never return.
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        );
    }

    /// The address containers use to reach the server.
    pub fn container_host(&self) -> String {
        docker_gateway()
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn query(&self, sql: &str) -> String {
        let output = std::process::Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}
