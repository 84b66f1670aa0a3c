//! The one gRPC call the bench makes: `helloworld.Greeter/SayHello`, unary, the messages encoded by hand
//! (`HelloRequest { name = 1 }`, `HelloReply { message = 1 }`: one protobuf string field each), each in the
//! gRPC length-prefixed framing (1 byte compressed flag, 4 bytes big-endian length).

pub const PATH: &str = "/helloworld.Greeter/SayHello";
pub const CONTENT_TYPE: &str = "application/grpc";

/// A message with field 1 (length-delimited) set to `s`, gRPC-framed. `s` shorter than 128 bytes.
fn framed_string_message(s: &[u8]) -> Vec<u8> {
    let len = s.len().min(127);
    let mut out = Vec::with_capacity(7 + len);
    out.push(0); // not compressed
    out.extend_from_slice(&((2 + len) as u32).to_be_bytes());
    out.push(0x0a); // field 1, wire type 2
    out.push(len as u8);
    out.extend_from_slice(&s[..len]);
    out
}

/// `HelloRequest { name }`, framed.
pub fn request(name: &[u8]) -> Vec<u8> {
    framed_string_message(name)
}

/// `HelloReply { message: "Hello " + name }`, framed: what the responder answers to `request(name)`.
pub fn reply(name: &[u8]) -> Vec<u8> {
    let mut m = b"Hello ".to_vec();
    m.extend_from_slice(name);
    framed_string_message(&m)
}

/// The single uncompressed message of a unary body (the whole body, nothing after it).
pub fn single_message(body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err(format!("body of {} bytes, shorter than a message prefix", body.len()));
    }
    if body[0] != 0 {
        return Err("compressed message".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(format!("body of {} bytes for one message of {len}", body.len()));
    }
    Ok(&body[5..])
}

/// Field 1 of a message that holds a single short string field (the name of a `HelloRequest`).
pub fn string_field1(msg: &[u8]) -> Result<&[u8], String> {
    match msg {
        [0x0a, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 128 => Ok(rest),
        _ => Err("not a message with one short string field 1".into()),
    }
}

/// Whether a content-type names gRPC (`application/grpc`, `application/grpc+proto`, `application/grpc;…`).
pub fn is_grpc_content_type(v: &[u8]) -> bool {
    v.strip_prefix(CONTENT_TYPE.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip() {
        let req = request(b"baton");
        assert_eq!(req, [0, 0, 0, 0, 7, 0x0a, 5, b'b', b'a', b't', b'o', b'n']);
        let msg = single_message(&req).unwrap();
        assert_eq!(string_field1(msg).unwrap(), b"baton");
        let rep = reply(b"baton");
        assert_eq!(string_field1(single_message(&rep).unwrap()).unwrap(), b"Hello baton");
        assert!(single_message(&req[..8]).is_err());
        assert!(single_message(&[1, 0, 0, 0, 0]).is_err());
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(!is_grpc_content_type(b"application/grpc-web"));
        assert!(!is_grpc_content_type(b"text/plain"));
    }
}
