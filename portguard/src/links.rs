//! What the kernel says about an attachment's pinned links: the program each one runs and the
//! interface it is attached to. A pinned link outlives its interface: when the interface is
//! deleted the kernel detaches the link (its ifindex becomes 0) but the pin stays, so a pin
//! alone never proves that anything is protected. The `sock_ops` link of the connection caps
//! hangs on the cgroup v2 root instead; it is checked apart (`sock_ops`), since ports are
//! judged without it.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::paths;

/// The two hooks of an attachment, each held by one pinned link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcEgress,
}

impl Hook {
    /// In the order they are attached (and switched).
    pub const BOTH: [Self; 2] = [Self::Xdp, Self::TcEgress];

    pub fn pin_name(self) -> &'static str {
        match self {
            Self::Xdp => paths::XDP_LINK,
            Self::TcEgress => paths::TC_EGRESS_LINK,
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Self::Xdp => "XDP ingress",
            Self::TcEgress => "TC egress",
        }
    }
}

/// The kernel's ids of one generation's programs, recorded with it: comparing them with what
/// the pinned links run tells which generation really runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramIds {
    pub xdp: u32,
    pub tc: u32,
}

/// One pinned link, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub program_id: u32,
    /// `None` once the interface it was attached to is gone.
    pub ifindex: Option<u32>,
}

/// The link pinned at `path`; `None` if nothing is pinned there.
pub fn pinned(path: &Path) -> Result<Option<LinkState>> {
    // The link's fdinfo names its program and interface (`ifindex: 0` once detached).
    let Some(info) = pinned_fdinfo(path)? else { return Ok(None) };
    parse_fdinfo(&info).map(Some).with_context(|| format!("{} is not a link", path.display()))
}

/// What the kernel says about the object pinned at `path` (its fdinfo); `None` if nothing is
/// pinned there.
fn pinned_fdinfo(path: &Path) -> Result<Option<String>> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("opening {}", path.display())),
    };
    std::fs::read_to_string(paths::fdinfo(fd.as_raw_fd()))
        .map(Some)
        .with_context(|| format!("reading what the kernel says about {}", path.display()))
}

/// A numeric `name:` line of an fdinfo.
fn fdinfo_field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<T>().ok())
}

fn parse_fdinfo(info: &str) -> Result<LinkState> {
    let field = |name: &str| fdinfo_field::<u32>(info, name);
    let (Some(program_id), Some(ifindex)) = (field("prog_id:"), field("ifindex:")) else {
        bail!("no program or interface in its fdinfo");
    };
    Ok(LinkState { program_id, ifindex: (ifindex != 0).then_some(ifindex) })
}

/// The `sock_ops` link of an attachment whose policy caps connections (`conns`), as the
/// kernel reports it: it hangs on a cgroup, not on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkState {
    pub program_id: u32,
    /// `None` once the link was detached from its cgroup (`bpftool link detach`).
    pub cgroup_id: Option<u64>,
}

/// The `sock_ops` link pinned for `iface`; `None` if none is pinned.
pub fn sock_ops(iface: &str) -> Result<Option<CgroupLinkState>> {
    let path = paths::link_pin(iface, crate::conns::SOCK_OPS_LINK);
    let Some(info) = pinned_fdinfo(&path)? else { return Ok(None) };
    parse_cgroup_fdinfo(&info).map(Some).with_context(|| format!("{} is not a cgroup link", path.display()))
}

fn parse_cgroup_fdinfo(info: &str) -> Result<CgroupLinkState> {
    let field = |name: &str| fdinfo_field::<u64>(info, name);
    let (Some(program_id), Some(cgroup_id)) = (field("prog_id:"), field("cgroup_id:")) else {
        bail!("no program or cgroup in its fdinfo");
    };
    Ok(CgroupLinkState {
        program_id: u32::try_from(program_id).context("a program id beyond 32 bits")?,
        cgroup_id: (cgroup_id != 0).then_some(cgroup_id),
    })
}

