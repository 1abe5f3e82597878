//! The merged view of a stack of overlay-format layer dirs, read without mounting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::copy::copy_nondir;
use crate::fsmeta::{EntryMeta, in_parent, is_opaque, is_whiteout};
use crate::live::{Onto, Way};
use crate::{SnapshotError, at};

/// Symlinks followed while resolving one path before giving up (the kernel's limit).
const MAX_SYMLINK_HOPS: u32 = 40;

pub struct LayerStack {
    /// Bottom first.
    layers: Vec<PathBuf>,
}

/// What a merged path is.
pub(crate) enum Node {
    /// A directory, with the host dirs that make it up, topmost first.
    Dir(Vec<PathBuf>),
    /// Anything else: the topmost host entry.
    Other(PathBuf, Metadata),
}

pub(crate) enum Walk {
    /// `comps`: the path with every symlink resolved.
    Found { comps: Vec<OsString>, node: Node },
    /// Absent: `comps` is the resolved path of the deepest existing directory, `rest` the
    /// components after it.
    Missing {
        comps: Vec<OsString>,
        rest: Vec<OsString>,
    },
    /// A non-directory where a directory was needed, or a symlink loop.
    Blocked,
}

/// The components of an image path, `..` kept (it is only meaningful after symlinks).
fn image_components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

impl LayerStack {
    pub fn new(layers: Vec<PathBuf>) -> LayerStack {
        LayerStack { layers }
    }

    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// Host path of the entry an absolute image path resolves to, honouring whiteouts and
    /// opaque dirs. Symlinks resolve inside the image root; the last one only if `follow_final`.
    pub fn lookup(&self, image_path: &Path, follow_final: bool) -> Option<PathBuf> {
        match self.walk(image_path, follow_final) {
            Walk::Found {
                node: Node::Dir(hosts),
                ..
            } => hosts.into_iter().next(),
            Walk::Found {
                node: Node::Other(host, _),
                ..
            } => Some(host),
            Walk::Missing { .. } | Walk::Blocked => None,
        }
    }

    /// Names in the merged directory (following symlinks), sorted. None if not a directory.
    pub fn read_dir(&self, image_path: &Path) -> Option<Vec<OsString>> {
        match self.walk(image_path, true) {
            Walk::Found {
                node: Node::Dir(hosts),
                ..
            } => merged_names(&hosts).ok(),
            _ => None,
        }
    }

    /// Copy the merged subtree at `image_path` (followed if a symlink) to the new path `dest`,
    /// keeping modes, owners, mtimes, xattrs and hard links; whiteouts are applied, not copied.
    pub fn export(&self, image_path: &Path, dest: &Path) -> Result<(), SnapshotError> {
        if fs::symlink_metadata(dest).is_ok() {
            return Err(SnapshotError::DestinationExists {
                path: dest.to_path_buf(),
            });
        }
        match self.walk(image_path, true) {
            Walk::Found { node, .. } => export_node(node, dest, None, &mut HashMap::new()),
            _ => Err(SnapshotError::NotInImage {
                path: image_path.to_path_buf(),
            }),
        }
    }

    /// The merged root: every layer from the top down to the first opaque root.
    pub(crate) fn root(&self) -> Vec<PathBuf> {
        let mut hosts = Vec::new();
        for layer in self.layers.iter().rev() {
            hosts.push(layer.clone());
            if is_opaque(layer) {
                break;
            }
        }
        hosts
    }

    /// Resolve an image path component by component in the merged view.
    pub(crate) fn walk(&self, image_path: &Path, follow_final: bool) -> Walk {
        let root = self.root();
        let mut todo: VecDeque<OsString> = image_components(image_path).collect();
        let mut trail: Vec<(OsString, Vec<PathBuf>)> = Vec::new();
        let names = |trail: &[(OsString, Vec<PathBuf>)]| {
            trail.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
        };
        let mut hops = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                trail.pop();
                continue;
            }
            let dir = trail.last().map_or(&root, |(_, hosts)| hosts);
            match child(dir, &name) {
                None => {
                    let rest: Vec<OsString> = std::iter::once(name).chain(todo).collect();
                    if rest.iter().any(|c| c == "..") {
                        return Walk::Blocked;
                    }
                    return Walk::Missing {
                        comps: names(&trail),
                        rest,
                    };
                }
                Some(Node::Dir(hosts)) => trail.push((name, hosts)),
                Some(Node::Other(host, md)) => {
                    let is_final = todo.is_empty();
                    if md.is_symlink() && (follow_final || !is_final) {
                        hops += 1;
                        let Ok(target) = fs::read_link(&host) else {
                            return Walk::Blocked;
                        };
                        if hops > MAX_SYMLINK_HOPS {
                            return Walk::Blocked;
                        }
                        if target.has_root() {
                            trail.clear();
                        }
                        let target: Vec<OsString> = image_components(&target).collect();
                        for c in target.into_iter().rev() {
                            todo.push_front(c);
                        }
                    } else if is_final {
                        let mut comps = names(&trail);
                        comps.push(name);
                        return Walk::Found {
                            comps,
                            node: Node::Other(host, md),
                        };
                    } else {
                        return Walk::Blocked;
                    }
                }
            }
        }
        let hosts = trail.last().map_or(root, |(_, hosts)| hosts.clone());
        Walk::Found {
            comps: names(&trail),
            node: Node::Dir(hosts),
        }
    }
}

