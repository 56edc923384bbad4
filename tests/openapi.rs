//! `GET /openapi.json`: a valid OpenAPI 3.1 document (checked by `openapi-spec-validator`, in the
//! test venv) that lists every method and path the router serves, and nothing it does not.

mod common;

use std::collections::BTreeSet;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_openapi_3_1_and_lists_every_route() {
    let Some(python) = python_with("openapi_spec_validator") else { return };
    let ws = Workspace::new();
    let d = Daemon::start(&ws.services());
    let text = d.client.get(d.u("/openapi.json")).send().await.unwrap().text().await.unwrap();

    let out = run_script(&python, "openapi/check.py", &text);
    assert!(out.status.success(), "not valid OpenAPI 3.1: {}", String::from_utf8_lossy(&out.stderr));
    let documented: BTreeSet<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|op| (op["method"].as_str().unwrap().to_string(), op["path"].as_str().unwrap().to_string()))
        .collect();
    let served: BTreeSet<(String, String)> =
        nanny::api::routes().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, served, "the document and the router disagree");

    // Answers are described by their real types.
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    for schema in ["StatusView", "ServiceList", "Manifest", "Event", "EventKind", "ErrorBody", "LogsAnswer"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "no {schema} schema");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