/// Why the connection caps of an attachment are not enforced; `None` when they are, or when
/// its policy caps nothing and nothing counts. `capped`: the running policy has a
/// `connections_per_source`; `link`: its `sock_ops` link (`sock_ops`).
pub fn connection_caps_problem(capped: bool, link: Option<CgroupLinkState>) -> Option<String> {
    match (capped, link) {
        (true, None) => Some(
            "the policy caps connections (connections_per_source) but no sock_ops link is pinned: open connections are not counted and no cap is enforced"
                .into(),
        ),
        (true, Some(CgroupLinkState { cgroup_id: None, .. })) => Some(
            "the policy caps connections (connections_per_source) but its sock_ops link was detached from the cgroup: open connections are not counted and no cap is enforced"
                .into(),
        ),
        (false, Some(CgroupLinkState { cgroup_id: Some(_), .. })) => Some(
            "a sock_ops link still counts connections although the policy caps none (nothing releases the counts)"
                .into(),
        ),
        _ => None,
    }
}

/// `BPF_OBJ_GET`: aya 0.14 opens pins but keeps the descriptor private, and the link info it
/// returns leaves out the interface.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    /// The `BPF_OBJ_*` member of `union bpf_attr`.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: the kernel reads `attr` (and the NUL-terminated path it points to, alive until
    // the call returns) and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &raw const attr, size_of::<ObjAttr>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An attachment's links and its interface, looked at together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub xdp: Option<LinkState>,
    pub tc: Option<LinkState>,
    /// The interface's index now (in this network namespace); `None` if there is none.
    pub ifindex_now: Option<u32>,
}

impl Inspection {
    pub fn of(iface: &str) -> Result<Self> {
        Ok(Self {
            xdp: pinned(&paths::link_pin(iface, Hook::Xdp.pin_name()))?,
            tc: pinned(&paths::link_pin(iface, Hook::TcEgress.pin_name()))?,
            ifindex_now: nix::net::if_::if_nametoindex(iface).ok(),
        })
    }

    pub fn link(&self, hook: Hook) -> Option<LinkState> {
        match hook {
            Hook::Xdp => self.xdp,
            Hook::TcEgress => self.tc,
        }
    }

    /// Whether the pinned links run exactly the programs `ids` names.
    pub fn runs(&self, ids: Option<ProgramIds>) -> bool {
        ids.is_some_and(|ids| {
            self.xdp.map(|l| l.program_id) == Some(ids.xdp) && self.tc.map(|l| l.program_id) == Some(ids.tc)
        })
    }

    /// Whether `link` runs on the interface that has the attachment's name now.
    pub fn on_interface(&self, link: Option<LinkState>) -> bool {
        link.is_some_and(|link| link.ifindex.is_some() && link.ifindex == self.ifindex_now)
    }

    /// Whether both programs run on the interface called `iface` now.
    pub fn enforcing(&self) -> bool {
        self.on_interface(self.xdp) && self.on_interface(self.tc)
    }

    /// Whether any link is pinned at all.
    pub fn any_link(&self) -> bool {
        self.xdp.is_some() || self.tc.is_some()
    }

