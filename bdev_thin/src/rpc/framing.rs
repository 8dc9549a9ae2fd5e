//! SPDK's JSON-RPC framing and request shape, apart from any socket so it can be fuzzed.
//!
//! There is no length prefix: a connection carries a stream of JSON values, each one request
//! (or one batch), possibly pretty-printed over many lines, several per read or one split over
//! many. [`Framer`] finds where each top-level value ends with a byte scanner that keeps its
//! state between reads (so a request that arrives a byte at a time is scanned once), bounds the
//! bytes it buffers and the nesting depth, and only then hands the value's bytes to the parser.
//! [`decode_request`] checks a value against JSON-RPC 2.0 as SPDK reads it; [`encode_response`]
//! writes a reply with SPDK's key order. Runs on the RPC poller's core; nothing here panics on
//! input.

use serde_json::{Map, Value};

use super::RpcError;
use crate::limits;

/// Why the stream cannot go on: the connection gets one error and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON (a stray byte, a bad token, invalid UTF-8, mismatched brackets).
    #[error("Parse error")]
    Syntax,
    /// Nested deeper than the limit.
    #[error("Parse error: nested deeper than {max_depth} levels")]
    TooDeep { max_depth: usize },
    /// A request longer than the limit.
    #[error("Invalid request: larger than {max_bytes} bytes")]
    TooLarge { max_bytes: usize },
}

impl FrameError {
    pub fn to_rpc_error(self) -> RpcError {
        match self {
            FrameError::Syntax | FrameError::TooDeep { .. } => {
                RpcError::new(super::error::PARSE_ERROR, self.to_string())
            }
            FrameError::TooLarge { .. } => {
                RpcError::new(super::error::INVALID_REQUEST, self.to_string())
            }
        }
    }
}

/// Where the scanner is inside the current top-level value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Between values: whitespace is dropped.
    Between,
    /// Inside an object or array, `depth` levels deep.
    Container { depth: usize },
    /// A top-level string.
    TopString,
    /// A top-level number or literal, ended by whitespace or a structural byte.
    Scalar,
}

/// Splits a byte stream into top-level JSON values, within a byte and a depth bound.
pub struct Framer {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already scanned.
    scanned: usize,
    /// Where the value being scanned starts (whitespace before it is dropped in one go).
    start: usize,
    scan: Scan,
    in_string: bool,
    escaped: bool,
    max_bytes: usize,
    max_depth: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(limits::RPC_REQUEST_BYTES_MAX, limits::RPC_JSON_DEPTH_MAX)
    }
}

impl Framer {
    pub fn new(max_bytes: usize, max_depth: usize) -> Framer {
        Framer {
            buffer: Vec::new(),
            scanned: 0,
            start: 0,
            scan: Scan::Between,
            in_string: false,
            escaped: false,
            max_bytes,
            max_depth,
        }
    }

    /// Bytes the framer can take now. Zero while a full buffer of complete values waits to be
    /// taken; a full buffer holding one incomplete value is [`FrameError::TooLarge`].
    pub fn room(&self) -> usize {
        self.max_bytes.saturating_sub(self.buffer.len())
    }

