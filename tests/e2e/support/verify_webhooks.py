"""Verifies Standard Webhooks signatures, written from the specification and independent of
the broker's code: for every secret given, every delivery must carry a `v1,` signature equal to
base64(HMAC-SHA256(base64decode(secret without "whsec_"), "{id}.{timestamp}." + body)).

Input (argv[1]): {"secrets": ["whsec_..."], "deliveries": [{"id", "timestamp", "signature",
"body": [bytes]}]}. Exit status 0 when every delivery verifies under every secret, 3 when a
signature does not match; anything else (a crash: exit status 1) is an error, never a verdict."""

import base64
import hashlib
import hmac
import json
import sys


MISMATCH = 3


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    for secret in doc["secrets"]:
        key = base64.b64decode(secret[len("whsec_"):])
        for d in doc["deliveries"]:
            body = bytes(d["body"])
            signed = f'{d["id"]}.{d["timestamp"]}.'.encode() + body
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            passed = [
                s.split(",", 1)[1] for s in d["signature"].split(" ") if s.startswith("v1,")
            ]
            if not any(hmac.compare_digest(expected, p) for p in passed):
                print(f"signature mismatch for {d['id']}")
                return MISMATCH
    print(f"verified {len(doc['deliveries'])} deliveries under {len(doc['secrets'])} secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
