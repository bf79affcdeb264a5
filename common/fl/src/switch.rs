//! Optional settings switched on in config files by `true`, or by a table
//! of their settings: `secure_aggregation = true` or
//! `[federation.secure_aggregation]`, `adaptive_clip = true` or
//! `adaptive_clip = { target_quantile = 0.7 }`. Use as
//! `#[serde(with = "fedcrime_fl::switch")]` on an `Option<T>` field whose
//! `T` has defaults; `false` (or nothing) is off.

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserializer, Serialize, Serializer};

/// Writes the settings' table, or `false`.
pub fn serialize<S: Serializer, T: Serialize>(c: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => c.serialize(s),
        None => s.serialize_bool(false),
    }
}

/// Reads `true` (the defaults), `false`, or a table.
pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Default + DeserializeOwned,
{
    struct Switch<T>(std::marker::PhantomData<T>);
    impl<'de, T: Default + DeserializeOwned> Visitor<'de> for Switch<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false, or a table of settings")
        }

        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then(T::default))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }

        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Switch(std::marker::PhantomData))
}
