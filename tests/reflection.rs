//! Server reflection over a real socket: each server lists only its own service and health
//! (not every service in our proto file), through reflection v1 and the older v1alpha that
//! grpcurl before 1.9 and several GUI clients still use.

mod common;

use common::servers;
use tonic_reflection::pb::{v1, v1alpha};

/// `async fn $name(addr, server) -> Vec<String>`: the services `addr` lists, sorted, through the
/// reflection protocol version `$v` (the two versions' generated types differ only by module).
macro_rules! list_services {
    ($name:ident, $v:ident) => {
        async fn $name(addr: &str, server: logplayer::grpc::Expected) -> Vec<String> {
            let channel = logplayer::grpc::connect(addr, &server).await.unwrap();
            let mut client = $v::server_reflection_client::ServerReflectionClient::new(channel);
            let list = $v::server_reflection_request::MessageRequest::ListServices(String::new());
            let request = $v::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(list),
            };
            let mut answers = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner();
            let answer = answers.message().await.unwrap().expect("an answer");
            use $v::server_reflection_response::MessageResponse;
            let Some(MessageResponse::ListServicesResponse(l)) = answer.message_response else {
                panic!("not a service list: {answer:?}");
            };
            let mut names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
    };
}

list_services!(list_v1, v1);
list_services!(list_v1alpha, v1alpha);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_lists_only_its_own_service_in_both_reflection_versions() {
    let (_dir, c, _log) = servers(1).await;
    let logstore = ["grpc.health.v1.Health", "logplayer.v1.LogStore"];
    let shard = ["grpc.health.v1.Health", "logplayer.v1.Shard"];
    assert_eq!(
        list_v1(c.logstore.addr(), logplayer::grpc::Expected::Log).await,
        logstore
    );
    assert_eq!(
        list_v1alpha(c.logstore.addr(), logplayer::grpc::Expected::Log).await,
        logstore
    );
    assert_eq!(
        list_v1(c.shards[0].addr(), logplayer::grpc::Expected::AnyShard).await,
        shard
    );
    assert_eq!(
        list_v1alpha(c.shards[0].addr(), logplayer::grpc::Expected::AnyShard).await,
        shard
    );
}
