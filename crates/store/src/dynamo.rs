//! [`OrderWrites`] and [`OrderReads`] on one DynamoDB table (layout: `docs/data-model.md`).
//!
//! Every effect is one conditional write that is also its own deduplication; the item DynamoDB returns with a failed
//! condition tells a duplicate from a stale version without another read.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Instant;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use domain::{ContentDigest, Item, OrderEvent};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::BoxError;
use crate::model::{
    actualizado_orden, bounded_request_id, dia, estado_for, fecha_orden, Applied, AppliedVersion, ChangeMeta,
    OrderRecord, OrderView, Origin, Page, RoleStats, Shipment, HISTORY_KEPT, HISTORY_MAX,
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

/// Applies version *v* only when the order is absent, or holds a lower version and room in its history (at most
/// [`HISTORY_MAX`] entries): a full history fails the condition too, and is compacted before the write is tried again.
/// Applies version `:v` when the order is absent, or older and still its customer's and its owner's (`owner` is the
/// condition on `clienteApi`), with room in its history.
fn apply_condition(owner: &str) -> String {
    format!(
        "attribute_not_exists(pk) OR (#version < :v AND clienteId = :cliente AND {owner} AND \
         (attribute_not_exists(versiones) OR size(versiones) < :historyMax))"
    )
}
/// Rounds of "apply, compact the full history" before giving up on a write whose item keeps changing.
const APPLY_ROUNDS: usize = 3;

/// Most queries one listing page makes when an owner filter leaves a query's page short.
const LIST_ROUNDS: usize = 4;
/// Creates the shipment only when absent.
pub(crate) const SHIPMENT_CONDITION: &str = "attribute_not_exists(pk)";

/// The update that applies one version of an order: key, expression, condition and values (names: [`apply_names`]).
pub(crate) struct ApplyWrite {
    pub key: String,
    pub expression: String,
    pub condition: String,
    pub values: Attributes,
}

impl ApplyWrite {
    pub fn new(event: &OrderEvent, meta: &ChangeMeta) -> Self {
        let order = &event.order;
        let at = s(meta.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let digest = s(ContentDigest::of(order).to_string());
        let request_id = meta.request_id.as_deref().map(bounded_request_id);
        let mut entry = HashMap::from([
            ("version".to_owned(), n(event.version)),
            ("aplicadaEn".to_owned(), at.clone()),
            ("digest".to_owned(), digest.clone()),
        ]);
        if let Some(request_id) = &request_id {
            entry.insert("requestId".to_owned(), s(request_id.clone()));
        }
        entry.extend(origin_attributes(&meta.origin));
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
            "versionesAplicadas = if_not_exists(versionesAplicadas, :zero) + :one",
            "digest = :digest",
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
            (":zero".to_owned(), n(0)),
            (":one".to_owned(), n(1)),
            (":digest".to_owned(), digest),
            (":historyMax".to_owned(), n(HISTORY_MAX as u64)),
        ]);
        let mut remove = Vec::new();
        match &order.items {
            Some(items) => {
                set.push("#items = :items");
                values.insert(":items".to_owned(), encode_items(items));
            }
            None => remove.push("#items"),
        }
        match request_id {
            Some(request_id) => {
                set.push("requestId = :rid");
                values.insert(":rid".to_owned(), s(request_id));
            }
            None => remove.push("requestId"),
        }
        // The owner is written once, with the first version, and every later version must come from it.
        let owner = match &event.client {
            Some(client) => {
                set.push("clienteApi = :owner");
                values.insert(":owner".to_owned(), s(client.clone()));
                "clienteApi = :owner"
            }
            None => "attribute_not_exists(clienteApi)",
        };
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        Self { key: order_key(order.pedido_id), expression, condition: apply_condition(owner), values }
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

/// What a failed apply condition means.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A duplicate, a stale version or a conflict.
    Decided(Applied),
    /// The stored version is older: the condition failed on a full history, to be compacted before trying again.
    HistoryFull(Attributes),
    /// The failure carried no item (an endpoint that ignores `ReturnValuesOnConditionCheckFailure`): read it.
    Unknown,
}

/// Decides from the stored item DynamoDB returned with the failure. The whole item is decoded: one that cannot be
/// read (no `version`, say) is corrupt, never taken for a duplicate.
pub(crate) fn apply_verdict(old: Option<&Attributes>, event: &OrderEvent, key: &str) -> Result<Verdict, StoreError> {
    let Some(old) = old else { return Ok(Verdict::Unknown) };
    Ok(match decode_order(old, key)?.verdict_for(event) {
        Some(applied) => Verdict::Decided(applied),
        None => Verdict::HistoryFull(old.clone()),
    })
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
        item.insert("requestId".to_owned(), s(bounded_request_id(request_id)));
    }
    item.extend(origin_attributes(&shipment.origin));
    item
}