/// `name` inside the merged directory made of `dir` (topmost first).
pub(crate) fn child(dir: &[PathBuf], name: &OsStr) -> Option<Node> {
    let mut dirs = Vec::new();
    for host in dir {
        let path = host.join(name);
        let Ok(md) = fs::symlink_metadata(&path) else {
            continue;
        };
        if is_whiteout(&md) {
            break;
        }
        if md.is_dir() {
            let opaque = is_opaque(&path);
            dirs.push(path);
            if opaque {
                break;
            }
        } else if dirs.is_empty() {
            return Some(Node::Other(path, md));
        } else {
            // A lower non-directory under an upper directory is hidden by it.
            break;
        }
    }
    (!dirs.is_empty()).then_some(Node::Dir(dirs))
}

/// The names visible in a merged directory, sorted.
fn merged_names(hosts: &[PathBuf]) -> io::Result<Vec<OsString>> {
    let mut visible: BTreeMap<OsString, bool> = BTreeMap::new();
    for host in hosts {
        for entry in fs::read_dir(host)? {
            let entry = entry?;
            let name = entry.file_name();
            if visible.contains_key(&name) {
                continue;
            }
            let md = fs::symlink_metadata(entry.path())?;
            visible.insert(name, !is_whiteout(&md));
        }
    }
    Ok(visible
        .into_iter()
        .filter_map(|(name, shown)| shown.then_some(name))
        .collect())
}

/// Work left while exporting: a node to copy, or a directory whose times are set once
/// everything inside it is written.
enum Export {
    Node(Node, PathBuf),
    Times(EntryMeta, PathBuf),
}

/// Iterative: a stage's tree can nest as deep as PATH_MAX allows, and a call per level
/// overflowed a build thread's stack at about 1,900 levels.
///
/// With `onto`, `dest` is a live tree (see [`crate::LiveRoot`]) that already exists: its
/// directories are kept (their metadata updated), anything else in the way is replaced, and
/// skipped paths are left alone. Without it, `dest` must not exist.
pub(crate) fn export_node(
    node: Node,
    dest: &Path,
    onto: Option<&Onto>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), SnapshotError> {
    let mut work = vec![Export::Node(node, dest.to_path_buf())];
    while let Some(next) = work.pop() {
        let kept = match (&next, onto) {
            (Export::Node(node, dest), Some(onto)) => {
                onto.make_way(dest, matches!(node, Node::Dir(_)))?
            }
            _ => Way::Clear,
        };
        match next {
            _ if kept == Way::Skipped => {}
            Export::Node(Node::Dir(hosts), dest) => {
                let top = &hosts[0];
                let md = fs::symlink_metadata(top).map_err(at(top))?;
                let meta = EntryMeta::of(top, &md).map_err(at(top))?;
                if kept != Way::DirKept {
                    fs::create_dir(&dest).map_err(at(&dest))?;
                }
                // The root of a live tree keeps its own metadata.
                if onto.is_none_or(|onto| dest != onto.root) {
                    let (parent, name) = in_parent(&dest).map_err(at(&dest))?;
                    meta.apply_except_time(&parent, name, false)
                        .map_err(at(&dest))?;
                    work.push(Export::Times(meta, dest.clone()));
                }
                let names = merged_names(&hosts).map_err(at(top))?;
                // Reversed, so that the names are exported in order.
                for name in names.into_iter().rev() {
                    if let Some(child) = child(&hosts, &name) {
                        work.push(Export::Node(child, dest.join(&name)));
                    }
                }
            }
            Export::Node(Node::Other(host, md), dest) => {
                let meta = EntryMeta::of(&host, &md).map_err(at(&host))?;
                let (parent, _) = in_parent(&dest).map_err(at(&dest))?;
                copy_nondir(&host, &md, &parent, &dest, &meta, links)?;
            }
            Export::Times(meta, dest) => {
                let (parent, name) = in_parent(&dest).map_err(at(&dest))?;
                meta.apply_time(&parent, name).map_err(at(&dest))?;
            }
        }
    }
    Ok(())
}
