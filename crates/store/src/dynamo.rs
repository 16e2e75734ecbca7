//! [`OrderWrites`] and [`OrderReads`] on one DynamoDB table (layout: `docs/data-model.md`).
//!
//! Every effect is one conditional write that is also its own deduplication; the item DynamoDB returns with a failed
//! condition tells a duplicate from a stale version without another read.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Instant;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use domain::{Item, OrderEvent};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::BoxError;
use crate::model::{
    actualizado_orden, dia, estado_for, fecha_orden, Applied, AppliedVersion, ChangeMeta, OrderRecord, OrderView, Page,
    RoleStats, Shipment,
};
use crate::orders::{OrderReads, OrderWrites, StatsWrites, MAX_PAGE};
use crate::schema::{attr, CUSTOMER_INDEX, RECENT_INDEX};
use crate::{cursor, BoxFuture, StoreError};

pub(crate) type Attributes = HashMap<String, AttributeValue>;

/// Partition key of an order's state.
pub fn order_key(pedido_id: Uuid) -> String {
    format!("PEDIDO#{pedido_id}")
}

/// Partition key of a role's stats item.
pub fn stats_key(role: &str) -> String {
    format!("STATS#{role}")
}

/// Prefix of the per-outcome counters in a stats item (`n_processed`, ...): flat attributes, so `ADD` needs no map.
const STATS_PREFIX: &str = "n_";

/// Partition key of an order's shipment.
pub fn shipment_key(pedido_id: Uuid) -> String {
    format!("ENVIO#{pedido_id}")
}

/// Applies version *v* only when the order is absent or holds a lower version.
pub(crate) const APPLY_CONDITION: &str = "attribute_not_exists(pk) OR #version < :v";
/// Creates the shipment only when absent.
pub(crate) const SHIPMENT_CONDITION: &str = "attribute_not_exists(pk)";

/// The update that applies one version of an order: key, expression and values (names: [`apply_names`]).
pub(crate) struct ApplyWrite {
    pub key: String,
    pub expression: String,
    pub values: Attributes,
}

