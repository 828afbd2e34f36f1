//! What operators see with grpcurl: health per service and reflection v1 and v1alpha.

use crate::support::broker::TestBroker;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICES: [&str; 3] = [
    "credentialbroker.v1.CredentialService",
    "credentialbroker.v1.MembershipService",
    "credentialbroker.v1.OAuthAppService",
];

#[tokio::test]
async fn health_is_serving_for_the_server_and_each_service() {
    let b = TestBroker::sqlite().await;
    let mut health = HealthClient::new(b.channel().await);
    for service in [""].into_iter().chain(SERVICES) {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// Defines `$name`: one reflection round trip over a channel with the `$version` protocol, the
/// reply to `request`. v1 and v1alpha have the same shape in separate generated types.
macro_rules! reflection_call {
    ($name:ident, $version:ident) => {
        async fn $name(
            channel: tonic::transport::Channel,
            request: tonic_reflection::pb::$version::server_reflection_request::MessageRequest,
        ) -> Option<tonic_reflection::pb::$version::server_reflection_response::MessageResponse> {
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let mut stream = ServerReflectionClient::new(channel)
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().unwrap().message_response
        }
    };
}

reflection_call!(reflect_v1, v1);
reflection_call!(reflect_v1alpha, v1alpha);

#[tokio::test]
async fn reflection_v1_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let b = TestBroker::sqlite().await;
    let reply = reflect_v1(
        b.channel().await,
        MessageRequest::ListServices(String::new()),
    )
    .await;
    let Some(MessageResponse::ListServicesResponse(list)) = reply else {
        panic!("unexpected reply")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
}

#[tokio::test]
async fn reflection_v1alpha_answers_older_grpcurl() {
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let b = TestBroker::sqlite().await;
    let reply = reflect_v1alpha(
        b.channel().await,
        MessageRequest::FileContainingSymbol(SERVICES[0].into()),
    )
    .await;
    let Some(MessageResponse::FileDescriptorResponse(files)) = reply else {
        panic!("unexpected reply")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_serves_the_error_detail_types() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let b = TestBroker::sqlite().await;
    let channel = b.channel().await;
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
    ] {
        let reply = reflect_v1(
            channel.clone(),
            MessageRequest::FileContainingSymbol(symbol.into()),
        )
        .await;
        let Some(MessageResponse::FileDescriptorResponse(files)) = &reply else {
            panic!("{symbol}: unexpected reply {reply:?}")
        };
        assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
    }
}

/// Sends pre-encoded bytes as the request message (to send what no well-behaved client would).
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn malformed_messages_are_invalid_argument_with_a_reason() {
    use crate::support::broker::{as_actor, error_details};
    let b = TestBroker::sqlite().await;
    let mut grpc = tonic::client::Grpc::new(b.channel().await);
    let cases: [(&str, &[u8]); 5] = [
        ("bad UTF-8 in a string", &[0x0a, 0x02, 0xff, 0xfe]),
        ("truncated varint", &[0x78, 0xff]),
        ("wire type 7", &[0x0f]),
        ("tag 0", &[0x00, 0x01]),
        ("wrong wire type", &[0x08, 0x01]),
    ];
    for (what, bytes) in cases {
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/credentialbroker.v1.CredentialService/GetCredential",
        );
        let err = grpc
            .unary::<Vec<u8>, Vec<u8>, _>(
                as_actor(bytes.to_vec(), "u-alice", "alice@example.com"),
                path,
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(error_details(&err).0, "MALFORMED_REQUEST", "{what}");
    }
}

#[tokio::test]
async fn the_health_listener_answers_probes_in_plaintext_and_nothing_else() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    config.health.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let b = TestBroker::start(config, dir).await.unwrap();
    let addr = b.app().health_addr().unwrap();
    assert_ne!(addr, b.addr());
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: SERVICES[0].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    let err = cb_proto::v1::credential_service_client::CredentialServiceClient::new(channel)
        .list_providers(cb_proto::v1::ListProvidersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
}
