//! What listens: a catalogue of services by the program that holds the socket and by port.
//! The program is asked first, since a MySQL moved to 13306 is still MySQL; the port is the
//! fallback when the owner cannot be seen (not root, a sandbox) or is not in the catalogue.
//! doctor rates listeners with it; the lockout check (`safety.rs`) finds SSH with it.

use std::ops::RangeInclusive;

use serde::Serialize;

use crate::{policy::Proto, sockets::Owner};

/// What kind of service it is, for the rating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Ordinary: named in the report, not risky by itself.
    Ordinary,
    /// Remote login (SSH): a policy that closes it locks administrators out.
    RemoteLogin,
    /// Never meant to face an untrusted network.
    Risky,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    pub kind: Kind,
    /// One line: what to do about it when it is exposed.
    pub remedy: &'static str,
}

/// How a listener was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recognised {
    /// By the program holding the socket.
    Program,
    /// By the port number alone.
    Port,
}

const fn risky(name: &'static str, remedy: &'static str) -> Service {
    Service { name, kind: Kind::Risky, remedy }
}

const fn ordinary(name: &'static str) -> Service {
    Service { name, kind: Kind::Ordinary, remedy: "" }
}

const SSH: Service = Service {
    name: "SSH",
    kind: Kind::RemoteLogin,
    remedy: "allow it `from` your admin networks; a policy that closes it locks remote administrators out",
};
const TELNET: Service = risky("telnet", "stop telnetd and use SSH");
const FTP: Service =
    risky("FTP", "use SFTP; if FTP must stay, allow it only `from` the networks that need it");
const SMB: Service = risky("SMB", "never expose SMB to untrusted networks");
const RDP: Service = risky("RDP", "reach RDP through a VPN, never directly");
const VNC: Service = risky("VNC", "tunnel VNC over SSH");
const MYSQL: Service =
    risky("MySQL", "bind MySQL to 127.0.0.1 (bind-address) or allow it only `from` app servers");
const POSTGRES: Service =
    risky("PostgreSQL", "set listen_addresses to localhost or allow it only `from` app servers");
const MSSQL: Service = risky("MS SQL Server", "bind the database to localhost or a private network");
const MONGO: Service = risky("MongoDB", "bind MongoDB to localhost (bindIp) and enable authentication");
const REDIS: Service = risky("Redis", "bind Redis to 127.0.0.1 and set requirepass");
const MEMCACHED: Service = risky("memcached", "bind memcached to 127.0.0.1 (-l)");
const ELASTIC: Service = risky("Elasticsearch", "bind Elasticsearch to localhost (network.host)");
const OPENSEARCH: Service = risky("OpenSearch", "bind OpenSearch to localhost (network.host)");
const COUCHDB: Service = risky("CouchDB", "bind CouchDB to localhost");
const KAFKA: Service = risky("Kafka", "bind Kafka listeners to private addresses");
const ZOOKEEPER: Service = risky("ZooKeeper", "bind ZooKeeper to private addresses");
const CASSANDRA: Service =
    risky("Cassandra", "bind Cassandra to private addresses and enable authentication");
const DOCKER: Service =
    risky("Docker API", "never expose the Docker API without TLS client certificates; bind it to a socket");
const ETCD: Service = risky("etcd", "bind etcd to private addresses and require client certificates");
const KUBELET: Service =
    risky("kubelet API", "allow the kubelet port only `from` the control plane; disable anonymous auth");
const KUBE_API: Service = risky(
    "Kubernetes API",
    "allow the API server only `from` admin and node networks, or put it behind a VPN",
);
const RPCBIND: Service = risky("rpcbind", "stop rpcbind unless NFS needs it, and never expose it");
const SNMP: Service = risky("SNMP", "allow SNMP only `from` the monitoring network");
const INDUSTRIAL: &str = "industrial protocols have no authentication: allow it only `from` the control network, or reach it through a VPN";
const MODBUS: Service = risky("Modbus/TCP", INDUSTRIAL);
const S7: Service = risky("Siemens S7 (ISO-TSAP)", INDUSTRIAL);
const OPC_UA: Service = risky("OPC UA", INDUSTRIAL);
const DNP3: Service = risky("DNP3", INDUSTRIAL);
const ENIP: Service = risky("EtherNet/IP", INDUSTRIAL);
const BACNET: Service = risky("BACnet", INDUSTRIAL);

