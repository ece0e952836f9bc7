//! The network facts of the namespace a command runs in, read from the kernel over rtnetlink:
//! each interface's addresses and prefixes, and the default routes' gateways. The safety checks
//! (`safety.rs`) compare blocklists and sessions against them. Run with `--netns`, the command
//! (and so this socket) is in the attached interface's namespace.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// An address configured on an interface, with its prefix (`192.0.2.2/24` on `eth0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub iface: String,
    pub address: IpAddr,
    /// The on-link network the address belongs to (`192.0.2.0/24`).
    pub network: IpNet,
}

/// A default route's next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub iface: String,
    pub address: IpAddr,
}

/// What the namespace's interfaces hold. Loopback is left out: it never carries a packet
/// portguard judges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNetworks {
    pub addresses: Vec<InterfaceAddress>,
    pub gateways: Vec<Gateway>,
}

impl HostNetworks {
    /// Reads them from the kernel, for the network namespace of the calling thread.
    pub fn read() -> Result<Self> {
        let names = interface_names();
        let name = |index: u32| names.iter().find(|(i, _)| *i == index).map(|(_, n)| n.clone());
        let mut networks = Self::default();
        for message in dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
            let RouteNetlinkMessage::NewAddress(address) = message else { continue };
            let Some(iface) = name(address.header.index) else { continue };
            // IFA_LOCAL is the address itself on point-to-point links; IFA_ADDRESS the peer there.
            let local = address.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let any = address.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let Some(ip) = local.or(any) else { continue };
            if ip.is_loopback() {
                continue;
            }
            let Ok(network) = IpNet::new(ip, address.header.prefix_len) else { continue };
            networks.addresses.push(InterfaceAddress { iface, address: ip, network: network.trunc() });
        }
        for message in dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))? {
            let RouteNetlinkMessage::NewRoute(route) = message else { continue };
            if route.header.destination_prefix_length != 0 || route.header.kind != RouteType::Unicast {
                continue;
            }
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            if let (Some(gateway), Some(oif)) = (gateway_of(&route.attributes), oif) {
                if let Some(iface) = name(oif) {
                    networks.gateways.push(Gateway { iface, address: gateway });
                }
            }
            // A multipath default route: one gateway per next hop.
            for hops in route.attributes.iter().filter_map(|a| match a {
                RouteAttribute::MultiPath(hops) => Some(hops),
                _ => None,
            }) {
                for hop in hops {
                    if let (Some(gateway), Some(iface)) =
                        (gateway_of(&hop.attributes), name(hop.interface_index))
                    {
                        networks.gateways.push(Gateway { iface, address: gateway });
                    }
                }
            }
        }
        networks.gateways.dedup();
        Ok(networks)
    }

    /// The addresses of `iface` (its networks are the on-link networks of that interface).
    pub fn of<'a>(&'a self, iface: &'a str) -> impl Iterator<Item = &'a InterfaceAddress> {
        self.addresses.iter().filter(move |a| a.iface == iface)
    }

    pub fn gateways_of<'a>(&'a self, iface: &'a str) -> impl Iterator<Item = &'a Gateway> {
        self.gateways.iter().filter(move |g| g.iface == iface)
    }

    /// Whether `address` is one of this namespace's own.
    pub fn is_own(&self, address: IpAddr) -> bool {
        self.addresses.iter().any(|a| a.address == address)
    }
}

fn gateway_of(attributes: &[RouteAttribute]) -> Option<IpAddr> {
    attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

fn interface_names() -> Vec<(u32, String)> {
    nix::net::if_::if_nameindex()
        .map(|list| list.iter().map(|i| (i.index(), i.name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default()
}

/// Messages a dump request answers with, up to the kernel's "done".
fn dump(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    // Far more than any host has addresses and routes: a bound on a reply that never ends.
    const MAX_MESSAGES: usize = 1_000_000;
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
    socket.bind_auto().context("binding a netlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("connecting a netlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0).context("asking the kernel over netlink")?;
    let mut messages = Vec::new();
    let mut buffer = Vec::with_capacity(1 << 16);
    while messages.len() < MAX_MESSAGES {
        buffer.clear();
        let size = socket.recv(&mut buffer, 0).context("reading the kernel's netlink answer")?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..size])
                .context("decoding the kernel's netlink answer")?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(messages),
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    bail!("the kernel refused a netlink dump: {error}")
                }
                NetlinkPayload::InnerMessage(inner) => messages.push(inner),
                _ => {}
            }
            if length == 0 {
                break;
            }
            // Messages are 4-byte aligned in the datagram.
            offset += (length + 3) & !3;
        }
    }
    bail!("the kernel's netlink answer did not end after {MAX_MESSAGES} messages")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_namespaces_addresses_over_netlink() {
        let networks = HostNetworks::read().unwrap();
        for address in &networks.addresses {
            assert!(!address.address.is_loopback(), "{address:?}");
            assert!(address.network.contains(&address.address), "{address:?}");
            assert_eq!(address.network, address.network.trunc(), "{address:?}");
        }
        assert!(networks.is_own(networks.addresses[0].address) || networks.addresses.is_empty());
    }
}
