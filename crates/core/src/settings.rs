//! Configuration sections that modules declare: each is a typed struct with its defaults
//! (serde, unknown keys denied), read from the configuration file, validated at start and kept
//! with the [`Config`](crate::Config) for the module to read.
//!
//! A section lives at a top-level key of the file (`[archive]`, [`Place::Server`]), at a key
//! of each `[[host]]` (`[host.contact]`, `registration`, [`Place::Host`]), or among the keys of
//! a table it shares with the core and other modules (`limits.max_roster_items` in `[limits]`,
//! [`Place::SharedTable`]). It is read from the file's text by its own pass, so its errors
//! carry the line and column of the offending key like those of the core's settings; a key
//! that neither the core nor any module of the build declares is refused by name.

use crate::config::ConfigError;
use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserializer, Serialize};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// Where a section is in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A top-level key: one value for the server.
    Server,
    /// A key of each `[[host]]`: one value per virtual host.
    Host,
    /// Keys of a top-level table of the core's that the section shares with the core and
    /// other modules, such as `[limits]`: [`Section::KEY`] names the table, the section's
    /// fields are the keys it owns there, and there is one value for the server. Such a
    /// struct leaves out `deny_unknown_fields`, since the table holds the others' keys; a key
    /// of the table that no owner reads is refused by name (`limits.max_roster_itemz`).
    SharedTable,
}

/// A module's configuration section.
pub trait Section: DeserializeOwned + Serialize + Default + Send + Sync + 'static {
    /// Its key in the file (`archive`, `contact`, ...), or the table it shares (`limits`).
    const KEY: &'static str;
    const PLACE: Place;
    /// The section as `rookery.example.toml` shows it: every key with its default and what it
    /// means (for a shared table, its keys' lines without the table's header). A test keeps
    /// the example file containing it.
    const EXAMPLE: &'static str;
    /// Checks what the types cannot; `key` is where the section is (`archive`,
    /// `host[0].contact`, `limits`), for errors to name.
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let _ = key;
        Ok(())
    }
    /// Whether a reload applies a changed value to the running server: true for a section
    /// its module reads at each use (`server.config().section::<T>()` when it needs it, never
    /// kept from start-up), so the next use sees the new value. Server-wide sections only;
    /// a host's sections change with a restart.
    const LIVE: bool = false;
}

/// A section's value for a module: type-erased so a [`Config`](crate::Config) can hold the
/// sections of modules it does not know.
type Value = Arc<dyn Any + Send + Sync>;

/// A [`Section`] as a value, so a module can list the sections it declares
/// (`Module::CONFIG`) and the core can read them without knowing their types.
#[derive(Clone, Copy)]
pub struct SectionDecl {
    pub key: &'static str,
    pub place: Place,
    pub example: &'static str,
    /// [`Section::LIVE`].
    pub live: bool,
    read: fn(&str) -> Result<Read, toml::de::Error>,
    validate: fn(&Read, &str) -> Result<(), ConfigError>,
    defaults: fn() -> Result<toml::Value, toml::ser::Error>,
    render: fn(&Value) -> String,
    type_id: fn() -> TypeId,
}

impl fmt::Debug for SectionDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SectionDecl")
            .field("key", &self.key)
            .field("place", &self.place)
            .finish()
    }
}

/// What one pass over the text found: the server's value, or one per `[[host]]` in order.
pub(crate) enum Read {
    Server(Value),
    Hosts(Vec<Value>),
    /// The value of a section in a shared table, and the keys of the table it did not read
    /// (the core's and other modules').
    Shared {
        value: Value,
        left: Vec<String>,
    },
}

impl Read {
    /// Whether this section read `key` of its shared table.
    pub(crate) fn reads(&self, key: &str) -> bool {
        matches!(self, Read::Shared { left, .. } if !left.iter().any(|k| k == key))
    }
}

impl SectionDecl {
    pub const fn of<T: Section>() -> Self {
        Self {
            key: T::KEY,
            place: T::PLACE,
            example: T::EXAMPLE,
            live: T::LIVE,
            read: read::<T>,
            validate: validate::<T>,
            defaults: defaults::<T>,
            render: render::<T>,
            type_id: TypeId::of::<T>,
        }
    }