impl ApplyWrite {
    pub fn new(event: &OrderEvent, meta: &ChangeMeta) -> Self {
        let order = &event.order;
        let at = s(meta.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let mut entry =
            HashMap::from([("version".to_owned(), n(event.version)), ("aplicadaEn".to_owned(), at.clone())]);
        if let Some(request_id) = &meta.request_id {
            entry.insert("requestId".to_owned(), s(request_id.clone()));
        }
        let mut set = vec![
            "#version = :v",
            "estado = :estado",
            "pedidoId = :id",
            "clienteId = :cliente",
            "fecha = :fecha",
            "fechaOrden = :orden",
            "dia = :dia",
            "actualizadoOrden = :actualizado",
            "#total = :total",
            "actualizadoEn = :at",
            "creadoEn = if_not_exists(creadoEn, :at)",
            "tipo = :tipo",
            "versiones = list_append(if_not_exists(versiones, :empty), :entry)",
        ];
        let mut values: Attributes = HashMap::from([
            (":v".to_owned(), n(event.version)),
            (":estado".to_owned(), s(estado_for(event.version))),
            (":id".to_owned(), s(order.pedido_id.to_string())),
            (":cliente".to_owned(), s(order.cliente_id.to_string())),
            (":fecha".to_owned(), s(order.fecha.to_rfc3339())),
            (":orden".to_owned(), s(fecha_orden(order.fecha, order.pedido_id))),
            (":dia".to_owned(), s(dia(meta.at))),
            (":actualizado".to_owned(), s(actualizado_orden(meta.at, order.pedido_id))),
            (":total".to_owned(), AttributeValue::N(order.total.to_string())),
            (":at".to_owned(), at),
            (":tipo".to_owned(), s("PEDIDO")),
            (":empty".to_owned(), AttributeValue::L(Vec::new())),
            (":entry".to_owned(), AttributeValue::L(vec![AttributeValue::M(entry)])),
        ]);
        let mut remove = Vec::new();
        match &order.items {
            Some(items) => {
                set.push("#items = :items");
                values.insert(":items".to_owned(), encode_items(items));
            }
            None => remove.push("#items"),
        }
        match &meta.request_id {
            Some(request_id) => {
                set.push("requestId = :rid");
                values.insert(":rid".to_owned(), s(request_id.clone()));
            }
            None => remove.push("requestId"),
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        Self { key: order_key(order.pedido_id), expression, values }
    }
}

/// `version`, `total` and `items` are reserved words in DynamoDB expressions.
pub(crate) fn apply_names() -> HashMap<String, String> {
    HashMap::from([
        ("#version".to_owned(), "version".to_owned()),
        ("#total".to_owned(), "total".to_owned()),
        ("#items".to_owned(), "items".to_owned()),
    ])
}

/// What a failed apply condition means, from the stored item DynamoDB returned with the failure.
pub(crate) fn apply_verdict(old: Option<&Attributes>, version: u64, key: &str) -> Result<Applied, StoreError> {
    match old.and_then(|item| item.get("version")).map(|v| number::<u64>(v, key, "version")) {
        Some(Ok(latest)) if latest == version => Ok(Applied::Duplicate),
        Some(Ok(latest)) => Ok(Applied::Stale { latest }),
        Some(Err(corrupt)) => Err(corrupt),
        // The endpoint did not return the item: the condition alone says "not newer than stored".
        None => Ok(Applied::Duplicate),
    }
}

/// The shipment's item.
pub(crate) fn shipment_item(shipment: &Shipment) -> Attributes {
    let mut item: Attributes = HashMap::from([
        (attr::PK.to_owned(), s(shipment_key(shipment.pedido_id))),
        ("tipo".to_owned(), s("ENVIO")),
        ("pedidoId".to_owned(), s(shipment.pedido_id.to_string())),
        ("trackingCode".to_owned(), s(shipment.tracking_code.clone())),
        ("estado".to_owned(), s(shipment.estado.clone())),
        ("creadoEn".to_owned(), s(shipment.creado_en.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
    ]);
    if let Some(request_id) = &shipment.request_id {
        item.insert("requestId".to_owned(), s(request_id.clone()));
    }
    item
}

/// The orders table.
#[derive(Clone)]
pub struct DynamoOrders {
    client: Client,
    table: String,
}

impl DynamoOrders {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn apply_now(&self, event: &OrderEvent, meta: &ChangeMeta) -> Result<Applied, StoreError> {
        let write = ApplyWrite::new(event, meta);
        let started = Instant::now();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(write.key.clone()))
            .update_expression(write.expression)
            .condition_expression(APPLY_CONDITION)
            .set_expression_attribute_names(Some(apply_names()))
            .set_expression_attribute_values(Some(write.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let verdict = match result {
            Ok(_) => Ok(Applied::Applied),
            Err(SdkError::ServiceError(failure)) if failure.err().is_conditional_check_failed_exception() => {
                let old = match failure.err() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(e) => {
                        e.item()
                    }
                    _ => None,
                };
                apply_verdict(old, event.version, &write.key)
            }
            Err(e) => Err(unavailable("apply", e)),
        };
        record("apply", started, &verdict);
        verdict
    }

    async fn create_shipment_now(&self, shipment: &Shipment) -> Result<Applied, StoreError> {
        let item = shipment_item(shipment);
        let started = Instant::now();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(SHIPMENT_CONDITION)
            .send()
            .await;
        let verdict = match result {
            Ok(_) => Ok(Applied::Applied),
            Err(SdkError::ServiceError(failure)) if failure.err().is_conditional_check_failed_exception() => {
                Ok(Applied::Duplicate)
            }
            Err(e) => Err(unavailable("create_shipment", e)),
        };
        record("create_shipment", started, &verdict);
        verdict
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Items by partition key in one `BatchGetItem` (at most 100 keys), keyed by `pk`.
    async fn batch_get(
        &self,
        operation: &'static str,
        keys: &[String],
        consistent: bool,
    ) -> Result<HashMap<String, Attributes>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let request = keys
            .iter()
            .fold(KeysAndAttributes::builder(), |b, key| b.keys(HashMap::from([(attr::PK.to_owned(), s(key.clone()))])))
            .consistent_read(consistent)
            .build()
            .map_err(|e| StoreError::Unavailable {
                operation,
                throttled: false,
                detail: e.to_string(),
                source: Box::new(e),
            })?;
        let started = Instant::now();
        let result = self.client.batch_get_item().request_items(&self.table, request).send().await;
        let output = result.map_err(|e| unavailable(operation, e));
        record_read(operation, started, &output);
        let mut output = output?;
        // A few small keys are never left unprocessed in practice; if they are, the caller retries the whole read.
        if output.unprocessed_keys.as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(StoreError::Unavailable {
                operation,
                throttled: true,
                detail: "keys left unprocessed".into(),
                source: "keys left unprocessed".into(),
            });
        }
        let items = output.responses.as_mut().and_then(|r| r.remove(&self.table)).unwrap_or_default();
        Ok(items
            .into_iter()
            .filter_map(|item| match item.get(attr::PK) {
                Some(AttributeValue::S(pk)) => Some((pk.clone(), item)),
                _ => None,
            })
            .collect())
    }

    async fn get_now(&self, pedido_id: Uuid) -> Result<Option<OrderView>, StoreError> {
        let (order_pk, shipment_pk) = (order_key(pedido_id), shipment_key(pedido_id));
        let mut items = self.batch_get("get", &[order_pk.clone(), shipment_pk.clone()], true).await?;
        let Some(order) = items.remove(&order_pk) else { return Ok(None) };
        let envio = items.remove(&shipment_pk).map(|item| decode_shipment(&item, &shipment_pk)).transpose()?;
        Ok(Some(OrderView { order: decode_order(&order, &order_pk)?, envio }))
    }

    async fn recent_now(&self, limit: u32) -> Result<Vec<OrderView>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let today = chrono::Utc::now();
        let mut orders = Vec::new();
        for day in [today, today - chrono::Duration::days(1)] {
            let left = limit as usize - orders.len();
            if left == 0 {
                break;
            }
            let started = Instant::now();
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(RECENT_INDEX)
                .key_condition_expression("dia = :d")
                .expression_attribute_values(":d", s(dia(day)))
                .scan_index_forward(false)
                .limit(i32::try_from(left).unwrap_or(20))
                .send()
                .await
                .map_err(|e| unavailable("recent", e));
            record_read("recent", started, &output);
            for item in output?.items.unwrap_or_default() {
                let key = text(&item, attr::PK, "?").unwrap_or_else(|_| "?".into());
                orders.push(decode_order(&item, &key)?);
            }
        }
        let shipment_keys: Vec<String> = orders.iter().map(|o| shipment_key(o.pedido_id)).collect();
        let mut shipments = self.batch_get("recent", &shipment_keys, false).await?;
        orders
            .into_iter()
            .map(|order| {
                let key = shipment_key(order.pedido_id);
                let envio = shipments.remove(&key).map(|item| decode_shipment(&item, &key)).transpose()?;
                Ok(OrderView { order, envio })
            })
            .collect()
    }

    async fn role_stats_now(&self, roles: &[&str]) -> Result<BTreeMap<String, RoleStats>, StoreError> {
        let keys: Vec<String> = roles.iter().map(|role| stats_key(role)).collect();
        let items = self.batch_get("stats", &keys, false).await?;
        let mut stats = BTreeMap::new();
        for role in roles {
            let key = stats_key(role);
            let Some(item) = items.get(&key) else { continue };
            let mut role_stats = RoleStats::default();
            for (name, value) in item {
                if let Some(outcome) = name.strip_prefix(STATS_PREFIX) {
                    role_stats.outcomes.insert(outcome.to_owned(), number(value, &key, name)?);
                }
            }
            role_stats.oldest_age_seconds =
                item.get("oldestAgeSeconds").map_or(Ok(0), |v| number(v, &key, "oldestAgeSeconds"))?;
            role_stats.updated_at =
                optional_text(item, "updatedAt", &key)?.map(|t| utc(&t, &key, "updatedAt")).transpose()?;
            stats.insert((*role).to_owned(), role_stats);
        }
        Ok(stats)
    }

    async fn list_now(&self, cliente_id: Uuid, limit: u32, after: Option<&str>) -> Result<Page, StoreError> {
        let after = after.map(cursor::decode).transpose()?;
        let cliente = cliente_id.to_string();
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(CUSTOMER_INDEX)
            .key_condition_expression("clienteId = :c")
            .expression_attribute_values(":c", s(cliente.clone()))
            .scan_index_forward(false)
            .limit(i32::try_from(limit.clamp(1, MAX_PAGE)).unwrap_or(20));
        if let Some(after) = &after {
            let pedido =
                after.rsplit('#').next().and_then(|id| Uuid::parse_str(id).ok()).ok_or(StoreError::BadCursor)?;
            query = query.set_exclusive_start_key(Some(HashMap::from([
                (attr::PK.to_owned(), s(order_key(pedido))),
                ("clienteId".to_owned(), s(cliente.clone())),
                ("fechaOrden".to_owned(), s(after.clone())),
            ])));
        }
        let started = Instant::now();
        let output = query.send().await.map_err(|e| unavailable("list", e));
        record_read("list", started, &output);
        let output = output?;
        let mut orders = Vec::new();
        for item in output.items.unwrap_or_default() {
            let key = text(&item, attr::PK, "?").unwrap_or_else(|_| "?".into());
            orders.push(decode_order(&item, &key)?);
        }
        let next_cursor = output.last_evaluated_key.as_ref().and_then(|k| match k.get("fechaOrden") {
            Some(AttributeValue::S(last)) => Some(cursor::encode(last)),
            _ => None,
        });
        Ok(Page { orders, next_cursor })
    }
}

impl OrderWrites for DynamoOrders {
    fn apply<'a>(&'a self, event: &'a OrderEvent, meta: &'a ChangeMeta) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(self.apply_now(event, meta))
    }