/// `aceptadaEn`, `messageId` and `traceId`, those that are known.
fn origin_attributes(origin: &Origin) -> Attributes {
    let mut attributes = Attributes::new();
    if let Some(at) = origin.accepted_at {
        attributes.insert("aceptadaEn".to_owned(), s(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
    }
    for (name, value) in [("messageId", &origin.message_id), ("traceId", &origin.trace_id)] {
        if let Some(value) = value {
            attributes.insert(name.to_owned(), s(value.clone()));
        }
    }
    attributes
}

fn decode_origin(item: &Attributes, key: &str) -> Result<Origin, StoreError> {
    Ok(Origin {
        accepted_at: optional_text(item, "aceptadaEn", key)?.map(|at| utc(&at, key, "aceptadaEn")).transpose()?,
        message_id: optional_text(item, "messageId", key)?,
        trace_id: optional_text(item, "traceId", key)?,
    })
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

    /// One conditional `UpdateItem` (access pattern 1); a full history costs one compaction write and a second try,
    /// once every `HISTORY_MAX - HISTORY_KEPT` versions.
    async fn apply_now(&self, event: &OrderEvent, meta: &ChangeMeta) -> Result<Applied, StoreError> {
        let started = Instant::now();
        let verdict = self.apply_rounds(event, meta).await;
        record("apply", started, &verdict);
        verdict
    }

    async fn apply_rounds(&self, event: &OrderEvent, meta: &ChangeMeta) -> Result<Applied, StoreError> {
        let key = order_key(event.order.pedido_id);
        for _ in 0..APPLY_ROUNDS {
            let verdict = match self.apply_once(event, meta).await? {
                Verdict::Unknown => match self.read_item("apply", &key).await? {
                    Some(stored) => apply_verdict(Some(&stored), event, &key)?,
                    // Gone since the condition failed: try again.
                    None => continue,
                },
                verdict => verdict,
            };
            match verdict {
                Verdict::Decided(applied) => return Ok(applied),
                Verdict::HistoryFull(stored) => self.compact_history(&key, &stored).await?,
                Verdict::Unknown => {}
            }
        }
        Err(StoreError::unavailable("apply", format!("{key} kept changing while its history was compacted")))
    }

    /// `Ok(Decided(Applied))` when the write happened.
    async fn apply_once(&self, event: &OrderEvent, meta: &ChangeMeta) -> Result<Verdict, StoreError> {
        let write = ApplyWrite::new(event, meta);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(write.key.clone()))
            .update_expression(write.expression)
            .condition_expression(write.condition)
            .set_expression_attribute_names(Some(apply_names()))
            .set_expression_attribute_values(Some(write.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Verdict::Decided(Applied::Applied)),
            Err(SdkError::ServiceError(failure)) if failure.err().is_conditional_check_failed_exception() => {
                let old = match failure.err() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(e) => {
                        e.item()
                    }
                    _ => None,
                };
                apply_verdict(old, event, &write.key)
            }
            Err(e) => Err(classify("apply", &self.table, e)),
        }
    }

    /// Keeps the [`HISTORY_KEPT`] most recent entries of the full history `stored` holds, provided the item has not
    /// changed since (same version, same history length); when it has, the caller simply tries its write again.
    async fn compact_history(&self, key: &str, stored: &Attributes) -> Result<(), StoreError> {
        let (Some(version), Some(AttributeValue::L(history))) = (stored.get("version"), stored.get("versiones")) else {
            return Err(corrupt(key, "a full history without version or versiones"));
        };
        let kept = history[history.len().saturating_sub(HISTORY_KEPT)..].to_vec();
        let started = Instant::now();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(key))
            // Items from before the count existed: every entry they hold was one applied version.
            .update_expression("SET versiones = :kept, versionesAplicadas = if_not_exists(versionesAplicadas, :len)")
            .condition_expression("#version = :seen AND size(versiones) = :len")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":kept", AttributeValue::L(kept))
            .expression_attribute_values(":seen", version.clone())
            .expression_attribute_values(":len", n(history.len() as u64))
            .send()
            .await;
        let outcome = match result {
            Ok(_) => Ok("ok"),
            Err(SdkError::ServiceError(failure)) if failure.err().is_conditional_check_failed_exception() => {
                Ok("changed")
            }
            Err(e) => Err(classify("compact_history", &self.table, e)),
        };
        count("compact_history", outcome.as_ref().map_or_else(StoreError::kind, |label| *label), started);
        outcome.map(|_| ())
    }

    /// One item by key, consistently.
    async fn read_item(&self, operation: &'static str, key: &str) -> Result<Option<Attributes>, StoreError> {
        Ok(self.batch_get(operation, &[key.to_owned()], true).await?.remove(key))
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
            Err(e) => Err(classify("create_shipment", &self.table, e)),
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
        let output = result.map_err(|e| classify(operation, &self.table, e));
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
                .map_err(|e| classify("recent", &self.table, e));
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

    async fn list_now(
        &self,
        cliente_id: Uuid,
        owner: Option<&str>,
        limit: u32,
        after: Option<&str>,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut after = after.map(cursor::decode).transpose()?;
        let mut orders = Vec::new();
        // DynamoDB applies `Limit` before the owner filter, so one query may find few of the caller's orders among
        // other clients'. A few more queries fill the page; past them, the cursor goes on where they stopped.
        for _ in 0..LIST_ROUNDS {
            let (found, last) = self.list_round(cliente_id, owner, limit, after.as_deref()).await?;
            orders.extend(found);
            after = last;
            if after.is_none() || orders.len() >= limit as usize {
                break;
            }
        }
        if orders.len() > limit as usize {
            orders.truncate(limit as usize);
            // Any order's sort key is a valid place to go on from: the next page starts after the last one shown.
            after = orders.last().map(OrderRecord::fecha_orden);
        }
        Ok(Page { orders, next_cursor: after.as_deref().map(cursor::encode) })
    }

    /// One query of a customer's orders: those matching `owner`, and the sort key to go on from (`None` at the end).
    async fn list_round(
        &self,
        cliente_id: Uuid,
        owner: Option<&str>,
        limit: u32,
        after: Option<&str>,
    ) -> Result<(Vec<OrderRecord>, Option<String>), StoreError> {
        let cliente = cliente_id.to_string();
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(CUSTOMER_INDEX)
            .key_condition_expression("clienteId = :c")
            .expression_attribute_values(":c", s(cliente.clone()))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(20));
        if let Some(owner) = owner {
            query = query.filter_expression("clienteApi = :owner").expression_attribute_values(":owner", s(owner));
        }
        if let Some(after) = after {
            let pedido =
                after.rsplit('#').next().and_then(|id| Uuid::parse_str(id).ok()).ok_or(StoreError::BadCursor)?;
            query = query.set_exclusive_start_key(Some(HashMap::from([
                (attr::PK.to_owned(), s(order_key(pedido))),
                ("clienteId".to_owned(), s(cliente.clone())),
                ("fechaOrden".to_owned(), s(after)),
            ])));
        }
        let started = Instant::now();
        let output = query.send().await.map_err(|e| classify("list", &self.table, e));
        record_read("list", started, &output);
        let output = output?;
        let mut orders = Vec::new();
        for item in output.items.unwrap_or_default() {
            let key = text(&item, attr::PK, "?").unwrap_or_else(|_| "?".into());
            orders.push(decode_order(&item, &key)?);
        }
        let last = output.last_evaluated_key.as_ref().and_then(|k| match k.get("fechaOrden") {
            Some(AttributeValue::S(last)) => Some(last.clone()),
            _ => None,
        });
        Ok((orders, last))
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
        owner: Option<&'a str>,
        limit: u32,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(self.list_now(cliente_id, owner, limit, cursor))
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
                .map_err(|e| classify("check", &self.table, e));
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
                .map_err(|e| classify("stats", &self.table, e));
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

/// Error codes that mean "slow down" beyond the variants each operation models.
const THROTTLING_CODES: [&str; 5] = [
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "Throttling",
    "TooManyRequestsException",
];
/// Error codes of a request that may succeed if sent again unchanged.
const TRANSIENT_CODES: [&str; 6] = [
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
];
/// Error codes that say this process cannot use the table as deployed: missing table or index, permissions,
/// credentials.
const MISCONFIGURED_CODES: [&str; 9] = [
    "ResourceNotFoundException",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "MissingAuthenticationTokenException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
];

/// Classifies a DynamoDB call's failure from the SDK's error variant, the modeled error, its exact error code and the
/// HTTP status (never from message text): transport failures, timeouts, throttling, 5xx and transaction conflicts are
/// [`StoreError::Unavailable`]; missing resources, permissions and credentials [`StoreError::Misconfigured`]; any
/// other refusal (`ValidationException`, an item over 400 KB, ...) is [`StoreError::Rejected`].
pub(crate) fn classify<E>(operation: &'static str, table: &str, error: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + Throttling + ProvideErrorMetadata + Send + Sync + 'static,
{
    if let Some(denied) =
        crate::denied::AccessDenied::from_sdk(&error, iam_action(operation), &format!("table {table}"))
    {
        let detail = denied.to_string();
        return StoreError::Misconfigured { operation, code: denied.code, detail, source: Some(Box::new(error)) };
    }
    let detail = aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string();
    let (code, status, throttled) = match &error {
        SdkError::ServiceError(failure) => {
            let service = failure.err();
            (service.code().map(str::to_owned), Some(failure.raw().status().as_u16()), service.is_throttled())
        }
        SdkError::ConstructionFailure(_) => (Some("ConstructionFailure".to_owned()), None, false),
        // Timeouts, connection failures, unreadable responses: the endpoint, not the request.
        _ => (None, None, false),
    };
    let code_is = |codes: &[&str]| code.as_deref().is_some_and(|code| codes.contains(&code));
    let construction = code.as_deref() == Some("ConstructionFailure");
    let source = Box::new(error) as BoxError;
    if (status.is_none() && !construction) || status.is_some_and(|status| status >= 500) || code_is(&TRANSIENT_CODES) {
        let throttled = throttled || code_is(&THROTTLING_CODES);
        StoreError::Unavailable { operation, throttled, detail, source }
    } else if throttled || status == Some(429) || code_is(&THROTTLING_CODES) {
        StoreError::Unavailable { operation, throttled: true, detail, source }
    } else if code_is(&MISCONFIGURED_CODES) || matches!(status, Some(401 | 403)) {
        // 401/403 without a code the client could read: credentials or permissions, never the message's fault.
        StoreError::Misconfigured { operation, code: code.unwrap_or_default(), detail, source: Some(source) }
    } else {
        let code = code.unwrap_or_else(|| format!("HTTP {}", status.unwrap_or_default()));
        StoreError::Rejected { operation, code, detail, source: Some(source) }
    }
}

/// The IAM action behind each store operation, for the line that says what AWS denied.
fn iam_action(operation: &str) -> &'static str {
    match operation {
        "apply" | "compact_history" | "stats" | "extend_claim" | "complete_claim" => "dynamodb:UpdateItem",
        "create_shipment" | "claim" => "dynamodb:PutItem",
        "release_claim" => "dynamodb:DeleteItem",
        "recent" | "list" => "dynamodb:Query",
        "check" => "dynamodb:DescribeTable",
        // Authorised per item as dynamodb:UpdateItem / dynamodb:PutItem.
        "transact_write" => "dynamodb:TransactWriteItems",
        _ => "dynamodb:BatchGetItem",
    }
}

/// Counts a write by operation and result, and its latency.
pub(crate) fn record(operation: &'static str, started: Instant, result: &Result<Applied, StoreError>) {
    let label = match result {
        Ok(Applied::Applied) => "applied",
        Ok(Applied::Duplicate) => "duplicate",
        Ok(Applied::Stale { .. }) => "stale",
        Ok(Applied::Conflict { .. }) => "conflict",
        Ok(Applied::Refused { .. }) => "refused",
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
    // First: an order item without its version is the corruption that matters most to a conditional write.
    let version = required_number(item, "version", key)?;
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
                        digest: optional_digest(entry, key)?,
                        origin: decode_origin(entry, key)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(OrderRecord {
        pedido_id: uuid(item, "pedidoId", key)?,
        version,
        estado: text(item, "estado", key)?,
        cliente_id: uuid(item, "clienteId", key)?,
        fecha: DateTime::parse_from_rfc3339(&fecha)
            .map_err(|_| corrupt(key, format!("fecha={fecha:?} is not an RFC 3339 date")))?,
        total: money(item.get("total").ok_or_else(|| corrupt(key, "total is missing"))?, key, "total")?,
        items: decode_items(item, key)?,
        creado_en: utc(&text(item, "creadoEn", key)?, key, "creadoEn")?,
        actualizado_en: utc(&text(item, "actualizadoEn", key)?, key, "actualizadoEn")?,
        request_id: optional_text(item, "requestId", key)?,
        client: optional_text(item, "clienteApi", key)?,
        // Items from before the count existed: each entry they hold was one applied version.
        versiones_aplicadas: item
            .get("versionesAplicadas")
            .map_or(Ok(0), |v| number(v, key, "versionesAplicadas"))?
            .max(versiones.len() as u64),
        digest: optional_digest(item, key)?,
        versiones,
    })
}

/// The `digest` attribute of an item or history entry; absent on those written before digests were stored.
fn optional_digest(item: &Attributes, key: &str) -> Result<Option<ContentDigest>, StoreError> {
    optional_text(item, "digest", key)?
        .map(|text| text.parse().map_err(|_| corrupt(key, format!("digest={text:?} is not a content digest"))))
        .transpose()
}

fn decode_shipment(item: &Attributes, key: &str) -> Result<Shipment, StoreError> {
    Ok(Shipment {
        pedido_id: uuid(item, "pedidoId", key)?,
        tracking_code: text(item, "trackingCode", key)?,
        estado: text(item, "estado", key)?,
        creado_en: utc(&text(item, "creadoEn", key)?, key, "creadoEn")?,
        request_id: optional_text(item, "requestId", key)?,
        origin: decode_origin(item, key)?,
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
        assert!(reason.contains("version"), "{reason}");
    }

    /// Every kind of failure lands in the class the caller acts on, decided by variant, code and status alone.
    #[test]
    fn failures_are_classified_by_kind_code_and_status() {
        use aws_sdk_dynamodb::error::ErrorMetadata;
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        use aws_smithy_runtime_api::client::result::SdkError;
        use aws_smithy_runtime_api::http::{Response, StatusCode};
        use aws_smithy_types::body::SdkBody;

        let service = |status: u16, code: &str| {
            let error = UpdateItemError::generic(ErrorMetadata::builder().code(code).message("m").build());
            let status = StatusCode::try_from(status).unwrap_or_else(|e| panic!("{e}"));
            classify("apply", "orders", SdkError::service_error(error, Response::new(status, SdkBody::empty())))
        };
        for (status, code) in
            [(400, "ThrottlingException"), (400, "ProvisionedThroughputExceededException"), (429, "X")]
        {
            assert!(matches!(service(status, code), StoreError::Unavailable { throttled: true, .. }), "{code}");
        }
        for (status, code) in [(500, "InternalServerError"), (503, "Anything"), (400, "TransactionConflictException")] {
            assert!(matches!(service(status, code), StoreError::Unavailable { throttled: false, .. }), "{code}");
        }
        for code in ["ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException"] {
            assert_eq!(service(400, code).code(), Some(code));
            assert!(matches!(service(400, code), StoreError::Misconfigured { .. }), "{code}");
        }
        for code in ["ValidationException", "ItemCollectionSizeLimitExceededException", "SomethingNew"] {
            assert!(matches!(service(400, code), StoreError::Rejected { .. }), "{code}");
        }
        let timeout: SdkError<UpdateItemError, Response> = SdkError::timeout_error("slow");
        assert!(matches!(classify("apply", "orders", timeout), StoreError::Unavailable { .. }));
        let unbuildable: SdkError<UpdateItemError, Response> = SdkError::construction_failure("bad input");
        assert!(matches!(classify("apply", "orders", unbuildable), StoreError::Rejected { .. }));
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