    /// Bytes held (scanned or not).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Appends what was read; takes at most [`Framer::room`] bytes and returns how many.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.room());
        self.buffer.extend_from_slice(&bytes[..taken]);
        taken
    }

    /// The next complete value, `Ok(None)` if more bytes are needed. After an error the stream
    /// is unusable (the caller closes the connection).
    pub fn next_value(&mut self) -> Result<Option<Value>, FrameError> {
        let Some(end) = self.scan_to_end()? else {
            // Drop what is behind the value being scanned, in one move.
            let behind = if self.scan == Scan::Between { self.scanned } else { self.start };
            self.buffer.drain(..behind);
            self.scanned -= behind;
            self.start = 0;
            if self.scan != Scan::Between && self.buffer.len() >= self.max_bytes {
                return Err(FrameError::TooLarge { max_bytes: self.max_bytes });
            }
            return Ok(None);
        };
        let parsed = serde_json::from_slice::<Value>(&self.buffer[self.start..end]);
        self.buffer.drain(..end);
        self.scanned = 0;
        self.start = 0;
        self.scan = Scan::Between;
        parsed.map(Some).map_err(|_| FrameError::Syntax)
    }

    /// Scans on from where the last call stopped; returns the end of the first complete value,
    /// which starts at `self.start`.
    fn scan_to_end(&mut self) -> Result<Option<usize>, FrameError> {
        while self.scanned < self.buffer.len() {
            let index = self.scanned;
            let byte = self.buffer[index];
            self.scanned += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                    if self.scan == Scan::TopString {
                        return Ok(Some(self.scanned));
                    }
                }
                continue;
            }
            match self.scan {
                Scan::Between => {
                    self.start = index;
                    match byte {
                        b' ' | b'\t' | b'\r' | b'\n' => {}
                        b'{' | b'[' => self.scan = Scan::Container { depth: 1 },
                        b'"' => {
                            self.scan = Scan::TopString;
                            self.in_string = true;
                        }
                        b'}' | b']' | b',' | b':' => return Err(FrameError::Syntax),
                        _ => self.scan = Scan::Scalar,
                    }
                }
                Scan::Container { depth } => match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => {
                        if depth >= self.max_depth {
                            return Err(FrameError::TooDeep { max_depth: self.max_depth });
                        }
                        self.scan = Scan::Container { depth: depth + 1 };
                    }
                    b'}' | b']' => {
                        if depth == 1 {
                            return Ok(Some(self.scanned));
                        }
                        self.scan = Scan::Container { depth: depth - 1 };
                    }
                    _ => {}
                },
                Scan::TopString => unreachable_scan(),
                Scan::Scalar => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' | b'{' | b'}' | b'[' | b']' | b',' | b':'
                    | b'"' => {
                        // The delimiter belongs to what follows: scan it again.
                        self.scanned = index;
                        return Ok(Some(index));
                    }
                    _ => {}
                },
            }
        }
        Ok(None)
    }
}

/// A top-level string ends inside the `in_string` branch; the scanner never sees it here.
fn unreachable_scan() {
    debug_assert!(false, "top-level string scanned outside in_string");
}

/// One decoded request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `None` for a notification (no `id`, or `"id": null`): a success is not answered.
    pub id: Option<Value>,
    pub method: String,
    pub params: Option<Value>,
}

/// A request that cannot run: the id to answer with (`null` if it had none usable) and why.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRequest {
    pub id: Value,
    pub error: RpcError,
}

/// Checks one request object as SPDK does: `jsonrpc` ("2.0") optional, `method` a string,
/// `params` an object, array or null, `id` a string, number or null, and no other key.
pub fn decode_request(value: Value) -> Result<Request, BadRequest> {
    let Value::Object(object) = value else {
        return Err(BadRequest { id: Value::Null, error: RpcError::invalid_request() });
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(_) => {
            return Err(BadRequest {
                id: Value::Null,
                error: invalid("id: expected a string or number"),
            });
        }
    };
    let bad = |message: &str| BadRequest {
        id: id.clone().unwrap_or(Value::Null),
        error: invalid(message),
    };
    let mut method = None;
    let mut params = None;
    for (key, value) in object {
        match key.as_str() {
            "id" => {}
            "jsonrpc" => {
                if value.as_str() != Some("2.0") {
                    return Err(bad("jsonrpc: expected \"2.0\""));
                }
            }
            "method" => match value {
                Value::String(name) => method = Some(name),
                _ => return Err(bad("method: expected a string")),
            },
            "params" => match value {
                Value::Null => {}
                Value::Object(_) | Value::Array(_) => params = Some(value),
                _ => return Err(bad("params: expected an object or an array")),
            },
            other => return Err(bad(&format!("{other}: unknown member of a request"))),
        }
    }
    let method = method.ok_or_else(|| bad("method: missing"))?;
    Ok(Request { id, method, params })
}

fn invalid(detail: &str) -> RpcError {
    RpcError::new(super::error::INVALID_REQUEST, format!("Invalid request: {detail}"))
}

/// A reply object, keys in SPDK's order: `jsonrpc`, `id`, then `result` or `error`.
pub fn encode_response(id: Value, result: Result<Value, RpcError>) -> Value {
    let mut object = Map::new();
    object.insert("jsonrpc".into(), Value::from("2.0"));
    object.insert("id".into(), id);
    match result {
        Ok(value) => {
            object.insert("result".into(), value);
        }
        Err(error) => {
            let mut body = Map::new();
            body.insert("code".into(), Value::from(error.code));
            body.insert("message".into(), Value::from(error.message));
            object.insert("error".into(), Value::Object(body));
        }
    }
    Value::Object(object)
}

