//! The device-state interface (docs/decisions/0013): a device whose state a snapshot carries
//! implements [`Persist`] in a `persist.rs` (or `<device>_persist.rs`) next to its own code.
//! Its state is a serde struct with a version of its own; in the state file each device is one
//! [`DeviceState`] entry (`id`, `kind`, `version`, `state`), so a reader finds a device's part
//! by name and refuses a version it does not know instead of misreading it.
//!
//! A device that does not implement it makes a snapshot fail with a one-line error naming the
//! device (a virtio device says so through `VirtioDevice::snapshot_state`'s default).

#![forbid(unsafe_code)]

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a device's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The device cannot be snapshotted.
    #[error("device {id} ({kind}) does not support snapshots")]
    Unsupported {
        /// Device ID.
        id: String,
        /// What it is.
        kind: String,
    },
    /// The state file has no entry for a device the configuration has.
    #[error("the snapshot has no state for device {0}")]
    Missing(String),
    /// The entry is of another kind than the device.
    #[error("the snapshot's device {id} is a {found}, the configuration makes it a {want}")]
    Kind {
        /// Device ID.
        id: String,
        /// In the snapshot.
        found: String,
        /// In this VM.
        want: String,
    },
    /// The entry's version is not the device's.
    #[error("device {id}: state version {found} is not supported (this Strata reads {want})")]
    Version {
        /// Device ID.
        id: String,
        /// In the snapshot.
        found: u32,
        /// This build's.
        want: u32,
    },
    /// The entry's state does not deserialize.
    #[error("device {id}: invalid state: {reason}")]
    Invalid {
        /// Device ID.
        id: String,
        /// serde's message.
        reason: String,
    },
    /// The device could not be quiesced, saved or brought back.
    #[error("device {id}: {reason}")]
    Device {
        /// Device ID.
        id: String,
        /// What failed.
        reason: String,
    },
}

/// One device in the state file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    /// The device's ID (`serial0`, `rtc0`, `disk0`...).
    pub id: String,
    /// What it is (`serial`, `virtio-mmio/block`...).
    pub kind: String,
    /// The version of `state`'s layout.
    pub version: u32,
    /// The device's own state.
    pub state: serde_json::Value,
}

impl DeviceState {
    /// `state` as the entry of device `id`, of `kind` at layout `version`.
    pub fn encode<T: Serialize>(
        id: &str,
        kind: &str,
        version: u32,
        state: &T,
    ) -> Result<DeviceState, PersistError> {
        let state = serde_json::to_value(state).map_err(|e| PersistError::Invalid {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        Ok(DeviceState {
            id: id.to_string(),
            kind: kind.to_string(),
            version,
            state,
        })
    }

    /// Checks this entry's kind and version against `kind` and `version`.
    pub fn check(&self, kind: &str, version: u32) -> Result<(), PersistError> {
        if self.kind != kind {
            return Err(PersistError::Kind {
                id: self.id.clone(),
                found: self.kind.clone(),
                want: kind.to_string(),
            });
        }
        if self.version != version {
            return Err(PersistError::Version {
                id: self.id.clone(),
                found: self.version,
                want: version,
            });
        }
        Ok(())
    }

    /// The entry's state, checked to be of `kind` at `version`, decoded.
    pub fn decode<T: DeserializeOwned>(&self, kind: &str, version: u32) -> Result<T, PersistError> {
        self.check(kind, version)?;
        serde_json::from_value(self.state.clone()).map_err(|e| PersistError::Invalid {
            id: self.id.clone(),
            reason: e.to_string(),
        })
    }
}

/// A device whose state can be saved and written back.
pub trait Persist {
    /// Its kind in the state file.
    const KIND: &'static str;
    /// The version of [`Persist::State`]'s layout; bump it on any change.
    const VERSION: u32;
    /// Its state.
    type State: Serialize + DeserializeOwned;

    /// Its state now (the VM is paused and the device quiesced).
    fn save(&self) -> Self::State;

    /// Takes `state` (the device was just created from the same configuration).
    fn restore(&mut self, state: Self::State) -> Result<(), String>;
}

/// `dev`'s state as a state-file entry.
pub fn save_entry<P: Persist>(id: &str, dev: &P) -> Result<DeviceState, PersistError> {
    DeviceState::encode(id, P::KIND, P::VERSION, &dev.save())
}

/// `id`'s entry in `entries`.
fn lookup<'a>(entries: &'a [DeviceState], id: &str) -> Result<&'a DeviceState, PersistError> {
    entries
        .iter()
        .find(|e| e.id == id)
        .ok_or_else(|| PersistError::Missing(id.to_string()))
}

/// Finds `id`'s entry in `entries` and checks its kind and version against `P`'s.
pub fn find_entry<'a, P: Persist>(
    entries: &'a [DeviceState],
    id: &str,
) -> Result<&'a DeviceState, PersistError> {
    let entry = lookup(entries, id)?;
    entry.check(P::KIND, P::VERSION)?;
    Ok(entry)
}

/// Writes `id`'s entry back into `dev`.
pub fn restore_entry<P: Persist>(
    entries: &[DeviceState],
    id: &str,
    dev: &mut P,
) -> Result<(), PersistError> {
    let entry = lookup(entries, id)?;
    let state: P::State = entry.decode(P::KIND, P::VERSION)?;
    dev.restore(state).map_err(|reason| PersistError::Device {
        id: id.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Dummy(u8);

    impl Persist for Dummy {
        const KIND: &'static str = "dummy";
        const VERSION: u32 = 2;
        type State = u8;
        fn save(&self) -> u8 {
            self.0
        }
        fn restore(&mut self, state: u8) -> Result<(), String> {
            self.0 = state;
            Ok(())
        }
    }

    #[test]
    fn test_persist_entry_round_trip() {
        let entry = save_entry("d0", &Dummy(7)).unwrap();
        let mut back = Dummy::default();

        restore_entry(&[entry], "d0", &mut back).unwrap();

        assert_eq!(back.0, 7);
    }

    #[test]
    fn test_persist_entry_wrong_version_kind_or_missing_refused() {
        let mut entry = save_entry("d0", &Dummy(7)).unwrap();
        let mut d = Dummy::default();

        let missing = restore_entry(&[entry.clone()], "d1", &mut d).unwrap_err();
        entry.version = 3;
        let version = restore_entry(&[entry.clone()], "d0", &mut d).unwrap_err();
        entry.version = 2;
        entry.kind = "other".into();
        let kind = restore_entry(&[entry], "d0", &mut d).unwrap_err();

        assert!(missing.to_string().contains("no state for device d1"));
        assert!(version.to_string().contains("version 3"));
        assert!(kind.to_string().contains("is a other"));
        assert_eq!(d.0, 0);
    }
}
