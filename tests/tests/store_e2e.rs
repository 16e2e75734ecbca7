//! The order store against moto's DynamoDB: the conditional writes that make effects exactly-once, the batched
//! transaction path, the reads behind order tracking, and corrupt items.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{TimeZone, Utc};
use domain::{Item, OrderEvent, OrderState};
use e2e::{dynamodb, metric_sum, topology, unique, Emulator};
use rust_decimal::Decimal;
use store::dynamo::{order_key, DynamoOrders};
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
    ChangeMeta { request_id: Some(request.to_owned()), at: Utc::now() }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_writes_share_one_transaction_and_classify_cancellations() {
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
    let calls_before = metric_sum("pedidos_store_calls_total{operation=\"transact_write\"");
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
    let calls = metric_sum("pedidos_store_calls_total{operation=\"transact_write\"") - calls_before;
    assert!(calls <= 3.0, "9 writes in at most 3 transactions (one cancelled, one retry), got {calls}");
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
        let page = orders.list_by_cliente(cliente, 2, cursor.as_deref()).await;
        let Ok(page) = page else { panic!("list failed: {:?}", page.err()) };
        seen.extend(page.orders.iter().map(|o| o.pedido_id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let newest_first: Vec<Uuid> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    assert!(matches!(orders.list_by_cliente(cliente, 2, Some("zz")).await, Err(StoreError::BadCursor)));
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
    let written = orders.apply(&event(pedido, Uuid::new_v4(), 2, 1), &meta("x")).await;
    assert!(written.is_err() || written.ok() == Some(Applied::Duplicate), "never a silent apply over garbage");
}
