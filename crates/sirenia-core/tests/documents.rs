//! Document read models on the in-memory store: reads within a page see the page's writes,
//! refusals are typed handler errors (a NUL character, a collection the projection does not
//! own), and a refused page commits nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sirenia_core::projection::{
    FailurePolicy, HandlerError, OnFailure, ProjectionOptions, Projector,
};
use sirenia_core::transactional::{DocumentError, DocumentProjection, Documents};
use sirenia_core::{
    EventStore, ExpectedVersion, InMemoryStore, NewEvent, RecordedEvent, StoreAdmin, StreamId,
    StreamWrite,
};

/// Keeps a running list per stream; `{"op": …}` asks for a refusal or a clear.
struct Lists;

impl DocumentProjection for Lists {
    fn collections(&self) -> Vec<String> {
        vec!["lists".to_owned()]
    }

    async fn apply(
        &mut self,
        docs: &mut Documents<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = event.json()?;
        let stream = event.stream_id.as_str();
        match data["op"].as_str() {
            Some("nul") => docs.put("lists", stream, &vec!["a\0b"])?,
            Some("foreign") => docs.put("other", stream, &1)?,
            Some("clear") => docs.clear("lists")?,
            _ => {
                let mut list: Vec<String> = docs.get("lists", stream).await?.unwrap_or_default();
                list.push(data["item"].as_str().unwrap_or_default().to_owned());
                docs.put("lists", stream, &list)?;
            }
        }
        Ok(())
    }
}

async fn append(store: &InMemoryStore, stream: &str, data: serde_json::Value) {
    store
        .append(vec![StreamWrite::new(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::json("Op", &data)],
        )])
        .await
        .unwrap();
}

fn park() -> ProjectionOptions {
    ProjectionOptions {
        policy: FailurePolicy {
            retries: 0,
            on_failure: OnFailure::Park,
            ..FailurePolicy::default()
        },
        ..ProjectionOptions::default()
    }
}

#[tokio::test]
async fn reads_see_the_page_and_refusals_are_parked_without_effect() {
    let store = InMemoryStore::new();
    append(&store, "l-1", serde_json::json!({"item": "x"})).await;
    append(&store, "l-1", serde_json::json!({"item": "y"})).await;
    append(&store, "l-2", serde_json::json!({"op": "nul"})).await;
    append(&store, "l-2", serde_json::json!({"op": "foreign"})).await;
    append(&store, "l-1", serde_json::json!({"item": "z"})).await;
    let target = store.document_projection("lists", Lists);
    let mut projector = Projector::new("lists", store.clone(), target, park()).unwrap();
    projector.catch_up(|_| {}).await.unwrap();
    // One page: the second and third items were read from the page's own writes.
    assert_eq!(
        store.document("lists", "l-1").await.unwrap(),
        Some(serde_json::json!(["x", "y", "z"]))
    );
    assert_eq!(store.document("lists", "l-2").await.unwrap(), None);
    assert_eq!(store.document("other", "l-2").await.unwrap(), None);
    let parked = store.parked("lists").await.unwrap();
    assert_eq!(parked.len(), 2);
    assert!(parked[0].error.contains("NUL"), "{}", parked[0].error);
    assert!(
        parked[1].error.contains("not one of"),
        "{}",
        parked[1].error
    );

    // A clear, then writes in the same page.
    append(&store, "l-1", serde_json::json!({"op": "clear"})).await;
    append(&store, "l-3", serde_json::json!({"item": "w"})).await;
    projector.catch_up(|_| {}).await.unwrap();
    let all = store.documents("lists", None, 10).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, "l-3");
    assert_eq!(all[0].body, serde_json::json!(["w"]));
}

#[test]
fn document_keys_are_checked() {
    use sirenia_core::transactional::validate_document_key;
    assert!(validate_document_key("collection", "accounts@2").is_ok());
    assert!(matches!(
        validate_document_key("id", ""),
        Err(DocumentError::InvalidName { .. })
    ));
    assert!(matches!(
        validate_document_key("id", &"x".repeat(256)),
        Err(DocumentError::InvalidName { .. })
    ));
    assert!(matches!(
        validate_document_key("collection", "a\nb"),
        Err(DocumentError::InvalidName { .. })
    ));
}
