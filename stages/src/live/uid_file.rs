//! The `.gradline-uid` file: the uids this machine's hotkeys were given at registration, so a
//! miner knows its uid without a chain read. A JSON list of `{netuid, hotkey, uid}`; the
//! record of the signing hotkey on the subnet is the one that counts.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Where the file lives unless `resources.chain.uid_file` says otherwise.
pub const DEFAULT_PATH: &str = ".gradline-uid";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    netuid: u16,
    hotkey: String,
    uid: u16,
}

/// The uid recorded for a hotkey on a subnet; an unreadable file counts as none.
pub fn read(path: &Path, netuid: u16, hotkey: &str) -> Option<u16> {
    records(path)
        .into_iter()
        .find(|r| r.netuid == netuid && r.hotkey == hotkey)
        .map(|r| r.uid)
}

/// Records a hotkey's uid on a subnet (replacing an older record), atomically.
pub fn write(path: &Path, netuid: u16, hotkey: &str, uid: u16) -> std::io::Result<()> {
    let mut all = records(path);
    all.retain(|r| !(r.netuid == netuid && r.hotkey == hotkey));
    all.push(Record {
        netuid,
        hotkey: hotkey.to_owned(),
        uid,
    });
    let text = serde_json::to_string_pretty(&all).map_err(std::io::Error::other)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

fn records(path: &Path) -> Vec<Record> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_per_subnet_and_hotkey() {
        let dir = std::env::temp_dir().join(format!("gradline-uid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(DEFAULT_PATH);
        assert_eq!(read(&path, 3, "a"), None);
        write(&path, 3, "a", 7).unwrap();
        write(&path, 4, "a", 1).unwrap();
        write(&path, 3, "a", 9).unwrap();
        assert_eq!(read(&path, 3, "a"), Some(9));
        assert_eq!(read(&path, 4, "a"), Some(1));
        assert_eq!(read(&path, 3, "b"), None);
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(read(&path, 3, "a"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
