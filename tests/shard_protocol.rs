//! The shard's protocol rules over a real socket, independent of the player: a resent
//! batch is skipped, a gap is refused, and a stale epoch is fenced. The fault tests cannot
//! see the shard's dedup (the player never resends an acknowledged entry there), so this
//! test pins it on its own.

use logplayer::proto::shard_client::ShardClient;
use logplayer::proto::{
    Batch, DeliverRequest, Hello, Mutation, ShardEntry, deliver_request, deliver_response,
    mutation::Op,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn add(index: u64, prev: u64, n: i64) -> ShardEntry {
    ShardEntry {
        index,
        prev_index: prev,
        mutations: vec![Mutation {
            key: b"c".to_vec().into(),
            op: Some(Op::Add(n)),
        }],
        ..Default::default()
    }
}

fn batch(entries: Vec<ShardEntry>) -> DeliverRequest {
    DeliverRequest {
        msg: Some(deliver_request::Msg::Batch(Batch { entries })),
    }
}

fn hello(epoch: u64) -> DeliverRequest {
    DeliverRequest {
        msg: Some(deliver_request::Msg::Hello(Hello {
            epoch,
            player_id: "test".into(),
            log_id: "00000000-0000-4000-8000-000000000001".into(),
            shard_id: "s0".into(),
            max_entry_bytes: 4 * 1024 * 1024,
            slots: logplayer::proto::SlotRange::all(),
        })),
    }
}

async fn ack(inbound: &mut tonic::Streaming<logplayer::proto::DeliverResponse>) -> u64 {
    match inbound.message().await.unwrap().unwrap().msg {
        Some(deliver_response::Msg::Ack(a)) => a.applied_index,
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test]
async fn a_real_shard_skips_resent_entries_refuses_gaps_and_fences_stale_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_logplayer"));
    let c = logplayer::harness::cluster::Cluster::start(dir.path(), &bin, 1)
        .await
        .unwrap();
    let addr = c.shards[0].addr().to_owned();
    let channel = logplayer::grpc::connect(&addr, &logplayer::grpc::Expected::AnyShard)
        .await
        .unwrap();
    let client = ShardClient::new(channel);
    // A Deliver stream opened with an epoch-2 Hello.
    let open = || {
        let mut client = client.clone();
        async move {
            let (tx, rx) = mpsc::channel(8);
            tx.send(hello(2)).await.unwrap();
            let inbound = client
                .deliver(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            (tx, inbound)
        }
    };

    let (tx, mut inbound) = open().await;
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.msg,
        Some(deliver_response::Msg::Welcome(w)) if w.applied_index == 0 && w.highest_epoch == 2
    ));
    tx.send(batch(vec![add(1, 0, 1), add(2, 1, 10)]))
        .await
        .unwrap();
    assert_eq!(ack(&mut inbound).await, 2);
    // A resend of 1 and 2 plus a new 3, on a new stream as a player resends: only 3
    // applies. (On the same stream an index going back is refused: see status_codes.rs.)
    drop((tx, inbound));
    let (tx, mut inbound) = open().await;
    inbound.message().await.unwrap().unwrap();
    tx.send(batch(vec![add(1, 0, 1), add(2, 1, 10), add(3, 2, 100)]))
        .await
        .unwrap();
    assert_eq!(ack(&mut inbound).await, 3);
    // Entry 5 says entry 4 touched this shard, but 4 never came: a gap.
    tx.send(batch(vec![add(5, 4, 1000)])).await.unwrap();
    assert_eq!(ack(&mut inbound).await, 3);
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert_eq!(
        status.metadata().get("logplayer-error").unwrap(),
        "gap",
        "{status:?}"
    );

    let state = logplayer::client::ShardConn::connect(&addr, None)
        .await
        .unwrap()
        .dump()
        .await
        .unwrap();
    assert_eq!(state, vec![r#"{"counter":111,"key":"c"}"#.to_string()]);

    // An older epoch is fenced, with the reason the player steps down on.
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello(1)).await.unwrap();
    let status = client
        .clone()
        .deliver(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.metadata().get("logplayer-error").unwrap(), "fenced");
}