    fn create_shipment<'a>(&'a self, shipment: &'a Shipment) -> BoxFuture<'a, Result<Applied, StoreError>> {
        Box::pin(self.create_shipment_now(shipment))
    }
}

impl OrderReads for DynamoOrders {
    fn get(&self, pedido_id: Uuid) -> BoxFuture<'_, Result<Option<OrderView>, StoreError>> {
        Box::pin(self.get_now(pedido_id))
    }

    fn list_by_cliente<'a>(
        &'a self,
        cliente_id: Uuid,
        limit: u32,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(self.list_now(cliente_id, limit, cursor))
    }

    fn recent(&self, limit: u32) -> BoxFuture<'_, Result<Vec<OrderView>, StoreError>> {
        Box::pin(self.recent_now(limit))
    }

    fn role_stats<'a>(
        &'a self,
        roles: &'a [&'a str],
    ) -> BoxFuture<'a, Result<BTreeMap<String, RoleStats>, StoreError>> {
        Box::pin(self.role_stats_now(roles))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable("check", e));
            record_read("check", started, &result);
            result
        })
    }
}

impl StatsWrites for DynamoOrders {
    fn add_stats<'a>(
        &'a self,
        role: &'a str,
        outcomes: &'a [(&'static str, u64)],
        oldest_age_seconds: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut names = HashMap::new();
            let mut values: Attributes = HashMap::from([
                (":age".to_owned(), n(oldest_age_seconds)),
                (":now".to_owned(), s(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
            ]);
            let mut adds = Vec::new();
            for (i, (outcome, count)) in outcomes.iter().enumerate().filter(|(_, (_, count))| *count > 0) {
                names.insert(format!("#o{i}"), format!("{STATS_PREFIX}{outcome}"));
                values.insert(format!(":o{i}"), n(*count));
                adds.push(format!("#o{i} :o{i}"));
            }
            let mut expression = "SET oldestAgeSeconds = :age, updatedAt = :now".to_owned();
            if !adds.is_empty() {
                expression.push_str(&format!(" ADD {}", adds.join(", ")));
            }
            let started = Instant::now();
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(attr::PK, s(stats_key(role)))
                .update_expression(expression)
                .set_expression_attribute_names((!names.is_empty()).then_some(names))
                .set_expression_attribute_values(Some(values))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable("stats", e));
            record_read("stats", started, &result);
            result
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Errors and metrics

/// Throttling is its own label: an operator reacts to it differently (capacity) than to an outage.
pub(crate) trait Throttling {
    fn is_throttled(&self) -> bool;
}

macro_rules! throttling {
    ($($error:ty),*) => {$(
        impl Throttling for $error {
            fn is_throttled(&self) -> bool {
                self.is_provisioned_throughput_exceeded_exception() || self.is_request_limit_exceeded()
                    || self.is_throttling_exception()
            }
        }
    )*};
}

throttling!(
    aws_sdk_dynamodb::operation::update_item::UpdateItemError,
    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
    aws_sdk_dynamodb::operation::put_item::PutItemError,
    aws_sdk_dynamodb::operation::delete_item::DeleteItemError,
    aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemError,
    aws_sdk_dynamodb::operation::query::QueryError
);

impl Throttling for aws_sdk_dynamodb::operation::describe_table::DescribeTableError {
    fn is_throttled(&self) -> bool {
        false
    }
}

pub(crate) fn unavailable<E, R>(operation: &'static str, error: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Throttling + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let throttled = error.as_service_error().is_some_and(Throttling::is_throttled);
    let detail = aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string();
    StoreError::Unavailable { operation, throttled, detail, source: Box::new(error) as BoxError }
}

/// Counts a write by operation and result, and its latency.
pub(crate) fn record(operation: &'static str, started: Instant, result: &Result<Applied, StoreError>) {
    let label = match result {
        Ok(Applied::Applied) => "applied",
        Ok(Applied::Duplicate) => "duplicate",
        Ok(Applied::Stale { .. }) => "stale",
        Err(e) => e.kind(),
    };
    count(operation, label, started);
}

fn record_read<T>(operation: &'static str, started: Instant, result: &Result<T, StoreError>) {
    count(operation, result.as_ref().map_or_else(StoreError::kind, |_| "ok"), started);
}

pub(crate) fn count(operation: &'static str, result: &'static str, started: Instant) {
    metrics::counter!("pedidos_store_calls_total", "operation" => operation, "result" => result).increment(1);
    metrics::histogram!("pedidos_store_call_duration_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------------------------
// Item codec: every read is checked; a bad item is an error naming its key, never a panic.

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn corrupt(key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { key: key.to_owned(), reason: reason.into() }
}

fn text(item: &Attributes, name: &str, key: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        Some(_) => Err(corrupt(key, format!("{name} is not a string"))),
        None => Err(corrupt(key, format!("{name} is missing"))),
    }
}

fn optional_text(item: &Attributes, name: &str, key: &str) -> Result<Option<String>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(_) => text(item, name, key).map(Some),
    }
}

