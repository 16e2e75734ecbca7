//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::error::Problem;
use crate::routes::{ops, orders, subscriptions, tracking};

#[derive(OpenApi)]
#[openapi(
    info(title = "E-ComExpress pedidos API", description = "Validates orders and publishes versioned PedidoCreado / PedidoActualizado events to SNS; tracks them as the workers apply them."),
    paths(orders::create, orders::update, tracking::get_order, tracking::list_by_cliente, subscriptions::subscribe, subscriptions::status, ops::health, ops::status, ops::ready, ops::metrics),
    components(schemas(Problem, orders::Publicado, orders::CrearPedido, orders::ActualizarPedido, orders::ItemInput, tracking::Pedido, tracking::PedidoResumen, tracking::Linea, tracking::VersionAplicada, tracking::Envio, tracking::PaginaPedidos, subscriptions::Suscripcion, subscriptions::EstadoSuscripcion, ops::Readiness)),
    tags((name = "pedidos"), (name = "suscripciones"), (name = "ops"))
)]
pub struct ApiDoc;
