"""Parse a /metrics exposition read from stdin with the Prometheus client library's own
text-format parser and print the samples as JSON lines: {"name", "labels", "value"}, one per
sample, after a first line {"families": [...], "types": {...}}."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = list(text_string_to_metric_families(sys.stdin.read()))
print(json.dumps({"families": [f.name for f in families], "types": {f.name: f.type for f in families}}))
for family in families:
    for sample in family.samples:
        print(json.dumps({"name": sample.name, "labels": sample.labels, "value": sample.value}))
