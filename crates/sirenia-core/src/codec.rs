//! The event codec: typed events ⇄ stored payloads, with an upcaster chain on every read.
//!
//! Domain events are serde enums (externally tagged, serde's default). The variant name is the
//! stored event type, so it must be stable: rename variants in Rust freely but keep the stored
//! name with `#[serde(rename = "...")]`. The payload is the variant's content alone, as JSON.
//!
//! On read, an event whose `(type, schema version)` has a registered upcaster is turned into
//! zero, one or more events of later versions (or other types) until no upcaster applies; the
//! result must then be at the version the code writes. Events that need no upcasting are decoded
//! straight from their bytes.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IgnoredAny, IntoDeserializer,
    VariantAccess, Visitor,
};
use serde::ser::{self, Impossible, SerializeStruct, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CodecError, LoadError};
use crate::event::{JSON_CONTENT_TYPE, Metadata, NewEvent, RecordedEvent};
use crate::id::{EventId, Position, StreamId, Timestamp};
use crate::limits::MAX_UPCAST_STEPS;
use crate::store::EventStream;

/// A domain event type: a serde enum whose variant names are the stored event types.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use sirenia_core::codec::{DomainEvent, JsonCodec};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum CartEvent {
///     #[serde(rename = "ItemAdded")]
///     Added { sku: String, qty: u32 },
///     #[serde(rename = "CartCleared")]
///     Cleared,
/// }
/// impl DomainEvent for CartEvent {}
///
/// let codec = JsonCodec::<CartEvent>::new();
/// let encoded = codec.encode(&CartEvent::Added { sku: "a-1".into(), qty: 2 })?;
/// assert_eq!(encoded.event_type, "ItemAdded");
/// assert_eq!(encoded.data, br#"{"sku":"a-1","qty":2}"#);
/// # Ok::<(), sirenia_core::CodecError>(())
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema version this code writes (and expects after upcasting) for `event_type`.
    /// Defaults to 1 for every type; raise it when a type's payload changes and register an
    /// upcaster from the old version.
    fn schema_version(event_type: &str) -> u16 {
        let _ = event_type;
        1
    }
}

/// A typed event encoded for storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEvent {
    /// The stored event type (the serde variant name).
    pub event_type: &'static str,
    /// The schema version written.
    pub schema_version: u16,
    /// The JSON payload (the variant's content).
    pub data: Vec<u8>,
}

/// An event in raw JSON form, as upcasters see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawEvent {
    /// Its type.
    pub event_type: String,
    /// Its schema version.
    pub schema_version: u16,
    /// Its payload.
    pub data: serde_json::Value,
}

impl RawEvent {
    /// A raw event.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u16,
        data: serde_json::Value,
    ) -> Self {
        RawEvent {
            event_type: event_type.into(),
            schema_version,
            data,
        }
    }
}

type UpcastFn = dyn Fn(RawEvent) -> Result<Vec<RawEvent>, String> + Send + Sync;

/// Upcasters keyed by `(event type, schema version)`.
///
/// Each turns an event of that type and version into zero (drop), one (change) or more (split)
/// events, usually of the next version; the chain runs until no upcaster applies.
///
/// ```
/// use serde_json::json;
/// use sirenia_core::codec::{RawEvent, Upcasters};
///
/// let upcasters = Upcasters::new()
///     // v1 called the field `qty`; v2 calls it `quantity`.
///     .register("ItemAdded", 1, |mut e| {
///         let qty = e.data.as_object_mut().and_then(|o| o.remove("qty")).ok_or("no qty")?;
///         e.data["quantity"] = qty;
///         e.schema_version = 2;
///         Ok(vec![e])
///     });
/// let out = upcasters.upcast(RawEvent::new("ItemAdded", 1, json!({"sku": "a", "qty": 2})))?;
/// assert_eq!(out, vec![RawEvent::new("ItemAdded", 2, json!({"sku": "a", "quantity": 2}))]);
/// # Ok::<(), sirenia_core::CodecError>(())
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    map: HashMap<(String, u16), Arc<UpcastFn>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `upcast` for events of `event_type` at `schema_version` (replacing any other).
    pub fn register<F>(
        mut self,
        event_type: impl Into<String>,
        schema_version: u16,
        upcast: F,
    ) -> Self
    where
        F: Fn(RawEvent) -> Result<Vec<RawEvent>, String> + Send + Sync + 'static,
    {
        self.map
            .insert((event_type.into(), schema_version), Arc::new(upcast));
        self
    }

    /// Whether no upcaster is registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether an upcaster is registered for `event_type` at `schema_version`.
    pub fn applies_to(&self, event_type: &str, schema_version: u16) -> bool {
        // Avoid allocating a key in the common case of no upcasters at all.
        !self.map.is_empty()
            && self
                .map
                .contains_key(&(event_type.to_owned(), schema_version))
    }

    /// Runs the chain on `raw` until no upcaster applies to any resulting event.
    pub fn upcast(&self, raw: RawEvent) -> Result<Vec<RawEvent>, CodecError> {
        let origin = raw.event_type.clone();
        let mut done = Vec::new();
        let mut pending = vec![raw];
        let mut steps = 0usize;
        while let Some(raw) = pending.pop() {
            let key = (raw.event_type.clone(), raw.schema_version);
            let Some(upcast) = self.map.get(&key) else {
                done.push(raw);
                continue;
            };
            steps += 1;
            if steps > MAX_UPCAST_STEPS {
                return Err(CodecError::UpcastCycle(origin));
            }
            let out = upcast(raw).map_err(|message| CodecError::Upcast {
                event_type: key.0.clone(),
                schema_version: key.1,
                message,
            })?;
            // Keep the order of a split: process outputs front to back.
            pending.extend(out.into_iter().rev());
        }
        Ok(done)
    }
}

