//! Property tests ("fuzzing" with a bounded number of cases) of the parsers
//! that take bytes from outside: the client frame parser (bytes from any
//! WebSocket client) and the envelope decoders (bytes from Redis, which any
//! process with Redis access can write).
//!
//! Each input either parses, and then the result satisfies the validation
//! rules, or maps to a documented error: an error code listed in docs/protocol.md's
//! error table, or [`DecodeError`]. None may panic. 512 cases per property
//! keep the whole file at a few seconds; `PROPTEST_CASES` raises it locally.

use std::sync::OnceLock;

use chat_shared::envelope::{DecodeError, Delivery, DeliveryBatch, NewerEntry, StreamEntry};
use chat_shared::ids::RoomId;
use chat_shared::protocol::{parse_client_frame, ClientFrame, Limits, Rejected};
use proptest::prelude::*;

const CASES: u32 = 512;

fn limits() -> Limits {
    Limits {
        max_message_chars: 64,
        max_history_limit: 200,
    }
}

fn room() -> RoomId {
    RoomId::parse("lobby").unwrap()
}

/// The protocol reference, whose error-code table is the documented set.
fn readme() -> &'static str {
    static README: OnceLock<String> = OnceLock::new();
    README.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
        std::fs::read_to_string(path).expect("read docs/protocol.md")
    })
}

/// Checks a parse result: a refusal carries a documented code (and a message
/// for humans); an accepted frame obeys the limits.
fn check(result: Result<ClientFrame, Rejected>) -> Result<(), TestCaseError> {
    match result {
        Err(rejected) => {
            let code = rejected.error.code.as_str();
            prop_assert!(
                readme().contains(&format!("| `{code}` |")),
                "error code {} is not in the table of docs/protocol.md",
                code
            );
            prop_assert!(!rejected.error.message.is_empty());
        }
        Ok(ClientFrame::Message(m)) => {
            let chars = m.message.chars().count();
            prop_assert!((1..=limits().max_message_chars).contains(&chars));
            if let Some(id) = &m.client_id {
                prop_assert!(id.chars().count() <= chat_shared::ids::MAX_CLIENT_ID_CHARS);
            }
        }
        Ok(ClientFrame::History(h)) => {
            if let Some(limit) = h.limit {
                prop_assert!(limit >= 1 && limit <= limits().max_history_limit);
            }
        }
        #[allow(unreachable_patterns)] // frame types added later
        Ok(_) => {}
    }
    Ok(())
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A frame's `type`: the known ones (including those of later protocol
/// versions), or anything.
fn frame_type() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        4 => prop_oneof![
            Just("message"), Just("history"), Just("refresh"), Just("presence"),
            Just("typing"), Just("read"), Just("edit"), Just("delete"), Just("react"),
        ]
        .prop_map(serde_json::Value::from),
        1 => json(),
    ]
}

/// A field value near the valid range: short or long strings, control
/// characters, the right room, numbers where strings belong.
fn field() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::from("lobby")),
        "[a-zA-Z0-9 ]{0,80}".prop_map(serde_json::Value::from),
        "[\\x00-\\x1f ]{0,4}".prop_map(serde_json::Value::from),
        ".{0,140}".prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        json(),
    ]
}

/// A `data` object with the fields frames use, each present or not.
fn data() -> impl Strategy<Value = serde_json::Value> {
    let names = [
        "room",
        "message",
        "username",
        "client_id",
        "limit",
        "before_seq",
        "token",
        "active",
        "seq",
        "id",
        "emoji",
        "op",
    ];
    proptest::collection::vec(proptest::option::of(field()), names.len()).prop_map(move |vals| {
        let map = names
            .iter()
            .zip(vals)
            .filter_map(|(k, v)| Some(((*k).to_owned(), v?)))
            .collect();
        serde_json::Value::Object(map)
    })
}

/// Encodings of valid entries, for mutation.
fn stream_entry() -> impl Strategy<Value = StreamEntry> {
    (
        ".{0,40}",
        ".{0,40}",
        ".{0,40}",
        ".{0,80}",
        ".{0,30}",
        any::<i64>(),
        proptest::option::of(".{0,20}"),
    )
        .prop_map(
            |(id, room, username, message, timestamp, stamped_us, user_id)| StreamEntry {
                v: chat_shared::envelope::VERSION,
                id,
                room,
                username,
                message,
                timestamp,
                stamped_us,
                user_id,
                ..Default::default()
            },
        )
}

