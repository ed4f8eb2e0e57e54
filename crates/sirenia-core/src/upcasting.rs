//! Upcasting on the raw read paths, and upcasters declared as data.
//!
//! Typed reads (aggregate loads, projections and process managers decoding with a
//! [`JsonCodec`](crate::JsonCodec)) upcast in the codec. Raw reads — a store's stream reads, its
//! global log and subscriptions, the `sirenia` CLI — upcast here: [`Upcasters::read_stream`],
//! [`Upcasters::read_all`] and [`Upcasters::subscribe`] return what a store's own methods return,
//! with every event as today's code writes it. An event an upcaster splits keeps its position,
//! revision and metadata in every part; the first part keeps its id and part `k` gets
//! [`EventId::derived`]`(id, k)`, so ids stay unique. A type filter applies to the upcast types.
//!
//! [`UpcastRule`]s declare the common upcasters as data (JSON), so an application and the CLI
//! can share one file:
//!
//! ```
//! use serde_json::json;
//! use sirenia_core::upcasting::UpcastRule;
//! use sirenia_core::{RawEvent, Upcasters};
//!
//! let rules: Vec<UpcastRule> = serde_json::from_value(json!([
//!     // v1 called the field `qty`; v2 calls it `quantity` and has a `unit`.
//!     {"event_type": "ItemAdded", "schema_version": 1,
//!      "rename_fields": {"qty": "quantity"}, "default_fields": {"unit": "piece"}},
//!     // v2 → v3: the type got a new name.
//!     {"event_type": "ItemAdded", "schema_version": 2, "rename_type": "LineAdded"},
//!     // Nothing reads this any more.
//!     {"event_type": "CartViewed", "schema_version": 1, "drop": true},
//! ]))?;
//! let upcasters = Upcasters::from_rules(&rules)?;
//! let out = upcasters.upcast(RawEvent::new("ItemAdded", 1, json!({"sku": "a", "qty": 2})))?;
//! assert_eq!(
//!     out,
//!     vec![RawEvent::new("LineAdded", 3, json!({"sku": "a", "quantity": 2, "unit": "piece"}))]
//! );
//! assert!(upcasters.upcast(RawEvent::new("CartViewed", 1, json!({})))?.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::codec::{RawEvent, Upcasters, is_json};
use crate::error::{CodecError, StoreError};
use crate::event::RecordedEvent;
use crate::id::{EventId, StreamId};
use crate::store::{
    EventStore, EventStream, ReadAll, ReadStream, Subscribe, Subscription, SubscriptionItem,
};

/// An upcaster declared as data: what to do with events of `event_type` at `schema_version`.
///
/// Either `drop` the event, `split` it into parts, or change it: rename, remove and default
/// fields (in that order), rename the type, and set the version to `to_version` (default: one
/// more). Field changes need a JSON object payload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpcastRule {
    /// The stored type it applies to.
    pub event_type: String,
    /// The stored schema version it applies to.
    pub schema_version: u16,
    /// The version the result has (default `schema_version + 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<u16>,
    /// The type the result has (default: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename_type: Option<String>,
    /// Fields to rename, old name → new name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename_fields: BTreeMap<String, String>,
    /// Fields to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_fields: Vec<String>,
    /// Fields to add with these values where absent.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub default_fields: serde_json::Map<String, serde_json::Value>,
    /// Drop the event: it stands for nothing now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop: bool,
    /// Split the event into these parts, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitPart>,
}

/// One part of a split event: a type, a version and the fields it takes from the original.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPart {
    /// Its type.
    pub event_type: String,
    /// Its schema version.
    pub schema_version: u16,
    /// The fields of the original it carries (absent ones are left out).
    #[serde(default)]
    pub fields: Vec<String>,
}

impl UpcastRule {
    fn invalid(&self, message: impl Into<String>) -> CodecError {
        CodecError::InvalidRule {
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            message: message.into(),
        }
    }