/// A decoded event with the recorded facts around it.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope<E> {
    /// Position of the recorded event (events split by an upcaster share it).
    pub position: Position,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its revision.
    pub revision: u64,
    /// Its id.
    pub id: EventId,
    /// Its metadata.
    pub metadata: Metadata,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// The event.
    pub event: E,
}

/// The JSON codec for events of type `E`, with its upcasters. Cheap to clone.
pub struct JsonCodec<E> {
    upcasters: Arc<Upcasters>,
    _marker: PhantomData<fn() -> E>,
}

impl<E> Clone for JsonCodec<E> {
    fn clone(&self) -> Self {
        JsonCodec {
            upcasters: self.upcasters.clone(),
            _marker: PhantomData,
        }
    }
}

impl<E> fmt::Debug for JsonCodec<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonCodec")
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<E: DomainEvent> Default for JsonCodec<E> {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE)
}

impl<E: DomainEvent> JsonCodec<E> {
    /// A codec without upcasters.
    pub fn new() -> Self {
        Self::with_upcasters(Upcasters::new())
    }

    /// A codec with `upcasters`.
    pub fn with_upcasters(upcasters: Upcasters) -> Self {
        JsonCodec {
            upcasters: Arc::new(upcasters),
            _marker: PhantomData,
        }
    }

    /// The upcasters.
    pub fn upcasters(&self) -> &Upcasters {
        &self.upcasters
    }

    /// Encodes `event` at the current schema version of its type.
    pub fn encode(&self, event: &E) -> Result<EncodedEvent, CodecError> {
        let mut data = Vec::with_capacity(64);
        let mut variant = None;
        let result = event.serialize(Untag {
            inner: &mut serde_json::Serializer::new(&mut data),
            variant: &mut variant,
        });
        match (result, variant) {
            (Ok(()), Some(event_type)) => Ok(EncodedEvent {
                event_type,
                schema_version: E::schema_version(event_type),
                data,
            }),
            (Ok(()), None) => Err(CodecError::NotAnEnumVariant(
                "a value that is not a variant",
            )),
            (Err(_), None) => Err(CodecError::NotAnEnumVariant(
                "a value that is not a variant",
            )),
            (Err(e), Some(_)) => Err(CodecError::Encode(e)),
        }
    }

    /// Encodes `event` as a [`NewEvent`] with `id` and `metadata`.
    pub fn to_new_event(
        &self,
        event: &E,
        id: EventId,
        metadata: Metadata,
    ) -> Result<NewEvent, CodecError> {
        let encoded = self.encode(event)?;
        Ok(NewEvent {
            id,
            event_type: encoded.event_type.to_owned(),
            schema_version: encoded.schema_version,
            content_type: JSON_CONTENT_TYPE.to_owned(),
            data: encoded.data.into(),
            metadata,
        })
    }

    /// Decodes `recorded`, upcasting as needed, and hands each resulting event to `sink` (an
    /// upcaster may turn one stored event into none or several).
    pub fn decode_with(
        &self,
        recorded: &RecordedEvent,
        mut sink: impl FnMut(E),
    ) -> Result<(), CodecError> {
        if !is_json(&recorded.content_type) {
            return Err(CodecError::UnsupportedContentType(
                recorded.content_type.clone(),
            ));
        }
        let (event_type, version) = (recorded.event_type.as_str(), recorded.schema_version);
        if !self.upcasters.applies_to(event_type, version) {
            check_version::<E>(event_type, version)?;
            let mut de = serde_json::Deserializer::from_slice(&recorded.data);
            let decoded = E::deserialize(TaggedDe {
                tag: event_type,
                de: &mut de,
            })
            .and_then(|e| de.end().map(|()| e))
            .map_err(|source| decode_error(event_type, version, source))?;
            sink(decoded);
            return Ok(());
        }
        let data: serde_json::Value = serde_json::from_slice(&recorded.data)
            .map_err(|source| decode_error(event_type, version, source))?;
        for raw in self
            .upcasters
            .upcast(RawEvent::new(event_type, version, data))?
        {
            check_version::<E>(&raw.event_type, raw.schema_version)?;
            let decoded = E::deserialize(TaggedDe {
                tag: &raw.event_type,
                de: raw.data,
            })
            .map_err(|source| decode_error(&raw.event_type, raw.schema_version, source))?;
            sink(decoded);
        }
        Ok(())
    }

