//! A sale's currency and picture, end to end: the admin API takes and checks
//! them, the shoppers' API and pages carry them, a change before the
//! opening reaches every page, and headless Chromium shows the price in the
//! shopper's locale (German, Japanese) with the right minor units (JPY has
//! none). Also the shoppers' `paused` state.

use serde_json::{Value, json};

use crate::support::app::{ADMIN_TOKEN, AppOptions, TestApp, shared_group, unique};
use crate::support::chromium::chromium_dom;

fn at(secs_from_now: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs_from_now))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt")
}

fn new_sale(sku: &str, price: i64, currency: Option<&str>, image: Option<&str>) -> Value {
    let mut v = json!({
        "sku": sku, "name": format!("Product {sku}"), "price_cents": price, "stock": 5,
        "starts_at": at(-5), "ends_at": at(3600), "per_user_limit": 1
    });
    if let Some(c) = currency {
        v["currency"] = json!(c);
    }
    if let Some(i) = image {
        v["image_url"] = json!(i);
    }
    v
}

async fn page(app: &TestApp, path: &str) -> String {
    let r = app.http.get(app.url(path)).send().await.expect("page");
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.text().await.expect("html")
}

/// The text Chromium shows in the first `data.money` element of a DOM.
fn money_text(dom: &str) -> String {
    let start = dom.find("class=\"money\"").expect("a price in the page");
    let rest = &dom[start..];
    let open = rest.find('>').expect("tag end") + 1;
    let close = rest.find("</data>").expect("</data>");
    rest[open..close].replace("&nbsp;", "\u{a0}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currency_and_image_through_the_api() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let eur = unique("eur");
    let (s, created) = app
        .admin_post(
            "/admin/sales",
            new_sale(
                &eur,
                29900,
                Some("EUR"),
                Some("https://cdn.example.com/tv.jpg"),
            ),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["image_url"], "https://cdn.example.com/tv.jpg");
    let (s, p) = app.get(&format!("/api/products/{eur}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(p["price_cents"], 29900);
    assert_eq!(p["currency"], "EUR");
    assert_eq!(p["currency_minor_digits"], 2);
    assert_eq!(p["image_url"], "https://cdn.example.com/tv.jpg");

    // Without a currency: USD, and no picture.
    let usd = unique("usd");
    let (s, _) = app
        .admin_post("/admin/sales", new_sale(&usd, 100, None, None))
        .await;
    assert_eq!(s, 201);
    let (_, p) = app.get(&format!("/api/products/{usd}"), None).await;
    assert_eq!(p["currency"], "USD");
    assert_eq!(p["image_url"], Value::Null);

    // The same creation again is a replay (201); another currency under the
    // sku is another sale (409).
    let again = new_sale(
        &eur,
        29900,
        Some("EUR"),
        Some("https://cdn.example.com/tv.jpg"),
    );
    let mut replay = again.clone();
    replay["starts_at"] = created["starts_at"].clone();
    replay["ends_at"] = created["ends_at"].clone();
    let (s, body) = app.admin_post("/admin/sales", replay.clone()).await;
    assert_eq!(s, 201, "{body}");
    replay["currency"] = json!("GBP");
    let (s, body) = app.admin_post("/admin/sales", replay).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("sale_exists")),
        "{body}"
    );

    // Bad values: 422 naming the field, and nothing is created.
    for (currency, image, field) in [
        (Some("eur"), None, "currency"),
        (Some("XAU"), None, "currency"),
        (Some("EURO"), None, "currency"),
        (None, Some("javascript:alert(1)"), "image_url"),
        (None, Some("//evil.example/x.png"), "image_url"),
        (None, Some("https://a.example/x y.png"), "image_url"),
    ] {
        let sku = unique("bad");
        let (s, body) = app
            .admin_post("/admin/sales", new_sale(&sku, 1, currency, image))
            .await;
        assert_eq!(s, 422, "{currency:?} {image:?}: {body}");
        assert_eq!(body["error"], "invalid_sale");
        assert!(
            body["message"].as_str().unwrap_or("").contains(field),
            "{body}"
        );
        let (s, _) = app.get(&format!("/api/products/{sku}"), None).await;
        assert_eq!(s, 404, "a refused sale is not created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_before_the_opening_reaches_the_pages() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let sku = unique("chg");
    let mut body = new_sale(&sku, 1500, Some("EUR"), None);
    body["starts_at"] = json!(at(600));
    body["ends_at"] = json!(at(1200));
    let (s, _) = app.admin_post("/admin/sales", body).await;
    assert_eq!(s, 201);
    let html = page(&app, &format!("/p/{sku}")).await;
    assert!(html.contains(">15.00 EUR</data>"), "{html}");
    assert!(
        html.contains("/static/img/product.svg"),
        "placeholder without a picture"
    );

    let patch = |v: Value| {
        app.http
            .patch(app.url(&format!("/admin/sales/{sku}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&v)
            .send()
    };
    let r = patch(json!({"currency": "JPY", "image_url": "https://img.example/tv.png"}))
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    let changed: Value = r.json().await.expect("json");
    assert_eq!(changed["currency"], "JPY");
    let html = page(&app, &format!("/p/{sku}")).await;
    assert!(
        html.contains(r#"value="1500" data-currency="JPY" data-minor-digits="0">1500 JPY</data>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"src="https://img.example/tv.png""#),
        "{html}"
    );
    let index = page(&app, "/").await;
    assert!(
        index.contains(r#"src="https://img.example/tv.png""#),
        "{index}"
    );

    // "" removes the picture; a bad currency changes nothing.
    let r = patch(json!({"image_url": ""})).await.expect("patch");
    assert_eq!(r.status().as_u16(), 200);
    let r = patch(json!({"currency": "yen", "name": "renamed"}))
        .await
        .expect("patch");
    assert_eq!(r.status().as_u16(), 422);
    let (_, p) = app.get(&format!("/api/products/{sku}"), None).await;
    assert_eq!(p["image_url"], Value::Null);
    assert_eq!(p["currency"], "JPY");
    assert_eq!(p["name"], format!("Product {sku}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_prices_in_the_shoppers_locale() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let eur = unique("loceur");
    let jpy = unique("locjpy");
    let (s, _) = app
        .admin_post("/admin/sales", new_sale(&eur, 29900, Some("EUR"), None))
        .await;
    assert_eq!(s, 201);
    let (s, _) = app
        .admin_post("/admin/sales", new_sale(&jpy, 1500, Some("JPY"), None))
        .await;
    assert_eq!(s, 201);
    // The HTML is the same for everyone: the plain price.
    let html = page(&app, &format!("/p/{eur}")).await;
    assert!(html.contains(">299.00 EUR</data>"), "{html}");

    for (sku, langs, want) in [
        (&eur, &["de-DE"][..], "299,00\u{a0}€"),
        (&eur, &["en-US"][..], "€299.00"),
        (&jpy, &["de-DE"][..], "1.500\u{a0}¥"),
        (&jpy, &["ja-JP"][..], "￥1,500"),
        (&jpy, &["en-US"][..], "¥1,500"),
    ] {
        let dom = chromium_dom(&app.url(&format!("/p/{sku}")), langs).await;
        assert_eq!(money_text(&dom), want, "{sku} in {langs:?}");
    }
}

/// Shoppers see `paused` while an operator holds the sale, on the API and
/// on the product page (its script follows the API), and `live` again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoppers_see_a_paused_sale() {
    let app = TestApp::spawn(shared_group(), AppOptions::default()).await;
    let sku = unique("pz");
    app.create_sale(&sku, 5, 1, -5, 3600).await;
    let (s, _) = app
        .admin_post(&format!("/admin/sales/{sku}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (_, p) = app.get(&format!("/api/products/{sku}"), None).await;
    assert_eq!(p["state"], "paused");
    let (_, list) = app.get("/api/products", None).await;
    let listed = list
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["sku"] == sku.as_str())
        .expect("listed");
    assert_eq!(listed["state"], "paused");
    let dom = chromium_dom(&app.url(&format!("/p/{sku}")), &[]).await;
    assert!(
        dom.contains(r#"data-state="paused""#) && dom.contains("paused for the moment"),
        "{dom}"
    );
    let (s, _) = app
        .admin_post(&format!("/admin/sales/{sku}/resume"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (_, p) = app.get(&format!("/api/products/{sku}"), None).await;
    assert_eq!(p["state"], "live");
}