    /// Checks the rule is one of drop, split or change, and says how.
    fn check(&self) -> Result<(), CodecError> {
        let changes = self.to_version.is_some()
            || self.rename_type.is_some()
            || !self.rename_fields.is_empty()
            || !self.remove_fields.is_empty()
            || !self.default_fields.is_empty();
        match (self.drop, !self.split.is_empty(), changes) {
            (true, true, _) | (true, _, true) | (_, true, true) => Err(self
                .invalid("a rule either drops, splits or changes an event, not several of these")),
            (false, false, false) => Err(self.invalid("the rule does nothing")),
            _ if self.event_type.is_empty() => Err(self.invalid("the event type is empty")),
            (false, false, true)
                if self.rename_type.is_none()
                    && self.to_version.is_some_and(|v| v <= self.schema_version) =>
            {
                Err(self.invalid("a change of the same type must raise the schema version"))
            }
            (false, false, true)
                if self.to_version.is_none() && self.schema_version == u16::MAX =>
            {
                Err(self.invalid("no version follows 65535"))
            }
            _ => Ok(()),
        }
    }

    fn apply(&self, mut raw: RawEvent) -> Result<Vec<RawEvent>, String> {
        if self.drop {
            return Ok(Vec::new());
        }
        let object = raw
            .data
            .as_object()
            .ok_or_else(|| "the payload is not a JSON object".to_owned());
        if !self.split.is_empty() {
            let object = object?;
            return Ok(self
                .split
                .iter()
                .map(|part| {
                    let fields: serde_json::Map<String, serde_json::Value> = part
                        .fields
                        .iter()
                        .filter_map(|f| object.get(f).map(|v| (f.clone(), v.clone())))
                        .collect();
                    RawEvent::new(
                        part.event_type.clone(),
                        part.schema_version,
                        serde_json::Value::Object(fields),
                    )
                })
                .collect());
        }
        let touches_fields = !self.rename_fields.is_empty()
            || !self.remove_fields.is_empty()
            || !self.default_fields.is_empty();
        if touches_fields {
            object?;
            if let Some(object) = raw.data.as_object_mut() {
                for (old, new) in &self.rename_fields {
                    if let Some(value) = object.remove(old) {
                        object.insert(new.clone(), value);
                    }
                }
                for field in &self.remove_fields {
                    object.remove(field);
                }
                for (field, value) in &self.default_fields {
                    object.entry(field.clone()).or_insert_with(|| value.clone());
                }
            }
        }
        if let Some(name) = &self.rename_type {
            raw.event_type = name.clone();
        }
        // `check` refused a missing successor of u16::MAX.
        raw.schema_version = self
            .to_version
            .unwrap_or_else(|| raw.schema_version.saturating_add(1));
        Ok(vec![raw])
    }
}

impl Upcasters {
    /// Upcasters from declared rules (checked first; a later rule for the same type and
    /// version replaces an earlier one).
    pub fn from_rules(rules: &[UpcastRule]) -> Result<Self, CodecError> {
        let mut upcasters = Upcasters::new();
        for rule in rules {
            rule.check()?;
            let owned = rule.clone();
            upcasters =
                upcasters.register(rule.event_type.clone(), rule.schema_version, move |raw| {
                    owned.apply(raw)
                });
        }
        Ok(upcasters)
    }

    /// Upcasters from a JSON array of [`UpcastRule`]s.
    pub fn from_rules_json(json: &str) -> Result<Self, CodecError> {
        let rules: Vec<UpcastRule> =
            serde_json::from_str(json).map_err(|e| CodecError::InvalidRule {
                event_type: String::new(),
                schema_version: 0,
                message: format!("not a JSON array of upcast rules: {e}"),
            })?;
        Self::from_rules(&rules)
    }

    /// The events `recorded` stands for now: itself when no upcaster applies (or it is not
    /// JSON), else the upcast events, sharing its position, revision, stream, metadata and
    /// timestamp (ids as the [module docs](self) say).
    pub fn upcast_recorded(
        &self,
        recorded: RecordedEvent,
    ) -> Result<Vec<RecordedEvent>, CodecError> {
        if !is_json(&recorded.content_type)
            || !self.applies_to(&recorded.event_type, recorded.schema_version)
        {
            return Ok(vec![recorded]);
        }
        let data = serde_json::from_slice(&recorded.data).map_err(|source| CodecError::Decode {
            event_type: recorded.event_type.clone(),
            schema_version: recorded.schema_version,
            source,
        })?;
        let raw = RawEvent::new(recorded.event_type.clone(), recorded.schema_version, data);
        let mut out = Vec::with_capacity(1);
        for (k, part) in self.upcast(raw)?.into_iter().enumerate() {
            let id = match u32::try_from(k) {
                Ok(0) => recorded.id,
                // A split into more than u32::MAX parts is past MAX_UPCAST_STEPS long before.
                Ok(k) => EventId::derived(*recorded.id.as_uuid(), k),
                Err(_) => return Err(CodecError::UpcastCycle(recorded.event_type.clone())),
            };
            out.push(RecordedEvent {
                id,
                event_type: part.event_type,
                schema_version: part.schema_version,
                data: serde_json::to_vec(&part.data)
                    .map_err(CodecError::Encode)?
                    .into(),
                ..recorded.clone()
            });
        }
        Ok(out)
    }

