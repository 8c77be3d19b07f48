use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn openapi_lists_exactly_the_routes_the_router_serves() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"][0]["url"], app.issuer.as_str());

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let table: BTreeSet<(String, String)> = latchkey::http::routes(&app.state.config)
        .iter()
        .map(|r| (r.verb.as_str().to_uppercase(), r.path.to_string()))
        .collect();
    assert_eq!(documented, table);
    for must in [
        "/token",
        "/metrics",
        "/admin/audit",
        "/openapi.json",
        "/admin/keys/{kid}/retire",
    ] {
        assert!(table.iter().any(|(_, p)| p == must), "{must} missing");
    }

    // Every documented operation is really routed (not 404/405), and a method
    // that is not documented for a path is not served (405).
    for (method, path) in &documented {
        let url = app.url(
            &path
                .replace("{kid}", "no-such-kid")
                .replace("{id}", "no-such-id")
                .replace("{username}", "no-such-user"),
        );
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = app.http.request(m, &url).send().await.unwrap();
        let status = r.status();
        // The router's own 404 has an empty body; a handler's has an OAuth error.
        let body = r.text().await.unwrap();
        assert!(status != 405, "{method} {path}: {status}");
        assert!(
            status != 404 || !body.is_empty(),
            "{method} {path}: unrouted"
        );
        let documented_methods: Vec<&String> = documented
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(m, _)| m)
            .collect();
        for other in ["GET", "POST", "DELETE"] {
            if !documented_methods.iter().any(|m| *m == other) {
                let m = reqwest::Method::from_bytes(other.as_bytes()).unwrap();
                let status = app.http.request(m, &url).send().await.unwrap().status();
                assert_eq!(status, 405, "{other} {path}");
            }
        }
    }

    // `latchkey openapi` prints the same document (what CI validates).
    let out = app.cli(&["openapi"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, doc);

    // Path parameters and security are stated.
    let retire = &doc["paths"]["/admin/keys/{kid}/retire"]["post"];
    assert_eq!(retire["parameters"][0]["name"], "kid");
    assert_eq!(retire["parameters"][0]["in"], "path");
    assert_eq!(retire["security"][0]["bearer"], serde_json::json!([]));
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|i| i.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}
