"""Validate an OpenAPI document read from stdin as OpenAPI 3.1 with openapi-spec-validator, then
print its operations as JSON lines: {"method": "GET", "path": "/services/{name}"}."""
import json
import sys

from openapi_spec_validator import validate
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator

document = json.load(sys.stdin)
assert document["openapi"].startswith("3.1"), document["openapi"]
validate(document, cls=OpenAPIV31SpecValidator)
for path, item in document["paths"].items():
    for method in item:
        if method in ("get", "post", "put", "delete", "patch"):
            print(json.dumps({"method": method.upper(), "path": path}))