    /// `store.read_stream(stream, options)`, upcast.
    pub fn read_stream<S: EventStore>(
        &self,
        store: &S,
        stream: &StreamId,
        options: ReadStream,
    ) -> EventStream {
        let limit = options.limit;
        let events = store.read_stream(
            stream,
            ReadStream {
                limit: None,
                ..options
            },
        );
        self.upcast_events(events, Vec::new(), limit)
    }

    /// `store.read_all(options)`, upcast; the filter's event types and the limit apply to the
    /// upcast events.
    pub fn read_all<S: EventStore>(&self, store: &S, mut options: ReadAll) -> EventStream {
        if self.is_empty() {
            return store.read_all(options);
        }
        let types = std::mem::take(&mut options.filter.event_types);
        let limit = options.limit.take();
        self.upcast_events(store.read_all(options), types, limit)
    }

    /// `store.subscribe(options)`, upcast; the filter's event types apply to the upcast events.
    pub fn subscribe<S: EventStore>(&self, store: &S, mut options: Subscribe) -> Subscription {
        if self.is_empty() {
            return store.subscribe(options);
        }
        let types = std::mem::take(&mut options.filter.event_types);
        let upcasters = self.clone();
        Box::pin(store.subscribe(options).flat_map(move |item| {
            let out: Vec<Result<SubscriptionItem, StoreError>> = match item {
                Ok(SubscriptionItem::Event(event)) => match upcasters.upcast_recorded(event) {
                    Ok(events) => events
                        .into_iter()
                        .filter(|e| wanted(&types, e))
                        .map(|e| Ok(SubscriptionItem::Event(e)))
                        .collect(),
                    Err(e) => vec![Err(StoreError::Upcast(e))],
                },
                other => vec![other],
            };
            futures_util::stream::iter(out)
        }))
    }