    /// The section's defaults as TOML: every key it has, for checking the example file.
    pub fn defaults(&self) -> Result<toml::Value, toml::ser::Error> {
        (self.defaults)()
    }

    /// Reads this section from the configuration text.
    pub(crate) fn read(&self, text: &str) -> Result<Read, toml::de::Error> {
        (self.read)(text)
    }

    /// Checks what [`read`](Self::read) found.
    pub(crate) fn validate(&self, read: &Read) -> Result<(), ConfigError> {
        (self.validate)(read, self.key)
    }

    /// The type of the section (named so, not `type_id`, which `Any` has too).
    pub(crate) fn section_type(&self) -> TypeId {
        (self.type_id)()
    }
}

fn read<T: Section>(text: &str) -> Result<Read, toml::de::Error> {
    let value = |t: Option<T>| -> Value { Arc::new(t.unwrap_or_default()) };
    Ok(match T::PLACE {
        Place::Server => {
            let found = Pick {
                key: T::KEY,
                seed: PhantomData::<T>,
            }
            .deserialize(toml::Deserializer::new(text))?;
            Read::Server(value(found))
        }
        Place::Host => {
            let hosts = Pick {
                key: "host",
                seed: Each(Pick {
                    key: T::KEY,
                    seed: PhantomData::<T>,
                }),
            }
            .deserialize(toml::Deserializer::new(text))?;
            Read::Hosts(hosts.unwrap_or_default().into_iter().map(value).collect())
        }
        Place::SharedTable => {
            let found = Pick {
                key: T::KEY,
                seed: Sharing(PhantomData::<T>),
            }
            .deserialize(toml::Deserializer::new(text))?;
            let (found, left) = found.map_or((None, Vec::new()), |(t, left)| (Some(t), left));
            Read::Shared {
                value: value(found),
                left,
            }
        }
    })
}

/// Validates what [`read`] found; errors name `key`, or `host[i].key` for a host's value.
fn validate<T: Section>(read: &Read, key: &str) -> Result<(), ConfigError> {
    let keyed: Vec<(String, &Value)> = match read {
        Read::Server(v) | Read::Shared { value: v, .. } => vec![(key.to_owned(), v)],
        Read::Hosts(vs) => vs
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("host[{i}].{key}"), v))
            .collect(),
    };
    for (key, v) in keyed {
        if let Some(section) = v.downcast_ref::<T>() {
            section.validate(&key)?;
        }
    }
    Ok(())
}

/// A value as TOML text, so two configurations can be compared section by section (a reload
/// reports which sections changed) without the sections implementing `PartialEq`.
fn render<T: Section>(v: &Value) -> String {
    v.downcast_ref::<T>()
        .and_then(|t| toml::to_string(t).ok())
        .unwrap_or_default()
}

fn defaults<T: Section>() -> Result<toml::Value, toml::ser::Error> {
    toml::Value::try_from(T::default())
}

/// The value of `key` in a table, read with `seed`; the table's other keys are skipped.
/// Reading from the file's own deserializer keeps toml's positions in errors.
struct Pick<'k, S> {
    key: &'k str,
    seed: S,
}

impl<'de, S: DeserializeSeed<'de> + Clone> DeserializeSeed<'de> for Pick<'_, S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Clone> Visitor<'de> for Pick<'_, S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a table")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key {
                found = Some(map.next_value_seed(self.seed.clone())?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

impl<S: Clone> Clone for Pick<'_, S> {
    fn clone(&self) -> Self {
        Self {
            key: self.key,
            seed: self.seed.clone(),
        }
    }
}

/// A section read from a shared table, with the table's keys it left to the others: serde
/// skips them (the struct does not deny unknown fields) and `serde_ignored` names them.
struct Sharing<T>(PhantomData<T>);

