//! The tables' definitions, created idempotently by `pedidos-api topology` (local runs, compose, tests). The
//! CloudFormation stack `deploy/cloudformation/messaging.yaml` declares the same for AWS.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

/// `ORDERS_TABLE` when unset.
pub const DEFAULT_ORDERS_TABLE: &str = "ecomexpress-orders";
/// `IDEMPOTENCY_TABLE` when unset.
pub const DEFAULT_IDEMPOTENCY_TABLE: &str = "ecomexpress-idempotency";
/// The orders table's index on `clienteId`.
pub const CUSTOMER_INDEX: &str = "porCliente";
/// The orders table's index of the latest changes (partition `dia`, sort `actualizadoOrden`).
pub const RECENT_INDEX: &str = "recientes";

/// Key attribute names.
pub mod attr {
    /// Partition key of the orders table (`PEDIDO#id`, `ENVIO#id`).
    pub const PK: &str = "pk";
    /// Partition key of the idempotency table.
    pub const ID: &str = "id";
    /// TTL attribute of the idempotency table (Unix seconds).
    pub const EXPIRES_AT: &str = "expiresAt";
}

/// A failed call while creating a table, naming the table.
#[derive(Debug, thiserror::Error)]
#[error("table {table}: {message}")]
pub struct SchemaError {
    pub table: String,
    pub message: String,
}

fn key(name: &str, key_type: KeyType) -> Result<KeySchemaElement, SchemaError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(|e| SchemaError { table: name.to_owned(), message: e.to_string() })
}

fn string_attribute(name: &str) -> Result<AttributeDefinition, SchemaError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| SchemaError { table: name.to_owned(), message: e.to_string() })
}

/// Creates both tables unless they exist, and turns on TTL for the idempotency table. Safe to run any number of times.
///
/// # Errors
/// The first call that failed, naming its table.
pub async fn ensure_tables(client: &Client, orders: &str, idempotency: &str) -> Result<(), SchemaError> {
    let fail = |table: &str| {
        let table = table.to_owned();
        move |e: String| SchemaError { table, message: e }
    };
    let index = GlobalSecondaryIndex::builder()
        .index_name(CUSTOMER_INDEX)
        .key_schema(key("clienteId", KeyType::Hash)?)
        .key_schema(key("fechaOrden", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(|e| fail(orders)(e.to_string()))?;
    let recent = GlobalSecondaryIndex::builder()
        .index_name(RECENT_INDEX)
        .key_schema(key("dia", KeyType::Hash)?)
        .key_schema(key("actualizadoOrden", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(|e| fail(orders)(e.to_string()))?;
    let create = client
        .create_table()
        .table_name(orders)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key(attr::PK, KeyType::Hash)?)
        .attribute_definitions(string_attribute(attr::PK)?)
        .attribute_definitions(string_attribute("clienteId")?)
        .attribute_definitions(string_attribute("fechaOrden")?)
        .attribute_definitions(string_attribute("dia")?)
        .attribute_definitions(string_attribute("actualizadoOrden")?)
        .global_secondary_indexes(index)
        .global_secondary_indexes(recent);
    created_or_exists(create.send().await).map_err(fail(orders))?;
    let create = client
        .create_table()
        .table_name(idempotency)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key(attr::ID, KeyType::Hash)?)
        .attribute_definitions(string_attribute(attr::ID)?);
    created_or_exists(create.send().await).map_err(fail(idempotency))?;
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name(attr::EXPIRES_AT)
        .enabled(true)
        .build()
        .map_err(|e| fail(idempotency)(e.to_string()))?;
    let current = client
        .describe_time_to_live()
        .table_name(idempotency)
        .send()
        .await
        .map_err(|e| fail(idempotency)(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;
    let enabled = current
        .time_to_live_description
        .and_then(|d| d.time_to_live_status)
        .is_some_and(|s| matches!(s, aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled));
    if !enabled {
        client
            .update_time_to_live()
            .table_name(idempotency)
            .time_to_live_specification(ttl)
            .send()
            .await
            .map_err(|e| fail(idempotency)(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;
    }
    Ok(())
}

fn created_or_exists<T>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::create_table::CreateTableError>>,
) -> Result<(), String> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => Ok(()),
        Err(e) => Err(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()),
    }
}
