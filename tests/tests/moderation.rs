//! Moderation and search against real processes: bans that close a user's
//! connections on every gateway, refuse rejoins, expire and can be lifted,
//! and are refused without authority; `?q=` search over stored history
//! (case, paging, edited and deleted messages).

mod common;

use std::time::Duration;

use chat_tests::http_request;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "moderation-secret-moderation-secret";
const API_KEY: &str = "mod-key";

fn env() -> Vec<(&'static str, &'static str)> {
    [FAST_GW, &[("JWT_SECRET", SECRET), ("API_KEYS", API_KEY)]].concat()
}

const WORKER: &[(&str, &str)] = &[("STREAM_SHARDS", "4")];

fn token(sub: &str, role: Option<&str>) -> String {
    user_token(SECRET, sub, role)
}

/// `method path` with `Authorization: Bearer <bearer>`: status and JSON body.
async fn call(gw: &Gateway, method: &str, path: &str, bearer: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {bearer}");
    let (status, text) = http_request(
        &gw.addr(),
        method,
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
    .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_closes_the_users_connections_everywhere_refuses_rejoin_and_expires() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw1 = start_gateway(&redis.url(), "gw1", &env()).await;
    let gw2 = start_gateway(&redis.url(), "gw2", &env()).await;
    let room = "modroom";
    let url =
        |gw: &Gateway, sub: &str| gw.ws_url(&format!("room={room}&token={}", token(sub, None)));
    let (mut troll1, _) = Client::join(&url(&gw1, "troll")).await;
    let (mut troll2, _) = Client::join(&url(&gw2, "troll")).await;
    let (mut bystander, _) = Client::join(&url(&gw2, "nice")).await;
    let (mut elsewhere, _) =
        Client::join(&gw1.ws_url(&format!("room=other&token={}", token("troll", None)))).await;

    // Without authority: no key, a wrong key, a token without the role.
    let ban = json!({"user":"troll","seconds":600}).to_string();
    let path = format!("/rooms/{room}/bans");
    assert_eq!(call(&gw1, "POST", &path, "wrong", &ban).await.0, 401);
    let plain = token("nice", None);
    let (status, body) = call(&gw1, "POST", &path, &plain, &ban).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let bad = json!({"user":"troll","seconds":0}).to_string();
    assert_eq!(call(&gw1, "POST", &path, API_KEY, &bad).await.0, 400);
    troll1
        .acked(message_frame(room, "still allowed", "t1"))
        .await;

    // A moderator bans: both of the troll's connections in the room close
    // with 4003, on both gateways; the bystander and the other room stay.
    let moderator = token("mod", Some("moderator"));
    let (status, body) = call(&gw2, "POST", &path, &moderator, &ban).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"], "troll");
    for c in [&mut troll1, &mut troll2] {
        let (code, reason) = c.wait_closed(DEADLINE).await.expect("a close frame");
        assert_eq!((code, reason.as_str()), (4003, "banned"));
    }
    bystander
        .acked(message_frame(room, "still here", "n1"))
        .await;
    elsewhere
        .acked(message_frame("other", "other room", "e1"))
        .await;

    // Rejoining is refused on any gateway, and survives a gateway restart
    // (the ban lives in Redis).
    for gw in [&gw1, &gw2] {
        let (status, body) = open(&url(gw, "troll"), &[]).await.expect_err("refused");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("banned"))
        );
    }
    let gw3 = start_gateway(&redis.url(), "gw3", &env()).await;
    assert_eq!(
        open(&url(&gw3, "troll"), &[]).await.expect_err("refused").0,
        403
    );

    // Lifting it lets the user back in.
    let (status, body) = call(&gw1, "DELETE", &format!("{path}/troll"), API_KEY, "").await;
    assert_eq!((status, body["lifted"].as_bool()), (200, Some(true)));
    let (_back, _) = Client::join(&url(&gw3, "troll")).await;

    // A short ban expires by itself.
    let short = json!({"user":"brief","seconds":1}).to_string();
    assert_eq!(call(&gw1, "POST", &path, API_KEY, &short).await.0, 201);
    assert_eq!(
        open(&url(&gw1, "brief"), &[]).await.expect_err("refused").0,
        403
    );
    eventually("the ban expired", Duration::from_secs(10), || async {
        open(&url(&gw1, "brief"), &[]).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_matches_current_text_ignoring_case_newest_first_in_pages() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw = start_gateway(&redis.url(), "gw1", FAST_GW).await;
    let room = "searchable";
    let (mut c, _) = Client::join(&gw.ws_url(&format!("room={room}&username=ana"))).await;
    let mut ids = Vec::new();
    for (i, text) in [
        "Deploy at noon",
        "lunch?",
        "the DEPLOY failed",
        "rollback the deploy",
        "typo: deplyo",
        "deploy again",
    ]
    .into_iter()
    .enumerate()
    {
        let frame = message_frame(room, text, &format!("c{i}"));
        ids.push(c.acked(frame).await["id"].clone());
    }
    // Edit one into a match and one out of it; delete a match.
    let edit = |id: &Value, text: &str, cid: &str| json!({"type":"edit","data":{"room":room,"id":id,"message":text,"client_id":cid}});
    c.acked(edit(&ids[4], "typo fixed: Deploy", "e1")).await;
    c.acked(edit(&ids[0], "release at noon", "e2")).await;
    c.acked(json!({"type":"delete","data":{"room":room,"id":ids[3],"client_id":"d1"}}))
        .await;
    eventually("every event persisted", DEADLINE, || async {
        (stored_records(&redis, room).await.len() == 9).then_some(())
    })
    .await;

    let search = |q: &str, extra: &str| {
        let path = format!("/rooms/{room}/messages?q={q}{extra}");
        let addr = gw.addr();
        async move {
            let (status, body) = http_get(&addr, &path).await.unwrap();
            (status, serde_json::from_str::<Value>(&body).unwrap())
        }
    };
    let texts = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, page) = search("dEpLoY", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        texts(&page),
        ["deploy again", "typo fixed: Deploy", "the DEPLOY failed"],
        "newest first; edited text matches, the deleted and the edited-away do not"
    );
    assert!(page.get("more").is_none());
    // Pages: two at a time, then the rest below the page's smallest seq.
    let (_, first) = search("deploy", "&limit=2").await;
    assert_eq!(texts(&first), ["deploy again", "typo fixed: Deploy"]);
    assert_eq!(first["more"], true);
    let smallest = first["messages"][1]["seq"].as_u64().unwrap();
    let (_, second) = search("deploy", &format!("&limit=2&before_seq={smallest}")).await;
    assert_eq!(texts(&second), ["the DEPLOY failed"]);
    assert!(second.get("more").is_none());
    assert_eq!(second["room"], room);
    assert!(second["latest_seq"].as_u64().unwrap() >= 9);
    // Nothing, and bad queries.
    let (_, none) = search("nothing-like-this", "").await;
    assert!(texts(&none).is_empty());
    assert_eq!(search("", "").await.0, 400);
    assert_eq!(search(&"x".repeat(300), "").await.0, 400);
    assert_eq!(search("deploy", "&limit=0").await.0, 400);
}