pub(crate) fn number<T: FromStr>(value: &AttributeValue, key: &str, name: &str) -> Result<T, StoreError> {
    match value {
        AttributeValue::N(v) => v.parse().map_err(|_| corrupt(key, format!("{name}={v:?} is out of range"))),
        _ => Err(corrupt(key, format!("{name} is not a number"))),
    }
}

fn required_number<T: FromStr>(item: &Attributes, name: &str, key: &str) -> Result<T, StoreError> {
    item.get(name).map_or_else(|| Err(corrupt(key, format!("{name} is missing"))), |v| number(v, key, name))
}

/// Money read back as stored: DynamoDB may drop trailing zeros (`59.90` -> `59.9`), so cents are restored.
fn money(value: &AttributeValue, key: &str, name: &str) -> Result<Decimal, StoreError> {
    let AttributeValue::N(text) = value else { return Err(corrupt(key, format!("{name} is not a number"))) };
    let mut amount = Decimal::from_str(text).map_err(|_| corrupt(key, format!("{name}={text:?} is not a decimal")))?;
    if amount.scale() < 2 {
        amount.rescale(2);
    }
    Ok(amount)
}

fn uuid(item: &Attributes, name: &str, key: &str) -> Result<Uuid, StoreError> {
    let v = text(item, name, key)?;
    Uuid::parse_str(&v).map_err(|_| corrupt(key, format!("{name}={v:?} is not a UUID")))
}

