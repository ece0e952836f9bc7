//! The records under an attachment (`attachment` is the lifecycle the commands call): the
//! policy each generation came from, switching a generation in with a write-ahead record and
//! settling a switch that was interrupted, removing what an attachment recorded, and changes
//! that roll back by themselves unless confirmed (`--confirm-within`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use serde::{Deserialize, Serialize};

use crate::{
    blocks::BlockStore,
    events::Actor,
    files,
    links::Inspection,
    loader, paths,
    policy::{self, LoadOptions, Loaded, compile::compile},
    safety::{self, Operator},
    state::{RunState, now_unix, remove_stale_lock, write_atomically},
};

/// The policy a generation was built from: kept so a rollback can return to it even after
/// the file on disk changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicySource {
    pub path: PathBuf,
    pub text: String,
}

impl PolicySource {
    /// Reads a policy file. The path is kept as given, made absolute against this process's
    /// working directory but not resolved: a loader started elsewhere reads the same file,
    /// and a symlink re-pointed by a deploy is followed again at every reload.
    pub fn read(path: &Path) -> Result<Self> {
        let path = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        if names_a_descriptor(&path) {
            bail!(
                "{} names a file descriptor of this process (`<(...)`, /dev/fd/N): the loader reads \
                 the policy again at every reload and SIGHUP, so give the path of a regular file",
                path.display()
            );
        }
        let text = files::read_text_capped(&path, files::POLICY_MAX)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Self { path, text })
    }

    /// Validates it (with blocklist files relative to its original place).
    pub fn load(&self, options: LoadOptions) -> Result<Loaded, policy::PolicyErrors> {
        policy::parse(&self.text, &self.path, options)
    }

    /// What `iface` runs now (saved with every generation).
    pub fn active(iface: &str) -> Result<Self> {
        let path = paths::active_policy(iface);
        let text = files::read_text_capped(&path, files::STATE_FILE_MAX)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save_active(&self, iface: &str) -> Result<()> {
        write_atomically(&paths::active_policy(iface), serde_json::to_string(self)?.as_bytes())
    }
}

/// `/dev/fd/N`, `/dev/stdin`, `/proc/...`: what they name depends on the process reading them.
fn names_a_descriptor(path: &Path) -> bool {
    ["/dev/fd", "/dev/stdin", "/proc"].iter().any(|prefix| path.starts_with(prefix))
}

/// Loads `source` as the generation after `current` and switches the running programs to it
/// atomically, recorded ahead and after (`switch_recorded`). Nothing changes if anything fails
/// before the switch, or if the policy would lock the host out without the operator's word
/// (`safety::review`). The feeds enforce their saved copies, or `fresh` for its own feed.
/// Returns the new generation's record.
pub fn apply_generation(
    current: &RunState,
    source: &PolicySource,
    strict: bool,
    operator: &Operator,
    fresh: Option<&crate::feeds::FeedList>,
) -> Result<(Ebpf, Loaded, RunState)> {
    let iface = current.iface.as_str();
    let generation = current.generation + 1;
    let mut loaded = source.load(LoadOptions { strict })?;
    crate::feeds::add_to(&mut loaded.policy, iface, fresh)?;
    safety::review(&mut loaded, iface, operator, "reload")?;
    let image = compile(&loaded.policy, generation)?;
    let mut ebpf = loader::load(&image, &loaded.policy, Some(&paths::pin_dir(iface)))?;
    let next = current.next(&loaded.policy, &source.path, Some(loader::program_ids(&mut ebpf)?));
    switch_recorded(&next, source, || loader::replace(&mut ebpf, iface))?;
    Ok((ebpf, loaded, next))
}

/// Records what `iface` runs now, for `status` and for rollbacks.
pub fn record(state: &RunState, source: &PolicySource) -> Result<()> {
    state.write()?;
    source.save_active(&state.iface)
}

/// A generation about to be switched in (`IFACE.next.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Next {
    pub state: RunState,
    pub source: PolicySource,
}