impl<T> Clone for Sharing<T> {
    fn clone(&self) -> Self {
        Sharing(PhantomData)
    }
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Sharing<T> {
    type Value = (T, Vec<String>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let mut left = Vec::new();
        let value = serde_ignored::deserialize(d, |path| {
            if let serde_ignored::Path::Map {
                parent: serde_ignored::Path::Root,
                key,
            } = path
            {
                left.push(key);
            }
        })?;
        Ok((value, left))
    }
}

/// Every element of an array, read with `seed`.
#[derive(Clone)]
struct Each<S>(S);

impl<'de, S: DeserializeSeed<'de> + Clone> DeserializeSeed<'de> for Each<S> {
    type Value = Vec<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Clone> Visitor<'de> for Each<S> {
    type Value = Vec<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.0.clone())? {
            out.push(v);
        }
        Ok(out)
    }
}

/// One section's value and its rendering (for comparisons), in a cell that the clones of a
/// configuration share, so that a reload can replace a live section's value for everyone
/// holding the running configuration.
type Cell = Arc<parking_lot::RwLock<(Value, String)>>;

/// The sections read for the server or for one host, by type: key, whether live, value.
#[derive(Clone, Default)]
pub struct Sections(HashMap<TypeId, (&'static str, bool, Cell)>);

impl fmt::Debug for Sections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rendered: Vec<_> = self
            .0
            .values()
            .map(|(k, _, c)| (k, c.read().1.clone()))
            .collect();
        rendered.sort();
        f.debug_map().entries(rendered).finish()
    }
}

impl Sections {
    /// The section `T`; its defaults when the configuration was read without the module that
    /// declares it.
    pub fn get<T: Section>(&self) -> Arc<T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|(_, _, c)| c.read().0.clone().downcast::<T>().ok())
            .unwrap_or_default()
    }

    /// The keys of the sections whose values differ between `self` and `other`.
    pub fn changed(&self, other: &Sections) -> Vec<&'static str> {
        self.differing(other, true)
    }

    /// [`changed`](Self::changed) for the sections read at start only (not
    /// [`Section::LIVE`]): what a running server cannot take without a restart.
    pub fn changed_at_start(&self, other: &Sections) -> Vec<&'static str> {
        self.differing(other, false)
    }

    fn differing(&self, other: &Sections, with_live: bool) -> Vec<&'static str> {
        // Compared by rendering; a cell both share (clones of one configuration) is equal.
        let differs = |a: &Cell, b: &Cell| !Arc::ptr_eq(a, b) && a.read().1 != b.read().1;
        let mut keys: Vec<&'static str> = self
            .0
            .iter()
            .filter(|(t, (_, live, c))| {
                (with_live || !*live) && other.0.get(*t).is_none_or(|(_, _, o)| differs(c, o))
            })
            .map(|(_, (k, _, _))| *k)
            .chain(
                other
                    .0
                    .iter()
                    .filter(|(t, (_, live, _))| (with_live || !*live) && !self.0.contains_key(*t))
                    .map(|(_, (k, _, _))| *k),
            )
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Gives the live sections ([`Section::LIVE`]) whose values differ in `new` their new
    /// values, here and in every clone of these sections (the running server's
    /// configuration among them); returns their keys. `new` must be a validated
    /// configuration's. The other sections are left as they are.
    pub fn apply_live(&self, new: &Sections) -> Vec<&'static str> {
        let mut applied = Vec::new();
        for (t, (key, live, cell)) in &self.0 {
            if !*live {
                continue;
            }
            let Some((_, _, from)) = new.0.get(t) else {
                continue;
            };
            let value = from.read().clone();
            let mut current = cell.write();
            if current.1 != value.1 {
                *current = value;
                applied.push(*key);
            }
        }
        applied.sort_unstable();
        applied.dedup();
        applied
    }

    pub(crate) fn insert(&mut self, decl: &SectionDecl, value: Value) {
        let rendered = (decl.render)(&value);
        self.0.insert(
            decl.section_type(),
            (
                decl.key,
                decl.live,
                Arc::new(parking_lot::RwLock::new((value, rendered))),
            ),
        );
    }
}