fn utc(value: &str, key: &str, name: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(value)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| corrupt(key, format!("{name}={value:?} is not an RFC 3339 date")))
}

fn encode_items(items: &[Item]) -> AttributeValue {
    AttributeValue::L(
        items
            .iter()
            .map(|item| {
                AttributeValue::M(HashMap::from([
                    ("productoId".to_owned(), s(item.producto_id.clone())),
                    ("cantidad".to_owned(), n(u64::from(item.cantidad))),
                    ("precioUnitario".to_owned(), AttributeValue::N(item.precio_unitario.to_string())),
                ]))
            })
            .collect(),
    )
}

fn list<'i>(item: &'i Attributes, name: &str, key: &str) -> Result<Option<&'i Vec<AttributeValue>>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::L(values)) => Ok(Some(values)),
        Some(_) => Err(corrupt(key, format!("{name} is not a list"))),
    }
}

fn map<'v>(value: &'v AttributeValue, key: &str, name: &str) -> Result<&'v Attributes, StoreError> {
    match value {
        AttributeValue::M(m) => Ok(m),
        _ => Err(corrupt(key, format!("an entry of {name} is not a map"))),
    }
}

fn decode_items(item: &Attributes, key: &str) -> Result<Option<Vec<Item>>, StoreError> {
    let Some(values) = list(item, "items", key)? else { return Ok(None) };
    values
        .iter()
        .map(|value| {
            let line = map(value, key, "items")?;
            Ok(Item {
                producto_id: text(line, "productoId", key)?,
                cantidad: required_number(line, "cantidad", key)?,
                precio_unitario: money(
                    line.get("precioUnitario").ok_or_else(|| corrupt(key, "precioUnitario is missing"))?,
                    key,
                    "precioUnitario",
                )?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An order item back into its record.
///
/// # Errors
/// [`StoreError::Corrupt`] naming `key` and the first bad attribute.
pub fn decode_order(item: &Attributes, key: &str) -> Result<OrderRecord, StoreError> {
    let fecha = text(item, "fecha", key)?;
    let versiones = list(item, "versiones", key)?
        .map(|values| {
            values
                .iter()
                .map(|value| {
                    let entry = map(value, key, "versiones")?;
                    Ok(AppliedVersion {
                        version: required_number(entry, "version", key)?,
                        aplicada_en: utc(&text(entry, "aplicadaEn", key)?, key, "aplicadaEn")?,
                        request_id: optional_text(entry, "requestId", key)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(OrderRecord {
        pedido_id: uuid(item, "pedidoId", key)?,
        version: required_number(item, "version", key)?,
        estado: text(item, "estado", key)?,
        cliente_id: uuid(item, "clienteId", key)?,
        fecha: DateTime::parse_from_rfc3339(&fecha)
            .map_err(|_| corrupt(key, format!("fecha={fecha:?} is not an RFC 3339 date")))?,
        total: money(item.get("total").ok_or_else(|| corrupt(key, "total is missing"))?, key, "total")?,
        items: decode_items(item, key)?,
        creado_en: utc(&text(item, "creadoEn", key)?, key, "creadoEn")?,
        actualizado_en: utc(&text(item, "actualizadoEn", key)?, key, "actualizadoEn")?,
        request_id: optional_text(item, "requestId", key)?,
        versiones,
    })
}

fn decode_shipment(item: &Attributes, key: &str) -> Result<Shipment, StoreError> {
    Ok(Shipment {
        pedido_id: uuid(item, "pedidoId", key)?,
        tracking_code: text(item, "trackingCode", key)?,
        estado: text(item, "estado", key)?,
        creado_en: utc(&text(item, "creadoEn", key)?, key, "creadoEn")?,
        request_id: optional_text(item, "requestId", key)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_item_names_its_key_and_attribute() {
        let key = order_key(Uuid::nil());
        let item: Attributes =
            HashMap::from([("pedidoId".to_owned(), s(Uuid::nil().to_string())), ("version".to_owned(), s("three"))]);
        let Err(StoreError::Corrupt { key: named, reason }) = decode_order(&item, &key) else {
            panic!("a bad item must be reported as corrupt")
        };
        assert_eq!(named, key);
        assert!(reason.contains("fecha"), "{reason}");
    }

    #[test]
    fn money_keeps_its_exact_digits() {
        for (stored, shown) in [("59.9", "59.90"), ("0.30", "0.30"), ("999999999.99", "999999999.99"), ("7", "7.00")] {
            let amount = money(&AttributeValue::N(stored.into()), "k", "total").map(|d| d.to_string()).ok();
            assert_eq!(amount.as_deref(), Some(shown));
        }
        assert!(money(&AttributeValue::N("1e400".into()), "k", "total").is_err());
    }
}
