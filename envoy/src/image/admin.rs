//! The image operations an admin asks envoyd for (`envoy-xl image …`, `envoy-xl check`): what
//! each request is, what each answers, and why one fails — in the form the admin socket
//! ([`super::control`]) carries. Each operation is a call on the [`Images`] registry (so it
//! acts through the image's one owner) or a walk ([`super::usage`], [`super::check`]).

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::check::{self, Problem, Report};
use super::registry::{Images, Tree};
use super::usage::{self, Contents, Usage};

/// Most problems one `check` reply lists (the rest are counted in a last line).
pub const MAX_PROBLEMS: usize = 10_000;

/// An admin request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create an empty image whose root directory `uid`:`gid` own (mode 0755).
    Create {
        /// The new image.
        name: String,
        /// Owner of its root directory.
        uid: u32,
        /// Group of its root directory.
        gid: u32,
    },
    /// Every image: snapshots, current root, files and logical size.
    List,
    /// Snapshot an image's current state as number `n` (the next free one if absent).
    Snapshot {
        /// The image.
        name: String,
        /// The number.
        n: Option<u64>,
    },
    /// A new image `new` starting from snapshot `source` (`NAME@N`).
    Fork {
        /// `NAME@N`.
        source: String,
        /// The new image.
        new: String,
    },
    /// Delete an image with all its snapshots (`NAME`), or one snapshot (`NAME@N`).
    Rm {
        /// `NAME` or `NAME@N`.
        target: String,
    },
    /// Space used, per image and snapshot (one image's if `name` is given).
    Du {
        /// Only this image.
        name: Option<String>,
    },
    /// Verify an image: its current state and every snapshot.
    Check {
        /// The image.
        name: String,
    },
}

/// One row of `list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// The image.
    pub name: String,
    /// Its current root (hex).
    pub root: String,
    /// Its snapshots' numbers, ascending.
    pub snapshots: Vec<u64>,
    /// Its current state's files.
    pub contents: Contents,
}

/// What a request did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "done", rename_all = "snake_case")]
pub enum Outcome {
    /// The image was created.
    Created {
        /// It.
        name: String,
    },
    /// Every image.
    List {
        /// By name.
        images: Vec<ImageSummary>,
    },
    /// A snapshot was taken.
    Snapshot {
        /// The image.
        name: String,
        /// Its number.
        n: u64,
        /// Its root (hex).
        root: String,
    },
    /// A fork was made.
    Forked {
        /// `NAME@N` it started from.
        source: String,
        /// The new image.
        new: String,
    },
    /// Trees were deleted (their unshared objects go at the next GC).
    Removed {
        /// `NAME@N` of each snapshot deleted, then `NAME` if the image was.
        trees: Vec<String>,
    },
    /// Space used.
    Usage {
        /// Each image (as a whole), followed by its snapshots.
        usage: Vec<Usage>,
    },
    /// What `check` found.
    Checked {
        /// The report.
        report: Report,
    },
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum AdminError {
    /// Not a usable image name.
    #[error("{name:?} is not a valid image name (1 to 255 bytes; no '/', '@' or NUL; not . or ..)")]
    BadName {
        /// The name.
        name: String,
    },
    /// Not `NAME` / `NAME@N`.
    #[error("{target:?} is not IMAGE or IMAGE@N")]
    BadTarget {
        /// What was given.
        target: String,
    },
    /// No such image.
    #[error("image {image} does not exist")]
    NoImage {
        /// The image.
        image: String,
    },
    /// No such snapshot.
    #[error("snapshot {tree} does not exist")]
    NoSnapshot {
        /// `NAME@N`.
        tree: String,
    },
    /// The image exists.
    #[error("image {image} already exists")]
    ImageExists {
        /// The image.
        image: String,
    },
    /// The snapshot number is taken.
    #[error("snapshot {tree} already exists")]
    SnapshotExists {
        /// `NAME@N`.
        tree: String,
    },
    /// In use: refused rather than pulled from under its clients.
    #[error(
        "{tree} is in use (a 9P client holds a file in it, or envoyd serves it with --image): close those first"
    )]
    Busy {
        /// `NAME` or `NAME@N`.
        tree: String,
    },
    /// The caller may not administer images.
    #[error("{who} may not administer images (only root and envoyd's own user may)")]
    Denied {
        /// Who asked.
        who: String,
    },
    /// Anything else: the object layer failed (envoyd's log says why).
    #[error("{what}: {errno} (envoyd's log has the cause)")]
    Failed {
        /// What was being done.
        what: String,
        /// The error number's name (`EIO`, …).
        errno: String,
    },
    /// The request could not be understood.
    #[error("bad admin request: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
}

/// An error number's name (`EEXIST`) for messages.
fn errno_name(e: Errno) -> String {
    format!("{e:?}")
}

