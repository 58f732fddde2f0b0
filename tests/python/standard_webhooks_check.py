"""Checks one signed request with the `standardwebhooks` library: a webhook
request of the worker or a pre-publish hook request of the gateway.

Usage: standard_webhooks_check.py REQUEST.json, where the file holds
{"secret": "whsec_...", "headers": {name: value}, "body": "<exact body>"}.
Run by the tests through tests/tests/common/webhooks.rs with the venv of
scripts/lib.sh (`ensure_standardwebhooks`). Exits 0 only when the request verifies and
every forgery below is refused; prints one line per check.
"""

import json
import sys
from datetime import datetime, timedelta, timezone

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def refused(wh, body, headers, why):
    """Asserts that `wh` refuses the request, with `why` in the error."""
    try:
        wh.verify(body, headers)
    except WebhookVerificationError as e:
        assert why in str(e), f"refused for another reason: {e!r}"
        return str(e)
    raise AssertionError("accepted")


def main(path):
    with open(path, encoding="utf-8") as f:
        req = json.load(f)
    wh = Webhook(req["secret"])
    headers, body = req["headers"], req["body"]
    msg_id, ts = headers["webhook-id"], int(headers["webhook-timestamp"])

    payload = wh.verify(body, headers)
    assert isinstance(payload, dict) and payload, payload
    if "events" in payload:
        assert isinstance(payload["events"], list) and payload["events"], payload
        what = f"{len(payload['events'])} event(s)"
    else:
        what = f"a {payload['kind']} for room {payload['room']}"
    print(f"ok: verified {msg_id} at {ts} with {what}")

    # The library computes the very signature the service sent.
    mine = wh.sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body)
    assert mine in headers["webhook-signature"].split(" "), (mine, headers)
    print("ok: same signature computed by the library")

    tampered = body[:-1] + " " + body[-1:]
    why = refused(wh, tampered, headers, "No matching signature")
    print(f"ok: tampered body refused ({why})")

    old = datetime.now(tz=timezone.utc) - timedelta(minutes=10)
    replay = dict(headers, **{"webhook-timestamp": str(int(old.timestamp()))})
    why = refused(wh, body, replay, "too old")
    print(f"ok: replay with a 10-minute-old timestamp refused ({why})")

    resigned = dict(replay, **{"webhook-signature": wh.sign(msg_id, old, body)})
    why = refused(wh, body, resigned, "too old")
    print(f"ok: replay re-signed at a 10-minute-old timestamp refused ({why})")

    other = Webhook(b"another key")
    why = refused(other, body, headers, "No matching signature")
    print(f"ok: another key refused ({why})")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except AssertionError as e:
        print(f"FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
