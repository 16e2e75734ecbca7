//! The order store against moto's DynamoDB: the conditional writes that make effects exactly-once, the batched
//! transaction path, the reads behind order tracking, and corrupt items.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{TimeZone, Utc};
use domain::{ContentDigest, Item, OrderEvent, OrderState};
use e2e::{dynamodb, topology, unique, Emulator, ThreadMetrics};
use rust_decimal::Decimal;
use store::dynamo::{order_key, DynamoOrders};
use store::model::{HISTORY_KEPT, HISTORY_MAX, REQUEST_ID_MAX};
use store::transact::BatchedWrites;
use store::{Applied, ChangeMeta, OrderReads, OrderWrites, Shipment, StoreError};
use uuid::Uuid;

fn event(pedido: Uuid, cliente: Uuid, version: u64, day: u32) -> OrderEvent {
    let order = OrderState {
        pedido_id: pedido,
        cliente_id: cliente,
        fecha: Utc.with_ymd_and_hms(2026, 11, day, 10, 0, 0).single().unwrap_or_default().fixed_offset(),
        total: Decimal::new(5990, 2),
        items: Some(vec![Item { producto_id: "SKU-1".into(), cantidad: 2, precio_unitario: Decimal::new(2995, 2) }]),
    };
    if version == 1 {
        OrderEvent::created(order, Utc::now())
    } else {
        OrderEvent::updated(order, version, Utc::now())
    }
}

fn meta(request: &str) -> ChangeMeta {
    ChangeMeta { request_id: Some(request.to_owned()), at: Utc::now(), ..Default::default() }
}