impl Next {
    fn read(iface: &str) -> Option<Self> {
        let text = files::read_text_capped(&paths::next_file(iface), files::STATE_FILE_MAX).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Runs `switch`, which makes the pinned links run `next`'s programs, with `next` written
/// ahead and recorded after: a process killed in between leaves what `settle` needs to tell
/// which generation runs.
pub fn switch_recorded<T>(
    next: &RunState,
    source: &PolicySource,
    switch: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let ahead = Next { state: next.clone(), source: source.clone() };
    write_atomically(&paths::next_file(&next.iface), serde_json::to_string(&ahead)?.as_bytes())?;
    match switch() {
        Ok(done) => {
            // The switch is done whatever happens to the record now: the write-ahead file
            // describes it until a record can be written.
            match record(next, source) {
                Ok(()) => {
                    let _ = std::fs::remove_file(paths::next_file(&next.iface));
                }
                Err(error) => log::warn!(
                    "{}: generation {} runs, but recording it failed ({error:#}); {} describes it meanwhile",
                    next.iface,
                    next.generation,
                    paths::next_file(&next.iface).display()
                ),
            }
            Ok(done)
        }
        Err(error) => {
            // Half done (one link switched) stays for `settle` to report; nothing done is
            // forgotten.
            if Inspection::of(&next.iface).is_ok_and(|found| no_link_runs(&found, next)) {
                let _ = std::fs::remove_file(paths::next_file(&next.iface));
            }
            Err(error)
        }
    }
}

fn no_link_runs(found: &Inspection, next: &RunState) -> bool {
    let Some(ids) = next.programs else { return true };
    found.xdp.is_none_or(|l| l.program_id != ids.xdp) && found.tc.is_none_or(|l| l.program_id != ids.tc)
}

/// What `iface` runs: its record, checked against a switch that was interrupted (a
/// write-ahead record left behind) by the programs the pinned links run. With `repair` (no
/// loader runs, and the caller keeps one from starting), the record is made to agree. Returns
/// the record that describes what runs, and what was found, to be said.
pub fn settle(iface: &str, repair: bool) -> Result<(Option<RunState>, Option<String>)> {
    let recorded = RunState::read_checked(iface)?;
    let Some(next) = Next::read(iface) else {
        return Ok((recorded, None));
    };
    let found = Inspection::of(iface)?;
    let generation = next.state.generation;
    if found.runs(next.state.programs) {
        if repair {
            record(&next.state, &next.source)?;
            let _ = std::fs::remove_file(paths::next_file(iface));
        }
        let note = format!(
            "a switch to generation {generation} ({}) was interrupted after it took effect{}",
            next.source.path.display(),
            if repair { "; recorded it now" } else { "" }
        );
        return Ok((Some(next.state), Some(note)));
    }
    if no_link_runs(&found, &next.state) {
        // Not switched (or still being switched by a running loader): the record stands.
        if !repair {
            return Ok((recorded, None));
        }
        let _ = std::fs::remove_file(paths::next_file(iface));
        let note = format!("a switch to generation {generation} was interrupted before it took effect");
        return Ok((recorded, Some(note)));
    }
    let note = format!(
        "a switch to generation {generation} was interrupted half-way: one link runs its program, the \
         other an older one; `portguard reload {iface}` makes them one generation again"
    );
    Ok((recorded, Some(note)))
}

/// Removes `iface`'s pending change (`portguard confirm`). Returns it, or `None` if there was
/// none. (One whose record cannot be read is still confirmed: then `rollback` says `Detach`.)
pub fn take_pending(iface: &str) -> Result<Option<Pending>> {
    let pending = Pending::read(iface);
    match std::fs::remove_file(paths::pending_file(iface)) {
        Ok(()) => Ok(Some(pending.unwrap_or(Pending {
            token: String::new(),
            deadline: 0,
            within_secs: 0,
            rollback: Rollback::Detach,
        }))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context("removing the pending change"),
    }
}

/// Re-applies the saved manual blocks to `iface`.
pub fn restore_manual_blocks(iface: &str) -> Result<usize> {
    BlockStore::edit(&[iface.to_owned()], |store| Ok(store.for_iface(iface).count()))
}

/// Why a loader is asked to detach, for its last event: written into the detach request file
/// (root only) for the loader to read when it stops.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DetachRequest {
    #[serde(default)]
    pub actor: Option<Actor>,
    /// `portguard detach`, or why a rollback detaches.
    #[serde(default)]
    pub reason: String,
    /// A rollback of an attach nobody confirmed.
    #[serde(default)]
    pub rollback: bool,
}

impl DetachRequest {
    /// `portguard detach`, run by whoever runs this process.
    pub fn by_command() -> Self {
        Self { actor: Some(Actor::of_this_process()), reason: "portguard detach".into(), rollback: false }
    }

    /// The request left for `iface`'s loader, taken (removed); `None` if there is none. One
    /// that cannot be read (an older portguard wrote it empty) still asks for a detach.
    pub fn take(iface: &str) -> Option<Self> {
        let path = paths::detach_request(iface);
        let text = files::read_text_capped(&path, files::STATE_FILE_MAX).ok()?;
        std::fs::remove_file(&path).ok()?;
        Some(
            serde_json::from_str(&text)
                .unwrap_or_else(|_| Self { reason: "portguard detach".into(), ..Self::default() }),
        )
    }
}

/// Detaches `iface` and removes every record of the attachment: the one cleanup path for a
/// loader that stops, `portguard detach`, and an attach that fails half-way. The loader lock
/// goes too unless a loader holds it.
pub fn remove(iface: &str) -> Result<()> {
    loader::detach(iface)?;
    RunState::remove(iface);
    for record in [
        paths::detach_request(iface),
        paths::pending_file(iface),
        paths::next_file(iface),
        paths::active_policy(iface),
    ] {
        let _ = std::fs::remove_file(record);
    }
    remove_stale_lock(iface);
    Ok(())
}

/// What happens when a change is not confirmed in time.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "rollback", rename_all = "snake_case")]
pub enum Rollback {
    /// Undo an attach: detach.
    Detach,
    /// Undo a reload: return to this policy.
    Restore { policy: PolicySource },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    /// Identifies this change: a later one replaces it (and its guard stands down).
    pub token: String,
    /// Seconds since the Unix epoch.
    pub deadline: u64,
    /// The time given to confirm, in seconds (0: unknown, written by an older portguard).
    #[serde(default)]
    pub within_secs: u64,
    #[serde(flatten)]
    pub rollback: Rollback,
}

impl Pending {
    pub fn read(iface: &str) -> Option<Self> {
        let text = files::read_text_capped(&paths::pending_file(iface), files::STATE_FILE_MAX).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn seconds_left(&self) -> u64 {
        self.deadline.saturating_sub(now_unix())
    }

    /// Why a rollback happens: `not confirmed within 2m`.
    pub fn rollback_reason(&self) -> String {
        match self.within_secs {
            0 => "not confirmed in time".into(),
            secs => format!("not confirmed within {}", crate::durations::format_secs(secs)),
        }
    }
}

/// Arms a rollback of `iface` in `within` unless `portguard confirm` runs first. A separate
/// process (in its own session, deaf to the terminal hanging up) carries it out, so it happens
/// even if the operator's connection, or the loader, is gone.
pub fn arm_rollback(iface: &str, within: Duration, rollback: Rollback) -> Result<()> {
    let token = format!("{}-{}", std::process::id(), now_unix());
    // `within` may come from a control socket request: no range is assumed.
    let deadline = now_unix().saturating_add(within.as_secs().max(1));
    let pending = Pending { token: token.clone(), deadline, within_secs: within.as_secs().max(1), rollback };
    write_atomically(&paths::pending_file(iface), serde_json::to_string(&pending)?.as_bytes())?;
    let exe = std::env::current_exe().context("finding the portguard binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["rollback-guard", iface, &token])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    command.spawn().context("starting the rollback guard")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_paths_are_kept_as_given_and_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v1.toml"), "default = \"allow\"\n").unwrap();
        let link = dir.path().join("current.toml");
        std::os::unix::fs::symlink("v1.toml", &link).unwrap();
        let source = PolicySource::read(&link).unwrap();
        assert_eq!(source.path, link, "the link, not its target");

        let cwd = std::env::current_dir().unwrap();
        let relative = Path::new("no-such-dir/p.toml");
        let error = PolicySource::read(relative).unwrap_err();
        assert!(format!("{error:#}").contains(&cwd.join(relative).display().to_string()), "{error:#}");

        for path in ["/dev/fd/63", "/dev/stdin", "/proc/self/fd/0"] {
            let error = PolicySource::read(Path::new(path)).unwrap_err();
            assert!(error.to_string().contains("names a file descriptor"), "{path}: {error}");
        }
    }
}
