//! The protobuf codec of every generated service: prost's, except that a request that does not
//! decode (bad UTF-8, truncated varint, invalid wire type or tag) is the caller's fault and is
//! answered INVALID_ARGUMENT with `google.rpc.ErrorInfo` reason [`MALFORMED_REQUEST`], not
//! INTERNAL (which the API reserves for bugs).

use std::collections::HashMap;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo reason of a message that is not valid protobuf for its type.
pub const MALFORMED_REQUEST: &str = "MALFORMED_REQUEST";

/// ErrorInfo domain (the same as every other error of the API).
const ERROR_DOMAIN: &str = "credentialbroker.v1";

/// [`ProstCodec`] with decode failures mapped to INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`] whose failures say INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(malformed)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// prost reports every decode failure as INTERNAL; its message names the field and the defect,
/// never the bytes.
fn malformed(status: Status) -> Status {
    if status.code() != Code::Internal {
        return status;
    }
    let details = ErrorDetails::with_error_info(
        MALFORMED_REQUEST,
        ERROR_DOMAIN,
        HashMap::<String, String>::new(),
    );
    Status::with_error_details(
        Code::InvalidArgument,
        format!(
            "the request is not a valid protobuf message: {}",
            status.message()
        ),
        details,
    )
}