async fn setup() -> (Emulator, DynamoOrders, aws_sdk_dynamodb::Client) {
    let emulator = Emulator::start().await;
    let topo = topology(&emulator, &format!("-{}", unique("st"))).await;
    let client = dynamodb(&emulator.endpoints()).await;
    let orders = DynamoOrders::new(client.clone(), topo.orders_table);
    (emulator, orders, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_conditional_write_decides_applied_duplicate_and_stale() {
    let (_emulator, orders, _) = setup().await;
    let (pedido, cliente) = (Uuid::new_v4(), Uuid::new_v4());
    let apply = |version| {
        let orders = orders.clone();
        async move { orders.apply(&event(pedido, cliente, version, 1), &meta(&format!("r{version}"))).await.ok() }
    };
    assert_eq!(apply(1).await, Some(Applied::Applied));
    assert_eq!(apply(1).await, Some(Applied::Duplicate));
    assert_eq!(apply(3).await, Some(Applied::Applied));
    assert_eq!(apply(2).await, Some(Applied::Stale { latest: 3 }));
    let Ok(Some(view)) = orders.get(pedido).await else { panic!("the order must be readable") };
    assert_eq!(view.order.version, 3);
    assert_eq!(view.order.estado, "ACTUALIZADO");
    assert_eq!(view.order.total.to_string(), "59.90", "exact money, cents kept");
    let history: Vec<(u64, Option<String>)> =
        view.order.versiones.iter().map(|v| (v.version, v.request_id.clone())).collect();
    assert_eq!(history, [(1, Some("r1".into())), (3, Some("r3".into()))]);
    assert!(view.envio.is_none());
    let shipment = Shipment {
        pedido_id: pedido,
        tracking_code: "ECX-TEST".into(),
        estado: "PREPARANDO".into(),
        creado_en: Utc::now(),
        request_id: None,
        origin: Default::default(),
    };
    assert_eq!(orders.create_shipment(&shipment).await.ok(), Some(Applied::Applied));
    assert_eq!(orders.create_shipment(&shipment).await.ok(), Some(Applied::Duplicate));
    let Ok(Some(view)) = orders.get(pedido).await else { panic!("the order must be readable") };
    assert_eq!(view.envio.map(|e| e.tracking_code).as_deref(), Some("ECX-TEST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_apply_each_version_once() {
    let (_emulator, orders, _) = setup().await;
    let (pedido, cliente) = (Uuid::new_v4(), Uuid::new_v4());
    // 4 "workers" race every version 1..=5, in different orders.
    let mut tasks = Vec::new();
    for worker in 0..4u64 {
        let orders = orders.clone();
        tasks.push(tokio::spawn(async move {
            let mut applied = 0;
            for step in 0..5u64 {
                let version = (step + worker) % 5 + 1;
                if orders.apply(&event(pedido, cliente, version, 1), &meta("x")).await.ok() == Some(Applied::Applied) {
                    applied += 1;
                }
            }
            applied
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let Ok(Some(view)) = orders.get(pedido).await else { panic!("the order must be readable") };
    let history: Vec<u64> = view.order.versiones.iter().map(|v| v.version).collect();
    assert_eq!(view.order.version, 5);
    assert_eq!(history.len(), total, "every Applied answer is one history entry");
    assert!(history.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {history:?}");
}

// One thread: the batching task and the nine writers run where the test's metrics recorder is, and the nine writes
// are all queued before the batching task runs (they arrive within its linger however loaded the machine is).
#[tokio::test]
async fn batched_writes_share_one_transaction_and_classify_cancellations() {
    let metrics = ThreadMetrics::default();
    let _recorder = metrics.install();
    let (_emulator, orders, _) = setup().await;
    let cliente = Uuid::new_v4();
    let seeded: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for id in &seeded {
        let _ = orders.apply(&event(*id, cliente, 2, 1), &meta("seed")).await;
    }
    let batched = Arc::new(BatchedWrites::spawn(orders.clone()));
    let fresh: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    // One batch: 6 new orders, a duplicate (v2 of seeded[0]), a stale one (v1 of seeded[1]), a newer one (v3 of
    // seeded[2]). The transaction is cancelled by the two failed conditions; the 7 others must still apply.
    let mut writes: Vec<(Uuid, u64)> = fresh.iter().map(|id| (*id, 1)).collect();
    writes.extend([(seeded[0], 2), (seeded[1], 1), (seeded[2], 3)]);
    let mut tasks = Vec::new();
    for (id, version) in writes.clone() {
        let batched = Arc::clone(&batched);
        tasks.push(tokio::spawn(async move {
            (id, version, batched.apply(&event(id, cliente, version, 1), &meta("batch")).await.ok())
        }));
    }
    let mut verdicts = HashMap::new();
    for task in tasks {
        let (id, version, verdict) = task.await.unwrap_or_else(|e| panic!("{e}"));
        verdicts.insert((id, version), verdict);
    }
    for id in &fresh {
        assert_eq!(verdicts[&(*id, 1)], Some(Applied::Applied));
    }
    assert_eq!(verdicts[&(seeded[0], 2)], Some(Applied::Duplicate));
    assert_eq!(verdicts[&(seeded[1], 1)], Some(Applied::Stale { latest: 2 }));
    assert_eq!(verdicts[&(seeded[2], 3)], Some(Applied::Applied));
    for (id, version) in [(fresh[0], 1), (seeded[2], 3), (seeded[0], 2)] {
        let Ok(Some(view)) = orders.get(id).await else { panic!("order {id} must be readable") };
        assert_eq!(view.order.version, version);
        assert_eq!(view.order.versiones.iter().filter(|v| v.version == version).count(), 1);
    }
    let calls = metrics.sum("pedidos_store_calls_total{operation=\"transact_write\"");
    assert!((2.0..=3.0).contains(&calls), "9 writes in 2 or 3 transactions (one cancelled, one retry), got {calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_pages_through_orders_newest_first() {
    let (_emulator, orders, _) = setup().await;
    let cliente = Uuid::new_v4();
    let ids: Vec<Uuid> = (1..=5).map(|_| Uuid::new_v4()).collect();
    for (day, id) in ids.iter().enumerate() {
        let _ = orders.apply(&event(*id, cliente, 1, u32::try_from(day).unwrap_or(0) + 1), &meta("x")).await;
    }
    let _ = orders.apply(&event(Uuid::new_v4(), Uuid::new_v4(), 1, 9), &meta("someone else")).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let page = orders.list_by_cliente(cliente, None, 2, cursor.as_deref()).await;
        let Ok(page) = page else { panic!("list failed: {:?}", page.err()) };
        seen.extend(page.orders.iter().map(|o| o.pedido_id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    assert!(matches!(orders.list_by_cliente(cliente, None, 2, Some("zz")).await, Err(StoreError::BadCursor)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_item_is_an_error_naming_its_key_not_a_panic() {
    let (_emulator, orders, client) = setup().await;
    let pedido = Uuid::new_v4();
    client
        .put_item()
        .table_name(orders.table())
        .item("pk", AttributeValue::S(order_key(pedido)))
        .item("pedidoId", AttributeValue::S(pedido.to_string()))
        .item("version", AttributeValue::S("three".into()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e)));
    match orders.get(pedido).await {
        Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, order_key(pedido)),
        other => panic!("expected a corrupt-item error, got {other:?}"),
    }
    // A write on it also reports the corruption (the stored version is unreadable) instead of guessing.
    // (moto answers a 500 when the condition compares the string with a number; DynamoDB fails the condition and
    // returns the item, which the store reports as corrupt.)
    let written = orders.apply(&event(pedido, Uuid::new_v4(), 2, 1), &meta("x")).await;
    assert!(
        matches!(written, Err(StoreError::Corrupt { .. } | StoreError::Unavailable { .. })),
        "never a silent apply over garbage: {written:?}"
    );
    // An order item without any version is corrupt too, never taken for a duplicate.
    let bare = Uuid::new_v4();
    put(
        &client,
        orders.table(),
        HashMap::from([("pk".into(), s(&order_key(bare))), ("pedidoId".into(), s(&bare.to_string()))]),
    )
    .await;
    let written = orders.apply(&event(bare, Uuid::new_v4(), 1, 1), &meta("x")).await;
    match written {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!((key.as_str(), reason.contains("version")), (order_key(bare).as_str(), true))
        }
        other => panic!("an item without version must be reported as corrupt, got {other:?}"),
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

async fn put(client: &aws_sdk_dynamodb::Client, table: &str, item: HashMap<String, AttributeValue>) {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e)));
}

/// An order taking many versions keeps a bounded history in its item: the condition refuses a full history,
/// the store compacts it to the most recent entries and applies, and the count of applied versions is kept.
// One thread, so the test's metrics recorder sees this test's compactions alone.
#[tokio::test]
async fn the_history_stays_bounded_however_many_versions_apply() {
    let metrics = ThreadMetrics::default();
    let _recorder = metrics.install();
    let (_emulator, orders, _) = setup().await;
    let (pedido, cliente) = (Uuid::new_v4(), Uuid::new_v4());
    for version in 1..=100 {
        let applied = orders.apply(&event(pedido, cliente, version, 1), &meta(&"r".repeat(300))).await;
        assert_eq!(applied.ok(), Some(Applied::Applied), "version {version}");
    }
    let Ok(Some(view)) = orders.get(pedido).await else { panic!("the order must be readable") };
    let history: Vec<u64> = view.order.versiones.iter().map(|v| v.version).collect();
    assert!((HISTORY_KEPT..=HISTORY_MAX).contains(&history.len()), "{history:?}");
    assert_eq!(history.last(), Some(&100));
    assert!(history.windows(2).all(|w| w[1] == w[0] + 1), "the most recent ones, in order: {history:?}");
    assert_eq!(view.order.versiones_aplicadas, 100);
    assert!(view.order.versiones.iter().all(|v| v.request_id.as_ref().is_some_and(|r| r.len() == REQUEST_ID_MAX)));
    let compactions = metrics.sum("pedidos_store_calls_total{operation=\"compact_history\"");
    assert!(
        (3.0..=5.0).contains(&compactions),
        "one compaction every {} versions: {compactions}",
        HISTORY_MAX - HISTORY_KEPT
    );
    // Redeliveries of versions still in the history are told apart by content, older ones are stale.
    assert_eq!(orders.apply(&event(pedido, cliente, 100, 1), &meta("again")).await.ok(), Some(Applied::Duplicate));
    assert_eq!(
        orders.apply(&event(pedido, cliente, 3, 1), &meta("late")).await.ok(),
        Some(Applied::Stale { latest: 100 })
    );
}

/// The largest order the API accepts (500 lines, 64-character product ids, the largest amounts) with a full history
/// of 128-character request ids stays far below DynamoDB's 400 KB: an order's item has a bound whatever it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_order_item_stays_far_below_the_limit() {
    let (_emulator, orders, client) = setup().await;
    let pedido = Uuid::new_v4();
    let line = |n: usize| Item {
        producto_id: format!("{n:064}"),
        cantidad: u32::MAX,
        precio_unitario: Decimal::new(99_999_999_999, 2),
    };
    let cliente = Uuid::new_v4();
    for version in 1..=u64::try_from(HISTORY_MAX).unwrap_or(40) + 1 {
        let mut largest = event(pedido, cliente, version, 1);
        largest.order.total = Decimal::new(99_999_999_999, 2);
        largest.order.items = Some((0..500).map(line).collect());
        let applied = orders.apply(&largest, &meta(&format!("{version:0>128}"))).await;
        assert_eq!(applied.ok(), Some(Applied::Applied), "version {version}");
    }
    let size = e2e::order_item_size(&client, orders.table(), pedido).await;
    assert!(size < 80_000, "the largest order's item is {size} bytes");
    println!("largest order item: {size} bytes");
}

/// The same version with other content is a conflict carrying both digests; the stored order is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_version_with_other_content_is_a_conflict() {
    let (_emulator, orders, _) = setup().await;
    let (pedido, cliente) = (Uuid::new_v4(), Uuid::new_v4());
    let first = event(pedido, cliente, 2, 1);
    assert_eq!(orders.apply(&first, &meta("a")).await.ok(), Some(Applied::Applied));
    let mut other = first.clone();
    other.order.total = Decimal::new(100, 2);
    other.order.items = None;
    let verdict = orders.apply(&other, &meta("b")).await.ok();
    let expected = Applied::Conflict {
        version: 2,
        stored: ContentDigest::of(&first.order),
        received: ContentDigest::of(&other.order),
    };
    assert_eq!(verdict, Some(expected));
    let Ok(Some(view)) = orders.get(pedido).await else { panic!("readable") };
    assert_eq!((view.order.total, view.order.request_id.as_deref()), (Decimal::new(5990, 2), Some("a")));
}

/// DynamoDB's own refusals are classified from the SDK's typed error: an update that would grow an item past 400 KB
/// is `Rejected` with its AWS code (permanent for that message), a missing table is `Misconfigured` (the deployment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_classified_rejected_or_misconfigured() {
    let (_emulator, orders, client) = setup().await;
    let pedido = oversized_order(&orders, &client).await;
    match orders.apply(&big_update(pedido), &meta("x")).await {
        Err(StoreError::Rejected { code, .. }) => assert_eq!(code, "ValidationException"),
        other => panic!("an item past 400 KB must be refused for good, got {other:?}"),
    }
    let missing = DynamoOrders::new(client, "no-such-table");
    match missing.apply(&event(Uuid::new_v4(), Uuid::new_v4(), 1, 1), &meta("x")).await {
        Err(StoreError::Misconfigured { code, .. }) => assert_eq!(code, "ResourceNotFoundException"),
        other => panic!("a missing table is a deployment problem, got {other:?}"),
    }
}

/// Version 2 of `pedido` with 500 lines of long product ids: about 50 KB of items.
fn big_update(pedido: Uuid) -> OrderEvent {
    // Customer 7, as `oversized_order` creates it: an update never changes the customer.
    let mut update = event(pedido, Uuid::from_u128(7), 2, 1);
    let line = |n: usize| Item { producto_id: format!("{n:064}"), cantidad: 1, precio_unitario: Decimal::new(1, 2) };
    update.order.items = Some((0..500).map(line).collect());
    update
}

/// A stored order padded (by hand) to 370 KB: it still fits, the next version's 50 KB of items cannot.
async fn oversized_order(orders: &DynamoOrders, client: &aws_sdk_dynamodb::Client) -> Uuid {
    let pedido = Uuid::new_v4();
    assert_eq!(orders.apply(&event(pedido, Uuid::from_u128(7), 1, 1), &meta("x")).await.ok(), Some(Applied::Applied));
    client
        .update_item()
        .table_name(orders.table())
        .key("pk", s(&order_key(pedido)))
        .update_expression("SET padding = :p")
        .expression_attribute_values(":p", s(&"x".repeat(370_000)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(e)));
    pedido
}

/// Batched writes isolate a write DynamoDB refuses: three of them among thirty good ones fail alone (`Rejected`),
/// all thirty apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_writes_isolate_the_write_dynamodb_refuses() {
    let (_emulator, orders, client) = setup().await;
    let mut bad = Vec::new();
    for _ in 0..3 {
        bad.push(oversized_order(&orders, &client).await);
    }
    let batched = Arc::new(BatchedWrites::spawn(orders.clone()));
    let good: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let mut tasks = Vec::new();
    let writes = good.iter().map(|id| event(*id, Uuid::from_u128(7), 1, 1)).chain(bad.iter().map(|id| big_update(*id)));
    for write in writes {
        let batched = Arc::clone(&batched);
        tasks.push(tokio::spawn(async move { (write.order.pedido_id, batched.apply(&write, &meta("batch")).await) }));
    }
    let mut verdicts = HashMap::new();
    for task in tasks {
        let (id, verdict) = task.await.unwrap_or_else(|e| panic!("{e}"));
        verdicts.insert(id, verdict);
    }
    for id in &good {
        assert!(matches!(verdicts[id], Ok(Applied::Applied)), "{id}: {:?}", verdicts[id]);
    }
    for id in &bad {
        assert!(matches!(verdicts[id], Err(StoreError::Rejected { .. })), "{id}: {:?}", verdicts[id]);
    }
}

/// An order keeps its customer and its owner whatever a newer version says, on both write paths: the conditional
/// write refuses a version that changes `clienteId` or comes from another API client, the verdict names why, and
/// the stored order is untouched. The owner is what the customer listing filters on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_keeps_its_customer_and_its_owner() {
    let (_emulator, orders, _) = setup().await;
    let batched = BatchedWrites::spawn(orders.clone());
    let cliente = Uuid::new_v4();
    let by = |event: OrderEvent, client: &str| event.by_client(Some(client.to_owned()));
    for (path, id) in [("single", Uuid::new_v4()), ("batched", Uuid::new_v4())] {
        let apply = |event: OrderEvent| {
            let (orders, batched) = (orders.clone(), &batched);
            async move {
                let verdict = if path == "single" {
                    orders.apply(&event, &meta("own")).await
                } else {
                    batched.apply(&event, &meta("own")).await
                };
                verdict.unwrap_or_else(|e| panic!("{path}: {e}"))
            }
        };
        assert_eq!(apply(by(event(id, cliente, 1, 1), "shop-a")).await, Applied::Applied, "{path}");
        let refused = |verdict: Applied| match verdict {
            Applied::Refused { reason, detail } => (reason, detail),
            other => panic!("{path}: expected a refusal, got {other:?}"),
        };
        let (reason, detail) = refused(apply(by(event(id, cliente, 2, 1), "shop-b")).await);
        assert_eq!(reason, "owner_mismatch", "{path}");
        assert!(detail.contains("shop-b") && detail.contains("shop-a"), "{path}: {detail}");
        let (reason, _) = refused(apply(by(event(id, Uuid::new_v4(), 2, 1), "shop-a")).await);
        assert_eq!(reason, "cliente_changed", "{path}");
        let (reason, _) = refused(apply(event(id, cliente, 2, 1)).await);
        assert_eq!(reason, "owner_mismatch", "{path}: a version without a client cannot touch an owned order");
        let Ok(Some(view)) = orders.get(id).await else { panic!("{path}: order {id} must be readable") };
        assert_eq!((view.order.version, view.order.client.as_deref()), (1, Some("shop-a")), "{path}");
        assert_eq!(apply(by(event(id, cliente, 2, 1), "shop-a")).await, Applied::Applied, "{path}: the owner may");
    }
    let _ = orders.apply(&by(event(Uuid::new_v4(), cliente, 1, 2), "shop-b"), &meta("b")).await;
    let listed = |owner: Option<&'static str>| {
        let orders = orders.clone();
        async move {
            let page = orders.list_by_cliente(cliente, owner, 10, None).await;
            let Ok(page) = page else { panic!("list failed: {:?}", page.err()) };
            page.orders.iter().map(|o| o.client.clone().unwrap_or_default()).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(Some("shop-a")).await, ["shop-a", "shop-a"]);
    assert_eq!(listed(Some("shop-b")).await, ["shop-b"]);
    assert_eq!(listed(None).await.len(), 3);
}

/// A client's listing fills its page across other clients' orders: DynamoDB applies `Limit` before the owner filter,
/// so the store queries again (a bounded number of times), and a cursor taken mid-page goes on exactly after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_listing_fills_its_page_among_other_clients_orders() {
    let (_emulator, orders, _) = setup().await;
    let cliente = Uuid::new_v4();
    let mut mine = Vec::new();
    // Days 1..=12: every third order is shop-a's (days 3, 6, 9, 12), the others shop-b's.
    for day in 1..=12u32 {
        let (id, owner) = (Uuid::new_v4(), if day % 3 == 0 { "shop-a" } else { "shop-b" });
        let _ = orders.apply(&event(id, cliente, 1, day).by_client(Some(owner.into())), &meta("x")).await;
        if owner == "shop-a" {
            mine.push(id);
        }
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = orders.list_by_cliente(cliente, Some("shop-a"), 3, cursor.as_deref()).await;
        let Ok(page) = page else { panic!("list failed: {:?}", page.err()) };
        pages += 1;
        if page.next_cursor.is_some() {
            assert_eq!(page.orders.len(), 3, "a page with more to come is full");
        }
        seen.extend(page.orders.iter().map(|o| o.pedido_id));
        cursor = page.next_cursor;
        if cursor.is_none() || pages > 4 {
            break;
        }
    }
    let newest_first: Vec<Uuid> = mine.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 2);
}