    fn upcast_events(
        &self,
        events: EventStream,
        types: Vec<String>,
        limit: Option<u64>,
    ) -> EventStream {
        let upcasters = self.clone();
        let upcast = events.flat_map(move |item| {
            let out: Vec<Result<RecordedEvent, StoreError>> = match item {
                Ok(event) => match upcasters.upcast_recorded(event) {
                    Ok(events) => events
                        .into_iter()
                        .filter(|e| wanted(&types, e))
                        .map(Ok)
                        .collect(),
                    Err(e) => vec![Err(StoreError::Upcast(e))],
                },
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(out)
        });
        match limit {
            Some(limit) => Box::pin(upcast.take(usize::try_from(limit).unwrap_or(usize::MAX))),
            None => Box::pin(upcast),
        }
    }
}

fn wanted(types: &[String], event: &RecordedEvent) -> bool {
    types.is_empty() || types.iter().any(|t| t == &event.event_type)
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;
    use serde_json::json;

    use super::*;
    use crate::{EventFilter, ExpectedVersion, InMemoryStore, NewEvent, StreamWrite};

    fn rules() -> Vec<UpcastRule> {
        serde_json::from_value(json!([
            {"event_type": "Moved", "schema_version": 1, "split": [
                {"event_type": "Left", "schema_version": 1, "fields": ["from"]},
                {"event_type": "Arrived", "schema_version": 1, "fields": ["to"]}]},
            {"event_type": "Noted", "schema_version": 1, "drop": true},
            {"event_type": "Paid", "schema_version": 1, "to_version": 2,
             "rename_fields": {"amount": "cents"}, "remove_fields": ["legacy"]}
        ]))
        .unwrap()
    }

    #[test]
    fn rules_that_do_several_things_or_nothing_are_refused() {
        for bad in [
            json!({"event_type": "A", "schema_version": 1}),
            json!({"event_type": "A", "schema_version": 1, "drop": true, "to_version": 2}),
            json!({"event_type": "A", "schema_version": 2, "to_version": 2}),
            json!({"event_type": "", "schema_version": 1, "drop": true}),
        ] {
            let rule: UpcastRule = serde_json::from_value(bad.clone()).unwrap();
            assert!(
                matches!(
                    Upcasters::from_rules(&[rule]),
                    Err(CodecError::InvalidRule { .. })
                ),
                "{bad} must be refused"
            );
        }
        assert!(Upcasters::from_rules_json(r#"[{"event_type": "A", "nope": 1}]"#).is_err());
    }

    #[test]
    fn a_field_change_of_a_payload_that_is_not_an_object_is_an_upcast_error() {
        let upcasters = Upcasters::from_rules(&rules()).unwrap();
        assert!(matches!(
            upcasters.upcast(RawEvent::new("Paid", 1, json!([1]))),
            Err(CodecError::Upcast { .. })
        ));
    }

    #[tokio::test]
    async fn raw_reads_and_subscriptions_upcast_split_drop_and_filter() {
        let store = InMemoryStore::new();
        let stream = StreamId::new("trip-1").unwrap();
        let events = vec![
            NewEvent::json("Moved", &json!({"from": "A", "to": "B", "by": "car"})),
            NewEvent::json("Noted", &json!({"text": "x"})),
            NewEvent::json("Paid", &json!({"amount": 5, "legacy": true})),
        ];
        let moved_id = events[0].id;
        store
            .append(vec![StreamWrite::new(
                stream.clone(),
                ExpectedVersion::NoStream,
                events,
            )])
            .await
            .unwrap();
        let upcasters = Upcasters::from_rules(&rules()).unwrap();
        let read: Vec<RecordedEvent> = upcasters
            .read_stream(&store, &stream, ReadStream::forward())
            .try_collect()
            .await
            .unwrap();
        let seen: Vec<(&str, u16, u64, serde_json::Value)> = read
            .iter()
            .map(|e| {
                (
                    e.event_type.as_str(),
                    e.schema_version,
                    e.revision,
                    e.json().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("Left", 1, 0, json!({"from": "A"})),
                ("Arrived", 1, 0, json!({"to": "B"})),
                ("Paid", 2, 2, json!({"cents": 5})),
            ]
        );
        assert_eq!(read[0].id, moved_id);
        assert_eq!(read[1].id, EventId::derived(*moved_id.as_uuid(), 1));
        assert_eq!(read[0].position, read[1].position);
        // The type filter applies to upcast types, the limit to upcast events.
        let paid: Vec<RecordedEvent> = upcasters
            .read_all(
                &store,
                ReadAll::forward().filter(EventFilter::all().event_type("Paid")),
            )
            .try_collect()
            .await
            .unwrap();
        assert_eq!(paid.len(), 1);
        assert_eq!(paid[0].schema_version, 2);
        let first_two: Vec<RecordedEvent> = upcasters
            .read_all(&store, ReadAll::forward().limit(2))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(first_two.len(), 2);
        let mut sub = upcasters.subscribe(
            &store,
            Subscribe::from_start().filter(EventFilter::all().event_type("Arrived")),
        );
        match sub.next().await {
            Some(Ok(SubscriptionItem::Event(e))) => assert_eq!(e.event_type, "Arrived"),
            other => panic!("expected the Arrived part, got {other:?}"),
        }
        assert!(matches!(
            sub.next().await,
            Some(Ok(SubscriptionItem::CaughtUp { .. }))
        ));
        // A stored event an upcaster cannot handle is an error on the read, not a skip.
        store
            .append(vec![StreamWrite::new(
                stream.clone(),
                ExpectedVersion::Any,
                vec![NewEvent::json("Paid", &json!("not an object"))],
            )])
            .await
            .unwrap();
        let r: Result<Vec<RecordedEvent>, StoreError> = upcasters
            .read_stream(&store, &stream, ReadStream::forward())
            .try_collect()
            .await;
        assert!(matches!(r, Err(StoreError::Upcast(_))), "{r:?}");
    }
}