    /// Why `iface` is not protected as its pins suggest; `None` when both programs run on it.
    pub fn problem(&self, iface: &str) -> Option<String> {
        if self.enforcing() {
            return None;
        }
        let on_it = |link: Option<LinkState>| self.on_interface(link);
        Some(match (self.xdp, self.tc, self.ifindex_now) {
            (None, None, _) => "no program is attached (only left-behind pins)".to_string(),
            (_, _, None) => format!("{iface} no longer exists: the programs were detached with it"),
            _ if !on_it(self.xdp) && !on_it(self.tc) => {
                let was = [self.xdp, self.tc].into_iter().flatten().find_map(|l| l.ifindex);
                let now = self.ifindex_now.unwrap_or(0);
                match was {
                    None => format!(
                        "{iface} was deleted and created again (now ifindex {now}): the programs went with \
                         the old one and nothing protects the new one"
                    ),
                    Some(was) => format!(
                        "the programs run on ifindex {was}, but {iface} is ifindex {now} (renamed or moved?)"
                    ),
                }
            }
            (_, None, _) => {
                "half attached: the TC egress link is missing (outbound flows are not learnt)".into()
            }
            (None, _, _) => {
                "half attached: the XDP ingress link is missing (inbound traffic is not judged)".into()
            }
            _ if !on_it(self.xdp) => "half attached: the XDP ingress link is not on this interface".into(),
            _ => "half attached: the TC egress link is not on this interface".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XDP_INFO: &str = "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t1057\nlink_type:\txdp\n\
                            link_id:\t12\nprog_tag:\t3b185187f1855c4c\nprog_id:\t34\nifindex:\t5\n";

    #[test]
    fn fdinfo_names_program_and_interface() {
        assert_eq!(parse_fdinfo(XDP_INFO).unwrap(), LinkState { program_id: 34, ifindex: Some(5) });
        let detached = XDP_INFO.replace("ifindex:\t5", "ifindex:\t0");
        assert_eq!(parse_fdinfo(&detached).unwrap(), LinkState { program_id: 34, ifindex: None });
        let tcx = "link_type:\ttcx\nlink_id:\t3\nprog_tag:\tab\nprog_id:\t9\nifindex:\t7\nattach_type:\t47 (tcx_egress)\n";
        assert_eq!(parse_fdinfo(tcx).unwrap(), LinkState { program_id: 9, ifindex: Some(7) });
        assert!(parse_fdinfo("map_type:\t1\n").is_err(), "a map is not a link");
    }

    #[test]
    fn a_cgroup_links_fdinfo_names_program_and_cgroup() {
        let info =
            "link_type:\tcgroup\nlink_id:\t14\nprog_tag:\tab\nprog_id:\t41\ncgroup_id:\t1\nattach_type:\t3\n";
        assert_eq!(
            parse_cgroup_fdinfo(info).unwrap(),
            CgroupLinkState { program_id: 41, cgroup_id: Some(1) }
        );
        let detached = info.replace("cgroup_id:\t1", "cgroup_id:\t0");
        assert_eq!(parse_cgroup_fdinfo(&detached).unwrap().cgroup_id, None);
        assert!(parse_cgroup_fdinfo(XDP_INFO).is_err(), "an XDP link is not a cgroup link");
    }

    #[test]
    fn connection_caps_need_an_attached_sock_ops_link_and_only_then() {
        let attached = Some(CgroupLinkState { program_id: 4, cgroup_id: Some(1) });
        let detached = Some(CgroupLinkState { program_id: 4, cgroup_id: None });
        assert_eq!(connection_caps_problem(true, attached), None);
        assert_eq!(connection_caps_problem(false, None), None);
        assert_eq!(connection_caps_problem(false, detached), None, "a detached link counts nothing");
        assert!(connection_caps_problem(true, None).unwrap().contains("no sock_ops link is pinned"));
        assert!(connection_caps_problem(true, detached).unwrap().contains("detached from the cgroup"));
        assert!(connection_caps_problem(false, attached).unwrap().contains("caps none"));
    }

    #[test]
    fn problems_say_what_is_unprotected() {
        let on = |ifindex| Some(LinkState { program_id: 1, ifindex });
        let healthy = Inspection { xdp: on(Some(5)), tc: on(Some(5)), ifindex_now: Some(5) };
        assert_eq!(healthy.problem("eth0"), None);
        let gone = Inspection { xdp: on(None), tc: on(None), ifindex_now: None };
        assert!(gone.problem("eth0").unwrap().contains("eth0 no longer exists"));
        let recreated = Inspection { xdp: on(None), tc: on(None), ifindex_now: Some(9) };
        assert!(recreated.problem("eth0").unwrap().contains("deleted and created again (now ifindex 9)"));
        let renamed = Inspection { xdp: on(Some(5)), tc: on(Some(5)), ifindex_now: Some(9) };
        assert!(renamed.problem("eth0").unwrap().contains("run on ifindex 5, but eth0 is ifindex 9"));
        let half = Inspection { xdp: on(Some(5)), tc: None, ifindex_now: Some(5) };
        assert!(half.problem("eth0").unwrap().contains("TC egress link is missing"));
        let other_half = Inspection { xdp: None, tc: on(Some(5)), ifindex_now: Some(5) };
        assert!(other_half.problem("eth0").unwrap().contains("XDP ingress link is missing"));
        let nothing = Inspection { xdp: None, tc: None, ifindex_now: Some(5) };
        assert!(nothing.problem("eth0").unwrap().contains("no program is attached"));
    }
}
