//! The `webdataset` source: `.tar` shards where the files of one sample sit
//! next to each other and share a key (`0001.jpg`, `0001.txt`, `0001.json`):
//! the member path up to the first dot of its file name. A shard that is
//! truncated or corrupt is recorded as one error and the next shard is read.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{RawItem, Source, display, source_files};
use crate::error::{Error, Result};
use crate::media::Format;

pub(crate) struct Shards {
    shards: Vec<PathBuf>,
}

impl Shards {
    pub(crate) fn open(src: &Path) -> Result<Shards> {
        Ok(Shards {
            shards: source_files(src, "tar")?,
        })
    }
}

/// Split a member path into (key, extension): the extension starts at the
/// first dot of the file name, as WebDataset has it.
fn split_member(name: &str) -> Option<(String, String)> {
    let name = name.trim_start_matches("./");
    let (dir, file) = match name.rfind('/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => ("", name),
    };
    let dot = file.find('.')?;
    Some((
        format!("{dir}{}", &file[..dot]),
        file[dot + 1..].to_ascii_lowercase(),
    ))
}

impl Source for Shards {
    fn total(&self) -> Option<u64> {
        None
    }

    fn run(self: Box<Self>, emit: &mut dyn FnMut(RawItem) -> bool) -> Result<()> {
        for shard in &self.shards {
            if !read_shard(shard, emit)? {
                break;
            }
        }
        Ok(())
    }
}

/// Returns `Ok(false)` when `emit` asked to stop.
fn read_shard(shard: &Path, emit: &mut dyn FnMut(RawItem) -> bool) -> Result<bool> {
    let file = File::open(shard).map_err(|e| Error::io(shard, e))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let shard_name = display(shard);
    let mut current: Option<RawItem> = None;
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            let item = broken(&shard_name, format!("unreadable tar shard: {e}"));
            return Ok(emit(item));
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                // The rest of the shard cannot be trusted: flush what we have, record it.
                if let Some(item) = current.take()
                    && !emit(item)
                {
                    return Ok(false);
                }
                return Ok(emit(broken(&shard_name, format!("corrupt tar shard: {e}"))));
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => continue,
        };
        let Some((key, ext)) = split_member(&name) else {
            continue;
        };
        if current.as_ref().is_some_and(|c| c.key != key)
            && let Some(item) = current.take()
            && !emit(item)
        {
            return Ok(false);
        }
        let item = current.get_or_insert_with(|| RawItem {
            path: format!("{shard_name}:{name}"),
            key: key.clone(),
            ..RawItem::default()
        });
        let mut buf = Vec::with_capacity(entry.size() as usize);
        if let Err(e) = entry.read_to_end(&mut buf) {
            item.read_error = Some(format!("{shard_name}:{name}: truncated member: {e}"));
            let item = current.take().unwrap_or_default();
            if !emit(item) {
                return Ok(false);
            }
            return Ok(emit(broken(&shard_name, format!("corrupt tar shard: {e}"))));
        }
        let slot = if Format::from_extension(&ext).is_some() {
            item.path = format!("{shard_name}:{name}");
            &mut item.media
        } else if ext == "txt" {
            &mut item.txt
        } else if ext == "json" {
            &mut item.json
        } else {
            continue;
        };
        if slot.is_some() {
            item.read_error = Some(format!("two members for one sample slot: {name}"));
        }
        *slot = Some(buf);
    }
    if let Some(item) = current.take() {
        return Ok(emit(item));
    }
    Ok(true)
}

fn broken(shard: &str, reason: String) -> RawItem {
    RawItem {
        key: shard.to_string(),
        path: shard.to_string(),
        read_error: Some(reason),
        ..RawItem::default()
    }
}

#[cfg(test)]
mod tests {
    use super::split_member;

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(
            split_member("./a.b/0001.seg.jpg"),
            Some(("a.b/0001".into(), "seg.jpg".into()))
        );
        assert_eq!(
            split_member("0002.json"),
            Some(("0002".into(), "json".into()))
        );
        assert_eq!(split_member("noext"), None);
    }
}
