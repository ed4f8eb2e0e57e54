//! Shared by the NATS test binaries.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::time::Duration;

use futures_util::StreamExt;

/// Every message of `stream`, in order.
pub async fn all_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::Message> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let before = out.len();
        while let Some(m) = batch.next().await {
            out.push(m.unwrap());
        }
        if out.len() == before {
            return out;
        }
    }
}