fn failed(what: impl Into<String>, e: Errno) -> AdminError {
    AdminError::Failed {
        what: what.into(),
        errno: errno_name(e),
    }
}

fn valid(name: &str) -> Result<(), AdminError> {
    if super::catalog::valid_name(name) {
        Ok(())
    } else {
        Err(AdminError::BadName { name: name.into() })
    }
}

fn parse_tree(target: &str) -> Result<Tree, AdminError> {
    target.parse().map_err(|_| AdminError::BadTarget {
        target: target.into(),
    })
}

/// Carry out `request` (blocking: it talks to the object layer).
pub fn run(images: &Images, request: Request) -> Result<Outcome, AdminError> {
    match request {
        Request::Create { name, uid, gid } => {
            valid(&name)?;
            match images.create(&name, uid, gid) {
                Ok(_) => Ok(Outcome::Created { name }),
                Err(Errno::EEXIST) => Err(AdminError::ImageExists { image: name }),
                Err(e) => Err(failed(format!("create image {name}"), e)),
            }
        }
        Request::List => {
            images
                .settle(None)
                .map_err(|e| failed("commit the open images", e))?;
            let catalog = images.catalog().map_err(|e| failed("list the images", e))?;
            Ok(Outcome::List {
                images: catalog
                    .into_iter()
                    .map(|i| ImageSummary {
                        contents: usage::contents(&**images.store(), &i.root),
                        root: i.root.to_string(),
                        snapshots: i.snapshots.keys().copied().collect(),
                        name: i.name,
                    })
                    .collect(),
            })
        }
        Request::Snapshot { name, n } => {
            valid(&name)?;
            match images.snapshot(&name, n) {
                Ok((n, root)) => Ok(Outcome::Snapshot {
                    name,
                    n,
                    root: root.to_string(),
                }),
                Err(Errno::ENOENT) => Err(AdminError::NoImage { image: name }),
                Err(Errno::EEXIST) => Err(AdminError::SnapshotExists {
                    tree: match n {
                        Some(n) => Tree::snapshot(&name, n).to_string(),
                        None => format!("{name}@(next)"),
                    },
                }),
                Err(e) => Err(failed(format!("snapshot {name}"), e)),
            }
        }
        Request::Fork { source, new } => {
            let from = parse_tree(&source)?;
            let Some(n) = from.snapshot else {
                return Err(AdminError::BadTarget { target: source });
            };
            valid(&new)?;
            match images.fork(&from.image, n, &new) {
                Ok(()) => Ok(Outcome::Forked { source, new }),
                Err(Errno::ENOENT) => Err(AdminError::NoSnapshot { tree: source }),
                Err(Errno::EEXIST) => Err(AdminError::ImageExists { image: new }),
                Err(e) => Err(failed(format!("fork {source} as {new}"), e)),
            }
        }
        Request::Rm { target } => {
            let tree = parse_tree(&target)?;
            match images.remove(&tree) {
                Ok(gone) => Ok(Outcome::Removed {
                    trees: gone.iter().map(Tree::to_string).collect(),
                }),
                Err(Errno::ENOENT) if tree.snapshot.is_some() && image_exists(images, &tree) => {
                    Err(AdminError::NoSnapshot { tree: target })
                }
                Err(Errno::ENOENT) => Err(AdminError::NoImage { image: tree.image }),
                Err(Errno::EBUSY) => Err(AdminError::Busy { tree: target }),
                Err(e) => Err(failed(format!("remove {target}"), e)),
            }
        }
        Request::Du { name } => {
            images
                .settle(None)
                .map_err(|e| failed("commit the open images", e))?;
            let catalog = images.catalog().map_err(|e| failed("list the images", e))?;
            if let Some(n) = &name
                && !catalog.iter().any(|i| &i.name == n)
            {
                return Err(AdminError::NoImage { image: n.clone() });
            }
            Ok(Outcome::Usage {
                usage: usage::usage(&**images.store(), &catalog, name.as_deref()),
            })
        }
        Request::Check { name } => {
            valid(&name)?;
            images
                .settle(Some(&name))
                .map_err(|e| failed(format!("commit image {name}"), e))?;
            let info = match images.info(&name) {
                Ok(i) => i,
                Err(Errno::ENOENT) => return Err(AdminError::NoImage { image: name }),
                Err(e) => return Err(failed(format!("check {name}"), e)),
            };
            let mut report = check::check(&**images.store(), &info);
            let total = report.problems.len();
            if total > MAX_PROBLEMS {
                report.problems.truncate(MAX_PROBLEMS);
                report.problems.push(Problem {
                    tree: name,
                    path: None,
                    ino: None,
                    object: None,
                    what: format!("… and {} more problems", total - MAX_PROBLEMS),
                });
            }
            Ok(Outcome::Checked { report })
        }
    }
}

fn image_exists(images: &Images, tree: &Tree) -> bool {
    images.info(&tree.image).is_ok()
}