    /// Decodes `recorded` into the events it stands for now (usually exactly one).
    pub fn decode(&self, recorded: &RecordedEvent) -> Result<Vec<E>, CodecError> {
        let mut out = Vec::with_capacity(1);
        self.decode_with(recorded, |e| out.push(e))?;
        Ok(out)
    }

    /// Decodes a stream of recorded events into envelopes, upcasting each.
    pub fn decode_stream(
        &self,
        events: EventStream,
    ) -> impl Stream<Item = Result<Envelope<E>, LoadError>> + Send + use<E> {
        let codec = self.clone();
        events.flat_map(move |item| {
            let out: Vec<Result<Envelope<E>, LoadError>> = match item {
                Err(e) => vec![Err(e.into())],
                Ok(recorded) => {
                    let mut out = Vec::with_capacity(1);
                    match codec.decode_with(&recorded, |event| {
                        out.push(Ok(Envelope {
                            position: recorded.position,
                            stream_id: recorded.stream_id.clone(),
                            revision: recorded.revision,
                            id: recorded.id,
                            metadata: recorded.metadata.clone(),
                            recorded_at: recorded.recorded_at,
                            event,
                        }))
                    }) {
                        Ok(()) => out,
                        Err(e) => vec![Err(e.into())],
                    }
                }
            };
            futures_util::stream::iter(out)
        })
    }
}

fn check_version<E: DomainEvent>(event_type: &str, found: u16) -> Result<(), CodecError> {
    let expected = E::schema_version(event_type);
    if found != expected {
        return Err(CodecError::SchemaVersion {
            event_type: event_type.to_owned(),
            found,
            expected,
        });
    }
    Ok(())
}

fn decode_error(event_type: &str, schema_version: u16, source: serde_json::Error) -> CodecError {
    CodecError::Decode {
        event_type: event_type.to_owned(),
        schema_version,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Serialization without the enum tag: captures the variant name, writes only its content.

struct Untag<'v, S> {
    inner: S,
    variant: &'v mut Option<&'static str>,
}

fn not_a_variant<E: ser::Error>() -> E {
    E::custom("events must be enum variants")
}

struct TupleContent<T>(T);
struct StructContent<T>(T);

impl<T: SerializeTuple> ser::SerializeTupleVariant for TupleContent<T> {
    type Ok = T::Ok;
    type Error = T::Error;
    fn serialize_field<V: ?Sized + Serialize>(&mut self, value: &V) -> Result<(), T::Error> {
        self.0.serialize_element(value)
    }
    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

impl<T: SerializeStruct> ser::SerializeStructVariant for StructContent<T> {
    type Ok = T::Ok;
    type Error = T::Error;
    fn serialize_field<V: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &V,
    ) -> Result<(), T::Error> {
        self.0.serialize_field(key, value)
    }
    fn skip_field(&mut self, key: &'static str) -> Result<(), T::Error> {
        self.0.skip_field(key)
    }
    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

macro_rules! reject {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, Self::Error> {
            Err(not_a_variant())
        })*
    };
}