/// Programs, by the name they run under (`comm`, or the executable's file name).
const PROGRAMS: &[(&str, Service)] = &[
    ("sshd", SSH),
    ("dropbear", SSH),
    ("telnetd", TELNET),
    ("in.telnetd", TELNET),
    ("utelnetd", TELNET),
    (
        "inetd",
        risky("inetd", "stop inetd, or remove the services it offers (telnet, ...) from its configuration"),
    ),
    ("xinetd", risky("xinetd", "stop xinetd, or disable the services it offers (telnet, ...)")),
    ("vsftpd", FTP),
    ("proftpd", FTP),
    ("pure-ftpd", FTP),
    ("smbd", SMB),
    ("nmbd", risky("NetBIOS", "do not expose NetBIOS")),
    ("xrdp", RDP),
    ("Xvnc", VNC),
    ("x11vnc", VNC),
    ("Xtigervnc", VNC),
    ("vncserver", VNC),
    ("wayvnc", VNC),
    ("mysqld", MYSQL),
    ("mariadbd", MYSQL),
    ("postgres", POSTGRES),
    ("postmaster", POSTGRES),
    ("sqlservr", MSSQL),
    ("mongod", MONGO),
    ("mongos", MONGO),
    ("redis-server", REDIS),
    ("valkey-server", REDIS),
    ("keydb-server", REDIS),
    ("memcached", MEMCACHED),
    ("dockerd", DOCKER),
    ("etcd", ETCD),
    ("kubelet", KUBELET),
    ("kube-apiserver", KUBE_API),
    ("rpcbind", RPCBIND),
    ("snmpd", SNMP),
];

/// Services inside a runtime (`java`, `beam.smp`), told apart by their command line.
const RUNTIMES: &[(&[&str], &str, Service)] = &[
    (&["java"], "org.elasticsearch", ELASTIC),
    (&["java"], "elasticsearch", ELASTIC),
    (&["java"], "org.opensearch", OPENSEARCH),
    (&["java"], "kafka.Kafka", KAFKA),
    (&["java"], "org.apache.zookeeper", ZOOKEEPER),
    (&["java"], "org.apache.cassandra", CASSANDRA),
    (&["beam.smp"], "couchdb", COUCHDB),
];

/// Ports: (protocol, ports, service).
const PORTS: &[(Proto, RangeInclusive<u16>, Service)] = &[
    (Proto::Tcp, 21..=21, FTP),
    (Proto::Tcp, 22..=22, SSH),
    (Proto::Tcp, 23..=23, TELNET),
    (Proto::Tcp, 102..=102, S7),
    (Proto::Tcp, 111..=111, RPCBIND),
    (Proto::Tcp, 135..=135, risky("MS RPC", "do not expose RPC endpoints")),
    (Proto::Tcp, 139..=139, risky("NetBIOS", "do not expose NetBIOS")),
    (Proto::Tcp, 445..=445, SMB),
    (Proto::Tcp, 502..=502, MODBUS),
    (Proto::Tcp, 1433..=1433, MSSQL),
    (
        Proto::Tcp,
        2375..=2375,
        risky("Docker API (plain)", "never expose the Docker API without TLS; bind it to a socket"),
    ),
    (Proto::Tcp, 2379..=2380, ETCD),
    (Proto::Tcp, 3306..=3306, MYSQL),
    (Proto::Tcp, 3389..=3389, RDP),
    (Proto::Tcp, 4840..=4840, OPC_UA),
    (Proto::Tcp, 5432..=5432, POSTGRES),
    (Proto::Tcp, 5900..=5900, VNC),
    (Proto::Tcp, 5984..=5984, COUCHDB),
    (Proto::Tcp, 6379..=6379, REDIS),
    (Proto::Tcp, 6443..=6443, KUBE_API),
    (Proto::Tcp, 9092..=9092, KAFKA),
    (Proto::Tcp, 9200..=9200, ELASTIC),
    (Proto::Tcp, 10250..=10250, KUBELET),
    (Proto::Tcp, 11211..=11211, MEMCACHED),
    (Proto::Tcp, 20000..=20000, DNP3),
    (Proto::Tcp, 27017..=27017, MONGO),
    (Proto::Tcp, 44818..=44818, ENIP),
    (Proto::Udp, 161..=161, SNMP),
    (Proto::Udp, 1900..=1900, risky("SSDP (amplification)", "disable UPnP/SSDP on servers")),
    (Proto::Udp, 11211..=11211, risky("memcached (UDP, amplification)", "disable memcached UDP (-U 0)")),
    (Proto::Udp, 20000..=20000, DNP3),
    (Proto::Udp, 44818..=44818, ENIP),
    (Proto::Udp, 47808..=47808, BACNET),
    (Proto::Tcp, 25..=25, ordinary("SMTP")),
    (Proto::Udp, 53..=53, ordinary("DNS")),
    (Proto::Tcp, 53..=53, ordinary("DNS")),
    (Proto::Tcp, 80..=80, ordinary("HTTP")),
    (Proto::Udp, 123..=123, ordinary("NTP")),
    (Proto::Tcp, 443..=443, ordinary("HTTPS")),
    (Proto::Tcp, 8080..=8080, ordinary("HTTP (alt)")),
];

/// The service on `port`, by port number alone.
pub fn by_port(proto: Proto, port: u16) -> Option<Service> {
    PORTS.iter().find(|(p, ports, _)| *p == proto && ports.contains(&port)).map(|(_, _, s)| *s)
}

