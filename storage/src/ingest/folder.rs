//! The `folder` source: a directory tree of media files (`.jpg .jpeg .png
//! .webp .mp4`) with optional sidecars `NAME.txt` and `NAME.json` beside them.
//! Files are grouped by relative path without extension; groups are visited
//! in sorted key order, so runs are deterministic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{RawItem, Source, display, key_of};
use crate::error::{Error, Result};
use crate::media::Format;

#[derive(Default)]
struct Group {
    media: Vec<PathBuf>,
    txt: Option<PathBuf>,
    json: Option<PathBuf>,
}

pub(crate) struct Folder {
    groups: BTreeMap<String, Group>,
}

impl Folder {
    pub(crate) fn open(root: &Path) -> Result<Folder> {
        if !root.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{}: a folder source must be a directory",
                root.display()
            )));
        }
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
                if kind.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
                    continue;
                };
                let ext = ext.to_ascii_lowercase();
                let Some(key) = key_of(root, &path) else {
                    continue;
                };
                if Format::from_extension(&ext).is_some() {
                    groups.entry(key).or_default().media.push(path);
                } else if ext == "txt" {
                    groups.entry(key).or_default().txt = Some(path);
                } else if ext == "json" {
                    groups.entry(key).or_default().json = Some(path);
                }
            }
        }
        // Sidecars without a media file are not samples (README.txt, …).
        groups.retain(|_, g| !g.media.is_empty());
        Ok(Folder { groups })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Source for Folder {
    fn total(&self) -> Option<u64> {
        Some(self.groups.len() as u64)
    }

    fn run(self: Box<Self>, emit: &mut dyn FnMut(RawItem) -> bool) -> Result<()> {
        for (key, mut g) in self.groups {
            g.media.sort();
            let mut item = RawItem {
                key,
                path: display(&g.media[0]),
                ..RawItem::default()
            };
            let loaded = (|| -> Result<(), String> {
                if g.media.len() > 1 {
                    return Err(format!(
                        "{} media files share this key: {}",
                        g.media.len(),
                        g.media
                            .iter()
                            .map(|p| display(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                item.media = Some(read(&g.media[0])?);
                item.txt = g.txt.as_deref().map(read).transpose()?;
                item.json = g.json.as_deref().map(read).transpose()?;
                Ok(())
            })();
            if let Err(reason) = loaded {
                item.read_error = Some(reason);
            }
            if !emit(item) {
                break;
            }
        }
        Ok(())
    }
}
