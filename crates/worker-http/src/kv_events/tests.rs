use super::*;
use serde_json::{json, Value};
use std::time::Duration;
use zeromq::{DealerSocket, SubSocket};

fn stored() -> KvEvent {
    KvEvent::Stored {
        hashes: vec![u64::MAX - 1, 7],
        parent: Some(3),
        token_ids: (0..2 * KV_BLOCK as u32).collect(),
    }
}

fn batch() -> Vec<KvEvent> {
    vec![
        stored(),
        KvEvent::Removed { hashes: vec![3] },
        KvEvent::Cleared,
    ]
}

/// The payload as a JSON value (MessagePack maps, arrays, strings and integers map onto it).
fn decode(payload: &[u8]) -> Value {
    rmp_serde::from_slice(payload).expect("MessagePack")
}

#[test]
fn a_batch_is_the_array_vllm_router_decodes() {
    let payload = encode_batch(&batch(), 1.5).unwrap();
    let tokens: Vec<u32> = (0..32).collect();
    assert_eq!(
        decode(&payload),
        json!([
            1.5,
            [
                {
                    "type": "BlockStored",
                    "block_hashes": [u64::MAX - 1, 7],
                    "parent_block_hash": 3,
                    "token_ids": tokens,
                    "block_size": 16,
                    "lora_id": null,
                    "medium": "GPU",
                    "lora_name": null
                },
                {"type": "BlockRemoved", "block_hashes": [3], "medium": "GPU"},
                {"type": "AllBlocksCleared"}
            ],
            0
        ])
    );
    // The tag comes first, as msgspec writes it, and hashes are unsigned integers.
    assert_eq!(&payload[..3], &[0x93, 0xcb, 0x3f], "[ts (float 64), ...]");
    let first_event = &payload[11..]; // after [ts and the events' array header
    assert_eq!(first_event[0], 0x88, "a map of 8 fields");
    assert_eq!(&first_event[1..6], b"\xa4type");
    let start = KvEvent::Stored {
        hashes: vec![1],
        parent: None,
        token_ids: vec![5; KV_BLOCK],
    };
    let value = decode(&encode_batch(&[start], 0.0).unwrap());
    assert_eq!(value[1][0]["parent_block_hash"], Value::Null);
}

async fn publisher(replay: bool) -> KvEventPublisher {
    let config = KvEventsConfig {
        endpoint: "tcp://*:0".into(),
        replay_endpoint: replay.then(|| "tcp://127.0.0.1:0".into()),
    };
    KvEventPublisher::bind(&config).await.expect("bind")
}

/// Starts the publishing tasks fed by the returned sender, as `start` does with an engine.
fn run(publisher: KvEventPublisher) -> mpsc::Sender<Vec<KvEvent>> {
    let (tx, rx) = mpsc::channel(16);
    let kept = Kept::default();
    if let Some(replay) = publisher.replay {
        tokio::spawn(serve_replay(replay, kept.clone()));
    }
    tokio::spawn(publish(publisher.publish, rx, kept));
    tx
}

fn parts(message: ZmqMessage) -> Vec<Vec<u8>> {
    message.into_vec().into_iter().map(|b| b.to_vec()).collect()
}

fn seq_of(frame: &[u8]) -> i64 {
    i64::from_be_bytes(frame.try_into().expect("8 bytes"))
}

#[tokio::test]
async fn a_subscriber_gets_numbered_batches_and_replay_sends_them_again() {
    let publisher = publisher(true).await;
    let endpoint = publisher.endpoint().replace("0.0.0.0", "127.0.0.1");
    assert!(endpoint.starts_with("tcp://127.0.0.1:") && !endpoint.ends_with(":0"));
    let replay_endpoint = publisher.replay_endpoint().unwrap().to_string();
    let tx = run(publisher);

    let mut sub = SubSocket::new();
    sub.connect(&endpoint).await.unwrap();
    sub.subscribe("").await.unwrap();
    // PUB drops what it sends before the subscription arrives: probe until one gets through.
    let mut first = None;
    for _ in 0..200 {
        tx.send(vec![KvEvent::Removed { hashes: vec![1] }])
            .await
            .unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {
            first = Some(parts(m.unwrap()));
            break;
        }
    }
    let first = first.expect("the subscription took");
    assert_eq!(first.len(), 3, "[topic, seq, payload]");
    assert!(first[0].is_empty(), "no topic");
    let mut seq = seq_of(&first[1]);
    // Drain the probes still in flight, then the real batch.
    tx.send(batch()).await.unwrap();
    let got = loop {
        let m = parts(sub.recv().await.unwrap());
        assert_eq!(seq_of(&m[1]), seq + 1, "numbered without gaps");
        seq += 1;
        if decode(&m[2])[1].as_array().unwrap().len() == 3 {
            break m;
        }
    };
    let value = decode(&got[2]);
    assert_eq!(value[1][0]["type"], "BlockStored");
    assert_eq!(value[1][1]["type"], "BlockRemoved");
    assert_eq!(value[1][2]["type"], "AllBlocksCleared");

    // A replay from the batch's sequence number: that batch, then the end marker.
    let mut dealer = DealerSocket::new();
    dealer.connect(&replay_endpoint).await.unwrap();
    let mut request = ZmqMessage::from(Bytes::new());
    request.push_back(Bytes::copy_from_slice(&(seq as u64).to_be_bytes()));
    dealer.send(request).await.unwrap();
    let again = parts(dealer.recv().await.unwrap());
    assert_eq!(again.len(), 4, "[delimiter, topic, seq, payload]");
    assert!(again[0].is_empty() && again[1].is_empty());
    assert_eq!(seq_of(&again[2]), seq);
    assert_eq!(again[3], got[2], "the same payload");
    let end = parts(dealer.recv().await.unwrap());
    assert_eq!(seq_of(&end[2]), -1);
    assert!(end[3].is_empty());
}

#[tokio::test]
async fn a_bad_address_or_a_port_in_use_fails_at_bind() {
    let taken = publisher(false).await;
    let config = KvEventsConfig {
        endpoint: taken.endpoint().to_string(),
        replay_endpoint: None,
    };
    let err = KvEventPublisher::bind(&config).await.err().unwrap();
    assert!(err.to_string().contains("cannot bind"), "{err}");
    for endpoint in ["localhost:5557", "tcp://*:notaport"] {
        let config = KvEventsConfig {
            endpoint: endpoint.into(),
            replay_endpoint: None,
        };
        assert!(KvEventPublisher::bind(&config).await.is_err(), "{endpoint}");
    }
}