/// The service a program is, by its name or, for a runtime such as `java`, its command line.
pub fn by_program(owner: &Owner) -> Option<Service> {
    let names = [Some(owner.comm.as_str()), owner.exe.as_deref()];
    let named = |wanted: &str| names.iter().flatten().any(|name| *name == wanted);
    if let Some((_, service)) = PROGRAMS.iter().find(|(name, _)| named(name)) {
        return Some(*service);
    }
    RUNTIMES
        .iter()
        .find(|(runtimes, marker, _)| {
            runtimes.iter().any(|r| named(r)) && owner.cmdline.iter().any(|arg| arg.contains(marker))
        })
        .map(|(_, _, service)| *service)
}

/// What listens on `proto`/`port`, held by `owner` (when known): the program first, then the
/// port.
pub fn identify(proto: Proto, port: u16, owner: Option<&Owner>) -> Option<(Service, Recognised)> {
    owner
        .and_then(by_program)
        .map(|service| (service, Recognised::Program))
        .or_else(|| by_port(proto, port).map(|service| (service, Recognised::Port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(comm: &str, exe: Option<&str>, cmdline: &[&str]) -> Owner {
        Owner {
            pid: 1,
            comm: comm.into(),
            exe: exe.map(Into::into),
            cmdline: cmdline.iter().map(|s| (*s).to_string()).collect(),
        }
    }

    #[test]
    fn programs_are_known_on_any_port() {
        let redis = owner("redis-server", Some("redis-server"), &["redis-server *:16379"]);
        assert_eq!(identify(Proto::Tcp, 16379, Some(&redis)), Some((REDIS, Recognised::Program)));
        // comm is cut at 15 bytes; the executable's name still tells.
        let mysql = owner("mysqld", None, &[]);
        assert_eq!(identify(Proto::Tcp, 13306, Some(&mysql)).unwrap().0.name, "MySQL");
        let maria = owner("mariadbd", Some("mariadbd"), &[]);
        assert_eq!(identify(Proto::Tcp, 3307, Some(&maria)).unwrap().0.name, "MySQL");
        let sshd = owner("sshd", Some("sshd"), &["sshd: /usr/sbin/sshd -D [listener]"]);
        assert_eq!(identify(Proto::Tcp, 2222, Some(&sshd)).unwrap().0.kind, Kind::RemoteLogin);
        // A runtime is told apart by its command line.
        let elastic = owner(
            "java",
            Some("java"),
            &["/usr/bin/java", "-cp", "x", "org.elasticsearch.bootstrap.Elasticsearch"],
        );
        assert_eq!(identify(Proto::Tcp, 19200, Some(&elastic)).unwrap().0.name, "Elasticsearch");
        let kafka = owner("java", Some("java"), &["java", "kafka.Kafka", "server.properties"]);
        assert_eq!(identify(Proto::Tcp, 19092, Some(&kafka)).unwrap().0.name, "Kafka");
        let other_java = owner("java", Some("java"), &["java", "-jar", "app.jar"]);
        assert_eq!(identify(Proto::Tcp, 8443, Some(&other_java)), None);
        // An unknown program on a known port: the port tells.
        let python = owner("python3", Some("python3.11"), &["python3", "-m", "http.server"]);
        assert_eq!(identify(Proto::Tcp, 3306, Some(&python)), Some((MYSQL, Recognised::Port)));
        assert_eq!(identify(Proto::Tcp, 3306, None), Some((MYSQL, Recognised::Port)));
    }

    #[test]
    fn industrial_and_cluster_ports_are_in_the_catalogue() {
        for (proto, port, name) in [
            (Proto::Tcp, 502, "Modbus/TCP"),
            (Proto::Tcp, 102, "Siemens S7 (ISO-TSAP)"),
            (Proto::Tcp, 4840, "OPC UA"),
            (Proto::Tcp, 20000, "DNP3"),
            (Proto::Tcp, 44818, "EtherNet/IP"),
            (Proto::Udp, 47808, "BACnet"),
            (Proto::Tcp, 10250, "kubelet API"),
            (Proto::Tcp, 2379, "etcd"),
            (Proto::Tcp, 2380, "etcd"),
            (Proto::Tcp, 6443, "Kubernetes API"),
        ] {
            let service = by_port(proto, port).unwrap_or_else(|| panic!("{proto}/{port}"));
            assert_eq!((service.name, service.kind), (name, Kind::Risky), "{proto}/{port}");
            assert!(!service.remedy.is_empty());
        }
        assert_eq!(by_port(Proto::Udp, 502), None, "Modbus is TCP");
        assert_eq!(by_port(Proto::Tcp, 22).unwrap().kind, Kind::RemoteLogin);
        assert_eq!(by_port(Proto::Tcp, 80).unwrap().kind, Kind::Ordinary);
    }
}
