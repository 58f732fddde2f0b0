//! Client frames of the ephemeral room features: `presence`, `typing` and
//! `read`. Kept apart from [`super::inbound`]'s chat frames; it only adds
//! their parsers.

use serde_json::value::RawValue;
use serde_json::Value;

use super::checks::Rejected;
use super::ErrorCode;

/// `{"type":"typing","data":{"active":true|false}}`: `data.active` must be a
/// bool (`bad_frame` otherwise).
pub(super) fn parse_typing(data: Option<&RawValue>) -> Result<bool, Rejected> {
    data.and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
        .and_then(|v| v.get("active")?.as_bool())
        .ok_or_else(|| {
            Rejected::new(
                ErrorCode::BadFrame,
                "typing needs data.active: true or false",
                None,
            )
        })
}

/// `{"type":"read","data":{"seq":N}}`: `data` must be an object
/// (`bad_frame`), and `data.seq` a non-negative integer
/// (`invalid_parameter`). Whether it is above the room's latest `seq` is
/// checked against Redis.
pub(super) fn parse_read(data: Option<&RawValue>) -> Result<u64, Rejected> {
    let obj = match data.map(|d| serde_json::from_str::<Value>(d.get())) {
        None => Value::Object(Default::default()),
        Some(Ok(v @ Value::Object(_))) => v,
        Some(_) => {
            return Err(Rejected::new(
                ErrorCode::BadFrame,
                "read needs a data object with seq",
                None,
            ))
        }
    };
    obj.get("seq").and_then(Value::as_u64).ok_or_else(|| {
        Rejected::new(
            ErrorCode::InvalidParameter,
            "read data.seq must be a non-negative integer",
            None,
        )
    })
}
