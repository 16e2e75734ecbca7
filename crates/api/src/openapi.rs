//! The OpenAPI 3 document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::error::Problem;
use crate::routes::{ops, orders, subscriptions};

#[derive(OpenApi)]
#[openapi(
    info(title = "E-ComExpress pedidos API", description = "Validates orders and publishes versioned PedidoCreado / PedidoActualizado events to SNS."),
    paths(orders::create, orders::update, subscriptions::subscribe, subscriptions::status, ops::health, ops::status, ops::ready, ops::metrics),
    components(schemas(Problem, orders::Publicado, orders::CrearPedido, orders::ActualizarPedido, orders::ItemInput, subscriptions::Suscripcion, subscriptions::EstadoSuscripcion)),
    tags((name = "pedidos"), (name = "suscripciones"), (name = "ops"))
)]
pub struct ApiDoc;