fn delivery_batch() -> impl Strategy<Value = DeliveryBatch> {
    let delivery = (".{0,20}", any::<u64>(), ".{0,10}", ".{0,60}", any::<i64>()).prop_map(
        |(room, seq, epoch, record, stamped_us)| Delivery {
            room,
            seq,
            epoch,
            record,
            stamped_us,
        },
    );
    let event = (".*", ".*", proptest::option::of(".*")).prop_map(|(room, frame, except_conn)| {
        chat_shared::ephemeral::EphemeralEvent {
            room,
            frame,
            except_conn,
        }
    });
    (
        proptest::collection::vec(delivery, 0..4),
        any::<i64>(),
        proptest::option::of(any::<i64>()),
        proptest::collection::vec(event, 0..3),
    )
        .prop_map(|(deliveries, published_us, probe, events)| DeliveryBatch {
            v: chat_shared::envelope::VERSION,
            deliveries,
            published_us,
            probe,
            events,
            bans: Vec::new(),
        })
}

/// Damages an encoding: truncates it, overwrites a byte, or inserts one.
fn mutate(mut bytes: Vec<u8>, op: u8, at: usize, byte: u8) -> Vec<u8> {
    if bytes.is_empty() {
        return vec![byte];
    }
    let at = at % bytes.len();
    match op % 3 {
        0 => bytes.truncate(at),
        1 => bytes[at] = byte,
        _ => bytes.insert(at, byte),
    }
    bytes
}

/// Decoding never panics; it returns a version-1 record or [`DecodeError`].
fn decode_all(bytes: &[u8]) {
    let _: Result<StreamEntry, DecodeError> = StreamEntry::decode(bytes);
    let _: Result<DeliveryBatch, DecodeError> = DeliveryBatch::decode(bytes);
    if let Some(newer) = NewerEntry::peek(bytes) {
        assert!(newer.v > chat_shared::envelope::VERSION);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn client_frame_any_text(text in any::<String>()) {
        check(parse_client_frame(&text, &room(), &limits()))?;
    }

    #[test]
    fn client_frame_any_bytes_as_received(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // The socket layer only hands over valid UTF-8 (1007 otherwise).
        let text = String::from_utf8_lossy(&bytes);
        check(parse_client_frame(&text, &room(), &limits()))?;
    }

    #[test]
    fn client_frame_json_shaped(kind in frame_type(), data in prop_oneof![data(), json()], with_data: bool) {
        let mut frame = serde_json::json!({ "type": kind });
        if with_data {
            frame["data"] = data;
        }
        check(parse_client_frame(&frame.to_string(), &room(), &limits()))?;
    }

    #[test]
    fn client_frame_any_json(value in json()) {
        check(parse_client_frame(&value.to_string(), &room(), &limits()))?;
    }

    #[test]
    fn envelopes_from_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn stream_entries_round_trip_and_survive_damage(
        entry in stream_entry(), op: u8, at: usize, byte: u8,
    ) {
        let bytes = entry.encode();
        prop_assert_eq!(StreamEntry::decode(&bytes).ok(), Some(entry));
        decode_all(&mutate(bytes, op, at, byte));
    }

    #[test]
    fn delivery_batches_round_trip_and_survive_damage(
        batch in delivery_batch(), op: u8, at: usize, byte: u8,
    ) {
        let bytes = batch.encode();
        prop_assert_eq!(DeliveryBatch::decode(&bytes).ok(), Some(batch));
        decode_all(&mutate(bytes, op, at, byte));
    }
}

/// MessagePack headers that announce huge strings or arrays must fail fast,
/// not allocate what they announce.
#[test]
fn huge_announced_lengths_are_refused() {
    for header in [
        vec![0xdb, 0xff, 0xff, 0xff, 0xff],       // str32 of 4 GiB
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],       // array32 of 4 G items
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],       // map32 of 4 G pairs
        vec![0xc6, 0xff, 0xff, 0xff, 0xff, 0x00], // bin32 of 4 GiB
    ] {
        assert!(StreamEntry::decode(&header).is_err());
        assert!(DeliveryBatch::decode(&header).is_err());
        assert!(NewerEntry::peek(&header).is_none());
    }
}
