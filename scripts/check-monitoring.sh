#!/usr/bin/env bash
# Checks the monitoring kit in contrib/ with Prometheus' own tool:
#   - contrib/prometheus/ringlb.rules.yml: `promtool check rules`, then the unit tests
#     of ringlb.rules.test.yml (`promtool test rules`);
#   - contrib/grafana/ringlb.json: valid JSON, and every query of its panels and
#     variables parses as PromQL (each is checked as a recording rule).
# That every metric they use is one ringlb serves is checked against a running ringlb
# by `cargo test -p ringlb --test monitoring`.
#
# Without promtool this says SKIPPED and exits 0, and records the skip in
# $RINGLB_SKIP_LOG when scripts/test.sh set it (its summary then checks it); under CI=true
# a missing promtool is an error (.ci/run installs the prometheus package).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        echo "error: promtool is required in CI to check contrib/ (install the prometheus package)" >&2
        exit 1
    fi
    echo "SKIPPED: promtool not installed: contrib/prometheus and contrib/grafana not checked"
    if [ -n "${RINGLB_SKIP_LOG:-}" ]; then
        printf 'scripts/check-monitoring.sh\tpromtool not installed\tcommand:promtool\n' >>"$RINGLB_SKIP_LOG"
    fi
    exit 0
fi

promtool check rules contrib/prometheus/ringlb.rules.yml
(cd contrib/prometheus && promtool test rules ringlb.rules.test.yml)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringlb-monitoring.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 - contrib/grafana/ringlb.json "$tmp/dashboard.rules.yml" <<'PY'
import json
import re
import sys

dashboard = json.load(open(sys.argv[1]))
queries = []

def walk(panels):
    for panel in panels:
        for target in panel.get("targets", []):
            queries.append(target["expr"])
        walk(panel.get("panels", []))

walk(dashboard["panels"])
for var in dashboard["templating"]["list"]:
    if var["type"] == "query":
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
        if not m:
            sys.exit(f"variable {var['name']}: not label_values(SELECTOR, LABEL): {var['definition']}")
        queries.append(m.group(1))
# Grafana's own variables, given values PromQL accepts.
values = {"$__rate_interval": "5m", "$instance": ".*", "$listener": ".*"}
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, q in enumerate(queries):
        for name, value in values.items():
            q = q.replace(name, value)
        if "$" in q:
            sys.exit(f"unknown variable in {q}")
        out.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(q)}\n")
print(f"contrib/grafana/ringlb.json: {len(queries)} queries")
PY
promtool check rules "$tmp/dashboard.rules.yml"
echo "monitoring kit: ok"