impl<S: Serializer> Serializer for Untag<'_, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = TupleContent<S::SerializeTuple>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = StructContent<S::SerializeStruct>;

    reject! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_none(); serialize_unit(); serialize_unit_struct(&'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(not_a_variant())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        *self.variant = Some(variant);
        // A unit variant's payload is an empty object, friendlier to readers than `null`.
        ser::SerializeMap::end(self.inner.serialize_map(Some(0))?)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        // A wrapper around the event enum: look through it.
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        *self.variant = Some(variant);
        value.serialize(self.inner)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Err(not_a_variant())
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, S::Error> {
        Err(not_a_variant())
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Err(not_a_variant())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        *self.variant = Some(variant);
        Ok(TupleContent(self.inner.serialize_tuple(len)?))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Err(not_a_variant())
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Err(not_a_variant())
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        *self.variant = Some(variant);
        Ok(StructContent(self.inner.serialize_struct(name, len)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization with the tag supplied from outside: the stored type names the variant.

struct TaggedDe<'t, D> {
    tag: &'t str,
    de: D,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for TaggedDe<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("events must be enum variants"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> EnumAccess<'de> for TaggedDe<'_, D> {
    type Error = D::Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), D::Error> {
        let variant = seed.deserialize(self.tag.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de, D: Deserializer<'de>> VariantAccess<'de> for TaggedDe<'_, D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        IgnoredAny::deserialize(self.de).map(|_| ())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, D::Error> {
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Ev {
        #[serde(rename = "Opened")]
        Opened {
            owner: String,
        },
        Amount(u64),
        Pair(u8, u8),
        Unit,
    }
    impl DomainEvent for Ev {
        fn schema_version(event_type: &str) -> u16 {
            if event_type == "Opened" { 2 } else { 1 }
        }
    }

    fn recorded(event_type: &str, version: u16, data: &str) -> RecordedEvent {
        let mut e = NewEvent::raw(event_type, JSON_CONTENT_TYPE, data.as_bytes().to_vec());
        e.schema_version = version;
        RecordedEvent::from_new(
            e,
            StreamId::new("t-1").unwrap(),
            0,
            Position(1),
            Timestamp::EPOCH,
        )
    }

    #[test]
    fn round_trips_every_variant_shape() {
        let codec = JsonCodec::<Ev>::new();
        for ev in [
            Ev::Opened { owner: "x".into() },
            Ev::Amount(7),
            Ev::Pair(1, 2),
            Ev::Unit,
        ] {
            let enc = codec.encode(&ev).unwrap();
            let rec = recorded(
                enc.event_type,
                enc.schema_version,
                std::str::from_utf8(&enc.data).unwrap(),
            );
            assert_eq!(codec.decode(&rec).unwrap(), vec![ev]);
        }
        assert_eq!(codec.encode(&Ev::Unit).unwrap().data, b"{}");
        assert_eq!(codec.encode(&Ev::Amount(7)).unwrap().data, b"7");
    }

    #[test]
    fn rejects_wrong_version_unknown_type_and_trailing_garbage() {
        let codec = JsonCodec::<Ev>::new();
        assert!(matches!(
            codec.decode(&recorded("Opened", 1, r#"{"owner":"x"}"#)),
            Err(CodecError::SchemaVersion {
                found: 1,
                expected: 2,
                ..
            })
        ));
        assert!(matches!(
            codec.decode(&recorded("Nope", 1, "{}")),
            Err(CodecError::Decode { .. })
        ));
        assert!(matches!(
            codec.decode(&recorded("Amount", 1, "7 8")),
            Err(CodecError::Decode { .. })
        ));
        let mut rec = recorded("Amount", 1, "7");
        rec.content_type = "application/octet-stream".into();
        assert!(matches!(
            codec.decode(&rec),
            Err(CodecError::UnsupportedContentType(_))
        ));
    }

    #[test]
    fn upcaster_chain_renames_splits_and_drops() {
        let upcasters = Upcasters::new()
            .register("Created", 1, |e: RawEvent| {
                // v1 "Created" became "Opened" v1, plus an initial deposit split off.
                let owner = e.data["name"].clone();
                let amount = e.data["initial"].clone();
                Ok(vec![
                    RawEvent::new("Opened", 1, json!({ "owner": owner })),
                    RawEvent::new("Amount", 1, amount),
                ])
            })
            .register("Opened", 1, |mut e: RawEvent| {
                e.schema_version = 2;
                Ok(vec![e])
            })
            .register("Legacy", 1, |_| Ok(vec![]));
        let codec = JsonCodec::<Ev>::with_upcasters(upcasters);
        assert_eq!(
            codec
                .decode(&recorded("Created", 1, r#"{"name":"ann","initial":5}"#))
                .unwrap(),
            vec![
                Ev::Opened {
                    owner: "ann".into()
                },
                Ev::Amount(5)
            ]
        );
        assert!(
            codec
                .decode(&recorded("Legacy", 1, "{}"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn upcaster_cycles_and_failures_are_errors() {
        let looping = Upcasters::new().register("A", 1, |e: RawEvent| Ok(vec![e]));
        assert!(matches!(
            looping.upcast(RawEvent::new("A", 1, json!({}))),
            Err(CodecError::UpcastCycle(_))
        ));
        let failing = Upcasters::new().register("A", 1, |_| Err("bad data".to_owned()));
        assert!(matches!(
            failing.upcast(RawEvent::new("A", 1, json!({}))),
            Err(CodecError::Upcast { message, .. }) if message == "bad data"
        ));
    }

    #[test]
    fn non_enum_events_are_rejected() {
        #[derive(Serialize, Deserialize)]
        struct Plain {
            a: u8,
        }
        impl DomainEvent for Plain {}
        assert!(matches!(
            JsonCodec::<Plain>::new().encode(&Plain { a: 1 }),
            Err(CodecError::NotAnEnumVariant(_))
        ));
    }
}
