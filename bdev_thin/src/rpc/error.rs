//! The JSON-RPC error edge: every failure of a method becomes a code and a message here, and
//! nowhere else. Codes follow API.md: -32700/-32600/-32601/-32602 for the protocol and
//! parameters, -1 for wrong state, negative errno with strerror text for failed operations.

use crate::bdev::BdevError;
use crate::host::DeviceError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

pub const PARSE_ERROR: i32 = -32700;
pub const INVALID_REQUEST: i32 = -32600;
pub const METHOD_NOT_FOUND: i32 = -32601;
pub const INVALID_PARAMS: i32 = -32602;
pub const INTERNAL_ERROR: i32 = -32603;

/// strerror text for the errnos methods return (SPDK prints the C library's wording).
pub fn strerror(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "Operation not permitted",
        libc::ENOENT => "No such file or directory",
        libc::EIO => "Input/output error",
        libc::ENOMEM => "Cannot allocate memory",
        libc::EBUSY => "Device or resource busy",
        libc::EEXIST => "File exists",
        libc::ENODEV => "No such device",
        libc::EINVAL => "Invalid argument",
        libc::ENOSPC => "No space left on device",
        libc::EROFS => "Read-only file system",
        libc::ENOTSUP => "Operation not supported",
        libc::EACCES => "Permission denied",
        libc::ETIMEDOUT => "Connection timed out",
        libc::EAGAIN => "Resource temporarily unavailable",
        libc::ENAMETOOLONG => "File name too long",
        _ => "Unknown error",
    }
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }

    pub fn invalid_request() -> RpcError {
        RpcError::new(INVALID_REQUEST, "Invalid request")
    }

    pub fn method_not_found(method: &str) -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }

    /// -32602 with a message naming the parameter: `"size_in_mib: expected an unsigned integer"`.
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    /// -1: the method cannot run in the current state.
    pub fn wrong_state(message: impl Into<String>) -> RpcError {
        RpcError::new(-1, message)
    }

    /// A failed operation: `-errno` and strerror, with detail appended when useful.
    pub fn errno(errno: i32, detail: impl std::fmt::Display) -> RpcError {
        let detail = detail.to_string();
        let text = strerror(errno);
        let message =
            if detail.is_empty() { text.to_string() } else { format!("{text}: {detail}") };
        RpcError::new(-errno, message)
    }
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> RpcError {
        RpcError::errno(e.errno(), &e)
    }
}

impl From<DeviceError> for RpcError {
    fn from(e: DeviceError) -> RpcError {
        let errno = match &e {
            DeviceError::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            DeviceError::Busy { .. } => libc::EBUSY,
            DeviceError::Io(source) => source.raw_os_error().unwrap_or(libc::EIO),
            DeviceError::Invalid(_) => libc::EINVAL,
        };
        RpcError::errno(errno, &e)
    }
}
