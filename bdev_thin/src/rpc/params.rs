//! Strict decoding of a method's `params`: every key is taken by name and type, and whatever is
//! left over is an error naming the key, except the `false`/`0`/`null` defaults SPDK's client
//! sends for flags the user did not set. Messages name the parameter and what was wrong.

use serde_json::{Map, Value};

use super::RpcError;

pub struct Params {
    map: Map<String, Value>,
}

fn expected(key: &str, what: &str) -> RpcError {
    RpcError::invalid_params(format!("{key}: expected {what}"))
}

impl Params {
    /// `params` must be an object or absent (`null`).
    pub fn new(params: Option<Value>) -> Result<Params, RpcError> {
        match params {
            None | Some(Value::Null) => Ok(Params { map: Map::new() }),
            Some(Value::Object(map)) => Ok(Params { map }),
            Some(_) => Err(RpcError::invalid_params("params: expected an object")),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn missing(key: &str) -> RpcError {
        RpcError::invalid_params(format!("{key}: missing required parameter"))
    }

    pub fn optional_string(&mut self, key: &str) -> Result<Option<String>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            // SPDK's decoder refuses these too: no C string holds a NUL.
            Some(Value::String(s)) if s.contains('\0') => {
                Err(RpcError::invalid_params(format!("{key}: must not contain NUL (\\u0000)")))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(expected(key, "a string")),
        }
    }

    pub fn string(&mut self, key: &str) -> Result<String, RpcError> {
        self.optional_string(key)?.ok_or_else(|| Self::missing(key))
    }

    pub fn optional_u64(&mut self, key: &str) -> Result<Option<u64>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => {
                value.as_u64().map(Some).ok_or_else(|| expected(key, "an unsigned integer"))
            }
        }
    }

    pub fn u64(&mut self, key: &str) -> Result<u64, RpcError> {
        self.optional_u64(key)?.ok_or_else(|| Self::missing(key))
    }

    pub fn optional_u32(&mut self, key: &str) -> Result<Option<u32>, RpcError> {
        match self.optional_u64(key)? {
            None => Ok(None),
            Some(v) => {
                u32::try_from(v).map(Some).map_err(|_| expected(key, "an unsigned 32-bit integer"))
            }
        }
    }

    pub fn u32(&mut self, key: &str) -> Result<u32, RpcError> {
        self.optional_u32(key)?.ok_or_else(|| Self::missing(key))
    }

    pub fn optional_i64(&mut self, key: &str) -> Result<Option<i64>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(value) => value.as_i64().map(Some).ok_or_else(|| expected(key, "an integer")),
        }
    }

    pub fn optional_bool(&mut self, key: &str) -> Result<Option<bool>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(expected(key, "a boolean")),
        }
    }

    pub fn optional_array(&mut self, key: &str) -> Result<Option<Vec<Value>>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(expected(key, "an array")),
        }
    }

    pub fn optional_object(&mut self, key: &str) -> Result<Option<Map<String, Value>>, RpcError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(expected(key, "an object")),
        }
    }

    pub fn optional_uuid(&mut self, key: &str) -> Result<Option<uuid::Uuid>, RpcError> {
        match self.optional_string(key)? {
            None => Ok(None),
            Some(s) => uuid::Uuid::parse_str(&s).map(Some).map_err(|_| expected(key, "a UUID")),
        }
    }

    /// Accepts `key` if present with a value `accept` allows; otherwise names what it asked for.
    /// For parameters SPDK's save writes that we take but do not use (`numa_id`, ...).
    pub fn accept(
        &mut self,
        key: &str,
        what: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Result<(), RpcError> {
        match self.take(key) {
            None => Ok(()),
            Some(value) if accept(&value) => Ok(()),
            Some(value) => Err(RpcError::invalid_params(format!("{key}: {what} (got {value})"))),
        }
    }

    /// Fails on any key not taken, except the `false`/`0` defaults SPDK's CLI sends.
    pub fn finish(self) -> Result<(), RpcError> {
        for (key, value) in self.map {
            let is_default = match &value {
                Value::Null | Value::Bool(false) => true,
                Value::Number(n) => n.as_f64() == Some(0.0),
                _ => false,
            };
            if !is_default {
                return Err(RpcError::invalid_params(format!("{key}: unknown parameter")));
            }
        }
        Ok(())
    }

    /// Everything left, for methods that take free-form options.
    pub fn into_rest(self) -> Map<String, Value> {
        self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_parameter() {
        let mut p = Params::new(Some(json!({"size_in_mib": "x"}))).unwrap();
        let e = p.u64("size_in_mib").unwrap_err();
        assert_eq!(e.code, -32602);
        assert_eq!(e.message, "size_in_mib: expected an unsigned integer");
        let mut p = Params::new(Some(json!({}))).unwrap();
        assert_eq!(
            p.u64("num_blocks").unwrap_err().message,
            "num_blocks: missing required parameter"
        );
    }

    #[test]
    fn unknown_keys_fail_but_client_defaults_pass() {
        let p = Params::new(Some(json!({"flag": false, "count": 0, "none": null}))).unwrap();
        assert!(p.finish().is_ok());
        let p = Params::new(Some(json!({"bogus": 1}))).unwrap();
        assert_eq!(p.finish().unwrap_err().message, "bogus: unknown parameter");
        assert!(Params::new(Some(json!([1]))).is_err());
    }
}
