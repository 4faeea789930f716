//! The read model's large maps, read back from its snapshot in bulk.
//!
//! serde reads a `BTreeMap` by inserting each entry: a search from the root for every one, and,
//! as the keys arrive in order, nodes split into halves that stay half empty. A snapshot writes
//! each map in key order, so its entries are collected and the map built in one pass
//! (`BTreeMap::from_iter`, whose sort finds a single run, fills every node). With a million
//! reservations the model holds several maps of a million entries (`ipam bench --recovery`).
//!
//! Used as `#[serde(deserialize_with = "crate::bulk::map")]` (and `nested_map` for a map of maps)
//! on the fields that grow with the reservations; the encoding is serde's own, so snapshots read
//! either way.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// The most entries reserved ahead of reading them: a length read from a damaged snapshot must not
/// allocate without bound before the entries fail to decode.
const PREALLOCATED_AT_MOST: usize = 1 << 20;

/// A map, built from its entries in one pass.
pub(crate) fn map<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    Ok(deserializer.deserialize_map(Entries(PhantomData))?.into_iter().collect())
}

/// A map of maps, each built from its entries in one pass.
pub(crate) fn nested_map<'de, D, K, K2, V>(deserializer: D) -> Result<BTreeMap<K, BTreeMap<K2, V>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    K2: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    let entries: Vec<(K, Bulk<K2, V>)> = deserializer.deserialize_map(Entries(PhantomData))?;
    Ok(entries.into_iter().map(|(key, inner)| (key, inner.0)).collect())
}

/// An inner map of [`nested_map`].
struct Bulk<K, V>(BTreeMap<K, V>);

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for Bulk<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bulk<K, V>, D::Error> {
        map(deserializer).map(Bulk)
    }
}

/// A map's entries in the order written.
struct Entries<K, V>(PhantomData<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
    type Value = Vec<(K, V)>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Vec<(K, V)>, A::Error> {
        let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(PREALLOCATED_AT_MOST));
        while let Some(entry) = access.next_entry()? {
            entries.push(entry);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Model {
        #[serde(deserialize_with = "map")]
        flat: BTreeMap<u32, String>,
        #[serde(deserialize_with = "nested_map")]
        nested: BTreeMap<u8, BTreeMap<u16, bool>>,
    }

    #[test]
    fn maps_read_in_bulk_equal_the_maps_written_in_either_format() {
        let model = Model {
            flat: (0..5_000).map(|key| (key * 7 % 5_000, key.to_string())).collect(),
            nested: (0..20)
                .map(|outer| (outer, (0..300).map(|key| (key * 13 % 300, key % 3 == 0)).collect()))
                .collect(),
        };
        let binary = rmp_serde::to_vec(&model).unwrap();
        assert_eq!(rmp_serde::from_slice::<Model>(&binary).unwrap(), model);
        let text = serde_json::to_string(&model).unwrap();
        assert_eq!(serde_json::from_str::<Model>(&text).unwrap(), model);
    }

    #[test]
    fn a_damaged_length_is_an_error_not_an_allocation() {
        // A map header claiming 2^32 - 1 entries, followed by one entry.
        let mut bytes = vec![0x92, 0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0xa1, b'x'];
        bytes.push(0x80);
        assert!(rmp_serde::from_slice::<Model>(&bytes).is_err());
    }
}
