#!/usr/bin/env bash
# The `make demo` session: a fault-injecting mock agent on loopback (30 % of
# requests fail with 503), then talkie on simulated hardware delivering to it.
# Usage: board/demo/run-demo.sh TALKIE_BINARY DEMO_DIR MOCK_AGENT_BINARY
# (the mock agent is a development tool from mock-agent/, not shipped).
set -euo pipefail
talkie=$1
dir=$2
mock_agent=$3
rm -f "$dir"/agent.jsonl "$dir"/agent.addr "$dir"/outbox.db*
"$mock_agent" --listen 127.0.0.1:0 --fail-first 1 --fail-rate 0.3 --seed 3 \
  --record "$dir/agent.jsonl" > "$dir/agent.addr" 2>/dev/null &
agent=$!
trap 'kill $agent 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$dir/agent.addr" ] && break; sleep 0.1; done
addr=$(awk '{print $NF}' "$dir/agent.addr")
echo "== mock agent on http://$addr (fails the first request and 30 % of the rest with 503) =="
RUST_LOG=warn,talkie::transcript=info,talkie::led=info,talkie::service=info,talkie::agent=info,talkie::stt=info,talkie_speech::stt::recognizer=info \
  "$talkie" --config board/demo/talkie.toml \
  --set audio.file="$dir/session.wav" --set gpio.script="$dir/buttons.toml" \
  --set agent.url="http://$addr" --set outbox.path="$dir/outbox.db" \
  --set stt.calibration_file="$dir/calibration.json" \
  --set agent.backoff_min_ms=200 --set agent.backoff_max_ms=2000 \
  run --until-script-done
echo "== what the agent received (talkie outbox status: last deliveries and the agent's replies) =="
"$talkie" --set outbox.path="$dir/outbox.db" outbox status \
  | python3 -c '
import json, sys
d = json.load(sys.stdin)
for x in reversed(d["recent_delivered"]):
    text = json.loads(x["body"])["text"]
    print("  %d attempt(s): %r -> %r" % (x["attempts"], text, x["reply_text"]))
print("  waiting in the outbox:", d["depth"])'
echo "== agent requests: $(wc -l < "$dir/agent.jsonl") ($(grep -c '"status":503' "$dir/agent.jsonl" || true) answered 503 and retried) =="