/// A reply as compact JSON bytes (no newline): serialized where the handler answered, so what
/// travels back and waits for the socket is the text, not a tree of values several times its
/// size. A reply over `limits::RPC_REPLY_BYTES_MAX` is replaced by a -32603 error.
pub fn reply_bytes(id: Value, result: Result<Value, RpcError>) -> Vec<u8> {
    let id_for_error = id.clone();
    match serde_json::to_vec(&encode_response(id, result)) {
        Ok(bytes) if bytes.len() <= limits::RPC_REPLY_BYTES_MAX => bytes,
        _ => too_large(id_for_error),
    }
}

/// A batch's reply: the array of its elements' replies, within the same bound.
pub fn batch_bytes(elements: &[Vec<u8>]) -> Vec<u8> {
    let total = elements.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
    if total > limits::RPC_REPLY_BYTES_MAX {
        return too_large(Value::Null);
    }
    let mut bytes = Vec::with_capacity(total);
    bytes.push(b'[');
    for (index, element) in elements.iter().enumerate() {
        if index > 0 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(element);
    }
    bytes.push(b']');
    bytes
}

fn too_large(id: Value) -> Vec<u8> {
    let error = RpcError::new(
        super::error::INTERNAL_ERROR,
        format!("reply larger than {} bytes", limits::RPC_REPLY_BYTES_MAX),
    );
    serde_json::to_vec(&encode_response(id, Err(error))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn frame_all(framer: &mut Framer, bytes: &[u8]) -> Result<Vec<Value>, FrameError> {
        let mut values = Vec::new();
        let mut rest = bytes;
        loop {
            let taken = framer.push(rest);
            rest = &rest[taken..];
            let mut progressed = taken > 0;
            while let Some(value) = framer.next_value()? {
                values.push(value);
                progressed = true;
            }
            if rest.is_empty() || !progressed {
                return Ok(values);
            }
        }
    }

    #[test]
    fn splits_a_stream_of_pretty_printed_values() {
        let text = b"{\n  \"a\": [1, {\"b\": \"}]\\\"\"}]\n}\n  [1,2] \"s\\\"\" 12 true {}";
        let mut framer = Framer::default();
        let values = frame_all(&mut framer, text).unwrap();
        assert_eq!(
            values,
            vec![
                json!({"a": [1, {"b": "}]\""}]}),
                json!([1, 2]),
                json!("s\""),
                json!(12),
                json!(true),
                json!({})
            ]
        );
    }

    #[test]
    fn byte_at_a_time_gives_the_same_values() {
        let text = br#"{"jsonrpc":"2.0","method":"x","id":1} [{"id":2}]"#;
        let mut framer = Framer::default();
        let mut values = Vec::new();
        for byte in text.iter() {
            assert_eq!(framer.push(std::slice::from_ref(byte)), 1);
            while let Some(v) = framer.next_value().unwrap() {
                values.push(v);
            }
        }
        assert_eq!(values.len(), 2);
    }

    #[test]
    fn bounds_depth_and_size() {
        let mut framer = Framer::new(1024, 4);
        assert_eq!(
            frame_all(&mut framer, b"[[[[[1]]]]]").unwrap_err(),
            FrameError::TooDeep { max_depth: 4 }
        );
        let mut framer = Framer::new(64, 4);
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        assert_eq!(
            frame_all(&mut framer, long.as_bytes()).unwrap_err(),
            FrameError::TooLarge { max_bytes: 64 }
        );
        assert_eq!(framer.buffered(), 64);
        let mut framer = Framer::default();
        assert_eq!(frame_all(&mut framer, b"}").unwrap_err(), FrameError::Syntax);
        assert_eq!(frame_all(&mut Framer::default(), b"{\"a\" 1}"), Err(FrameError::Syntax));
        assert_eq!(frame_all(&mut Framer::default(), b"hello "), Err(FrameError::Syntax));
    }

    #[test]
    fn decodes_requests_as_spdk() {
        let r =
            decode_request(json!({"jsonrpc":"2.0","method":"m","id":7,"params":{"a":1}})).unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.params, Some(json!({"a":1})));
        let n = decode_request(json!({"method":"m","id":null})).unwrap();
        assert_eq!(n.id, None);
        for bad in [
            json!([]),
            json!(3),
            json!({"id":1}),
            json!({"method":1,"id":1}),
            json!({"method":"m","id":[1]}),
            json!({"method":"m","jsonrpc":"1.0"}),
            json!({"method":"m","params":3}),
            json!({"method":"m","extra":true}),
        ] {
            let e = decode_request(bad.clone()).unwrap_err();
            assert_eq!(e.error.code, -32600, "{bad}");
        }
        assert_eq!(decode_request(json!({"id":"x"})).unwrap_err().id, json!("x"));
    }

    #[test]
    fn batch_replies_are_one_array() {
        let elements =
            vec![reply_bytes(json!(1), Ok(json!(true))), reply_bytes(json!(2), Ok(json!(3)))];
        let array: Value = serde_json::from_slice(&batch_bytes(&elements)).unwrap();
        assert_eq!(
            array,
            json!([{"jsonrpc":"2.0","id":1,"result":true},
            {"jsonrpc":"2.0","id":2,"result":3}])
        );
    }

    #[test]
    fn replies_keep_spdk_key_order() {
        let ok = encode_response(json!(1), Ok(json!(true)));
        assert_eq!(ok.to_string(), r#"{"jsonrpc":"2.0","id":1,"result":true}"#);
        let e = encode_response(Value::Null, Err(RpcError::method_not_found("x")));
        assert_eq!(
            e.to_string(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"Method not found: x"}}"#
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok())
                .unwrap_or(2048),
            ..ProptestConfig::default()
        })]

        /// Arbitrary bytes in arbitrary chunks never panic, never buffer past the bound, and
        /// every value that comes out decodes or is refused without a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..512,
        ) {
            let mut framer = Framer::new(1024, 8);
            'outer: for piece in bytes.chunks(chunk) {
                let mut rest = piece;
                while !rest.is_empty() {
                    let taken = framer.push(rest);
                    rest = &rest[taken..];
                    prop_assert!(framer.buffered() <= 1024);
                    loop {
                        match framer.next_value() {
                            Ok(Some(value)) => {
                                let _ = decode_request(value);
                            }
                            Ok(None) => break,
                            Err(_) => break 'outer,
                        }
                    }
                    if taken == 0 {
                        break;
                    }
                }
            }
        }

        /// Arbitrary bytes with JSON's structural characters over-represented, so the scanner's
        /// string, escape and depth paths are exercised, not just its first byte.
        #[test]
        fn json_like_bytes_never_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
        ) {
            // Half the bytes map onto JSON's structural characters, half stay arbitrary.
            const JSONISH: &[u8] = b"{}[]\":, 1a\\";
            let bytes: Vec<u8> = raw
                .iter()
                .map(|&b| if b < 128 { JSONISH[usize::from(b) % JSONISH.len()] } else { b })
                .collect();
            let mut framer = Framer::new(512, 6);
            for piece in bytes.chunks(chunk) {
                framer.push(piece);
                match framer.next_value() {
                    Ok(Some(value)) => {
                        let _ = decode_request(value);
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
                prop_assert!(framer.buffered() <= 512);
            }
        }

        /// A stream of real requests, split anywhere, comes out as the same requests.
        #[test]
        fn requests_survive_any_split(
            ids in proptest::collection::vec(0u32..1000, 1..20),
            pretty in any::<bool>(),
            chunk in 1usize..97,
        ) {
            let mut text = Vec::new();
            for id in &ids {
                let request = json!({"jsonrpc":"2.0","method":"m","id":id,
                    "params":{"s":"a}\"b","n":[1,{"x":null}]}});
                let encoded = if pretty {
                    serde_json::to_vec_pretty(&request).unwrap_or_default()
                } else {
                    serde_json::to_vec(&request).unwrap_or_default()
                };
                text.extend_from_slice(&encoded);
                text.push(b'\n');
            }
            let mut framer = Framer::default();
            let mut seen = Vec::new();
            for piece in text.chunks(chunk) {
                prop_assert_eq!(framer.push(piece), piece.len());
                while let Some(value) = framer.next_value().map_err(|e| {
                    TestCaseError::fail(e.to_string())
                })? {
                    let request = decode_request(value).map_err(|e| {
                        TestCaseError::fail(e.error.message)
                    })?;
                    seen.push(request.id.and_then(|v| v.as_u64()).unwrap_or(u64::MAX));
                }
            }
            let want: Vec<u64> = ids.iter().map(|&i| u64::from(i)).collect();
            prop_assert_eq!(seen, want);
        }
    }
}
